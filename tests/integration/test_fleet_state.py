"""Fleet state with real workers on Redis and RabbitMQ: every process publishes a true record
(what each busy thread runs), a killed process's record goes within the heartbeat timeout, a clean
exit removes it at once; a paused queue stops being consumed by every process within about a
second and the pause survives a restart; ``catfleet status`` and ``catfleet queue`` show it all."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from tests.support import data
from tests.support.rabbit import rabbit_vhost
from tests.support.services import WorkerProcess, enqueue, flush_namespace, row_count, run_catfleet, wait_for
from workers.backends import backend_for
from workers.fleet.state import ProcessRecord
from workers.harness.processes import own_records
from workers.settings import Settings

HEARTBEAT_MS = 3_000


@pytest.fixture(params=["redis", "rabbitmq"])
def fleet_settings(
    request: pytest.FixtureRequest, settings: Settings, cats: dict[str, int]
) -> Iterator[Settings]:
    own: dict[str, Any] = {"broker_heartbeat_timeout_ms": HEARTBEAT_MS, "fleet_beat_ms": 200}
    with ExitStack() as stack:
        if request.param == "rabbitmq":
            own["broker_url"] = stack.enter_context(rabbit_vhost())
        s = msgspec.structs.replace(settings, **own)
        with psycopg.connect(s.database_url, autocommit=True) as c:
            c.execute("TRUNCATE fleet_processes, queue_pauses, queue_actions, fleet_throughput")
        flush_namespace(s)
        yield s


def status(s: Settings) -> dict[str, Any]:
    done = run_catfleet(s, "status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_records_say_what_each_process_runs_and_go_when_it_does(
    fleet_settings: Settings, tmp_path: Path
) -> None:
    s = fleet_settings
    with psycopg.connect(s.database_url, autocommit=True) as c:
        ids = data.add_expenses(c, ["STARBUCKS"] * 3)
    worker = WorkerProcess(s, tmp_path / "w.log", processes=2, threads=2)
    backend = backend_for(s)
    state = backend.fleet_state()
    try:
        worker.wait_ready()
        records = own_records(state, worker.proc)
        assert len(records) == 2 and len({r.pid for r in records}) == 2
        assert all(
            r.queues == ["categorize", "categorize_bulk", "learn"] and r.threads == 2 and r.busy == []
            for r in records
        )
        shown = status(s)
        assert {p["pid"] for p in shown["processes"]} >= {r.pid for r in records}

        # a batch blocked on a lock shows as the busy thread's current message
        hold = psycopg.connect(s.database_url)
        hold.execute("LOCK TABLE categorizations IN ACCESS EXCLUSIVE MODE")
        try:
            enqueue(s, ids)

            def busy() -> list[Any]:
                return [b for r in own_records(state, worker.proc) for b in r.busy]

            running = wait_for(busy, timeout=20, what="a busy thread in a record")
            assert running[0].actor == "categorize_batch" and running[0].expense_ids == 3
        finally:
            hold.rollback()
            hold.close()
        wait_for(lambda: row_count(s) == 3, timeout=20, what="the batch written")
        wait_for(
            lambda: sum(r.processed for r in own_records(state, worker.proc)) >= 1, timeout=10, what="counted"
        )

        # kill -9 one process: its record goes within the heartbeat timeout (the supervisor
        # replaces the process, which publishes a record of its own)
        victim = records[0]
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: victim.id not in {r.id for r in state.processes()},
            timeout=HEARTBEAT_MS / 1000 + 5,
            what="the killed process's record gone",
        )
        assert time.monotonic() - killed_at <= HEARTBEAT_MS / 1000 + 1.5
        worker.wait_ready()
    finally:
        code = worker.stop()
        try:
            # a clean exit takes the records at once, not after the heartbeat timeout
            assert code == 0
            assert [
                r
                for r in state.processes()
                if r.host == records[0].host and r.pid in {x.pid for x in records}
            ] == []
        finally:
            state.close()
            backend.close()


def test_a_paused_queue_is_not_consumed_by_any_process_until_resumed(
    fleet_settings: Settings, tmp_path: Path
) -> None:
    s = fleet_settings
    with psycopg.connect(s.database_url, autocommit=True) as c:
        first = data.bulk_expenses(c, 40)
        later = data.bulk_expenses(c, 40)
    paused = run_catfleet(s, "queue", "pause", "categorize", "--operator", "ops@test")
    assert paused.returncode == 0 and "paused categorize" in paused.stdout, paused.stderr
    again = run_catfleet(s, "queue", "pause", "categorize")
    assert again.returncode == 0 and "already paused" in again.stdout
    bogus = run_catfleet(s, "queue", "pause", "nosuch")
    assert bogus.returncode == 2 and bogus.stderr.count("\n") == 1 and "no such queue" in bogus.stderr

    s2 = msgspec.structs.replace(s, batch_size=5)
    worker = WorkerProcess(s2, tmp_path / "w.log", processes=2, threads=2)
    try:
        worker.wait_ready()
        enqueue(s2, first)  # 8 messages
        time.sleep(2.0)  # several beats and polls: nothing may run
        assert row_count(s) == 0
        shown = status(s)
        assert shown["paused"]["categorize"]["operator"] == "ops@test"
        assert next(q for q in shown["queues"] if q["queue"] == "categorize")["ready"] == 8
        assert all(p["paused"] == ["categorize"] for p in shown["processes"])

        resumed = run_catfleet(s, "queue", "resume", "categorize")
        assert resumed.returncode == 0 and "resumed categorize" in resumed.stdout
        wait_for(lambda: row_count(s) == 40, timeout=30, what="the paused work done after resume")

        # pause while messages keep arriving; a worker restarted meanwhile still holds off
        assert run_catfleet(s, "queue", "pause", "categorize").returncode == 0
        time.sleep(1.0)  # within a beat every process has it
        worker.stop()
        worker = WorkerProcess(s2, tmp_path / "w2.log", processes=1, threads=2)
        worker.wait_ready()
        enqueue(s2, later)
        time.sleep(2.0)
        assert row_count(s) == 40
        assert run_catfleet(s, "queue", "resume", "categorize").returncode == 0
        wait_for(lambda: row_count(s) == 80, timeout=30, what="the rest after the second resume")
    finally:
        worker.stop()

    history = run_catfleet(s, "queue", "history", "--json")
    actions = json.loads(history.stdout)
    assert [a["action"] for a in actions] == ["resume", "pause", "resume", "pause"]
    assert actions[-1]["operator"] == "ops@test"
    listed = run_catfleet(s, "queue", "list")
    assert "categorize   running" in listed.stdout


def test_pause_lets_a_process_finish_what_it_holds(fleet_settings: Settings, tmp_path: Path) -> None:
    """A batch already running when the pause comes is finished and acked, not re-run or lost."""
    s = fleet_settings
    with psycopg.connect(s.database_url, autocommit=True) as c:
        ids = data.add_expenses(c, ["STARBUCKS"] * 4)
    worker = WorkerProcess(s, tmp_path / "w.log", processes=1, threads=2)
    backend = backend_for(s)
    state = backend.fleet_state()
    try:
        worker.wait_ready()
        hold = psycopg.connect(s.database_url)
        hold.execute("LOCK TABLE categorizations IN ACCESS EXCLUSIVE MODE")
        released = threading.Event()
        try:
            enqueue(s, ids)
            wait_for(lambda: any(r.busy for r in state.processes()), timeout=20, what="the batch running")
            assert run_catfleet(s, "queue", "pause", "categorize").returncode == 0
            time.sleep(1.0)
        finally:
            hold.rollback()
            hold.close()
            released.set()
        wait_for(lambda: row_count(s) == 4, timeout=20, what="the held batch finished while paused")
        stats = {q.queue: q for q in backend.queue_stats()}
        wait_for(
            lambda: (q := backend.queue_stats()[0]).ready == 0 and q.in_flight in (0, None),
            timeout=10,
            what="nothing left in the queue",
        )
        assert stats["categorize"].dead == 0
    finally:
        worker.stop()
        state.close()
        backend.close()


def test_rabbitmq_fleets_on_other_vhosts_share_the_database_not_their_state(settings: Settings) -> None:
    """The RabbitMQ fleet state lives in PostgreSQL: a second fleet on its own vhost with the same
    database sees none of the first one's processes, pauses, audit or throughput."""
    with rabbit_vhost() as one_url, rabbit_vhost() as other_url:
        one = backend_for(msgspec.structs.replace(settings, broker_url=one_url)).fleet_state()
        other = backend_for(msgspec.structs.replace(settings, broker_url=other_url)).fleet_state()
        try:
            now = int(time.time() * 1000)
            record = ProcessRecord(
                id=f"h:1:{now}", host="h", pid=1, queues=["categorize"], threads=1, busy=[],
                ruleset_version=None, breaker=None, paused=[], started_ms=now, beat_ms=now,
            )  # fmt: skip
            one.publish(record)
            assert one.pause("categorize", "ops@one") is True
            one.add_processed({"categorize": 7}, now)

            assert [r.id for r in one.processes()] == [record.id]
            assert other.processes() == [] and other.paused() == {} and other.actions() == []
            assert sum(other.throughput(["categorize"], now)["categorize"]) == 0
            assert other.pause("categorize", "ops@other") is True  # its own pause, not "already paused"
            assert other.resume("categorize", "ops@other") is True
            assert list(one.paused()) == ["categorize"]  # untouched by the other fleet's resume
            assert sum(one.throughput(["categorize"], now)["categorize"]) == 7
        finally:
            one.resume("categorize", "ops@one")
            one.remove(record.id)
            one.close()
            other.close()
