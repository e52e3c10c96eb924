"""``catfleet relay`` and a private ``redis-server`` as child processes of a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from pipeline.settings import Settings
from tests.support.services import ROOT, settings_env, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

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


class RelayProcess(Child):
    """``catfleet relay`` with these settings."""

    def __init__(self, settings: Settings, log_path: Path):
        super().__init__([sys.executable, "-m", "workers", "relay"], log_path, settings_env(settings))

    def wait_listening(self, database_url: str, timeout: float = 30.0) -> None:
        """Until its LISTEN connection is up (it drains right after)."""
        import psycopg

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


class RedisServer(Child):
    """A throwaway ``redis-server`` on a loopback port, no persistence."""

    def __init__(self, port: int, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        super().__init__([*argv, "--dir", str(workdir)], workdir / f"redis-{port}.log")
        self.url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or not self.alive():
                    raise AssertionError(f"redis-server did not start:\n{self.log()}") from None
                time.sleep(0.05)
        client.close()
