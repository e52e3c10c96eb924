"""A RabbitMQ cluster of its own for a test: nodes of the installed Debian package on loopback,
each with its own node name, AMQP and distribution ports, data, log and pid files in a temp
dir, and an Erlang cookie of the cluster's own (its ``HOME``); management and every other plugin
off. The shared RabbitMQ (``rabbit@localhost`` on 5672) is never touched; the nodes register
their names with the host's epmd like it does.

The first node starts alone; the others find it through classic peer discovery and join it at
boot. Every node runs in a process group of its own, killed (SIGKILL) on the way out whatever
happened."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import uuid4

SCRIPTS = Path("/usr/lib/rabbitmq/bin")  # the package's own scripts (/usr/sbin ones su to rabbitmq)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, root: Path, name: str, home: Path):
        self.name = name
        self.dir = root / name.split("@")[0]
        self.dir.mkdir(parents=True)
        self.home = home
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),  # the cluster's own .erlang.cookie
            "LANG": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",  # not /etc/rabbitmq/rabbitmq-env.conf (the shared node's)
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def configure(self, seed: str | None) -> None:
        lines = [f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}", "log.console = false"]
        if seed is not None:
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {seed}",
            ]
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "enabled_plugins").write_text("[].\n")

    def start(self) -> None:
        with open(self.dir / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(SCRIPTS / "rabbitmq-server")],
                env=self.env(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.amqp_port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL to the node's whole process group (the script, beam.smp, erl_child_setup)."""
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(SCRIPTS / "rabbitmqctl"), "-n", self.name, "-q", *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr or done.stdout}")
        return done.stdout


class RabbitCluster:
    def __init__(self, nodes: list[Node]):
        self.nodes = nodes

    def url(self, vhost: str = "%2F") -> str:
        """One broker URL naming every node, in order."""
        hosts = ",".join(f"127.0.0.1:{n.amqp_port}" for n in self.nodes)
        return f"amqp://guest:guest@{hosts}/{vhost}"

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def queues(self) -> list[dict[str, Any]]:
        """``rabbitmqctl list_queues`` (name, type, leader, members, messages) from a live node."""
        out = self.alive()[0].ctl(
            "list_queues", "name", "type", "leader", "members", "messages", "--formatter", "json"
        )
        return list(json.loads(out))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


@contextmanager
def rabbit_cluster(root: Path, size: int = 3, *, timeout: float = 120) -> Iterator[RabbitCluster]:
    """``size`` clustered nodes under ``root``, every one answering AMQP and a cluster member."""
    token = uuid4().hex[:6]
    home = root / "home"
    home.mkdir(parents=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(f"CATFLEETTEST{uuid4().hex.upper()}")
    cookie.chmod(0o400)
    nodes = [Node(root, f"cftest{token}n{i + 1}@localhost", home) for i in range(size)]
    cluster = RabbitCluster(nodes)
    try:
        nodes[0].configure(seed=None)
        nodes[0].start()
        _wait(lambda: nodes[0].answers(), timeout, "the first RabbitMQ node", nodes[:1])
        for n in nodes[1:]:
            n.configure(seed=nodes[0].name)
            n.start()
        _wait(lambda: all(n.answers() for n in nodes), timeout, "every RabbitMQ node", nodes)

        def clustered() -> bool:
            status = json.loads(nodes[0].ctl("cluster_status", "--formatter", "json"))
            return sorted(status.get("running_nodes", [])) == sorted(n.name for n in nodes)

        _wait(clustered, timeout, "the nodes to form one cluster", nodes)
        yield cluster
    finally:
        for n in nodes:
            n.kill()


def _wait(predicate: Any, timeout: float, what: str, nodes: list[Node]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [n for n in nodes if n.proc is not None and n.proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(
                f"{n.name}:\n{(n.dir / 'server.log').read_text()[-2000:]}" for n in dead or nodes
            )
            raise AssertionError(f"timed out waiting for {what}:\n{logs}")
        time.sleep(0.2)
