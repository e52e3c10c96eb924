"""Real Dramatiq worker processes against the real Redis broker and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import dramatiq
import psycopg
import pytest

from pipeline.settings import Settings
from schemas import CATEGORIZE_ACTOR, CATEGORIZE_QUEUE, MAX_BATCH_IDS
from tests.support import data
from tests.support.broker import dead_messages
from tests.support.data import count_rows
from tests.support.services import WorkerProcess, wait_for
from workers.app import App
from workers.failures import RedisFailureLog
from workers.procs import ROOT, settings_env
from workers.producer import Producer


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
    assert '"missing":1' in worker.log().replace(" ", "")


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
    assert record.dead and record.error_type == "InvalidMessage"
    assert reason in record.error


def test_cli_enqueue_drives_a_worker(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    ids = data.add_expenses(conn, ["SQ *STARBUCKS", "TST* WALMART STORE #4567", "SHELL FUEL"])
    out = subprocess.run(
        [sys.executable, "-m", "workers", "enqueue", "--batch-size", "2", *map(str, ids)],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "enqueued 3 expense id(s) in 2 message(s)"
    wait_for(lambda: count_rows(conn) == 3, what="rows from CLI enqueue")
    more = data.add_expenses(conn, ["UBER *TRIP HELP.UBER.COM"])
    out = subprocess.run(
        [sys.executable, "-m", "workers", "enqueue", "--all-uncategorized", "--json"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"messages": 1, "ids": 1}
    wait_for(lambda: count_rows(conn) == 4, what="row for the uncategorized one")
    assert conn.execute("SELECT category_id FROM categorizations WHERE expense_id = %s", more).fetchone() == (
        cats["rideshare"],
    )


def test_cli_enqueue_rejects_bad_ids(settings: Settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workers", "enqueue", "--file", "-"],
        input="12 13\nfourteen\n",
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "line 2: not an integer expense id: 'fourteen'" in out.stderr
