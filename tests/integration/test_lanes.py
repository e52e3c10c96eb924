"""Lanes: interactive (queue ``categorize``) and bulk (queue ``categorize_bulk``) traffic on the
same fleet. Real workers, real Redis and PostgreSQL; orderings are read from the rows'
``categorized_at``, never from wall-clock bounds (speed is the lanes benchmark's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from schemas import CATEGORIZE_BULK_ACTOR, CATEGORIZE_BULK_QUEUE, CATEGORIZE_QUEUE, LANE_BULK
from tests.support import data
from tests.support.broker import EMPTY, queue_state, queued_messages
from tests.support.rabbit import rabbit_vhost
from tests.support.readme import readme_block
from tests.support.services import WorkerProcess, log_events, run_catfleet, wait_for
from workers.app import App
from workers.backends.base import FLEET_QUEUES
from workers.harness.processes import ROOT
from workers.producer import Producer
from workers.settings import Settings


def rows(conn: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    query = "SELECT expense_id, category_id, message_id, correlation_id, categorized_at FROM categorizations"
    return {r[0]: r[1:] for r in conn.execute(query)}


def test_the_bulk_lane_is_one_of_the_fleets_queues() -> None:
    assert FLEET_QUEUES == (CATEGORIZE_QUEUE, CATEGORIZE_BULK_QUEUE, "learn")


def test_producer_refuses_an_unknown_lane(app: App) -> None:
    with pytest.raises(ValueError, match="unknown lane 'fast': the lanes are interactive, bulk"):
        Producer(app.broker, batch_size=10).enqueue([1], lane="fast")


def test_cli_enqueue_on_the_bulk_lane(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    ids = data.add_expenses(conn, ["SQ *STARBUCKS", "TST* WALMART STORE #4567", "UBER *TRIP"])
    out = run_catfleet(settings, "enqueue", "--lane", "bulk", "--correlation-id", "bulk-1", *map(str, ids))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "enqueued 3 expense id(s) in 1 message(s) on the bulk lane"
    got = wait_for(lambda: (r := rows(conn)) and len(r) == 3 and r, what="3 rows from the bulk lane")
    assert [got[i][0] for i in ids] == [cats["coffee"], cats["groceries"], cats["rideshare"]]
    assert {got[i][2] for i in ids} == {"bulk-1"}
    [batch] = wait_for(lambda: log_events(worker, "batch"), what="the batch log line")
    assert batch["actor"] == CATEGORIZE_BULK_ACTOR and batch["correlation_id"] == "bulk-1"
    # --json says which lane; --all-uncategorized is a sweep: bulk unless told otherwise
    more = data.add_expenses(conn, ["SHELL FUEL"])
    out = run_catfleet(settings, "enqueue", "--all-uncategorized", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["lane"] == LANE_BULK
    wait_for(lambda: more[0] in rows(conn), what="the uncategorized one")
    out = run_catfleet(settings, "enqueue", "--lane", "interactive", "--json", str(more[0]))
    assert json.loads(out.stdout)["lane"] == "interactive"


def test_cli_enqueue_refuses_an_unknown_lane(settings: Settings) -> None:
    out = run_catfleet(settings, "enqueue", "--lane", "fast", "1")
    assert out.returncode == 2 and "invalid choice: 'fast'" in out.stderr and "Traceback" not in out.stderr


def test_status_shows_the_bulk_lanes_queue(app: App, settings: Settings, cats: dict[str, int]) -> None:
    Producer(app.broker, batch_size=10).enqueue([1, 2, 3], lane=LANE_BULK)  # no worker: it waits
    out = run_catfleet(settings, "status", "--json")
    assert out.returncode == 0, out.stderr
    queues = {q["queue"]: q for q in json.loads(out.stdout)["queues"]}
    assert set(queues) >= set(FLEET_QUEUES)
    assert (queues[CATEGORIZE_BULK_QUEUE]["ready"], queues[CATEGORIZE_QUEUE]["ready"]) == (1, 0)
    assert json.loads(out.stdout)["stray_queues"] == []  # the bulk queue is the fleet's own


def test_a_worker_can_take_one_lane_only(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], app: App, tmp_path: Path
) -> None:
    """``--queues categorize_bulk``: a host for backfills only; interactive messages wait for others."""
    [bulk, interactive] = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
    worker = WorkerProcess(settings, tmp_path / "bulk.log", queues=[CATEGORIZE_BULK_QUEUE])
    try:
        worker.wait_ready()
        producer = Producer(app.broker, batch_size=10)
        producer.enqueue([interactive])
        producer.enqueue([bulk], lane=LANE_BULK)
        wait_for(lambda: bulk in rows(conn), what="the bulk message")
        assert interactive not in rows(conn)
        assert [m["actor_name"] for m in queued_messages(settings)] == ["categorize_batch"]
    finally:
        worker.stop()


def test_an_idle_bulk_consumer_is_woken_by_the_enqueue(
    settings: Settings, app: App, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    """The wake-up works for the bulk queue too: with a 5 s idle-poll cap, a worker that only
    polled would take seconds for most of these messages (as in test_wakeup)."""
    slow_poll = msgspec.structs.replace(settings, worker_idle_poll_ms=5_000)
    worker = WorkerProcess(slow_poll, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        time.sleep(3)  # the consumers' idle sleeps are ~1-5 s long by now
        ids = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
        waits = []
        for n, expense in enumerate(ids, 1):
            started = time.monotonic()
            Producer(app.broker, batch_size=10).enqueue([expense], lane=LANE_BULK)
            wait_for(lambda n=n: data.count_rows(conn) >= n, timeout=20)
            waits.append(time.monotonic() - started)
            time.sleep(2)
    finally:
        worker.stop()
    assert max(waits) < 1.0, waits


def test_an_interactive_message_overtakes_a_queued_backfill(
    settings: Settings, app: App, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    """5,000 expenses queued on the bulk lane in 50 messages, then one interactive expense: the
    worker runs the interactive message as soon as a thread is free, ahead of the bulk messages
    it holds and of the queue behind them. Measured by ``categorized_at``: most of the backfill
    commits after it (FIFO on one queue, it would be the last row of all)."""
    backfill = data.bulk_expenses(conn, 5_000)
    [interactive] = data.add_expenses(conn, ["SQ *STARBUCKS"], user_id=999)
    producer = Producer(app.broker, batch_size=100)
    producer.enqueue(backfill, correlation_id="backfill", lane=LANE_BULK)
    assert queue_state(settings, CATEGORIZE_BULK_QUEUE)["queued"] == 50
    worker = WorkerProcess(settings, tmp_path / "worker.log", threads=2)
    try:
        worker.wait_ready()
        wait_for(lambda: data.count_rows(conn) >= 300, what="the backfill under way", interval=0.005)
        producer.enqueue([interactive], correlation_id="person")
        wait_for(lambda: data.count_rows(conn) == 5_001, timeout=120, what="everything categorized")
        wait_for(lambda: queue_state(settings, CATEGORIZE_BULK_QUEUE) == EMPTY, what="all acked")
    finally:
        worker.stop()
    [[at]] = conn.execute("SELECT categorized_at FROM categorizations WHERE expense_id = %s", (interactive,))
    [[after, last]] = conn.execute(
        "SELECT count(*) FILTER (WHERE categorized_at > %s), max(categorized_at) FROM categorizations"
        " WHERE correlation_id = 'backfill'",
        (at,),
    )
    # at most the batches running or taken by then (2 threads) ran before it; the rest after
    assert at < last and after >= 2_500, (after, at, last)
    bulk_batches = [e for e in log_events(worker, "batch") if e["actor"] == CATEGORIZE_BULK_ACTOR]
    assert len(bulk_batches) == 50 and sum(e["size"] for e in bulk_batches) == 5_000


@pytest.fixture(scope="module")
def rabbit_settings(settings: Settings) -> Iterator[Settings]:
    with rabbit_vhost() as url:
        yield msgspec.structs.replace(settings, broker_url=url)


def test_readme_pika_steps_enqueue_on_the_bulk_lane(
    rabbit_settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """The README's AMQP block, verbatim, with ``LANE=bulk``: a RabbitMQ-broker fleet runs it
    as ``categorize_batch_bulk`` from queue ``categorize_bulk``."""
    ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "UBER *TRIP"])
    worker = WorkerProcess(rabbit_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()  # the workers declare the queue the block declares passively
        env = dict(os.environ, AMQP_URL=rabbit_settings.broker_url, IDS=",".join(map(str, ids)), LANE="bulk")
        out = subprocess.run(
            [sys.executable, "-c", readme_block("# enqueue categorize_batch with pika\n", lang="python")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        message_id = out.stdout.strip()
        got = wait_for(lambda: (r := rows(conn)) and len(r) == 2 and r, what="rows via AMQP")
        assert {i: got[i][:3] for i in ids} == {
            ids[0]: (cats["coffee"], message_id, "from-amqp"),
            ids[1]: (cats["rideshare"], message_id, "from-amqp"),
        }
        [batch] = wait_for(lambda: log_events(worker, "batch"), what="the batch line")
        assert batch["actor"] == CATEGORIZE_BULK_ACTOR
    finally:
        worker.stop()
