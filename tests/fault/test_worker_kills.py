"""kill -9 of real worker processes: nothing lost, nothing written twice, bounded recovery."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support import data
from tests.support.broker import EMPTY, queue_state
from tests.support.data import bulk_expenses, categorized
from tests.support.services import WorkerProcess, isolated_settings, wait_for
from workers.app import build_app
from workers.dlq import open_store
from workers.producer import Producer

pytestmark = pytest.mark.fault

#: Short broker timings keep these tests quick; FAULT_RECOVERY_DEFAULTS=1 measures the defaults.
FAST = {"broker_heartbeat_timeout_ms": 2_000, "broker_maintenance_interval_ms": 500}


def test_kill9_workers_repeatedly_during_20k_expenses(tmp_path: Path) -> None:
    with (
        isolated_settings(**FAST, max_deliveries=50, batch_size=200) as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
    ):
        data.seed_patterns(conn, data.reset(conn))
        ids = bulk_expenses(conn, 20_000)
        app = build_app(settings)
        worker = WorkerProcess(settings, tmp_path / "w0.log", processes=2, threads=2)
        worker.wait_ready()
        report = Producer(app.broker, batch_size=200).enqueue(ids)
        app.broker.close()
        assert report.messages == 100
        kills = []
        for n, share in enumerate((0.1, 0.3, 0.5, 0.7, 0.85), 1):
            wait_for(lambda s=share: categorized(conn)[0] >= s * len(ids), timeout=120, what=f"{share:.0%}")
            worker.stop(signal.SIGKILL)
            kills.append(categorized(conn)[0])
            worker = WorkerProcess(settings, tmp_path / f"w{n}.log", processes=2, threads=2)
        try:
            wait_for(lambda: categorized(conn) == (20_000, 20_000), timeout=180, what="every expense")
            wait_for(lambda: queue_state(settings) == EMPTY, timeout=60, what="empty queues")
        finally:
            worker.stop()
        print(f"\nkill -9 x{len(kills)} at rows {kills}; rows {categorized(conn)}; {queue_state(settings)}")


def test_recovery_after_kill9_and_delivery_limit(tmp_path: Path) -> None:
    """A batch blocked on a row lock stands for one that keeps killing its worker."""
    timings: dict[str, Any] = {} if os.environ.get("FAULT_RECOVERY_DEFAULTS") else FAST
    with isolated_settings(**timings, max_deliveries=2) as settings:
        client = redis.Redis.from_url(settings.broker_url)
        with (
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
            app.broker.close()
            key = f"{settings.broker_namespace}:catfleet.deliveries:{mid}"

            def deliveries() -> int:
                return int(client.get(key) or 0)

            worker = WorkerProcess(settings, tmp_path / "w0.log")
            wait_for(lambda: deliveries() == 1, what="first delivery")
            time.sleep(0.5)
            worker.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            worker = WorkerProcess(settings, tmp_path / "w1.log")
            wait_for(lambda: deliveries() == 2, timeout=120, what="redelivery after kill -9")
            recovery = time.monotonic() - killed_at
            worker.stop(signal.SIGKILL)
            worker = WorkerProcess(settings, tmp_path / "w2.log")
            try:
                wait_for(lambda: queue_state(settings)["dead"] == 1, timeout=120, what="dead-lettered")
            finally:
                blocker.rollback()
                worker.stop()
            store = open_store(settings)
            letter = store.show(mid)
            store.close()
            assert letter is not None and letter.error_type == "DeliveryLimitExceeded"
            assert "max_deliveries=2" in letter.error
            print(
                f"\nrecovery after kill -9: {recovery:.1f} s (heartbeat timeout "
                f"{settings.broker_heartbeat_timeout_ms} ms, maintenance every "
                f"{settings.broker_maintenance_interval_ms} ms)"
            )
        client.close()
