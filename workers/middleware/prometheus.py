"""Dramatiq's own Prometheus middleware (per-actor latency, counts, errors, retries, dead
letters), multiprocess-safe, with catfleet's exposition server in place of Dramatiq's
metrics-only one: one server per host answers ``/metrics``, ``/healthz`` and ``/readyz``.

Dramatiq reads ``dramatiq_prom_db`` / ``dramatiq_prom_host`` / ``dramatiq_prom_port`` when its
module is imported; ``catfleet worker`` maps them from the settings before it execs Dramatiq.
This module never imports ``prometheus_client`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.middleware.prometheus import Prometheus


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
