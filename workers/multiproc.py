"""The host's Prometheus multiprocess directory, shared by the worker processes and the metrics
server. Nothing here imports ``prometheus_client``: it must not be imported before the
directory is set."""

from __future__ import annotations

import os
import shutil
import tempfile

from dramatiq.middleware.prometheus import DB_PATH

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
