"""Throwaway databases, broker namespaces and worker processes on the real local servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import msgspec
import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pipeline.cache.client import open_client
from pipeline.migrate import migrate
from pipeline.settings import DEFAULT_DATABASE_URL, Settings
from workers.config import env_name, settings_from_env
from workers.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def base_settings() -> Settings:
    """The environment's settings (the local servers by default)."""
    return settings_from_env()


def admin_url(url: str) -> str:
    return make_conninfo(url, dbname="postgres")


def create_database(template_url: str, name: str) -> str:
    with psycopg.connect(admin_url(template_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(template_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


def drop_database(template_url: str, name: str) -> None:
    with psycopg.connect(admin_url(template_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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
    if settings.broker_url.startswith("redis"):
        client = redis.Redis.from_url(settings.broker_url)
        for key in client.scan_iter(f"{settings.broker_namespace}:*", count=1000):
            client.delete(key)
        client.close()


def flush_cache(settings: Settings) -> None:
    """Remove the run's pattern-cache keys (they would expire anyway)."""
    client = open_client(settings.cache_url, timeout_s=2.0)
    try:
        for key in client.scan_iter(f"{settings.cache_prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATFLEET_")}
    for field, value in msgspec.structs.asdict(settings).items():
        env[env_name(field)] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


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


class WorkerProcess:
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
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers",
                "worker",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
                *extra_args,
                *(["--queues", *queues] if queues else []),
            ],
            env=settings_env(settings),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        client = redis.Redis.from_url(self.settings.broker_url)
        key = f"{self.settings.broker_namespace}:__heartbeats__"
        try:
            wait_for(
                lambda: self.proc.poll() is not None or client.zcard(key) > 0, timeout=timeout, what="worker"
            )
        finally:
            client.close()
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode
