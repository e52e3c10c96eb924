"""Hosts made of Linux network namespaces (root only): a LAN of namespaces joined by veth pairs to
one bridge, whose links a test can cut and heal.

Every name and the subnet (``10.213.<n>.0/24``) are unique per run, and every address lives only
inside namespaces made here: the bridge's own address (``.254``, in the LAN namespace) is where
the test process talks from, in a thread that joined that namespace (``Lan.call``), so nothing
the test sends ever leaves through the machine's real interfaces. ``lan()`` deletes everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from uuid import uuid4

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def join_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    """One namespace of the LAN: ``address`` on its ``eth0``, linked to the bridge by ``port``."""

    name: str
    netns: str
    address: str
    port: str  # the bridge's end of the host's veth pair (in the LAN namespace)

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Lan:
    netns: str
    subnet: str  # "10.213.<n>"
    hosts: dict[str, Host] = field(default_factory=dict)
    _executor: ThreadPoolExecutor | None = None

    @property
    def address(self) -> str:
        """The bridge's address: where the test process's connections come from."""
        return f"{self.subnet}.254"

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread inside the LAN namespace: every socket it opens is there (and stays
        there wherever it is used later; but open connections there, never in the caller)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netns", initializer=join_netns, initargs=(self.netns,)
            )
        return self._executor.submit(fn).result()

    def cut(self, host: str) -> None:
        """Unplug ``host``: its processes live on, nothing reaches them and they reach nothing
        (the bridge's end goes down; the host sees its link lose carrier, as with a pulled cable)."""
        ip("-n", self.netns, "link", "set", self.hosts[host].port, "down")

    def heal(self, host: str) -> None:
        ip("-n", self.netns, "link", "set", self.hosts[host].port, "up")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _free_subnet() -> str:
    used = subprocess.run(
        ["ip", "-all", "netns", "exec", "ip", "-o", "-4", "addr"], capture_output=True, text=True
    )
    while True:
        subnet = f"10.213.{random.randint(0, 253)}"
        if f" {subnet}." not in used.stdout:
            return subnet


def _kill_inside(netns: str) -> None:
    """Processes still inside a namespace of this run (all started by this test): SIGKILL."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def lan(names: Sequence[str]) -> Iterator[Lan]:
    """A namespace per name (address ``10.213.<n>.<i + 1>``), each linked to a bridge in a LAN
    namespace; everything (and any process left inside) removed afterwards."""
    run = uuid4().hex[:6]
    net = Lan(netns=f"cf{run}-lan", subnet=_free_subnet())
    made: list[str] = []
    try:
        ip("netns", "add", net.netns)
        made.append(net.netns)
        ip("-n", net.netns, "link", "set", "lo", "up")
        ip("-n", net.netns, "link", "add", "br0", "type", "bridge")
        ip("-n", net.netns, "addr", "add", f"{net.address}/24", "dev", "br0")
        ip("-n", net.netns, "link", "set", "br0", "up")
        for i, name in enumerate(names):
            host = Host(
                name=name, netns=f"cf{run}-{name}", address=f"{net.subnet}.{i + 1}", port=f"p{run}{i}"
            )
            ip("netns", "add", host.netns)
            made.append(host.netns)
            ip("link", "add", f"v{run}{i}", "netns", host.netns, "type", "veth", "peer", "name", host.port,
               "netns", net.netns)  # fmt: skip
            ip("-n", host.netns, "link", "set", f"v{run}{i}", "name", "eth0")
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
            ip("-n", net.netns, "link", "set", host.port, "master", "br0", "up")
            net.hosts[name] = host
        yield net
    finally:
        net.close()
        for netns in reversed(made):
            _kill_inside(netns)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", netns)
