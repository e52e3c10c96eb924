"""A test-owned PostgreSQL server (initdb + pg_ctl) on a free loopback port in a temp dir, for
tests that stop and start it. Never the shared server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from pipeline.migrate import migrate
from tests.support.services import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


#: initdb and postgres refuse to run as root: run them as the postgres user then.
AS_USER: dict[str, Any] = {"user": "postgres", "group": "postgres"} if os.getuid() == 0 else {}


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="catfleet-pg-"))  # not under pytest's 0700 dirs
        self.data = self.root / "data"
        self.port = free_port()
        if AS_USER:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/catfleet"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(PG_BIN / tool), *args], check=True, capture_output=True, cwd=self.root, **AS_USER)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self) -> str:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE catfleet")
        with psycopg.connect(self.url, autocommit=True) as conn:
            migrate(conn)
        return self.url

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
