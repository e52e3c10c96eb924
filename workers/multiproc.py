"""The host's Prometheus multiprocess directory, shared by the worker processes and the metrics
server, and the lock that makes it one fleet's. Nothing here imports ``prometheus_client``: it
must not be imported before the directory is set."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import tempfile

from dramatiq.middleware.prometheus import DB_PATH

from pipeline.errors import CatfleetError
from workers.settings import Settings


class MetricsDirBusy(CatfleetError):
    """Another ``catfleet worker`` holds this host's metrics directory, or the port is taken."""


def multiproc_dir(settings: Settings) -> str:
    """The host's Prometheus multiprocess directory (one per metrics port)."""
    return settings.metrics_dir or os.path.join(
        tempfile.gettempdir(), f"catfleet-metrics-{settings.metrics_port}"
    )


def lock_path(settings: Settings) -> str:
    """The lock file beside the multiprocess directory (``<dir>.lock``)."""
    return multiproc_dir(settings).rstrip("/") + ".lock"


def hold_metrics_lock(settings: Settings) -> int:
    """Take the exclusive lock on this host's metrics directory and check that the metrics port
    is free, before anything is cleared. Returns the lock's file descriptor, inheritable: keep it
    open for the fleet's life (``catfleet worker`` hands it to the supervisor across ``exec``).
    Raises ``MetricsDirBusy`` (one line) when another worker holds it or the port is taken."""
    path = lock_path(settings)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise MetricsDirBusy(
            f"another catfleet worker (pid {holder}) runs with metrics port {settings.metrics_port} "
            f"and directory {multiproc_dir(settings)} (lock {path}); not starting"
        ) from None
    try:
        _check_port_free(settings)
    except MetricsDirBusy:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, True)
    return fd


def _check_port_free(settings: Settings) -> None:
    with socket.socket(socket.AF_INET6 if ":" in settings.metrics_host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds
        try:
            s.bind((settings.metrics_host, settings.metrics_port))
        except OSError as exc:
            raise MetricsDirBusy(
                f"metrics port {settings.metrics_host}:{settings.metrics_port} is in use "
                f"({exc.strerror}); not starting"
            ) from None


def metrics_env(settings: Settings) -> dict[str, str]:
    """Clear the multiprocess directory (stale files from an earlier run would be summed in) and
    return the environment that points Dramatiq and prometheus_client at it. Call it only while
    holding ``hold_metrics_lock``: a second fleet must never clear the first one's files."""
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


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker process's live gauges (``catfleet_worker_processes``, in-progress
    messages) from the directory. Imports prometheus_client: only where the directory is set."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, DB_PATH)
