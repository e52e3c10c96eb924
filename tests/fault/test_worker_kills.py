"""kill -9 of real worker processes: nothing lost, nothing written twice, bounded recovery."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis
from dramatiq.common import dq_name

from tests.support import data
from tests.support.broker import EMPTY, queue_state
from tests.support.data import bulk_expenses, categorized
from tests.support.services import WorkerProcess, isolated_settings, wait_for
from workers.app import build_app
from workers.backends.base import FLEET_QUEUES
from workers.backends.redis.keys import RedisKeys
from workers.dlq import open_store
from workers.harness.processes import free_port
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault

#: Short broker timings keep these tests quick; FAULT_RECOVERY_DEFAULTS=1 measures the defaults.
FAST = {"broker_heartbeat_timeout_ms": 2_000, "broker_maintenance_interval_ms": 500}
#: Every queue of the fleet and its delay queue (``queue_state`` also counts each one's dead letters).
ALL_QUEUES = [q for queue in FLEET_QUEUES for q in (queue, dq_name(queue))]
#: Scheduling, the delivery count and the first fetch on a loaded two-core machine.
SLACK_S = 1.5


def recovery_bounds_s(settings: Settings) -> tuple[float, float]:
    """When a killed process's unacked message runs again, after the kill
    (workers/middleware/maintenance.py): its heartbeat, never older than the maintenance interval,
    must expire (heartbeat timeout); the next maintenance pass of a live process (every interval)
    re-queues the message; an idle consumer fetches it within its idle poll."""
    timeout, interval = settings.broker_heartbeat_timeout_ms, settings.broker_maintenance_interval_ms
    earliest = (timeout - interval) / 1000
    latest = (timeout + interval + settings.worker_idle_poll_ms) / 1000 + SLACK_S
    return earliest, latest


def heartbeat_ids(client: redis.Redis, settings: Settings) -> set[str]:
    """Broker ids (one per worker process, and producers) that have heartbeated and not been reaped."""
    return {b.decode() for b in client.zrange(RedisKeys(settings.broker_namespace).heartbeats, 0, -1)}


def held_by(client: redis.Redis, settings: Settings, broker_ids: set[str]) -> int:
    """Messages these broker ids have fetched and not acked (every queue)."""
    keys = RedisKeys(settings.broker_namespace)
    return sum(client.scard(k) for b in broker_ids for k in client.scan_iter(keys.acks_pattern(b)))


def all_queues_empty(settings: Settings) -> bool:
    return all(queue_state(settings, q) == EMPTY for q in ALL_QUEUES)


def test_kill9_workers_repeatedly_during_20k_expenses(tmp_path: Path) -> None:
    total = 20_000
    with (
        isolated_settings(**FAST, max_deliveries=50, batch_size=200) as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
        redis.Redis.from_url(settings.broker_url) as client,
    ):
        data.seed_patterns(conn, data.reset(conn))
        ids = bulk_expenses(conn, total)
        app = build_app(settings)
        started = heartbeat_ids(client, settings)
        worker = WorkerProcess(settings, tmp_path / "w0.log", processes=2, threads=2)
        worker.wait_ready()
        report = Producer(app.broker, batch_size=200).enqueue(ids)
        app.close()
        assert report.messages == 100
        kills: list[dict[str, Any]] = []
        for n, share in enumerate((0.1, 0.3, 0.5, 0.7, 0.85), 1):
            wait_for(lambda s=share: categorized(conn)[0] >= s * total, timeout=120, what=f"{share:.0%}")
            # kill while it holds work: late in the run the queue can be empty for a while, the
            # rest still held by the workers killed before, until their heartbeats expire
            held = wait_for(
                lambda s=started: held_by(client, settings, heartbeat_ids(client, settings) - s),
                timeout=60,
                interval=0.01,
                what="the worker holding messages",
            )
            worker.stop(signal.SIGKILL)
            rows_after = categorized(conn)[0]  # the kill came before this many rows
            kills.append({"rows": rows_after, "held": held})
            started = heartbeat_ids(client, settings)
            worker = WorkerProcess(settings, tmp_path / f"w{n}.log", processes=2, threads=2)
        try:
            wait_for(lambda: categorized(conn) == (total, total), timeout=180, what="every expense")
            wait_for(lambda: all_queues_empty(settings), timeout=60, what="every queue empty")
        finally:
            worker.stop()
        mid_run = [k for k in kills if k["rows"] < total and k["held"] > 0]
        assert len(mid_run) == len(kills) == 5, kills  # each kill hit a run in progress, work in hand
        assert categorized(conn) == (total, total)
        print(
            f"\nkill -9 x{len(kills)}, all mid-run: rows after each kill {[k['rows'] for k in kills]}, "
            f"messages the killed worker held {[k['held'] for k in kills]}; rows {categorized(conn)}; "
            f"every queue empty: {all_queues_empty(settings)}"
        )


def standby(settings: Settings, log_path: Path) -> WorkerProcess:
    """A second worker (its own metrics port) that is consuming: its heartbeat is in the broker."""
    with redis.Redis.from_url(settings.broker_url) as client:
        before = heartbeat_ids(client, settings)
        worker = WorkerProcess(msgspec.structs.replace(settings, metrics_port=free_port()), log_path)
        wait_for(lambda: heartbeat_ids(client, settings) - before, timeout=30, what="standby heartbeat")
    return worker


def test_recovery_after_kill9_and_delivery_limit(tmp_path: Path) -> None:
    """A batch blocked on a row lock stands for one that keeps killing its worker. A standby
    worker is consuming before each kill, so the time measured is the broker's recovery alone."""
    timings: dict[str, Any] = {} if os.environ.get("FAULT_RECOVERY_DEFAULTS") else FAST
    with isolated_settings(**timings, max_deliveries=2) as settings:
        earliest, latest = recovery_bounds_s(settings)
        with (
            redis.Redis.from_url(settings.broker_url) as client,
            psycopg.connect(settings.database_url, autocommit=True) as conn,
            psycopg.connect(settings.database_url) as blocker,
        ):
            data.seed_patterns(conn, data.reset(conn))
            [stuck] = data.add_expenses(conn, ["STARBUCKS"])
            blocker.execute(
                "INSERT INTO categorizations (expense_id, confidence, band, method, explanation, ruleset_version)"
                " VALUES (%s, 0, 'none', 'test', '{}', 0)",
                (stuck,),
            )  # uncommitted: the worker's upsert of this expense waits on it
            app = build_app(settings)
            [mid] = Producer(app.broker, batch_size=10).enqueue([stuck]).message_ids
            app.close()
            key = RedisKeys(settings.broker_namespace).deliveries(mid)

            def deliveries() -> int:
                return int(client.get(key) or 0)

            def kill_and_time(
                worker: WorkerProcess, log_name: str, back: Callable[[], bool]
            ) -> tuple[WorkerProcess, float]:
                """kill -9 ``worker`` while a standby consumes; seconds until ``back()``."""
                nxt = standby(settings, tmp_path / log_name)
                worker.stop(signal.SIGKILL)
                killed_at = time.monotonic()
                wait_for(back, timeout=latest + 60, interval=0.02, what="redelivery after kill -9")
                return nxt, time.monotonic() - killed_at

            worker = WorkerProcess(settings, tmp_path / "w0.log")
            try:
                wait_for(lambda: deliveries() == 1, what="first delivery")
                worker, first = kill_and_time(worker, "w1.log", lambda: deliveries() == 2)
                # the third delivery is over max_deliveries: dead-lettered at once (and its count dropped)
                worker, second = kill_and_time(worker, "w2.log", lambda: queue_state(settings)["dead"] == 1)
            finally:
                blocker.rollback()
                worker.stop()
            store = open_store(settings)
            letter = store.show(mid)
            store.close()
            assert letter is not None and letter.error_type == "DeliveryLimitExceeded"
            assert "max_deliveries=2" in letter.error
            print(
                f"\nrecovery after kill -9: {first:.2f} s and {second:.2f} s (bound {earliest:.2f}..{latest:.2f} s: "
                f"heartbeat timeout {settings.broker_heartbeat_timeout_ms} ms, maintenance every "
                f"{settings.broker_maintenance_interval_ms} ms, idle poll {settings.worker_idle_poll_ms} ms)"
            )
            for recovery in (first, second):
                assert earliest <= recovery <= latest, (recovery, earliest, latest)
