"""``catfleet exporter``: the host's metrics and health server (``workers.exposition``) without
workers: queue depths for a fleet scaled to zero, or a scrape target apart from the workers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workers.settings import Settings


def cmd_exporter(settings: Settings, args: argparse.Namespace) -> int:
    """Execs a fresh interpreter so that the multiprocess directory is set before
    prometheus_client is imported."""
    from workers.multiproc import metrics_env

    if not settings.metrics_port:
        raise SystemExit("catfleet exporter: CATFLEET_METRICS_PORT is 0 (metrics off)")
    env = dict(os.environ, **metrics_env(settings))
    argv = [sys.executable, "-c", "from workers.exposition import serve; raise SystemExit(serve())"]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 0  # pragma: no cover


def register(sub: Any) -> None:
    p = sub.add_parser("exporter", help="serve /metrics (queue depths), /healthz, /readyz without workers")
    p.set_defaults(func=cmd_exporter)
