"""Poison batches, replays (also killed halfway), a retry whose re-enqueue fails, and SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
import redis
from dramatiq.middleware import CurrentMessage

from pipeline.errors import DatabaseUnavailable
from tests.support import data
from tests.support.broker import EMPTY, queue_state
from tests.support.data import categorized
from tests.support.services import WorkerProcess, isolated_settings, wait_for
from workers.app import build_app
from workers.backends.redis import RedisFailureLog, RedisKeys, SafeRedisBroker
from workers.harness.processes import ROOT, settings_env
from workers.middleware.failures import RecordFailures
from workers.middleware.retries import SafeRetries
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault


def dlq(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "workers", "dlq", *args],
        env=settings_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def audit(conn: psycopg.Connection[Any]) -> list[tuple[int, list[str]]]:
    """(count, message ids) of each replay or purge recorded, oldest first."""
    return [
        (r[0], r[1]) for r in conn.execute("SELECT count, message_ids FROM dead_letter_actions ORDER BY id")
    ]


def batch_events(worker: WorkerProcess) -> list[str]:
    out = []
    for line in worker.log().splitlines():
        if '"event":"batch"' in line.replace(" ", ""):
            out.append(json.loads(line[line.index("{") :])["message_id"])
    return out


def test_poison_batch_is_dead_lettered_then_replayed_once(tmp_path: Path) -> None:
    with (
        isolated_settings(max_retries=2, min_backoff_ms=100, max_backoff_ms=300) as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
    ):
        data.seed_patterns(conn, data.reset(conn))
        conn.execute(data.POISON)
        bad = data.add_expenses(conn, ["STARBUCKS"] * 20)
        good = data.add_expenses(conn, ["WALMART"] * 20)
        conn.execute("INSERT INTO poison SELECT unnest(%s::bigint[])", (bad[:1],))
        app = build_app(settings)
        producer = Producer(app.broker, batch_size=20)
        [poison_mid] = producer.enqueue(bad).message_ids
        producer.enqueue(good)
        worker = WorkerProcess(settings, tmp_path / "w.log")
        try:
            wait_for(lambda: queue_state(settings)["dead"] == 1, timeout=60, what="poison dead-lettered")
            assert categorized(conn) == (20, 20)
            assert isinstance(app.failures, RedisFailureLog)
            history = app.failures.history(poison_mid)
            assert [(r.attempt, r.retries, r.dead, r.error_type) for r in history] == [
                (1, 1, False, "DatabaseConflict"),
                (2, 2, False, "DatabaseConflict"),
                (3, 3, True, "DatabaseConflict"),
            ]
            conn.execute("DELETE FROM poison")  # the cause is fixed
            out, err = dlq(settings, "replay", "--all", "--json").communicate(timeout=60)
            assert json.loads(out)["message_ids"] == [poison_mid], err
            wait_for(lambda: categorized(conn) == (40, 40), timeout=60, what="replayed batch")
            wait_for(lambda: queue_state(settings) == EMPTY, timeout=30, what="empty queues")
            got = conn.execute(
                "SELECT count(*), min(message_id), max(message_id) FROM categorizations WHERE expense_id = ANY(%s)",
                (bad,),
            ).fetchone()
            assert got == (20, poison_mid, poison_mid)
            time.sleep(0.5)
            assert batch_events(worker).count(poison_mid) == 1
            with psycopg.connect(settings.database_url) as c:
                audit = c.execute("SELECT action, count, message_ids FROM dead_letter_actions").fetchall()
            assert audit == [("replay", 1, [poison_mid])]
        finally:
            worker.stop()
            app.close()


def test_replay_killed_halfway_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with (
        isolated_settings(max_retries=0) as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
    ):
        data.seed_patterns(conn, data.reset(conn))
        conn.execute(data.POISON)
        ids = data.add_expenses(conn, ["UBER *TRIP"] * 200)
        conn.execute("INSERT INTO poison SELECT unnest(%s::bigint[])", (ids,))
        app = build_app(settings)
        mids = Producer(app.broker, batch_size=5).enqueue(ids).message_ids
        app.close()
        worker = WorkerProcess(settings, tmp_path / "w.log", threads=4)
        try:
            wait_for(lambda: queue_state(settings)["dead"] == 40, timeout=60, what="40 dead letters")
            conn.execute("DELETE FROM poison")
            first = dlq(settings, "replay", "--all", "--rate", "20")
            wait_for(lambda: audit(conn) and audit(conn)[0][0] >= 5, timeout=30, what="replay under way")
            first.send_signal(signal.SIGKILL)
            first.communicate()
            left = queue_state(settings)["dead"]
            assert 0 < left < 40
            [(killed_count, killed_ids)] = audit(conn)  # written before the first move, kept up
            assert killed_count == len(killed_ids) and 5 <= killed_count <= 40 - left
            out, err = dlq(settings, "replay", "--all", "--json").communicate(timeout=60)
            assert json.loads(out)["done"] == left, err
            [_, (rerun_count, rerun_ids)] = audit(conn)
            assert rerun_count == left and not set(rerun_ids) & set(killed_ids)
            wait_for(lambda: categorized(conn) == (200, 200), timeout=60, what="every expense")
            wait_for(lambda: queue_state(settings) == EMPTY, timeout=30, what="empty queues")
            time.sleep(0.5)
            events = batch_events(worker)
            assert sorted(events) == sorted(mids)  # each batch ran exactly once after the fix
            print(
                f"\nreplay killed with {left}/40 dead letters left (its audit entry: {killed_count}); "
                f"then {40 - left} + {left} replayed"
            )
        finally:
            worker.stop()


def test_retry_whose_reenqueue_fails_is_dead_lettered_not_lost(settings: Settings) -> None:
    """The broker fails exactly when Retries re-enqueues the failed message (a broker blip)."""

    class BlipBroker(SafeRedisBroker):
        def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
            if delay is not None:  # the retry's re-enqueue
                raise redis.ConnectionError("injected: broker unreachable during the retry re-enqueue")
            return super().enqueue(message, delay=delay)

    queue = "blip"
    broker = BlipBroker(
        url=settings.broker_url,
        namespace=settings.broker_namespace,
        middleware=[SafeRetries(max_retries=5, min_backoff=10, max_backoff=20), CurrentMessage()],
    )
    failures = RedisFailureLog(broker.client, RedisKeys(settings.broker_namespace))
    broker.add_middleware(RecordFailures(failures), before=SafeRetries)

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name="always_blips")
    def always_blips() -> None:
        raise DatabaseUnavailable("connection lost")

    message = always_blips.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        client = broker.client
        keys = RedisKeys(settings.broker_namespace)
        wait_for(lambda: client.zcard(keys.dead(queue)) == 1, what="dead letter")
        [rid] = client.zrange(keys.dead(queue), 0, -1)
        assert json.loads(client.hget(keys.dead_messages(queue), rid))["message_id"] == message.message_id
        [record] = failures.history(message.message_id)
        assert record.dead and record.error_type == "DatabaseUnavailable"
        assert record.attempt == 1  # the first run, although Dramatiq counted a retry
    finally:
        worker.stop()
        broker.close()


def test_sigterm_finishes_the_batch_in_flight_requeues_the_rest_and_exits_0(tmp_path: Path) -> None:
    with (
        isolated_settings(worker_threads=1) as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
        psycopg.connect(settings.database_url) as blocker,
    ):
        data.seed_patterns(conn, data.reset(conn))
        ids = data.add_expenses(conn, ["STARBUCKS"] * 4)
        blocker.execute(
            "INSERT INTO categorizations (expense_id, confidence, band, method, explanation, ruleset_version)"
            " VALUES (%s, 0, 'none', 'test', '{}', 0)",
            (ids[0],),
        )
        app = build_app(settings)
        Producer(app.broker, batch_size=1).enqueue(ids)
        app.close()
        worker = WorkerProcess(settings, tmp_path / "w.log", threads=1)
        wait_for(lambda: queue_state(settings)["queued"] <= 2, what="first batch in flight, one prefetched")
        time.sleep(0.5)
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        blocker.rollback()  # the batch in flight can finish now, within the grace period
        assert worker.proc.wait(timeout=30) == 0
        worker.stop()
        assert conn.execute(
            "SELECT band FROM categorizations WHERE expense_id = %s", (ids[0],)
        ).fetchone() == ("auto",)
        state = queue_state(settings)
        assert state["unacked"] == 0 and state["dead"] == 0
        assert state["queued"] + categorized(conn)[0] == 4  # the rest went back to the queue
        worker = WorkerProcess(settings, tmp_path / "w2.log", threads=1)
        try:
            wait_for(lambda: categorized(conn) == (4, 4), what="the rest after restart")
        finally:
            worker.stop()
