"""CPU seconds spent per component (workers, PostgreSQL, Redis, the rest) between two snapshots,
read from /proc: where the bottleneck sits during a benchmark run."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _component(pid_dir: Path, worker_pgid: int | None) -> tuple[str, float] | None:
    try:
        stat = (pid_dir / "stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    pgid = int(fields[2])
    seconds = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    if worker_pgid is not None and pgid == worker_pgid:
        return "workers", seconds
    if comm.startswith("postgres"):
        return "postgresql", seconds
    if comm.startswith("redis-server"):
        return "redis", seconds
    if int(pid_dir.name) == os.getpid():
        return "bench (producer)", seconds
    return "other", seconds


def snapshot(worker_pgid: int | None) -> Counter[str]:
    totals: Counter[str] = Counter()
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            got = _component(pid_dir, worker_pgid)
            if got:
                totals[got[0]] += got[1]  # type: ignore[assignment]
    return totals


def delta(before: Counter[str], after: Counter[str]) -> dict[str, float]:
    return {
        k: round(after[k] - before.get(k, 0.0), 2)
        for k in sorted(after)
        if after[k] - before.get(k, 0.0) > 0.005
    }
