"""What runs in a process the supervisor forks: a Dramatiq worker, with the hooks Dramatiq's CLI
emits (``process_boot``, then ``Worker.start`` emits ``worker_boot``, ``Worker.stop`` emits
``worker_shutdown``), or a fork function a middleware declares (the metrics server)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import sys
import time
from multiprocessing.connection import Connection

import msgspec

#: Signals the supervisor blocks around a fork; a child unblocks them once its handlers are set.
HANDLED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
#: How often a worker process checks for a stop request or a dead supervisor (s).
TICK_S = 0.1


class Booted(msgspec.Struct, frozen=True):
    """What a worker process tells the supervisor once it consumes."""

    forks: list[str]  # the fork functions its middleware declares (``module:function``)
    consumer_id: str | None  # the broker's id for this process's consumers, where it has one


#: ``/proc/<pid>/comm`` (``ps -o comm``, ``top``) of the processes the supervisor forks.
WORKER_NAME = "catfleet-worker"
FORK_NAME = "catfleet-fork"


def name_process(name: str) -> None:
    """Set this process's name as ps shows it (Linux ``prctl(PR_SET_NAME)``; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)


def _close_inherited(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # the host lock stays the supervisor's alone


def run_worker(
    boot: str,
    *,
    threads: int,
    queues: list[str] | None,
    shutdown_timeout_ms: int,
    ready: Connection,
    close_fds: tuple[int, ...] = (),
) -> None:
    """Boot the broker module, start a ``dramatiq.Worker``, tell the supervisor (``ready`` gets
    the fork functions the middleware declares), run until SIGTERM or until the supervisor is
    gone, then drain for up to ``shutdown_timeout_ms``. Repeated signals change nothing: the
    drain is bounded by the timeout and the supervisor's kill, not by a second signal."""
    from dramatiq import Worker
    from dramatiq.cli import import_broker

    parent = os.getppid()
    running = True

    def stop(signum: int, frame: object) -> None:
        nonlocal running
        running = False

    name_process(WORKER_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
    _close_inherited(close_fds)
    random.seed()
    _, broker = import_broker(boot)
    broker.emit_after("process_boot")
    worker = Worker(broker, queues=set(queues) if queues else None, worker_threads=threads)
    worker.start()
    forks = [f"{f.__module__}:{f.__name__}" for m in broker.middleware for f in m.forks]
    # brokers that track their consumers by an id (Redis) have one: the supervisor releases what
    # this process held the moment it dies
    ready.send(Booted(forks=forks, consumer_id=getattr(broker, "broker_id", None)))
    ready.close()
    while running and os.getppid() == parent:
        time.sleep(TICK_S)
    worker.stop(timeout=shutdown_timeout_ms)
    broker.close()


def run_fork(path: str, *, close_fds: tuple[int, ...] = ()) -> None:
    """A middleware's fork function (``module:function``) until SIGTERM, as Dramatiq runs it:
    the signal raises SystemExit inside it."""
    from dramatiq.cli import import_object

    def stop(signum: int, frame: object) -> None:
        sys.exit(0)

    name_process(FORK_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    _close_inherited(close_fds)
    _, func = import_object(path)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
    sys.exit(func())
