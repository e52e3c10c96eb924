"""``catfleet worker``: the host's worker processes under catfleet's supervisor
(``workers.supervisor``), which replaces one that dies instead of stopping the host.

Before anything else it takes the host's metrics lock (a second ``catfleet worker`` with the
same metrics directory or port refuses to start, touching nothing), clears the multiprocess
directory, and execs the supervisor with the environment set, so no process imports Dramatiq's
Prometheus module or prometheus_client before the directory is known."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from pipeline.errors import CatfleetError
from workers.settings import Settings

log = logging.getLogger("catfleet.worker")


def check_queues(queues: list[str] | None) -> None:
    """Every queue named is one the fleet declares: a worker on an undeclared queue would say it
    is ready and consume nothing. ``CatfleetError`` (one line, exit 2) listing the valid ones."""
    from workers.backends.base import FLEET_QUEUES

    unknown = [q for q in queues or () if q not in FLEET_QUEUES]
    if unknown:
        raise CatfleetError(
            f"unknown queue(s) {', '.join(map(repr, unknown))}: the fleet's queues are {', '.join(FLEET_QUEUES)}"
            " (a queue's delay queue is consumed with it)"
        )


def log_start(settings: Settings, queues: list[str] | None) -> None:
    """One line saying what this host's workers use, every URL with its password redacted."""
    from pipeline.settings import redact

    uses = {
        "broker": redact(settings.broker_url),
        "namespace": settings.broker_namespace,
        "database": redact(settings.database_url),
        "database_read": redact(settings.database_read_url) or None,
        "cache": redact(settings.cache_url),
        "cache_prefix": settings.cache_prefix,
        "queues": list(queues) if queues else "all",
    }
    log.info(
        "starting catfleet worker: broker %s (namespace %s), database %s, cache %s",
        uses["broker"], uses["namespace"], uses["database"], uses["cache"],
        extra={"event": "worker_start", **uses},
    )  # fmt: skip


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.multiproc import hold_metrics_lock, metrics_env

    check_queues(args.queues)
    prefetch = settings.worker_prefetch or 2 * settings.worker_threads
    env = dict(
        os.environ,
        dramatiq_queue_prefetch=str(prefetch),
        dramatiq_worker_timeout=str(settings.worker_idle_poll_ms),
    )
    argv = [
        sys.executable, "-m", "workers.supervisor", args.boot,
        "--processes", str(args.processes or settings.worker_processes),
        "--threads", str(args.threads or settings.worker_threads),
    ]  # fmt: skip
    if settings.metrics_port:
        lock_fd = hold_metrics_lock(settings)  # MetricsDirBusy: one line, exit 2, nothing touched
        env.update(metrics_env(settings))  # before Dramatiq or prometheus_client is imported
        argv += ["--lock-fd", str(lock_fd)]
    if args.queues:
        argv += ["--queues", *args.queues]
    log_start(settings, args.queues)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # pragma: no cover


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run and supervise the host's worker processes")
    p.add_argument("--processes", type=int, help="default: CATFLEET_WORKER_PROCESSES")
    p.add_argument("--threads", type=int, help="default: CATFLEET_WORKER_THREADS")
    p.add_argument("--queues", nargs="*", help="consume only these of the fleet's queues (categorize, learn)")
    p.add_argument("--boot", default="workers.boot:broker", help="broker module (benchmarks use their own)")
    p.set_defaults(func=cmd_worker)
