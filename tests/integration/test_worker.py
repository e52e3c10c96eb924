"""Real Dramatiq worker processes against the real Redis broker and PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import dramatiq
import msgspec
import psycopg
import pytest
import redis

from schemas import CATEGORIZE_ACTOR, CATEGORIZE_QUEUE, MAX_BATCH_IDS
from tests.support import data
from tests.support.broker import EMPTY, dead_messages, queue_state, queued_messages
from tests.support.data import count_rows
from tests.support.servers import own_redis
from tests.support.services import WorkerProcess, log_events, wait_for
from workers.app import App, build_app
from workers.backends.redis import RedisFailureLog
from workers.backends.redis.broker import PIPELINE_MESSAGES
from workers.harness.processes import ROOT, settings_env
from workers.producer import Producer
from workers.settings import Settings


def raw_message(payload_args: list[Any], kwargs: dict[str, Any] | None = None) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=CATEGORIZE_QUEUE,
        actor_name=CATEGORIZE_ACTOR,
        args=tuple(payload_args),
        kwargs=kwargs or {},
        options={},
    )


def test_enqueue_to_rows_through_a_real_worker(
    worker: WorkerProcess, app: App, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935"] * 30 + ["WALMART"] * 30)
    report = Producer(app.broker, batch_size=25).enqueue([*ids, 10**15], correlation_id="e2e-1")
    assert (report.messages, report.ids) == (3, 61)
    wait_for(lambda: count_rows(conn) == 60, what="60 rows")
    got = conn.execute(
        "SELECT category_id, count(*), count(DISTINCT message_id), min(correlation_id) FROM categorizations"
        " GROUP BY category_id ORDER BY category_id"
    ).fetchall()
    assert got == [(cats["coffee"], 30, 2, "e2e-1"), (cats["groceries"], 30, 2, "e2e-1")]
    stored = conn.execute("SELECT DISTINCT correlation_id, message_id FROM categorizations").fetchall()
    assert {c for c, _ in stored} == {"e2e-1"} and {m for _, m in stored} == set(report.message_ids)
    # One JSON line per batch: the producer's correlation id, the message, its size and outcomes.
    lines = wait_for(lambda: len(b := log_events(worker, "batch")) == 3 and b, what="3 batch log lines")
    assert sorted(line["message_id"] for line in lines) == sorted(report.message_ids)
    for line in lines:
        assert (line["logger"], line["level"], line["actor"], line["correlation_id"]) == (
            "catfleet.batch",
            "INFO",
            CATEGORIZE_ACTOR,
            "e2e-1",
        )
        assert sum(line["outcomes"].values()) == line["size"] and line["duration_ms"] > 0
        assert (line["written"], line["unchanged"]) == (line["outcomes"]["categorized"], 0)  # all new rows
        cache = line["cache"]  # lookups per tier and result
        assert all(re.fullmatch(r"l[123]_(hit|miss|error)", k) for k in cache)
        l2_missed = cache.get("l2_miss", 0) + cache.get("l2_error", 0)
        assert cache.get("l2_hit", 0) + l2_missed == cache["l1_miss"]  # L2 is asked what L1 missed
        assert cache.get("l3_hit", 0) + cache.get("l3_miss", 0) == l2_missed  # L3 what L2 did not answer
    assert {k[:2] for line in lines for k in line["cache"]} >= {"l1", "l2"}  # L1's misses went on to L2
    # L1 lookups: the user's own merchant entry and own token entry, plus per distinct merchant
    # of the batch (one user) its merchant key and its fleet-wide token key:
    # 25 x starbucks, 5 x starbucks + 20 x walmart, 10 x walmart + the missing id
    lookups = sorted((line["size"], line["cache"]["l1_hit"] + line["cache"]["l1_miss"]) for line in lines)
    assert lookups == [(11, 2 + 2), (25, 2 + 2), (25, 2 + 2 * 2)]
    assert sum(line["outcomes"].get("missing", 0) for line in lines) == 1
    assert sum(line["outcomes"].get("categorized", 0) for line in lines) == 60


def test_same_message_delivered_twice_gives_identical_rows(
    worker: WorkerProcess, app: App, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["STARBUCKS", "UBER *TRIP", "JOE'S PIZZA"])
    message = Producer.batch_message(ids)
    app.broker.enqueue(message)
    wait_for(lambda: count_rows(conn) == 3, what="first delivery")
    before = data.rows(conn)
    app.broker.enqueue(message)  # the very same message id again, as after a redelivery
    marker = Producer.batch_message(data.add_expenses(conn, ["WALMART"]))
    app.broker.enqueue(marker)  # one worker thread per message: wait for a later one to land
    wait_for(lambda: count_rows(conn) == 4, what="marker")
    wait_for(lambda: worker.log().count('"event":"batch"') >= 3, what="replay processed")
    assert data.rows(conn)[:3] == before
    batches = log_events(worker, "batch")
    assert len(batches) == 3
    first, replay = (b for b in batches if b["message_id"] == message.message_id)
    assert (first["size"], first["written"], first["unchanged"]) == (3, 3, 0)
    assert (replay["size"], replay["written"], replay["unchanged"]) == (3, 0, 3)  # nothing rewritten


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ([{"expense_ids": "1,2,3"}], {}, "Expected `array`"),
        ([{"expense_ids": [1, "two", 3]}], {}, "Expected `int`"),
        ([{"expense_ids": [1.5]}], {}, "Expected `int`"),
        ([{"expense_ids": []}], {}, "length >= 1"),
        ([{"expense_ids": list(range(1, MAX_BATCH_IDS + 2))}], {}, f"length <= {MAX_BATCH_IDS}"),
        ([{"expense_ids": [0, -5]}], {}, ">= 1"),
        ([{"expense_ids": [2**63]}], {}, "<= 9223372036854775807"),
        ([{"expense_ids": [1], "surprise": True}], {}, "unknown field"),
        ([[1, 2, 3]], {}, "expected args=[{...payload...}]"),
        ([], {"expense_ids": [1]}, "expected args=[{...payload...}]"),
    ],
    ids=[
        "string",
        "non-int",
        "float",
        "empty",
        "oversized",
        "non-positive",
        "over-bigint",
        "extra",
        "list",
        "kwargs",
    ],
)
def test_malformed_message_is_dead_lettered_at_once_and_worker_goes_on(
    worker: WorkerProcess,
    app: App,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    settings: Settings,
    args: list[Any],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    bad = raw_message(args, kwargs)
    app.broker.enqueue(bad)
    good_ids = data.add_expenses(conn, ["STARBUCKS"])
    Producer(app.broker, batch_size=10).enqueue(good_ids)
    wait_for(lambda: count_rows(conn) == 1, what="the next good message")
    dead = wait_for(lambda: dead_messages(settings), what="dead letter")
    assert [d["message_id"] for d in dead] == [bad.message_id]
    assert dead[0]["options"].get("retries", 0) == 0  # not retried
    assert isinstance(app.failures, RedisFailureLog)
    [record] = wait_for(lambda: app.failures.history(bad.message_id), what="failure record")
    assert record.dead is True and record.error_type == "InvalidMessage"
    assert reason in record.error


def enqueue_cli(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``catfleet enqueue ARGS...`` as a child process with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "workers", "enqueue", *args],
        input=stdin,
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def category_and_correlation(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT expense_id, category_id, correlation_id FROM categorizations WHERE expense_id = ANY(%s)",
        (ids,),
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_cli_enqueue_drives_a_worker(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    ids = data.add_expenses(conn, ["SQ *STARBUCKS", "TST* WALMART STORE #4567", "SHELL FUEL"])
    out = enqueue_cli(settings, "--batch-size", "2", *map(str, ids))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "enqueued 3 expense id(s) in 2 message(s)"
    wait_for(lambda: count_rows(conn) == 3, what="rows from CLI enqueue")
    more = data.add_expenses(conn, ["UBER *TRIP HELP.UBER.COM"])
    out = enqueue_cli(settings, "--all-uncategorized", "--json")
    sent = json.loads(out.stdout)
    assert (sent["messages"], sent["ids"], sent["correlation_id"], len(sent["message_ids"])) == (
        1,
        1,
        None,
        1,
    )
    wait_for(lambda: count_rows(conn) == 4, what="row for the uncategorized one")
    assert conn.execute("SELECT category_id FROM categorizations WHERE expense_id = %s", more).fetchone() == (
        cats["rideshare"],
    )


def test_cli_enqueue_one_users_uncategorized_then_a_file(
    worker: WorkerProcess,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    settings: Settings,
    tmp_path: Path,
) -> None:
    [done] = data.add_expenses(conn, ["JOE'S PIZZA"], user_id=7)
    assert enqueue_cli(settings, str(done), "--correlation-id", "first").returncode == 0
    wait_for(lambda: count_rows(conn) == 1, what="user 7's first expense categorized")
    mine = data.add_expenses(conn, ["SQ *STARBUCKS", "SHELL FUEL"], user_id=7)
    others = data.add_expenses(conn, ["WALMART", "UBER *TRIP"], user_id=8)
    conn.execute("UPDATE expenses SET deleted_at = now() WHERE id = %s", (others[1],))
    out = enqueue_cli(settings, "--all-uncategorized", "--user", "7", "--correlation-id", "user-7", "--json")
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout)
    assert (sent["messages"], sent["ids"], sent["correlation_id"]) == (1, 2, "user-7")  # user 7's only
    wait_for(lambda: count_rows(conn) == 3, what="user 7's rows")
    wait_for(lambda: queue_state(settings) == EMPTY, what="the message acked")
    assert category_and_correlation(conn, [done, *mine, *others]) == {
        done: (cats["dining"], "first"),  # categorized already: not sent again
        mine[0]: (cats["coffee"], "user-7"),
        mine[1]: (cats["fuel"], "user-7"),
    }
    # --file: IDs over lines, comma or whitespace separated, repeats sent once.
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{others[0]}, {mine[0]}\n\n{others[0]}\t{done}\n", encoding="utf-8")
    out = enqueue_cli(settings, "--file", str(ids_file), "--batch-size", "2", "--correlation-id", "from-file")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "enqueued 3 expense id(s) in 2 message(s)"
    wait_for(
        lambda: category_and_correlation(conn, [others[0]]) == {others[0]: (cats["groceries"], "from-file")},
        what="the file's new expense categorized",
    )
    wait_for(lambda: queue_state(settings) == EMPTY, what="both messages acked")
    assert count_rows(conn) == 4  # the two categorized already were rewritten in place, not added


def test_a_run_is_traced_from_its_rows_even_when_the_result_is_unchanged(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    """``enqueue --json`` gives the message ids; every row of the run then carries the run's
    correlation id and one of its message ids, also a row whose category did not change (its
    categorized_at still dates the result, and the batch counts it unchanged)."""
    ids = data.add_expenses(conn, ["SQ *STARBUCKS", "WALMART", "SHELL FUEL", "ZQX NOTHING"])

    def run(correlation_id: str) -> dict[str, Any]:
        out = enqueue_cli(
            settings, "--batch-size", "2", "--correlation-id", correlation_id, "--json", *map(str, ids)
        )
        assert out.returncode == 0, out.stderr
        sent: dict[str, Any] = json.loads(out.stdout)
        assert (sent["messages"], sent["ids"], sent["correlation_id"]) == (2, 4, correlation_id)
        assert len(set(sent["message_ids"])) == 2
        return sent

    def rows() -> dict[int, tuple[Any, ...]]:
        got = conn.execute(
            "SELECT expense_id, category_id, correlation_id, message_id, categorized_at FROM categorizations"
        ).fetchall()
        return {r[0]: r[1:] for r in got}

    def batches(correlation_id: str) -> list[dict[str, Any]]:
        return [b for b in log_events(worker, "batch") if b["correlation_id"] == correlation_id]

    first = run("run-1")
    wait_for(lambda: len(batches("run-1")) == 2 and len(rows()) == 4, what="the first run written")
    before = rows()
    assert {r[1] for r in before.values()} == {"run-1"} and {r[2] for r in before.values()} == set(
        first["message_ids"]
    )
    second = run("run-2")
    lines = wait_for(lambda: len(b := batches("run-2")) == 2 and b, what="the second run's batches")
    after = rows()
    assert {r[1] for r in after.values()} == {"run-2"}  # the run is found from its rows
    assert {r[2] for r in after.values()} == set(second["message_ids"])
    assert {i: (r[0], r[3]) for i, r in after.items()} == {i: (r[0], r[3]) for i, r in before.items()}
    assert sum(b["written"] for b in lines) == 0 and sum(b["unchanged"] for b in lines) == 4
    # the same correlation id again (a replayed message, or another of the same request): nothing changes
    app = build_app(settings)
    try:
        Producer(app.broker, batch_size=10).enqueue(ids, correlation_id="run-2")
    finally:
        app.close()
    wait_for(lambda: len(batches("run-2")) == 3, what="the third batch of run-2")
    assert rows() == after


def test_cli_enqueue_rejects_bad_ids(settings: Settings) -> None:
    out = enqueue_cli(settings, "--file", "-", stdin="12 13\nfourteen\n")
    assert out.returncode == 1  # SystemExit with a message: nothing enqueued
    assert out.stderr.strip() == "catfleet enqueue: line 2: not an integer expense id: 'fourteen'"
    out = enqueue_cli(settings, "--user", "7")  # one user's expenses: only with --all-uncategorized
    assert out.returncode == 1
    assert out.stderr.strip() == "catfleet enqueue: --user only filters --all-uncategorized"


def test_producer_pipelines_a_many_chunk_enqueue(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round trips to Redis, counted where redis-py writes to the socket: each write of one
    command or of a whole pipeline is followed by reading its replies. On a fresh Redis (the
    dispatch script not loaded yet), so the reload path runs too."""
    round_trips = 0
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self: redis.connection.AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal round_trips
        round_trips += 1
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    with own_redis(tmp_path / "redis") as server:
        own = msgspec.structs.replace(settings, broker_url=server.url)
        app = build_app(own)
        try:
            producer = Producer(app.broker, batch_size=2)
            producer.enqueue([1])  # connects, finds the script missing, loads it, sends once
            assert queue_state(own)["messages"] == 1
            round_trips = 0
            report = producer.enqueue(range(2, 2002))
            many = round_trips
            round_trips = 0
            for message in Producer.batch_message([1]), Producer.batch_message([2]):
                app.broker.enqueue(message)  # Dramatiq's own enqueue: one message per round trip
            single = round_trips
        finally:
            app.close()
        assert (report.messages, report.ids) == (1000, 2000)
        pipelines = -(-report.messages // PIPELINE_MESSAGES)
        print(
            f"\nproducer: {report.messages} messages in {many} Redis round trips; broker.enqueue: {single / 2}"
        )
        assert many == pipelines == 5 and single == 2
        state = queue_state(own)
        assert (state["queued"], state["messages"]) == (1003, 1003)  # each sent once
        sent = sorted(i for m in queued_messages(own) for i in m["args"][0]["expense_ids"])
        assert sent == [1, 1, 2, *range(2, 2002)]
