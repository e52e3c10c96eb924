"""Learning through real worker processes: a correction processed by one worker process changes
the next result of another (whose cache was warm), replays change nothing, bad input is
dead-lettered with its reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import redis

from schemas import CATEGORIZE_QUEUE, LEARN_QUEUE
from tests.support import data
from tests.support.services import WorkerProcess, run_catfleet, wait_for
from workers.app import App
from workers.backends.redis import RedisFailureLog
from workers.backends.redis.keys import RedisKeys
from workers.harness.processes import free_port
from workers.producer import Producer
from workers.settings import Settings


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_catfleet(settings, *args)


def row(conn: psycopg.Connection[Any], expense_id: int) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT category_id, pattern_id, source, explanation->>'decided_by' FROM categorizations"
        " WHERE expense_id = %s",
        (expense_id,),
    ).fetchone()


def scalar(conn: psycopg.Connection[Any], query: Any) -> Any:
    return conn.execute(query).fetchone()[0]  # type: ignore[index]


def test_correction_on_one_worker_changes_the_next_batch_on_another(
    settings: Settings, tmp_path: Path, app: App, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    categorizer = WorkerProcess(settings, tmp_path / "categorize.log", queues=[CATEGORIZE_QUEUE])
    # Another "host": its own metrics port, as two worker groups on one machine need.
    other_host = msgspec.structs.replace(settings, metrics_port=free_port())
    learner = WorkerProcess(other_host, tmp_path / "learn.log", queues=[LEARN_QUEUE])
    try:
        categorizer.wait_ready()
        producer = Producer(app.broker, batch_size=10)
        e1, e2, e3 = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "STARBUCKS #123", "SQ *STARBUCKS"])

        producer.enqueue([e1])  # the categorize worker answers from the global rule and caches it
        wait_for(lambda: row(conn, e1), what="first batch")
        assert row(conn, e1) == (cats["coffee"], row(conn, e1)[1], "auto", "global_merchant")  # type: ignore[index]

        out = cli(settings, "correct", str(e1), "dining")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"enqueued correction of expense {e1} to 'dining'")
        wait_for(lambda: (r := row(conn, e1)) and r[2] == "user", what="the correction, on the learn worker")
        version = scalar(conn, "SELECT version FROM ruleset")
        learned = scalar(conn, "SELECT id FROM categorization_patterns WHERE source = 'learned'")

        producer.enqueue([e2])  # the other process: its warm cache is stale now, it sees the rule
        wait_for(lambda: row(conn, e2), what="second batch")
        assert row(conn, e2) == (cats["dining"], learned, "auto", "user_merchant")

        # which process did what: batches only on one, the correction only on the other
        assert '"event":"correction"' not in categorizer.log().replace(" ", "")
        assert '"event":"batch"' not in learner.log().replace(" ", "")

        # a replay of the same correction (same default key) changes nothing
        assert cli(settings, "correct", str(e1), "dining").returncode == 0
        wait_for(lambda: '"duplicate":true' in learner.log().replace(" ", ""), what="replay processed")
        assert scalar(conn, "SELECT count(*) FROM corrections") == 1
        assert scalar(conn, "SELECT version FROM ruleset") == version

        # bad input (a producer that does not validate, as `catfleet correct` does): dead-lettered
        # at once with a clear reason; the learn worker goes on
        refused = cli(settings, "correct", str(e3), "no-such-category")
        assert refused.returncode == 1 and "no-such-category" in refused.stderr
        producer.correct(e3, "no-such-category")
        client = redis.Redis.from_url(settings.broker_url)
        try:
            keys = RedisKeys(settings.broker_namespace)
            wait_for(lambda: client.zcard(keys.dead(LEARN_QUEUE)) == 1, what="dead letter")
            [payload] = client.hvals(keys.dead_messages(LEARN_QUEUE))
        finally:
            client.close()
        message = json.loads(payload)
        assert message["options"].get("retries", 0) == 0
        assert isinstance(app.failures, RedisFailureLog)
        [record] = wait_for(lambda: app.failures.history(message["message_id"]), what="failure record")
        assert record.dead and record.error_type == "UnknownCategory"
        assert "unknown category 'no-such-category'" in record.error
        assert cli(settings, "correct", str(e3), "fuel").returncode == 0
        wait_for(lambda: (r := row(conn, e3)) and r[0] == cats["fuel"], what="the next correction")
    finally:
        categorizer.stop()
        learner.stop()
