"""The broker's Redis primary lost mid-run: a primary, a replica and three Sentinels of the test's own
(``tests.support.sentinel``) behind a ``redis+sentinel://`` broker URL. Every enqueue was
confirmed by the replica (``CATFLEET_BROKER_MIN_REPLICAS=1``: ``WAIT``) before a real worker starts
on 20,000 expenses; the primary is SIGKILLed in the middle of the run, and with it the Sentinel
named first in the URL (as when the host of both is lost). The two Sentinels left promote the
replica, the worker's consumers, its wake-up subscription and its maintenance find the new primary
through them, and every expense gets its one row with nothing dead-lettered. The time from the
kill to the first batch done after it is measured and bounded."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from dramatiq.common import dq_name

from pipeline import outbox
from tests.support import data
from tests.support.broker import EMPTY, queue_state
from tests.support.sentinel import sentinel_group
from tests.support.services import RelayProcess, WorkerProcess, log_events, wait_for
from workers.app import build_app
from workers.backends.base import FLEET_QUEUES
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault

EXPENSES = 20_000
BATCH = 50  # 400 messages: the run lasts long enough to kill the primary in the middle of it
THREADS = 2
PREFETCH = 4  # messages the worker process holds
#: A dead process's (or an abandoned broker id's) unacked messages come back after this (ms).
HEARTBEAT_TIMEOUT_MS = 3_000
#: The bound on kill -> processing again: the Sentinels' down-after (1 s) and failover (~1-2 s),
#: Dramatiq's consumer restart delay (3 s), a new connection through the Sentinels.
RECOVERY_BOUND_S = 15.0
ALL_QUEUES = [q for queue in FLEET_QUEUES for q in (queue, dq_name(queue))]


def log_lines(worker: WorkerProcess, text: str) -> int:
    return sum(text in line for line in worker.log().splitlines())


def test_the_redis_primary_lost_mid_run_loses_nothing(
    settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    started = time.monotonic()
    with sentinel_group(tmp_path / "redis") as group:
        boot_s = time.monotonic() - started
        fleet = msgspec.structs.replace(
            settings,
            broker_url=group.url(),
            batch_size=BATCH,
            worker_prefetch=PREFETCH,
            broker_heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
            broker_maintenance_interval_ms=500,
        )
        primary = group.server(group.master_port() or 0)
        assert primary is group.primary
        ids = data.bulk_expenses(conn, EXPENSES)
        app = build_app(msgspec.structs.replace(fleet, broker_min_replicas=1))
        try:
            t0 = time.monotonic()
            report = Producer(app.broker, batch_size=BATCH).enqueue(ids)  # WAIT 1: on the replica too
            enqueue_s = time.monotonic() - t0
        finally:
            app.close()
        assert report.messages == EXPENSES // BATCH
        with group.replica.client() as replica:  # the replica holds every message before the kill
            assert replica.llen(f"{fleet.broker_namespace}:categorize") == report.messages

        worker = WorkerProcess(fleet, tmp_path / "worker.log", threads=THREADS)
        try:
            worker.wait_ready()
            wait_for(
                lambda: data.count_rows(conn) >= EXPENSES // 5, timeout=60, interval=0.01, what="a fifth done"
            )
            before = data.count_rows(conn)
            killed_at = time.monotonic()
            primary.stop(signal.SIGKILL)
            group.sentinels[0].stop(signal.SIGKILL)  # the first every client asks
            at_kill = data.count_rows(conn)
            # what the process held at the kill (at most PREFETCH messages) may still commit:
            # processing again is a row past all of that, from a message fetched after the kill
            in_flight = PREFETCH * BATCH
            wait_for(
                lambda: data.count_rows(conn) > at_kill + in_flight,
                timeout=RECOVERY_BOUND_S + 30, interval=0.01, what="processing after the kill",
            )  # fmt: skip
            recovery_s = time.monotonic() - killed_at
            new_port = group.master_port()
            assert new_port == group.replica.port, group.logs()
            wait_for(
                lambda: data.categorized(conn) == (EXPENSES, EXPENSES),
                timeout=60, interval=0.1, what="every expense",
            )  # fmt: skip
            done_s = time.monotonic() - killed_at
            on_new = msgspec.structs.replace(fleet, broker_url=group.replica.url)
            wait_for(
                lambda: all(queue_state(on_new, q) == EMPTY for q in ALL_QUEUES),
                timeout=30, what="empty queues, none dead",
            )  # fmt: skip
            # the worker felt the kill and found the new primary through the Sentinels, by itself
            errors = log_lines(worker, "Consumer encountered a connection error")
            assert errors >= 1, worker.log()[-3000:]
            assert log_lines(worker, "Wake subscription lost") >= 1
            assert worker.alive(), worker.log()[-3000:]
        finally:
            worker.stop()

        rows, distinct = data.categorized(conn)
        assert (rows, distinct) == (EXPENSES, EXPENSES)
        got = conn.execute(
            "SELECT count(*) FROM categorizations WHERE expense_id = ANY(%s)", (ids,)
        ).fetchone()
        assert got is not None and got[0] == EXPENSES
        app = build_app(fleet)  # the status view, through the Sentinels: nothing queued or dead
        try:
            stats = app.backend.queue_stats()
            histories = app.backend.failures.histories(report.message_ids)
        finally:
            app.close()
        assert [(q.queue, q.ready, q.delayed, q.dead) for q in stats] == [(q.queue, 0, 0, 0) for q in stats]
        assert not any(histories.values()), histories  # nothing failed: no retry, no dead letter

    print(
        f"\nRedis primary lost: primary + replica + 3 Sentinels up in {boot_s:.1f} s; {EXPENSES} expenses"
        f" in {report.messages} messages enqueued with WAIT 1 in {enqueue_s:.1f} s; killed the primary"
        f" and the first Sentinel after {before} rows; processing again {recovery_s:.2f} s after the kill (bound"
        f" {RECOVERY_BOUND_S:.0f} s), new primary :{new_port}; all {EXPENSES} rows {done_s:.1f} s after"
        f" the kill; {errors} consumer connection errors; 0 dead-lettered, 0 failures"
    )
    assert recovery_s <= RECOVERY_BOUND_S


#: The outbox run: expenses requested in small transactions while the relay sends them.
OUTBOX_EXPENSES, OUTBOX_CHUNK = 10_000, 250


def test_the_outbox_relay_loses_no_request_across_a_failover(
    settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """Requests are committed to the outbox while a relay (``CATFLEET_BROKER_MIN_REPLICAS=1``)
    sends them and a worker runs them. Half-way through, both replicas are stopped (SIGSTOP), so
    what the relay sends next is on the primary alone and its ``WAIT`` fails; then the primary is
    SIGKILLed, taking those messages with it, and the replicas go on. The relay had kept those
    requests pending and sends them again to the promoted replica (which has the other replica to
    confirm with); every expense gets its one row."""
    conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")
    with sentinel_group(tmp_path / "redis", replicas=2) as group:
        fleet = msgspec.structs.replace(
            settings,
            broker_url=group.url(),
            batch_size=BATCH,
            worker_prefetch=PREFETCH,
            broker_heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
            broker_maintenance_interval_ms=500,
            relay_poll_seconds=0.5,
        )
        relaying = msgspec.structs.replace(fleet, broker_min_replicas=1, broker_replica_timeout_ms=200)
        ids = data.bulk_expenses(conn, OUTBOX_EXPENSES)
        relay = RelayProcess(relaying, tmp_path / "relay.log")
        worker = WorkerProcess(fleet, tmp_path / "worker.log", threads=THREADS)
        try:
            relay.wait_listening(settings.database_url)
            worker.wait_ready()
            chunks = [ids[i : i + OUTBOX_CHUNK] for i in range(0, len(ids), OUTBOX_CHUNK)]
            killed_at = 0.0
            for n, chunk in enumerate(chunks):
                with conn.transaction():
                    outbox.request(conn, chunk)
                if n == len(chunks) // 2:
                    # the replicas stop taking the replication stream: what the relay sends now
                    # is on the primary alone, its WAIT fails, and the primary dies with it
                    for replica in group.replicas:
                        assert replica.proc is not None
                        replica.proc.send_signal(signal.SIGSTOP)
                    with conn.transaction():
                        outbox.request(conn, chunk[:1])  # one more request, sent unreplicated
                    wait_for(
                        lambda: "NotReplicated" in relay.log(),
                        timeout=10,
                        interval=0.02,
                        what="a WAIT that failed",
                    )
                    group.primary.stop(signal.SIGKILL)
                    killed_at = time.monotonic()
                    for replica in group.replicas:
                        assert replica.proc is not None
                        replica.proc.send_signal(signal.SIGCONT)
                time.sleep(0.05)
            wait_for(
                lambda: outbox.backlog(conn).pending == 0, timeout=60, interval=0.1, what="every request sent"
            )
            sent_s = time.monotonic() - killed_at
            wait_for(
                lambda: data.categorized(conn) == (OUTBOX_EXPENSES, OUTBOX_EXPENSES),
                timeout=60, interval=0.1, what="every expense",
            )  # fmt: skip
            done_s = time.monotonic() - killed_at
            errors = log_events(relay, "relay_error")
            assert errors and all(e["stage"] == "broker" for e in errors), relay.log()[-3000:]
            unconfirmed = sum("NotReplicated" in e["msg"] for e in errors)
            assert unconfirmed >= 1
            assert relay.alive() and worker.alive()
        finally:
            relay.stop()
            worker.stop()
            conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")
        assert group.master_port() in {r.port for r in group.replicas}
        app = build_app(fleet)
        try:
            stats = app.backend.queue_stats()
        finally:
            app.close()
        assert [(q.queue, q.ready, q.delayed, q.dead) for q in stats] == [(q.queue, 0, 0, 0) for q in stats]
    print(
        f"\nRelay across a failover: {OUTBOX_EXPENSES} expenses requested in {len(chunks)} transactions,"
        f" the primary SIGKILLed after {len(chunks) // 2 + 1}; {len(errors)} relay broker errors"
        f" ({unconfirmed} NotReplicated: sent, unconfirmed, sent again); every request"
        f" sent {sent_s:.1f} s and every expense one row {done_s:.1f} s after the kill; 0 dead-lettered"
    )
