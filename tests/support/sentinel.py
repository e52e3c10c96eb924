"""A Redis primary, one replica and three Sentinels of a test's own, on free loopback ports in a temp
dir: the broker setup of deploy/redis-sentinel, small and fast (a primary is down after 1 s of
silence, 2 Sentinels agree), so a test can kill the primary and watch the failover."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.servers import HOST, RedisServer, server_port
from tests.support.services import wait_for
from workers.harness.processes import stop_workers

SERVICE = "catfleet"
#: Silence (ms) after which a Sentinel thinks the primary down; 2 of 3 must agree to fail over.
DOWN_AFTER_MS = 1_000
QUORUM = 2


class SentinelNode:
    """``redis-server <conf> --sentinel`` watching ``SERVICE`` on ``primary_port``."""

    def __init__(self, directory: Path, primary_port: int) -> None:
        self.port = server_port()
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} {HOST} {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        redis_server = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [redis_server, str(self.conf), "--sentinel"], start_new_session=True, stdout=subprocess.DEVNULL
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, decode_responses=True)

    def master(self) -> dict[str, object]:
        """``SENTINEL MASTER <service>`` (empty while the Sentinel does not answer)."""
        try:
            with self.client() as c:
                return dict(c.sentinel_master(SERVICE))
        except redis.exceptions.ConnectionError:
            return {}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_workers(self.proc, sig=sig, timeout=10)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class SentinelGroup:
    """``replicas`` replicas of the primary (the first is ``replica``) and 3 Sentinels."""

    def __init__(self, directory: Path, *, replicas: int = 1) -> None:
        fast_sync = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        self.primary = RedisServer(directory / "primary", extra=fast_sync)
        replica_of = ["--replicaof", HOST, str(self.primary.port)]
        self.replicas = [
            RedisServer(directory / f"replica{i}", extra=[*replica_of, *fast_sync]) for i in range(replicas)
        ]
        self.replica = self.replicas[0]
        self.sentinels = [SentinelNode(directory / f"sentinel{i}", self.primary.port) for i in range(3)]

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def start(self) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        wait_for(self.replica_in_sync, timeout=20, interval=0.05, what="the replica in sync")
        for s in self.sentinels:
            s.start()
        wait_for(self._sentinels_agree, timeout=30, interval=0.1, what="3 Sentinels that see each other")

    def replica_in_sync(self) -> bool:
        """Every replica's link to its primary is up."""
        for replica in self.replicas:
            with replica.client() as c:
                if c.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            m = s.master()
            if (
                not m
                or int(str(m.get("num-slaves", 0))) < len(self.replicas)
                or int(str(m.get("num-other-sentinels", 0))) < 2
            ):
                return False
        return True

    def master_port(self) -> int | None:
        """The primary's port as a quorum of the Sentinels name it (None while they disagree)."""
        ports = [int(str(m["port"])) for s in self.sentinels if s.proc is not None and (m := s.master())]
        for port in set(ports):
            if ports.count(port) >= QUORUM:
                return port
        return None

    def server(self, port: int) -> RedisServer:
        [found] = [r for r in (self.primary, *self.replicas) if r.port == port]
        return found

    def logs(self) -> str:
        parts = [f"--- sentinel {s.port}\n{s.log()}" for s in self.sentinels]
        parts += [f"--- redis {r.port}\n{r.log()}" for r in (self.primary, *self.replicas)]
        return "\n".join(parts)

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for r in (self.primary, *self.replicas):
            r.stop(signal.SIGKILL)


@contextlib.contextmanager
def sentinel_group(directory: Path, *, replicas: int = 1) -> Iterator[SentinelGroup]:
    """A started primary + ``replicas`` replicas + 3 Sentinels; every process stopped afterwards."""
    group = SentinelGroup(directory, replicas=replicas)
    try:
        group.start()
        yield group
    finally:
        group.stop()
