"""A RabbitMQ node lost mid-run: a 3-node cluster of the test's own (``tests.support.rabbit_cluster``)
with the fleet's quorum queues replicated on every node; a real worker is categorizing 20,000
expenses when the node holding the queue leaders (and the worker's connections: it is first in
the broker URL) is SIGKILLed. The queues elect leaders on the two nodes left, the worker's
consumers reconnect to the next node of the URL, and every expense gets its one row with nothing
dead-lettered. The time from the kill to the first batch done after it is measured and bounded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from schemas import CATEGORIZE_QUEUE
from tests.support import data
from tests.support.rabbit_cluster import rabbit_cluster
from tests.support.services import WorkerProcess, wait_for
from workers.app import build_app
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault

EXPENSES = 20_000
BATCH = 50  # 400 messages: the run lasts long enough to kill a node in the middle of it
THREADS = 2
PREFETCH = 4  # messages the worker process holds (RabbitMQ's QoS on its consumer)
#: The bound on kill -> processing again: Dramatiq's consumer restart delay (3 s), a connection to
#: the next node, the quorum queues' leader election.
RECOVERY_BOUND_S = 30.0


def test_a_rabbitmq_node_lost_mid_run_loses_nothing(
    settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    started = time.monotonic()
    started_ms = int(time.time() * 1000)
    with rabbit_cluster(tmp_path / "mq") as cluster:
        boot_s = time.monotonic() - started
        fleet = msgspec.structs.replace(
            settings,
            broker_url=cluster.url(),
            rabbitmq_queue_type="quorum",
            batch_size=BATCH,
            worker_prefetch=PREFETCH,
        )
        ids = data.bulk_expenses(conn, EXPENSES)
        app = build_app(fleet)
        try:
            t0 = time.monotonic()
            report = Producer(app.broker, batch_size=BATCH).enqueue(ids)  # confirmed by the quorum
            enqueue_s = time.monotonic() - t0
        finally:
            app.close()
        assert report.messages == EXPENSES // BATCH

        queues = {q["name"]: q for q in cluster.queues()}
        names = sorted(n.name for n in cluster.nodes)
        assert {CATEGORIZE_QUEUE, f"{CATEGORIZE_QUEUE}.DQ", f"{CATEGORIZE_QUEUE}.XQ"} <= set(queues)
        for name, q in queues.items():
            assert q["type"] == "quorum", name
            assert sorted(q["members"]) == names, name  # replicated on every node
        leader = cluster.node(queues[CATEGORIZE_QUEUE]["leader"])
        assert leader is cluster.nodes[0]  # declared through the first node: leaders are client-local

        worker = WorkerProcess(fleet, tmp_path / "worker.log", threads=THREADS)
        try:
            worker.wait_ready()
            wait_for(
                lambda: data.count_rows(conn) >= EXPENSES // 5, timeout=60, interval=0.01, what="a fifth done"
            )
            before = data.count_rows(conn)
            killed_at = time.monotonic()
            leader.kill()
            at_kill = data.count_rows(conn)
            # what the process held at the kill (at most PREFETCH unacked messages) still commits
            # (the acks are lost; RabbitMQ redelivers those and the upsert changes nothing):
            # processing again is a row past all of that, from a message delivered after the kill
            in_flight = PREFETCH * BATCH
            wait_for(
                lambda: data.count_rows(conn) > at_kill + in_flight,
                timeout=RECOVERY_BOUND_S + 30, interval=0.01, what="processing after the kill",
            )  # fmt: skip
            recovery_s = time.monotonic() - killed_at
            wait_for(
                lambda: data.count_rows(conn) == EXPENSES, timeout=120, interval=0.1, what="every expense"
            )
            done_s = time.monotonic() - killed_at
            assert worker.alive(), worker.log()[-3000:]
        finally:
            worker.stop()

        rows, distinct = data.categorized(conn)
        assert (rows, distinct) == (EXPENSES, EXPENSES)
        got = conn.execute(
            "SELECT count(*) FROM categorizations WHERE expense_id = ANY(%s)", (ids,)
        ).fetchone()
        assert got is not None and got[0] == EXPENSES
        failures = conn.execute(  # this run's: the session's database holds other tests' too
            "SELECT actor_name, retries, error_type, error, dead FROM message_failures WHERE at_ms >= %s",
            (started_ms,),
        ).fetchall()
        assert failures == [], failures  # nothing failed: no retry, no dead letter
        app = build_app(fleet)  # through the URL's nodes: the first is dead, the next answers
        try:
            stats = app.backend.queue_stats()
        finally:
            app.close()
        assert [(q.queue, q.ready, q.delayed, q.dead) for q in stats] == [(q.queue, 0, 0, 0) for q in stats]
        new_leader = {q["name"]: q for q in cluster.queues()}[CATEGORIZE_QUEUE]["leader"]
        assert new_leader != leader.name

    print(
        f"\nRabbitMQ node lost: 3-node cluster formed in {boot_s:.1f} s; {EXPENSES} expenses in"
        f" {report.messages} messages enqueued with confirms in {enqueue_s:.1f} s; killed {leader.name}"
        f" (leader) after {before} rows; processing again {recovery_s:.2f} s after the kill (bound"
        f" {RECOVERY_BOUND_S:.0f} s), new leader {new_leader}; all {EXPENSES} rows {done_s:.1f} s after"
        " the kill; 0 dead-lettered, 0 failures"
    )
    assert recovery_s <= RECOVERY_BOUND_S
