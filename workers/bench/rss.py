"""Resident memory of the processes of a ``catfleet worker`` group, read from /proc: which
processes are the worker processes, their VmRSS, and a sampler that records it every second."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

MB = 1024 * 1024


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time in ticks) of ``pid``, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[19])


def worker_pids(pgid: int, processes: int) -> list[int]:
    """The worker processes of the group led by Dramatiq's main process ``pgid``: its first
    ``processes`` children (Dramatiq starts the worker processes before any fork process, such
    as the metrics exposition server)."""
    children = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            got = _stat(int(pid_dir.name))
            if got and got[0] == pgid and got[1] == pgid:
                children.append((got[2], int(pid_dir.name)))
    pids = [pid for _, pid in sorted(children)][:processes]
    if len(pids) < processes:
        raise RuntimeError(f"found {len(pids)} of {processes} worker processes in group {pgid}")
    return pids


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` in bytes (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Sampler:
    """Samples the RSS of ``pids`` every ``interval`` seconds in a thread: (monotonic time,
    RSS in MB per pid). Use as a context manager."""

    def __init__(self, pids: list[int], *, interval: float = 1.0):
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> dict[int, float]:
        now = {pid: (rss_bytes(pid) or 0) / MB for pid in self.pids}
        self.samples.append((time.monotonic(), now))
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[tuple[float, dict[int, float]]]:
        return [(t, s) for t, s in self.samples if start <= t <= end]


def total(sample: dict[int, float]) -> float:
    return sum(sample.values())


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute (0 with fewer than 3)."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 60
