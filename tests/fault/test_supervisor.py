"""``catfleet worker`` supervises its processes: a worker process killed with -9 is replaced
without stopping the others, a process that cannot boot is a crash loop that ends the command
non-zero, and a second fleet on the same metrics port refuses to start without touching the
first one's metrics."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import data
from tests.support.broker import queue_state
from tests.support.data import bulk_expenses, categorized
from tests.support.scrape import answers, scrape
from tests.support.services import ChildProcess, WorkerProcess, isolated_settings, log_events, wait_for
from workers.app import build_app
from workers.bench.storm import worker_pids
from workers.harness.processes import ROOT, start_workers
from workers.multiproc import multiproc_dir
from workers.producer import Producer
from workers.settings import Settings
from workers.supervisor import EXIT_CRASH_LOOP

pytestmark = pytest.mark.fault

#: Short broker timings: a killed process's messages come back within ~2.5 s, not ~20 s.
FAST = {"broker_heartbeat_timeout_ms": 2_000, "broker_maintenance_interval_ms": 500}


@contextlib.contextmanager
def busy_fleet(
    tmp_path: Path, total: int, **overrides: Any
) -> Iterator[tuple[Settings, psycopg.Connection[Any], WorkerProcess]]:
    """A 2 x 2 ``catfleet worker`` on its own settings, with ``total`` expenses enqueued in
    batches of ``batch_size``; stopped on the way out if the test did not stop it."""
    with (
        isolated_settings(**overrides) as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
    ):
        data.seed_patterns(conn, data.reset(conn))
        ids = bulk_expenses(conn, total)
        worker = WorkerProcess(settings, tmp_path / "w.log", processes=2, threads=2)
        try:
            worker.wait_ready()
            wait_for(lambda: len(worker_pids(worker.proc.pid)) == 2, what="2 worker processes")
            app = build_app(settings)
            Producer(app.broker, batch_size=settings.batch_size).enqueue(ids)
            app.close()
            yield settings, conn, worker
        finally:
            worker.stop()


def test_killed_worker_processes_are_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    total, kills, every_s = 20_000, 5, 2.0
    with busy_fleet(tmp_path, total, **FAST, max_deliveries=50, batch_size=200) as (settings, conn, worker):
        try:
            killed: list[int] = []
            respawn_s: list[float] = []
            started = time.monotonic()
            for _ in range(kills):
                time.sleep(every_s)
                victim = random.choice(worker_pids(worker.proc.pid))
                os.kill(victim, signal.SIGKILL)
                at = time.monotonic()
                killed.append(victim)

                def respawned(gone: int = victim) -> bool:
                    pids = worker_pids(worker.proc.pid)
                    return len(pids) == 2 and gone not in pids

                wait_for(
                    respawned,
                    timeout=5,
                    interval=0.01,
                    what="the killed process replaced",
                )
                respawn_s.append(time.monotonic() - at)
                assert worker.alive(), worker.log()[-3000:]
            storm_s = time.monotonic() - started
            wait_for(lambda: categorized(conn) == (total, total), timeout=45, what="every expense, once")
            wait_for(lambda: queue_state(settings)["unacked"] == 0, timeout=15, what="nothing held")
            assert worker.alive()
            # the dead processes' live gauges were dropped: the host counts its 2 live processes
            port = settings.metrics_port
            wait_for(lambda: scrape(port).value("catfleet_worker_processes") == 2, timeout=10, what="2 live")
        finally:
            code = worker.stop()
        assert code == 0, worker.log()[-3000:]  # SIGTERM after the storm still drains and exits 0
        died = [d for d in log_events(worker, "worker_died") if d["slot"].startswith("worker-")]
        replaced = log_events(worker, "worker_replaced")
        assert sorted(d["pid"] for d in died) == sorted(killed)
        assert [r["old_pid"] for r in replaced] == [d["pid"] for d in died]
        assert all(d["exitcode"] == -signal.SIGKILL for d in died)
        assert not log_events(worker, "crash_loop")
        assert categorized(conn) == (total, total)
        assert queue_state(settings)["dead"] == 0
        print(
            f"\n{kills} kills in {storm_s:.1f} s, {len(replaced)} restarts logged, respawned within "
            f"{max(respawn_s):.3f} s; rows {categorized(conn)}, dead letters 0"
        )


def test_a_killed_process_messages_come_back_at_once_not_after_the_heartbeat_timeout(
    tmp_path: Path,
) -> None:
    """The supervisor releases what a dead process held (``Backend.release``): with a 60 s
    heartbeat timeout, a process killed while holding batches costs seconds, not a minute."""
    total = 20_000
    with busy_fleet(tmp_path, total, broker_heartbeat_timeout_ms=60_000, batch_size=100) as (
        settings,
        conn,
        worker,
    ):
        try:
            wait_for(lambda: categorized(conn)[0] > 0 and queue_state(settings)["unacked"] > 0, interval=0.01,
                     what="work held")  # fmt: skip
            victim = worker_pids(worker.proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(lambda: categorized(conn) == (total, total), timeout=30, what="every expense, once")
            done_s = time.monotonic() - killed_at
            [released] = wait_for(lambda: log_events(worker, "worker_released"), what="the release")
        finally:
            worker.stop()
        assert released["pid"] == victim and released["held"] > 0
        assert done_s < 20, done_s  # without the release: > 60 s (the heartbeat timeout)
        assert queue_state(settings)["dead"] == 0
        print(f"\nkilled pid {victim}: every expense done {done_s:.1f} s later (heartbeat timeout 60 s)")


def _crashing_boot(tmp_path: Path, body: str) -> str:
    (tmp_path / "crashboot.py").write_text(body)
    return os.pathsep.join([str(ROOT), str(tmp_path)])


@pytest.mark.parametrize(
    ("body", "overrides"),
    [
        ("import os\nos._exit(7)\n", {}),  # dies at once
        ("import time\ntime.sleep(3600)\n", {"worker_boot_timeout_ms": 1_000}),  # never boots
    ],
    ids=["dies-at-boot", "boot-timeout"],
)
def test_a_process_that_cannot_boot_is_a_crash_loop(
    tmp_path: Path, body: str, overrides: dict[str, int]
) -> None:
    with isolated_settings(worker_restart_limit=3, worker_restart_window_s=60, **overrides) as settings:
        path = _crashing_boot(tmp_path, body)
        t0 = time.monotonic()
        child = ChildProcess(
            tmp_path / "w.log",
            lambda log: start_workers(
                settings, log=log, processes=1, boot="crashboot:broker", PYTHONPATH=path
            ),
        )
        try:
            code = child.proc.wait(timeout=30)
        finally:
            child.stop()
        elapsed = time.monotonic() - t0
        assert code == EXIT_CRASH_LOOP, child.log()[-3000:]
        assert len(log_events(child, "worker_died")) == 4  # limit 3: the 4th death within the window
        assert len(log_events(child, "crash_loop")) == 1
        assert elapsed < 25, elapsed
        print(f"\ncrash loop ({tmp_path.name}): exit {code} after {elapsed:.1f} s")


def test_a_second_worker_on_the_same_metrics_port_refuses_to_start(tmp_path: Path) -> None:
    with isolated_settings() as settings:
        first = WorkerProcess(settings, tmp_path / "first.log", processes=2)
        try:
            first.wait_ready()
            port = settings.metrics_port
            wait_for(lambda: answers(port) and scrape(port).value("catfleet_worker_processes") == 2, what="2")
            files = sorted(os.listdir(multiproc_dir(settings)))
            assert files
            second = WorkerProcess(settings, tmp_path / "second.log")
            code = second.proc.wait(timeout=20)
            second.stop()
            lines = second.log().strip().splitlines()
            assert code != 0
            assert len(lines) == 1 and "not starting" in lines[0], lines
            assert lines[0].startswith("catfleet worker: another catfleet worker"), lines
            assert sorted(os.listdir(multiproc_dir(settings))) == files  # nothing cleared
            assert first.alive()
            assert scrape(port).value("catfleet_worker_processes") == 2
        finally:
            assert first.stop() == 0


def test_a_taken_metrics_port_is_refused_before_anything_is_cleared(tmp_path: Path) -> None:
    with isolated_settings() as settings, socket.socket() as taken:
        taken.bind((settings.metrics_host, settings.metrics_port))
        taken.listen()
        directory = Path(multiproc_dir(settings))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "keep.db").write_bytes(b"")
        child = WorkerProcess(settings, tmp_path / "w.log")
        code = child.proc.wait(timeout=20)
        child.stop()
        assert code != 0 and "is in use" in child.log(), child.log()
        assert (directory / "keep.db").exists()
