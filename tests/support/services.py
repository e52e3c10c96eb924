"""Throwaway databases, broker namespaces and worker processes on the real local servers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar
from uuid import uuid4

import msgspec
import psycopg

from pipeline.cache.client import open_client
from pipeline.settings import DEFAULT_DATABASE_URL
from workers.backends import backend_for
from workers.config import settings_from_env
from workers.harness.databases import create_database, drop_database
from workers.harness.processes import (
    ROOT,
    free_port,
    settings_env,
    start_catfleet,
    start_workers,
    stop_workers,
    wait_ready,
)
from workers.settings import Settings

T = TypeVar("T")


def base_settings() -> Settings:
    """The environment's settings (the local servers by default)."""
    return settings_from_env()


@contextmanager
def isolated_settings(**overrides: Any) -> Iterator[Settings]:
    """A fresh migrated database and private Redis namespaces; removed afterwards."""
    base = base_settings()
    suffix = uuid4().hex[:10]
    name = f"catfleet_test_{suffix}"
    url = create_database(base.database_url or DEFAULT_DATABASE_URL, name)
    fields: dict[str, Any] = {
        "database_url": url,
        "broker_namespace": f"cftest-{suffix}",
        "cache_prefix": f"cftest-{suffix}",
        "max_retries": 2,
        "min_backoff_ms": 100,
        "max_backoff_ms": 500,
        "worker_processes": 1,
        "worker_threads": 2,
        "log_level": "INFO",
        "metrics_port": free_port(),
    }
    settings = msgspec.structs.replace(base, **{**fields, **overrides})
    try:
        yield settings
    finally:
        flush_namespace(settings)
        flush_cache(settings)
        drop_database(base.database_url, name)


def flush_namespace(settings: Settings) -> None:
    backend = backend_for(settings)
    try:
        backend.flush()
    finally:
        backend.close()


def flush_cache(settings: Settings) -> None:
    """Remove the run's pattern-cache keys (they would expire anyway)."""
    client = open_client(settings.cache_url, timeout_s=2.0)
    try:
        for key in client.scan_iter(f"{settings.cache_prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def run_catfleet(settings: Settings, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``catfleet ARGV...`` run to its end with exactly these settings; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "workers", *argv],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def enqueue(settings: Settings, ids: list[int]) -> None:
    """Enqueue ``ids`` as a producer of this fleet would (batches of ``settings.batch_size``)."""
    from workers.app import build_app
    from workers.producer import Producer

    app = build_app(settings)
    try:
        Producer(app.broker, batch_size=settings.batch_size).enqueue(ids)
    finally:
        app.close()


def row_count(settings: Settings) -> int:
    """Rows in the fleet's categorizations table."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM categorizations").fetchone()
    return int(row[0]) if row else 0


class ChildProcess:
    """A ``catfleet`` command as a child process in its own process group (started by
    workers.harness.processes), its output in a log file."""

    def __init__(self, log_path: Path, start: Callable[[IO[bytes]], subprocess.Popen[bytes]]):
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = start(self._log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        code = stop_workers(self.proc, sig=sig, timeout=timeout)
        self._log.close()
        return code


class WorkerProcess(ChildProcess):
    """``catfleet worker`` as a real child process (its own process group)."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        processes: int = 1,
        threads: int = 2,
        extra_args: Sequence[str] = (),
        queues: Sequence[str] = (),
    ):
        self.settings = settings
        self.processes = processes
        args = [*extra_args, *(["--queues", *queues] if queues else [])]
        super().__init__(
            log_path,
            lambda log: start_workers(settings, log=log, processes=processes, threads=threads, args=args),
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_ready(self.settings, self.proc, timeout=timeout, processes=self.processes)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{self.log()[-3000:]}") from None


class RelayProcess(ChildProcess):
    """``catfleet relay`` with these settings."""

    def __init__(self, settings: Settings, log_path: Path):
        super().__init__(log_path, lambda log: start_catfleet(["relay"], settings, log=log))

    def wait_listening(self, database_url: str, timeout: float = 30.0) -> None:
        """Until its LISTEN connection is up (it drains right after)."""

        def listening() -> bool:
            if not self.alive():
                raise AssertionError(f"relay exited:\n{self.log()[-3000:]}")
            with psycopg.connect(database_url, autocommit=True) as c:
                row = c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN catfleet_outbox%%'"
                    " AND datname = current_database()"
                ).fetchone()
            return bool(row and row[0])

        wait_for(listening, timeout=timeout, interval=0.1, what="relay LISTEN")


def log_events(child: ChildProcess, event: str) -> list[dict[str, Any]]:
    """The child's JSON log lines whose ``event`` is ``event`` (``batch``, ``failure``, ...), in order."""
    lines = (line for line in child.log().splitlines() if line.startswith("{") and f'"{event}"' in line)
    return [doc for doc in map(json.loads, lines) if doc.get("event") == event]
