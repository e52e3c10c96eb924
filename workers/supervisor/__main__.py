"""``python -m workers.supervisor``: what ``catfleet worker`` execs once the environment is set
(the metrics directory before anything imports Dramatiq's Prometheus module or
prometheus_client, Dramatiq's prefetch and idle poll before it imports ``dramatiq.worker``)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from workers.config import settings_from_env
from workers.logs import setup_logging
from workers.supervisor import Supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catfleet worker (supervisor)")
    parser.add_argument("boot", help="broker module, e.g. workers.boot:broker")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--queues", nargs="*")
    parser.add_argument("--lock-fd", type=int, help="the host's metrics lock, held for the supervisor's life")
    args = parser.parse_args(argv)
    settings = settings_from_env()
    setup_logging(settings)
    with contextlib.suppress(ImportError):
        import workers.app  # noqa: F401 - imported once here, so a replacement process boots fast
    from workers.backends import backend_for

    backend = backend_for(settings)
    supervisor = Supervisor(
        boot=args.boot,
        processes=args.processes,
        threads=args.threads,
        queues=args.queues or None,
        shutdown_timeout_ms=settings.worker_shutdown_timeout_ms,
        boot_timeout_ms=settings.worker_boot_timeout_ms,
        restart_limit=settings.worker_restart_limit,
        restart_window_s=settings.worker_restart_window_s,
        metrics=bool(settings.metrics_port),
        keep_fds=(args.lock_fd,) if args.lock_fd is not None else (),
        release=backend.release,
    )
    try:
        return supervisor.run()
    finally:
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
