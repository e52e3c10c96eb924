"""``catfleet bench console``: the console at scale. A private ``redis-server`` (so its command
counts are the console's alone) and a throwaway database get N dead letters and M worker
process records (each with its broker heartbeat and unacked set, as live workers leave them);
then a real ``catfleet console`` is timed page by page from a client (wall time of the whole
answer, as a browser sees it), and the broker commands per second one open live page costs are
counted against an idle window (alternated), with 1 and with 5 pages open."""

from __future__ import annotations

import base64
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import msgspec
import redis

from workers.backends.redis.fleetstate import RedisFleetState
from workers.backends.redis.keys import RedisKeys
from workers.dlq import synthetic
from workers.fleet.state import BusyThread, ProcessRecord, now_ms
from workers.harness.databases import create_database, drop_database
from workers.harness.processes import free_port, start_catfleet
from workers.settings import Settings

USER = ("bench", "bench-pw")


class PageTiming(msgspec.Struct):
    page: str
    first_ms: float  # the first request (cold: index catch-up, connection pools)
    median_ms: float
    min_ms: float
    max_ms: float
    p95_ms: float


class CommandRate(msgspec.Struct):
    pages_open: int
    commands_per_s: float  # the console's, over the idle baseline
    idle_per_s: float  # the workers' records and maintenance alone (what the bench writes: none)


class ConsoleReport(msgspec.Struct):
    letters: int
    processes: int
    reps: int
    pages: list[PageTiming]
    broker: list[CommandRate]
    refresh_ms: int


@contextmanager
def private_redis() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="catfleet-console-bench-")
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def publish_processes(client: redis.Redis, keys: RedisKeys, n: int, ttl_ms: int) -> None:
    """``n`` worker processes as live ones leave them: a fresh record with busy threads, a broker
    heartbeat and an unacked set per queue."""
    state = RedisFleetState(client, keys, ttl_ms=ttl_ms)
    at = now_ms()
    for pid in range(1, n + 1):
        busy = [
            BusyThread(message_id=str(uuid4()), actor="categorize_batch", queue="categorize", expense_ids=500, since_ms=at)
            for _ in range(2)
        ]  # fmt: skip
        state.publish(
            ProcessRecord(
                id=f"bench-host:{pid}:{at}", host="bench-host", pid=pid, queues=["categorize", "learn"],
                threads=4, busy=busy, ruleset_version=1, breaker="closed", paused=[], started_ms=at, beat_ms=at,
            )
        )  # fmt: skip
        broker_id = str(uuid4())
        client.zadd(keys.heartbeats, {broker_id: at + 3_600_000})  # fresh for the whole run
        for queue in ("categorize", "learn"):
            client.sadd(keys.acks(broker_id, queue), *[str(uuid4()) for _ in range(4)])


def _get(url: str) -> float:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(USER).encode()).decode())
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return (time.perf_counter() - started) * 1000


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def _open_pages(base: str, n: int, stop: threading.Event) -> list[threading.Thread]:
    def read() -> None:
        request = urllib.request.Request(f"{base}/events?page=overview")
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(USER).encode()).decode())
        with urllib.request.urlopen(request, timeout=60) as r:
            while not stop.is_set() and r.readline():
                pass

    threads = [threading.Thread(target=read, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def _rate(client: redis.Redis, seconds: float) -> float:
    before, started = _commands(client), time.monotonic()
    time.sleep(seconds)
    return (_commands(client) - before) / (time.monotonic() - started)


def run(
    settings: Settings, *, letters: int, processes: int, reps: int, watch_s: float, log: Path
) -> ConsoleReport:
    with private_redis() as url:
        name = f"catfleet_bench_console_{uuid4().hex[:8]}"
        db_url = create_database(settings.database_url, name)
        own = msgspec.structs.replace(
            settings, broker_url=url, database_url=db_url, broker_namespace="bench",
            console_users=f"{USER[0]}:{USER[1]}:admin", metrics_port=0,
        )  # fmt: skip
        try:
            keys = RedisKeys(own.broker_namespace)
            client = redis.Redis.from_url(url)
            mids = synthetic.fill(client, keys, letters)
            publish_processes(client, keys, processes, ttl_ms=3_600_000)
            port = free_port()
            with open(log, "ab") as out:
                console = start_catfleet(["console", "--port", str(port)], own, log=out)
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_up(base)
                middle = letters // 2
                _, _, spec = synthetic.letter_of(middle)
                pages = [
                    "/", "/workers", "/dead-letters", "/dead-letters?offset=50000",
                    f"/dead-letters?expense_id={spec['ids'][3]}", f"/dead-letters?correlation_id={spec['cid']}",
                    "/dead-letters?error_type=UnknownCategory", "/dead-letters?queue=learn&older_than=2d",
                    "/dead-letters?actor=learn_from_correction", f"/dead-letters/{mids[middle]}",
                    "/patterns", "/audit", "/api/status", f"/api/dead-letters?expense_id={spec['ids'][0]}",
                ]  # fmt: skip
                timings = []
                for page in pages:
                    first = _get(base + page)
                    samples = [_get(base + page) for _ in range(reps)]
                    samples.sort()
                    timings.append(
                        PageTiming(
                            page=page, first_ms=round(first, 1), median_ms=round(statistics.median(samples), 1),
                            min_ms=round(samples[0], 1), max_ms=round(samples[-1], 1),
                            p95_ms=round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 1),
                        )
                    )  # fmt: skip
                broker = [_broker_rate(client, base, n, watch_s) for n in (1, 5)]
            finally:
                console.terminate()
                console.wait(timeout=30)
            client.close()
            return ConsoleReport(
                letters=letters, processes=processes, reps=reps, pages=timings, broker=broker,
                refresh_ms=own.console_refresh_ms,
            )  # fmt: skip
        finally:
            drop_database(settings.database_url, name)


def _broker_rate(client: redis.Redis, base: str, pages_open: int, watch_s: float) -> CommandRate:
    """Idle, open, idle, open: the console's commands per second over the idle ones (medians)."""
    idle, busy = [], []
    for _ in range(2):
        idle.append(_rate(client, watch_s / 2))
        stop = threading.Event()
        threads = _open_pages(base, pages_open, stop)
        time.sleep(1.0)  # the streams are open
        busy.append(_rate(client, watch_s / 2))
        stop.set()
        for t in threads:
            t.join(timeout=5)
    idle_s = statistics.median(idle)
    return CommandRate(
        pages_open=pages_open,
        commands_per_s=round(statistics.median(busy) - idle_s, 1),
        idle_per_s=round(idle_s, 1),
    )


def _wait_up(base: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the console did not answer within 30 s")


def render(report: ConsoleReport) -> str:
    lines = [
        f"{report.letters} dead letters, {report.processes} worker process records; {report.reps} requests"
        " per page after a first (cold) one; wall time of the whole answer at the client",
        f"{'page':<58}{'first':>9}{'median':>9}{'min':>9}{'max':>9}{'p95':>9}  (ms)",
    ]
    lines += [
        f"{t.page[:57]:<58}{t.first_ms:>9.1f}{t.median_ms:>9.1f}{t.min_ms:>9.1f}{t.max_ms:>9.1f}{t.p95_ms:>9.1f}"
        for t in report.pages
    ]
    for b in report.broker:
        lines.append(
            f"broker commands/s with {b.pages_open} live page(s) open: {b.commands_per_s:.1f}"
            f" over an idle {b.idle_per_s:.1f} (refresh every {report.refresh_ms} ms)"
        )
    return "\n".join(lines)
