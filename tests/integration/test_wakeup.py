"""The consumers' wake-up: an enqueue through catfleet PUBLISHes on the queue's wake channel, so
an idle worker fetches at once instead of at its next poll. The idle-poll cap is set to 5 s
here, so a worker that only polled would take seconds for most of these messages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from tests.support import data
from tests.support.services import WorkerProcess, wait_for
from workers.app import App
from workers.producer import Producer
from workers.settings import Settings

IDLE_POLL_MS = 5_000


def test_an_idle_worker_is_woken_by_the_enqueue_not_by_its_poll(
    settings: Settings, app: App, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    slow_poll = msgspec.structs.replace(settings, worker_idle_poll_ms=IDLE_POLL_MS)
    worker = WorkerProcess(slow_poll, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        time.sleep(3)  # 5 ms doubling: the consumer's idle sleeps are ~1-5 s long by now
        ids = data.add_expenses(conn, ["STARBUCKS", "WALMART", "UBER *TRIP"])
        waits = []
        for expense in ids:
            started = time.monotonic()
            Producer(app.broker, batch_size=10).enqueue([expense])
            wait_for(lambda e=expense: data.count_rows(conn) >= ids.index(e) + 1, timeout=20)
            waits.append(time.monotonic() - started)
            time.sleep(2)  # idle again: back in a long sleep
    finally:
        worker.stop()
    # Polling alone: each message waits for the rest of a 1-5 s sleep. Woken: milliseconds.
    assert max(waits) < 1.0, waits


def test_a_full_consumer_fetches_again_on_the_ack_not_at_its_poll(
    settings: Settings, app: App, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    """Prefetch 1: after each fetch the consumer is full, and the next message may be fetched only
    once the first is acked. The ack wakes it; sleeping its 5 s poll instead would take >= 10 s."""
    one_at_a_time = msgspec.structs.replace(settings, worker_idle_poll_ms=IDLE_POLL_MS, worker_prefetch=1)
    worker = WorkerProcess(one_at_a_time, tmp_path / "worker.log", threads=1)
    try:
        worker.wait_ready()
        ids = data.add_expenses(conn, ["STARBUCKS", "WALMART", "UBER *TRIP"])
        started = time.monotonic()
        Producer(app.broker, batch_size=1).enqueue(ids)  # three messages at once
        wait_for(lambda: data.count_rows(conn) == 3, timeout=30)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert took < 2.5, took
