"""Dramatiq's own Prometheus middleware (per-actor latency, counts, errors, retries, dead
letters), multiprocess-safe, with catfleet's exposition server in place of Dramatiq's
metrics-only one: one server per host answers ``/metrics``, ``/healthz`` and ``/readyz``.

Dramatiq reads ``dramatiq_prom_db`` / ``dramatiq_prom_host`` / ``dramatiq_prom_port`` when its
module is imported; ``catfleet worker`` maps them from the settings before it execs Dramatiq.
This module never imports ``prometheus_client`` itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from dramatiq.middleware.prometheus import DB_PATH, Prometheus

from workers.settings import Settings


def multiproc_dir(settings: Settings) -> str:
    """The host's Prometheus multiprocess directory (one per metrics port)."""
    return settings.metrics_dir or os.path.join(
        tempfile.gettempdir(), f"catfleet-metrics-{settings.metrics_port}"
    )


def metrics_env(settings: Settings) -> dict[str, str]:
    """Clear the multiprocess directory (stale files from an earlier run would be summed in) and
    return the environment that points Dramatiq and prometheus_client at it."""
    directory = multiproc_dir(settings)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    return {
        "PROMETHEUS_MULTIPROC_DIR": directory,
        "dramatiq_prom_db": directory,
        "dramatiq_prom_host": settings.metrics_host,
        "dramatiq_prom_port": str(settings.metrics_port),
    }


def use_multiproc_dir() -> None:
    """Point prometheus_client at Dramatiq's directory; call before anything imports it."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = DB_PATH


class FleetPrometheus(Prometheus):
    """Dramatiq's ``Prometheus`` middleware; only its fork (the HTTP server) is ours."""

    def after_process_boot(self, broker: Any) -> None:
        super().after_process_boot(broker)
        from workers import metrics  # after the parent class has set the directory

        metrics.WORKER_PROCESSES.set(1)

    @property
    def forks(self) -> list[Callable[[], int]]:
        from workers.exposition import serve

        return [serve]
