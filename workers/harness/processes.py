"""Starting and stopping ``catfleet`` child processes (the demo, the benchmarks and the tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import msgspec

from workers.config import ENV_PREFIX, env_name
from workers.fleet.state import FleetState, ProcessRecord
from workers.settings import Settings

#: The repository root (the directory holding ``workers``).
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (for a worker group's metrics server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """An environment that makes a child process build exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for field, value in msgspec.structs.asdict(settings).items():
        env[env_name(field)] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def start_catfleet(
    argv: list[str], settings: Settings, *, log: IO[bytes], **env: str
) -> subprocess.Popen[bytes]:
    """``catfleet ARGV...`` as a child in its own process group, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "workers", *argv],
        env=settings_env(settings, **env),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_workers(
    settings: Settings,
    *,
    log: IO[bytes],
    processes: int | None = None,
    threads: int | None = None,
    boot: str | None = None,
    args: Sequence[str] = (),
    **env: str,
) -> subprocess.Popen[bytes]:
    """``catfleet worker`` in its own process group (``args``: further worker options)."""
    argv = ["worker"]
    if boot:
        argv += ["--boot", boot]
    if processes:
        argv += ["--processes", str(processes)]
    if threads:
        argv += ["--threads", str(threads)]
    return start_catfleet([*argv, *args], settings, log=log, **env)


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def own_records(state: FleetState, proc: subprocess.Popen[bytes]) -> list[ProcessRecord]:
    """The fleet records of the worker processes that ``proc`` (``catfleet worker``) supervises."""
    host = socket.gethostname()
    return [r for r in state.processes() if r.host == host and _parent_pid(r.pid) == proc.pid]


def wait_ready(
    settings: Settings, proc: subprocess.Popen[bytes], *, timeout: float = 60.0, processes: int = 1
) -> None:
    """Until ``processes`` worker processes of ``proc`` have published their fleet record (they do
    once their consumers run), on every broker."""
    from workers.backends import backend_for

    backend = backend_for(settings)
    state = backend.fleet_state()
    deadline = time.monotonic() + timeout
    try:
        while len(own_records(state, proc)) < processes:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {timeout}s")
            time.sleep(0.05)
    finally:
        state.close()
        backend.close()


def stop_workers(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal the child's process group (SIGTERM: Dramatiq drains, a relay finishes its claim),
    SIGKILL after ``timeout``; its exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    return proc.returncode
