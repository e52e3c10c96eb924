"""PostgreSQL and the broker's Redis restarted mid-run (servers the tests start themselves)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import psycopg
import pytest

from pipeline.migrate import migrate
from tests.support import data
from tests.support.broker import EMPTY, queue_state
from tests.support.data import bulk_expenses, categorized
from tests.support.servers import own_postgres, own_redis
from tests.support.services import WorkerProcess, isolated_settings, wait_for
from workers.app import build_app
from workers.producer import Producer

pytestmark = pytest.mark.fault

#: Enough retries to ride out a few seconds of outage, still bounded.
PATIENT = {"max_retries": 8, "min_backoff_ms": 200, "max_backoff_ms": 2_000}


def test_postgres_restart_mid_run(tmp_path: Path) -> None:
    with own_postgres() as pg, isolated_settings(**PATIENT) as base:
        settings = msgspec.structs.replace(base, database_url=pg.url)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn)
            data.seed_patterns(conn, data.reset(conn))
            ids = bulk_expenses(conn, 5_000)
        app = build_app(settings)
        worker = WorkerProcess(settings, tmp_path / "w.log", threads=2)
        try:
            worker.wait_ready()
            Producer(app.broker, batch_size=50).enqueue(ids)
            with psycopg.connect(pg.url, autocommit=True) as conn:
                wait_for(lambda: categorized(conn)[0] >= 500, timeout=60, what="progress")
            pg.stop("fast")
            time.sleep(2)
            pg.start()
            with psycopg.connect(pg.url, autocommit=True) as conn:
                wait_for(lambda: categorized(conn) == (5_000, 5_000), timeout=120, what="every expense")
            wait_for(lambda: queue_state(settings) == EMPTY, timeout=30, what="empty queues, none dead")
            print(f"\npostgres restart: rows {(5_000, 5_000)}, {queue_state(settings)}")
        finally:
            worker.stop()
            app.broker.close()


def test_broker_redis_restart_mid_run(tmp_path: Path) -> None:
    with own_redis(tmp_path, persist=True) as rds, isolated_settings(**PATIENT) as base:
        settings = msgspec.structs.replace(base, broker_url=rds.url)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            data.seed_patterns(conn, data.reset(conn))
            ids = bulk_expenses(conn, 5_000)
            app = build_app(settings)
            Producer(app.broker, batch_size=50).enqueue(ids)
            app.broker.close()
            worker = WorkerProcess(settings, tmp_path / "w.log", threads=2)
            try:
                wait_for(lambda: categorized(conn)[0] >= 500, timeout=60, what="progress")
                rds.stop()  # SIGTERM: the append-only file keeps the queue
                time.sleep(1)
                rds.start()
                wait_for(lambda: categorized(conn) == (5_000, 5_000), timeout=120, what="every expense")
                wait_for(lambda: queue_state(settings) == EMPTY, timeout=60, what="empty queues")
                assert worker.proc.poll() is None  # reconnected by itself, never restarted
            finally:
                worker.stop()
