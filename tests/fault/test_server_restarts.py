"""PostgreSQL and the broker's Redis restarted mid-run (servers the tests start themselves).

Each test proves the outage hit a run in progress: expenses were still unprocessed while the
server was down, and the workers logged what they rode out (the pool's reconnect attempts and
any retries; the consumers' connection errors and restarts). At the end every expense has exactly one row and nothing is dead-lettered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from dramatiq.common import dq_name

from pipeline.migrate import migrate
from tests.support import data
from tests.support.broker import EMPTY, queue_state
from tests.support.data import bulk_expenses, categorized
from tests.support.servers import own_postgres, own_redis
from tests.support.services import WorkerProcess, isolated_settings, wait_for
from workers.app import build_app
from workers.backends import backend_for
from workers.backends.base import FLEET_QUEUES
from workers.failures import FailureRecord
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault

#: Enough retries to ride out a few seconds of outage, still bounded.
PATIENT = {"max_retries": 8, "min_backoff_ms": 200, "max_backoff_ms": 2_000}
#: Expenses per run and per message: 200 small batches keep the run going for several seconds
#: on two cores, so the outage lands in the middle of it.
TOTAL, BATCH = 10_000, 50
ALL_QUEUES = [q for queue in FLEET_QUEUES for q in (queue, dq_name(queue))]


def broker_empty(settings: Settings) -> bool:
    """Nothing queued, delayed, unacked or dead in any queue of the fleet (and their delay queues)."""
    return all(queue_state(settings, q) == EMPTY for q in ALL_QUEUES)


def wait_for_every_expense(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """Every expense has its one row; else fail with what the broker still holds (a message
    unacked by a live worker that never ran it is lost until that worker dies)."""
    # what the lost connection held comes back once its broker id's heartbeat expires and a
    # maintenance pass runs; then the rest is processed (slack for a loaded machine)
    timeout = (settings.broker_heartbeat_timeout_ms + settings.broker_maintenance_interval_ms) / 1000 + 40
    try:
        wait_for(lambda: categorized(conn) == (TOTAL, TOTAL), timeout=timeout, what="every expense")
    except AssertionError as exc:
        held = {q: queue_state(settings, q) for q in ALL_QUEUES}
        raise AssertionError(f"{exc}: rows {categorized(conn)}, broker {held}") from None


def failures(settings: Settings, message_ids: list[str]) -> list[FailureRecord]:
    """Every failed attempt the workers recorded for these messages."""
    backend = backend_for(settings)
    try:
        histories = backend.failures.histories(message_ids)
    finally:
        backend.close()
    return [r for records in histories.values() for r in records]


def log_lines(worker: WorkerProcess, text: str) -> int:
    return sum(text in line for line in worker.log().splitlines())


def test_postgres_restart_mid_run(tmp_path: Path) -> None:
    with own_postgres() as pg, isolated_settings(**PATIENT) as base:
        settings = msgspec.structs.replace(base, database_url=pg.url)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn)
            data.seed_patterns(conn, data.reset(conn))
            ids = bulk_expenses(conn, TOTAL)
        app = build_app(settings)
        worker = WorkerProcess(settings, tmp_path / "w.log", threads=2)
        try:
            worker.wait_ready()
            mids = Producer(app.broker, batch_size=BATCH).enqueue(ids).message_ids
            with psycopg.connect(pg.url, autocommit=True) as conn:
                wait_for(lambda: categorized(conn)[0] >= TOTAL // 10, timeout=60, what="progress")
                before_stop = categorized(conn)[0]
            pg.stop("fast")  # every session gets admin_shutdown, then the server is gone
            left = queue_state(settings)  # the broker (shared Redis) still answers
            time.sleep(2)
            pg.start()
            with psycopg.connect(pg.url, autocommit=True) as conn:
                wait_for_every_expense(conn, settings)
            wait_for(lambda: broker_empty(settings), timeout=30, what="empty queues, none dead")
            # the outage hit work in flight: messages were waiting or running while it lasted
            assert before_stop < TOTAL
            assert left["queued"] + left["unacked"] + left["delayed"] > 0, left
            # ... and the workers needed PostgreSQL while it was down: the pool kept trying to
            # reconnect (a batch waits for it, up to the pool timeout); a statement cut off by the
            # shutdown is retried in the call (tenacity), one that outlasts those by Dramatiq
            reconnects = log_lines(worker, "error connecting in 'catfleet-write'")
            in_call = log_lines(worker, "as it raised DatabaseUnavailable")
            records = failures(settings, mids)
            assert reconnects >= 1, "no worker tried to reach PostgreSQL while it was down"
            assert all(not r.dead and r.error_type == "DatabaseUnavailable" for r in records), records
            assert worker.alive()
            print(
                f"\npostgres restart: stopped at {before_stop}/{TOTAL} rows with {left}; "
                f"{reconnects} failed pool reconnects, {in_call} in-call retries, {len(records)} Dramatiq retries "
                f"({len({r.message_id for r in records})} messages); rows {(TOTAL, TOTAL)}, none dead"
            )
        finally:
            worker.stop()
            app.close()


def test_broker_redis_restart_mid_run(tmp_path: Path) -> None:
    with own_redis(tmp_path, persist=True) as rds, isolated_settings(**PATIENT) as base:
        settings = msgspec.structs.replace(base, broker_url=rds.url)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            data.seed_patterns(conn, data.reset(conn))
            ids = bulk_expenses(conn, TOTAL)
            app = build_app(settings)
            Producer(app.broker, batch_size=BATCH).enqueue(ids)
            app.close()
            worker = WorkerProcess(settings, tmp_path / "w.log", threads=2)
            try:
                wait_for(lambda: categorized(conn)[0] >= TOTAL // 10, timeout=60, what="progress")
                rds.stop()  # SIGTERM: the append-only file keeps the queue
                while_down = categorized(conn)[0]
                time.sleep(1)
                rds.start()
                wait_for_every_expense(conn, settings)
                wait_for(lambda: broker_empty(settings), timeout=30, what="empty queues, none dead")
                assert while_down < TOTAL  # expenses were left when the broker went away
                errors = log_lines(worker, "Consumer encountered a connection error")
                restarts = log_lines(worker, "Restarting consumer")
                assert errors >= 1 and restarts >= 1  # the consumers felt the outage and reconnected
                # what they held under the old broker id came back through maintenance
                assert log_lines(worker, "abandoned for") >= 1
                # the wake subscription broke too, and the consumers polled until it was back
                assert log_lines(worker, "Wake subscription lost") >= 1
                assert worker.alive()  # by themselves: the process was never restarted
                print(
                    f"\nbroker redis restart: {while_down}/{TOTAL} rows while down; {errors} consumer "
                    f"connection errors, {restarts} consumer restarts; rows {(TOTAL, TOTAL)}, none dead"
                )
            finally:
                worker.stop()
