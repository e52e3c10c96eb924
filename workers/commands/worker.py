"""``catfleet worker``: exec Dramatiq's worker processes with the settings mapped onto its options."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workers.settings import Settings


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.multiproc import metrics_env

    prefetch = settings.worker_prefetch or 2 * settings.worker_threads
    env = dict(
        os.environ,
        dramatiq_queue_prefetch=str(prefetch),
        dramatiq_worker_timeout=str(settings.worker_idle_poll_ms),
    )
    if settings.metrics_port:
        env.update(metrics_env(settings))  # before Dramatiq or prometheus_client is imported
    argv = [
        sys.executable, "-m", "dramatiq", args.boot,
        "--processes", str(args.processes or settings.worker_processes),
        "--threads", str(args.threads or settings.worker_threads),
        "--worker-shutdown-timeout", str(settings.worker_shutdown_timeout_ms),
        "--skip-logging",
    ]  # fmt: skip
    if args.queues:
        argv += ["--queues", *args.queues]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 0  # pragma: no cover


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run the Dramatiq worker processes")
    p.add_argument("--processes", type=int, help="default: CATFLEET_WORKER_PROCESSES")
    p.add_argument("--threads", type=int, help="default: CATFLEET_WORKER_THREADS")
    p.add_argument("--queues", nargs="*", help="consume only these queues")
    p.add_argument("--boot", default="workers.boot:broker", help="broker module (benchmarks use their own)")
    p.set_defaults(func=cmd_worker)
