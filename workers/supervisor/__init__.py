"""``catfleet worker``'s main process: it forks the host's worker processes and its metrics
server and keeps them running.

A process that dies (kill -9, OOM, a crash) is replaced at once, the others untouched; one that
dies before it has booted, or does not boot within ``worker_boot_timeout_ms`` (then it is
killed), is restarted after a backoff that doubles per consecutive boot failure (0.1 s up to
``MAX_BACKOFF_S``). More than ``worker_restart_limit`` deaths within ``worker_restart_window_s``
is a crash loop: every process is stopped and the supervisor exits ``EXIT_CRASH_LOOP``, so
systemd or Kubernetes sees it. SIGTERM / SIGINT / SIGHUP drain every worker process for up to
``worker_shutdown_timeout_ms`` (plus ``KILL_GRACE_S``, then SIGKILL) and exit 0.

Why not Dramatiq's CLI: its main process stops the whole host when one worker process dies
(upstream #505) and waits up to its fork timeout for a process that died while booting. Each
child here runs what the CLI's ``worker_process`` runs (``workers.supervisor.child``)."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from workers.supervisor import child

log = logging.getLogger("catfleet.supervisor")

#: Exit code after a crash loop (more deaths than the restart limit within the window).
EXIT_CRASH_LOOP = 3
#: Longest wait before restarting a process that keeps failing to boot (s).
MAX_BACKOFF_S = 2.0
#: First backoff after a boot failure (s); doubles per consecutive one.
FIRST_BACKOFF_S = 0.1
#: After the drain timeout, how long the supervisor waits before it SIGKILLs what is left (s).
KILL_GRACE_S = 5.0
#: A fork (the metrics server) that dies sooner than this after its start counts as a failed boot.
FORK_STABLE_S = 1.0
#: Longest the supervisor sleeps between looks at its children (s).
TICK_S = 0.1

_fork = multiprocessing.get_context("fork")


@dataclass
class Slot:
    """One process the supervisor keeps running: a worker process (``index``) or a fork."""

    name: str
    start: Callable[[Connection | None], BaseProcess]
    is_worker: bool
    proc: BaseProcess | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    booted: bool = False
    boot_failures: int = 0
    restart_at: float = 0.0
    replaced_pid: int | None = None
    consumer_id: str | None = None  # the broker's id for the live process's consumers
    pids: list[int] = field(default_factory=list)


def _describe(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


class Supervisor:
    def __init__(
        self,
        *,
        boot: str,
        processes: int,
        threads: int,
        queues: list[str] | None,
        shutdown_timeout_ms: int,
        boot_timeout_ms: int,
        restart_limit: int,
        restart_window_s: float,
        metrics: bool,
        keep_fds: tuple[int, ...] = (),
        release: Callable[[str], int] | None = None,
    ):
        self.boot = boot
        self.threads = threads
        self.queues = queues
        self.shutdown_timeout_ms = shutdown_timeout_ms
        self.boot_timeout_s = boot_timeout_ms / 1000
        self.restart_limit = restart_limit
        self.restart_window_s = restart_window_s
        self.metrics = metrics  # a multiprocess directory: a dead worker's live gauges are dropped
        self.keep_fds = keep_fds  # the host lock: held here, closed in every child
        #: Puts a dead process's messages back now (``Backend.release``); None: the broker's
        #: own recovery (heartbeat timeout) does it.
        self.release = release
        self.slots = [Slot(f"worker-{i}", self._start_worker, True) for i in range(processes)]
        self.forks_started = False
        self.deaths: deque[float] = deque()
        self.restarts = 0
        self.stop_signal: int | None = None

    # -- children ---------------------------------------------------------------------------

    def _start_worker(self, ready: Connection | None) -> BaseProcess:
        return _fork.Process(
            target=child.run_worker,
            args=(self.boot,),
            kwargs={
                "threads": self.threads,
                "queues": self.queues,
                "shutdown_timeout_ms": self.shutdown_timeout_ms,
                "ready": ready,
                "close_fds": self.keep_fds,
            },
            daemon=False,
        )

    def _fork_starter(self, path: str) -> Callable[[Connection | None], BaseProcess]:
        def start(ready: Connection | None) -> BaseProcess:
            return _fork.Process(
                target=child.run_fork, args=(path,), kwargs={"close_fds": self.keep_fds}, daemon=False
            )

        return start

    def _spawn(self, slot: Slot) -> None:
        receive, send = _fork.Pipe(duplex=False) if slot.is_worker else (None, None)
        proc = slot.start(send)
        signal.pthread_sigmask(signal.SIG_BLOCK, child.HANDLED)  # until the child has its handlers
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, child.HANDLED)
        if send is not None:
            send.close()
        slot.proc, slot.ready, slot.booted = proc, receive, not slot.is_worker
        slot.started_at = time.monotonic()
        assert proc.pid is not None
        slot.pids.append(proc.pid)
        if slot.replaced_pid is not None:
            self.restarts += 1
            log.warning(
                "%s replaced: pid %s -> %s (restart %d)",
                slot.name,
                slot.replaced_pid,
                proc.pid,
                self.restarts,
                extra={"event": "worker_replaced", "slot": slot.name, "old_pid": slot.replaced_pid,
                       "pid": proc.pid, "restarts": self.restarts},
            )  # fmt: skip
        else:
            log.info("%s started: pid %s", slot.name, proc.pid)

    def _on_ready(self, slot: Slot) -> None:
        assert slot.ready is not None
        try:
            booted: child.Booted = slot.ready.recv()
        except (EOFError, OSError):
            slot.ready.close()
            slot.ready = None  # it died while booting: its sentinel says so
            return
        slot.ready.close()
        slot.ready = None
        slot.booted = True
        slot.boot_failures = 0
        slot.consumer_id = booted.consumer_id
        forks = booted.forks
        pid = slot.proc.pid if slot.proc is not None else None
        log.info("%s ready: pid %s, booted in %.2f s", slot.name, pid, time.monotonic() - slot.started_at)
        if not self.forks_started:
            self.forks_started = True  # as Dramatiq's canteen: the first booted worker declares them
            for path in forks:
                fork = Slot(f"fork {path}", self._fork_starter(path), False)
                self.slots.append(fork)
                self._spawn(fork)

    def _on_death(self, slot: Slot, now: float) -> bool:
        """Record a death; False when it makes a crash loop."""
        proc = slot.proc
        assert proc is not None and proc.pid is not None
        proc.join()
        pid, code, uptime = proc.pid, proc.exitcode, now - slot.started_at
        if slot.ready is not None:
            slot.ready.close()
        if slot.is_worker and self.metrics:
            from workers.multiproc import mark_process_dead

            mark_process_dead(pid)  # its live gauges (processes, in progress) leave the sums
        if slot.consumer_id is not None and self.release is not None:
            self._release(slot.consumer_id, pid)
        slot.proc, slot.ready, slot.replaced_pid, slot.consumer_id = None, None, pid, None
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.restart_window_s:
            self.deaths.popleft()
        if not slot.booted or (not slot.is_worker and uptime < FORK_STABLE_S):
            slot.boot_failures += 1
        else:
            slot.boot_failures = 0
        delay = (
            min(FIRST_BACKOFF_S * 2 ** (slot.boot_failures - 1), MAX_BACKOFF_S) if slot.boot_failures else 0.0
        )
        slot.restart_at = now + delay
        log.warning(
            "%s (pid %s) died: %s after %.1f s%s; %d deaths in the last %g s (limit %d)",
            slot.name, pid, _describe(code), uptime, "" if slot.booted else ", before it booted",
            len(self.deaths), self.restart_window_s, self.restart_limit,
            extra={"event": "worker_died", "slot": slot.name, "pid": pid, "exitcode": code,
                   "booted": slot.booted, "uptime_s": round(uptime, 2), "restart_in_s": delay},
        )  # fmt: skip
        return len(self.deaths) <= self.restart_limit

    def _release(self, consumer_id: str, pid: int) -> None:
        assert self.release is not None
        started = time.monotonic()
        try:
            held = self.release(consumer_id)
        except Exception as exc:  # the heartbeat timeout still brings them back
            log.warning("could not release what pid %s held (%s): the heartbeat timeout will", pid, exc)
            return
        log.info(
            "released the %d message(s) pid %s held (consumer %s) in %.3f s",
            held, pid, consumer_id, time.monotonic() - started,
            extra={"event": "worker_released", "pid": pid, "consumer_id": consumer_id, "held": held},
        )  # fmt: skip

    # -- main loop --------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> int:
        for sig in child.HANDLED:
            signal.signal(sig, self._on_signal)
        log.info(
            "supervising %d worker processes x %d threads (%s); restart limit %d per %g s",
            len(self.slots), self.threads, self.boot, self.restart_limit, self.restart_window_s,
        )  # fmt: skip
        try:
            return self._supervise()
        finally:
            self._stop_all()  # also after a bug in here: no worker outlives its supervisor

    def _supervise(self) -> int:
        while self.stop_signal is None:
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is None and now >= slot.restart_at:
                    self._spawn(slot)
            live = [s for s in self.slots if s.proc is not None]
            waitables: list[Any] = [s.proc.sentinel for s in live if s.proc is not None]
            waitables += [s.ready for s in live if s.ready is not None]
            wait(waitables, timeout=TICK_S)
            if self.stop_signal is not None:
                break  # a signal to the whole group may have stopped a child first: not a death
            now = time.monotonic()
            for slot in live:
                if slot.ready is not None and slot.ready.poll():
                    self._on_ready(slot)
                if slot.proc is not None and slot.proc.exitcode is not None:
                    if not self._on_death(slot, now):
                        log.error(
                            "crash loop: %d deaths within %g s (CATFLEET_WORKER_RESTART_LIMIT=%d); stopping",
                            len(self.deaths), self.restart_window_s, self.restart_limit,
                            extra={"event": "crash_loop", "deaths": len(self.deaths)},
                        )  # fmt: skip
                        return EXIT_CRASH_LOOP
                elif (
                    slot.proc is not None and not slot.booted and now - slot.started_at > self.boot_timeout_s
                ):
                    log.warning(
                        "%s (pid %s) not booted after %.1f s: killing it",
                        slot.name, slot.proc.pid, self.boot_timeout_s,
                        extra={"event": "boot_timeout", "slot": slot.name, "pid": slot.proc.pid},
                    )  # fmt: skip
                    slot.proc.kill()
        log.info(
            "%s: draining for up to %d ms", signal.Signals(self.stop_signal).name, self.shutdown_timeout_ms
        )
        return 0

    def _stop_all(self) -> None:
        """SIGTERM the worker processes (they drain), then the forks; SIGKILL what outlives
        the drain timeout plus ``KILL_GRACE_S``."""
        deadline = time.monotonic() + self.shutdown_timeout_ms / 1000 + KILL_GRACE_S
        for group in ([s for s in self.slots if s.is_worker], [s for s in self.slots if not s.is_worker]):
            procs = [s.proc for s in group if s.proc is not None and s.proc.exitcode is None]
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.exitcode is None:
                    log.warning("pid %s still running after the drain timeout: killing it", proc.pid)
                    proc.kill()
                    proc.join()
        log.info("stopped")
