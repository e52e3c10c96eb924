"""Servers a fault test owns: its own redis-server or PostgreSQL cluster on a free loopback port,
in a temp dir, so it may stop and restart them. Never the shared ones."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import redis

PG_BIN = max(
    Path("/usr/lib/postgresql").glob("*/bin"),
    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    default=Path("/usr/lib/postgresql/15/bin"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis writes its append-only file and exits
            self.proc.wait(timeout=10)


@contextmanager
def own_redis(workdir: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class OwnPostgres:
    def __init__(self, workdir: Path):
        self.data = workdir / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(
            [PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            user="postgres" if _is_root() else None,
        )

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [PG_BIN / "pg_ctl", "-D", self.data, "-w", "-l", self.data / "log", *args],
            check=True,
            capture_output=True,
            user="postgres" if _is_root() else None,
        )

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        self._ctl("-o", opts, "start")
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A fresh cluster in its own temp dir (outside pytest's root-only tmp tree: the server runs
    as the postgres user when the tests run as root)."""
    import os
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="catfleet-pg-"))
    os.chmod(workdir, 0o755)
    if _is_root():
        shutil.chown(workdir, "postgres")
    server = OwnPostgres(workdir)
    try:
        server.start()
        yield server
    finally:
        with suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)
