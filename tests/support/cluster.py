"""Throwaway Redis servers for cache tests: a 3-master Redis Cluster and a single plain Redis,
each on free loopback ports in a temp dir, started once per session and torn down at the end.

Tests may stop and start nodes; the function-scoped fixtures (``redis_cluster``,
``redis_single``) bring everything back up and empty it before each test. Used as a pytest
plugin (``pytest_plugins`` in tests/conftest.py).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import key_slot

from tests.support.servers import HOST, RedisServer, server_port
from tests.support.services import wait_for


def cluster_ports(n: int) -> list[int]:
    """``n`` distinct ports for cluster nodes whose bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = server_port(also_free=10_000)
        if port not in ports:
            ports.append(port)
    return ports


class LocalRedisServers:
    """What the cache tests need of a backend, whether one node or a cluster."""

    nodes: list[RedisServer]
    url: str

    def stop_one(self) -> None:
        self.nodes[0].stop(signal.SIGKILL)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)

    def start_all(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_ready()

    def wait_ready(self) -> None: ...

    def owner_port(self, key: str) -> int:
        """The port of the node holding ``key``."""
        return self.nodes[0].port

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as c:
                c.flushall()

    def dbsize(self) -> int:
        total = 0
        for node in self.nodes:
            with node.client() as c:
                total += int(c.dbsize())  # type: ignore[arg-type]
        return total

    def reset_stats(self) -> None:
        for node in self.nodes:
            with node.client() as c:
                c.config_resetstat()

    def command_calls(self, command: str) -> dict[int, int]:
        """Calls of ``command`` per node port since the last ``reset_stats``."""
        calls = {}
        for node in self.nodes:
            with node.client() as c:
                stats = c.info("commandstats").get(f"cmdstat_{command.lower()}", {})
                calls[node.port] = int(stats.get("calls", 0)) if isinstance(stats, dict) else 0
        return calls


class LocalRedis(LocalRedisServers):
    """A single plain Redis."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [RedisServer(directory)]
        self.url = self.nodes[0].url


class LocalRedisCluster(LocalRedisServers):
    """A Redis Cluster of ``masters`` masters and no replicas."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        ports = cluster_ports(masters)
        self.nodes = [RedisServer(directory / str(p), port=p, cluster=True) for p in ports]
        self.url = f"redis://{HOST}:{ports[0]}"
        self._slots: dict[int, int] = {}  # slot -> port

    def create(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{HOST}:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ready()

    def _state_ok(self) -> bool:
        for node in self.nodes:
            try:
                with node.client() as c:
                    info = c.cluster("info")
            except redis.exceptions.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
        return True

    def wait_ready(self) -> None:
        wait_for(self._state_ok, timeout=30, interval=0.1, what="redis cluster state ok")
        with self.nodes[0].client() as c:
            shards = c.cluster("slots")
        self._slots = {}
        for start, end, master, *_ in shards:
            for slot in range(start, end + 1):
                self._slots[slot] = int(master[1])

    def owner_port(self, key: str) -> int:
        return self._slots[key_slot(key.encode())]


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="session")
def redis_single_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis-single"))
    try:
        server.start_all()
        yield server
    finally:
        server.stop_all()


@pytest.fixture
def redis_cluster(redis_cluster_servers: LocalRedisCluster) -> LocalRedisCluster:
    """The session's cluster, all nodes up, state ok, empty."""
    redis_cluster_servers.start_all()
    redis_cluster_servers.flush()
    return redis_cluster_servers


@pytest.fixture
def redis_single(redis_single_server: LocalRedis) -> LocalRedis:
    """The session's single Redis, up and empty."""
    redis_single_server.start_all()
    redis_single_server.flush()
    return redis_single_server
