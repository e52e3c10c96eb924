"""Servers a test owns: its own ``redis-server`` or PostgreSQL cluster on a free loopback port, in
a temp dir, so it may stop and restart them. Never the shared ones."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis

from tests.support.services import wait_for
from workers.harness.databases import create_database
from workers.harness.processes import stop_workers

HOST = "127.0.0.1"
T = TypeVar("T")
#: How a server's readiness check runs: here, or (``Lan.call``) inside a network namespace.
Caller = Callable[[Callable[[], Any]], Any]


def _here(fn: Callable[[], T]) -> T:
    return fn()


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` run inside network namespace ``netns`` (None: here)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def server_port(*, also_free: int = 0) -> int:
    """A free port for a test-owned server that is stopped and started again on the same port.
    It lies below Linux's ephemeral range (32768+), so no outgoing connection and no
    ``free_port()`` can take it while the server is down. ``also_free``: an offset whose port
    must be free too (a Redis Cluster node's bus port, port + 10000)."""
    while True:
        port = random.randint(12_000, 22_700)
        if port_free(port) and (not also_free or port_free(port + also_free)):
            return port


PG_BIN = max(
    Path("/usr/lib/postgresql").glob("*/bin"),
    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    default=Path("/usr/lib/postgresql/15/bin"),
)

#: initdb and postgres refuse to run as root: run them as the postgres user then.
AS_USER: dict[str, Any] = {"user": "postgres", "group": "postgres"} if os.getuid() == 0 else {}


class RedisServer:
    """A ``redis-server`` child process in ``directory``; stopped and started at will.

    Without ``persist`` a restart comes back empty; with it the append-only file (fsync on every
    write) keeps the data across a SIGTERM. ``cluster`` makes it a Redis Cluster node; ``extra``:
    more ``redis-server`` arguments (``--replicaof host port``). ``netns``:
    it runs inside that network namespace, listening on ``bind``; ``call`` runs its readiness
    check where that address is reachable (``tests.support.netns.Lan.call``)."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        persist: bool = False,
        cluster: bool = False,
        extra: Sequence[str] = (),
        bind: str = HOST,
        netns: str | None = None,
        call: Caller = _here,
    ) -> None:
        self.port = port or server_port()
        self.dir = directory
        self.persist = persist
        self.cluster = cluster
        self.extra = list(extra)
        self.bind = bind
        self.netns = netns
        self.call = call
        self.url = f"redis://{bind}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind", self.bind, "--port", str(self.port), "--dir", str(self.dir),
            "--save", "", "--logfile", str(self.dir / f"redis-{self.port}.log"),
        ]  # fmt: skip
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        if self.netns:  # reached from the namespace's subnet, not loopback (no password: a test LAN)
            argv += ["--protected-mode", "no"]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", "1000"]
        argv += self.extra
        self.proc = subprocess.Popen(
            in_netns(self.netns, argv), start_new_session=True, stdout=subprocess.DEVNULL
        )
        wait_for(lambda: self.call(self._pings), timeout=10, what=f"redis-server on {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis writes its append-only file and exits; SIGKILL: it just dies."""
        if self.proc is not None:
            stop_workers(self.proc, sig=sig, timeout=10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.bind, port=self.port, socket_timeout=2)

    def _pings(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server on {self.port} exited:\n{self.log()}")
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.exceptions.ConnectionError:
            return False

    def log(self) -> str:
        path = self.dir / f"redis-{self.port}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def own_redis(directory: Path, *, persist: bool = False) -> Iterator[RedisServer]:
    """A started ``RedisServer``, stopped (SIGTERM) afterwards."""
    server = RedisServer(directory, persist=persist)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PostgresServer:
    """A fresh cluster (initdb) in its own temp dir (outside pytest's root-only tmp tree: the
    server runs as the postgres user when the tests run as root), started with pg_ctl.
    ``url`` is its maintenance database ``postgres``. ``netns``, ``bind``, ``call``: as for
    ``RedisServer``."""

    def __init__(
        self, *, bind: str = HOST, port: int | None = None, netns: str | None = None, call: Caller = _here
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="catfleet-pg-"))
        self.data = self.root / "data"
        self.port = port or server_port()
        self.bind = bind
        self.netns = netns
        self.call = call
        self.url = f"postgresql://postgres@{bind}:{self.port}/postgres"
        if AS_USER:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if bind != HOST:  # initdb trusts loopback only; let in the hosts of the server's subnet
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(PG_BIN / tool), *args], check=True, capture_output=True, cwd=self.root, **AS_USER)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"), *args)

    def start(self) -> None:
        opts = f"-c listen_addresses={self.bind} -p {self.port} -c unix_socket_directories='' -c fsync=off"
        if self.netns:  # ip netns exec needs root; the server then drops to the postgres user
            as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if AS_USER else []
            ctl = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "log")]
            argv = in_netns(self.netns, [*as_user, *ctl, "-o", opts, "start"])
            subprocess.run(argv, check=True, capture_output=True, cwd=self.root)
        else:
            self._ctl("-o", opts, "start")
        wait_for(lambda: self.call(self._accepts), timeout=20, interval=0.1, what=f"postgres on {self.port}")

    def _accepts(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self, mode: str = "immediate") -> None:
        self._ctl("-m", mode, "stop")

    def create_database(self, name: str = "catfleet") -> str:
        """A migrated database on this server; its URL."""
        return create_database(self.url, name)

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def own_postgres() -> Iterator[PostgresServer]:
    """A started ``PostgresServer``, removed afterwards."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
