"""CPU seconds per component between two snapshots, read from /proc: the workers (the
``catfleet worker`` process group), the bench database's own PostgreSQL backends (by
``pg_stat_activity.datname``: not the other databases of a shared server), the bench process,
any further processes named by the caller (the floor's), and Redis (one server process: shared
with whatever else uses it)."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = "workers"
POSTGRESQL = "postgresql (bench db backends)"
REDIS = "redis (whole server)"
BENCH = "bench (producer)"

#: pid -> (component, CPU seconds so far)
Snapshot = dict[int, tuple[str, float]]


def bench_backends(conn: psycopg.Connection[Any], exclude: Collection[int] = ()) -> set[int]:
    """The pids of the backends connected to ``conn``'s database, but for ``exclude``."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND NOT pid = ANY(%s)",
        (list(exclude),),
    ).fetchall()
    return {int(r[0]) for r in rows}


def _stat(pid_dir: Path) -> tuple[str, int, float] | None:
    """(command, process group, utime + stime in seconds) of one /proc entry."""
    try:
        stat = (pid_dir / "stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return comm, int(fields[2]), (int(fields[11]) + int(fields[12])) / TICKS


def snapshot(
    *,
    worker_pgid: int | None = None,
    pg_pids: Collection[int] = (),
    others: Mapping[str, Collection[int]] | None = None,
) -> Snapshot:
    """CPU so far of every process that belongs to a component; the rest of the machine is left out."""
    extra = {pid: name for name, pids in (others or {}).items() for pid in pids}
    me = os.getpid()
    out: Snapshot = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        pid = int(pid_dir.name)
        got = _stat(pid_dir)
        if got is None:
            continue
        comm, pgid, seconds = got
        if worker_pgid is not None and pgid == worker_pgid:
            out[pid] = (WORKERS, seconds)
        elif pid in pg_pids:
            out[pid] = (POSTGRESQL, seconds)
        elif pid in extra:
            out[pid] = (extra[pid], seconds)
        elif pid == me:
            out[pid] = (BENCH, seconds)
        elif comm.startswith("redis-server"):
            out[pid] = (REDIS, seconds)
    return out


def delta(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per component between the snapshots. A process born in between counts from its
    start; one gone by ``after`` is missed (take ``after`` before the workload's connections close)."""
    totals: Counter[str] = Counter()
    for pid, (name, seconds) in after.items():
        prior = before.get(pid)
        totals[name] += seconds - (prior[1] if prior and prior[0] == name else 0.0)  # type: ignore[assignment]
    return {k: round(v, 2) for k, v in sorted(totals.items()) if v > 0.005}


def per_expense_us(seconds: Mapping[str, float], expenses: int) -> dict[str, float]:
    """The CPU of each component in microseconds per expense."""
    return {k: round(v * 1e6 / expenses, 1) for k, v in seconds.items()} if expenses else {}


class Window:
    """The CPU seconds per component measured over a ``window`` (set when it closes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}


@contextlib.contextmanager
def window(
    conn: psycopg.Connection[Any],
    *,
    exclude: Collection[int] = (),
    worker_pgid: int | None = None,
    others: Mapping[str, Collection[int]] | None = None,
) -> Iterator[Window]:
    """CPU per component over the body: the backends of ``conn``'s database (but ``exclude``, the
    bench's own connections) read at both ends, the worker group, ``others``, the bench, Redis."""
    got = Window()
    before = snapshot(worker_pgid=worker_pgid, pg_pids=bench_backends(conn, exclude), others=others)
    yield got
    after = snapshot(worker_pgid=worker_pgid, pg_pids=bench_backends(conn, exclude), others=others)
    got.seconds = delta(before, after)
