"""``catfleet bench console``: the console at scale. A private ``redis-server`` (so its command
counts are the console's alone) and a throwaway database get N dead letters and M worker
process records (each with its broker heartbeat and unacked set, as live workers leave them);
then a real ``catfleet console`` is timed page by page from a client (wall time of the whole
answer, as a browser sees it), and the broker commands per second one open live page costs are
counted against an idle window (alternated), with 1 and with 5 pages open.

With ``--broker rabbitmq``: a private vhost on the local RabbitMQ (made and deleted with
``rabbitmqctl``) gets the letters in its XQs, with their failure records and dead-letter index rows
as the workers write them, and the broker's cost is the AMQP frames it receives on the console's
connections (``rabbitmqctl list_connections recv_cnt``)."""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import psycopg
import redis

from workers.backends.redis.fleetstate import RedisFleetState
from workers.backends.redis.keys import RedisKeys
from workers.dlq import synthetic
from workers.fleet.state import BusyThread, ProcessRecord, now_ms
from workers.harness.databases import create_database, drop_database
from workers.harness.processes import free_port, start_catfleet
from workers.settings import Settings

USER = ("bench", "bench-pw")
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: How deep the deep pages are (letters before them).
DEEP = 50_000


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
    #: ``redis`` or ``rabbitmq``.
    backend: str = "redis"
    #: Seconds of the first filtered page (with Redis: the dead-letter index catching up on every letter).
    first_filtered_s: float = 0.0


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


def process_records(n: int) -> list[ProcessRecord]:
    """``n`` live worker processes' records, each with two busy threads."""
    at = now_ms()
    out = []
    for pid in range(1, n + 1):
        busy = [
            BusyThread(message_id=str(uuid4()), actor="categorize_batch", queue="categorize", expense_ids=500, since_ms=at)
            for _ in range(2)
        ]  # fmt: skip
        out.append(
            ProcessRecord(
                id=f"bench-host:{pid}:{at}", host="bench-host", pid=pid, queues=["categorize", "learn"],
                threads=4, busy=busy, ruleset_version=1, breaker="closed", paused=[], started_ms=at, beat_ms=at,
            )
        )  # fmt: skip
    return out


def publish_processes(client: redis.Redis, keys: RedisKeys, n: int, ttl_ms: int) -> None:
    """``n`` worker processes as live ones leave them: a fresh record with busy threads, a broker
    heartbeat and an unacked set per queue."""
    state = RedisFleetState(client, keys, ttl_ms=ttl_ms)
    at = now_ms()
    for record in process_records(n):
        state.publish(record)
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


def _rate(commands: Callable[[], int], seconds: float) -> float:
    before, started = commands(), time.monotonic()
    time.sleep(seconds)
    return (commands() - before) / (time.monotonic() - started)


def run(
    settings: Settings,
    *,
    letters: int,
    processes: int,
    reps: int,
    watch_s: float,
    log: Path,
    broker: str = "redis",
    amqp_url: str = DEFAULT_AMQP_URL,
) -> ConsoleReport:
    """``broker``: ``redis`` (a private redis-server) or ``rabbitmq`` (a private vhost on the
    RabbitMQ of ``amqp_url``, made and deleted with the local ``rabbitmqctl``)."""
    if broker == "rabbitmq":
        return _run_rabbitmq(settings, letters=letters, processes=processes, reps=reps, watch_s=watch_s,
                             log=log, amqp_url=amqp_url)  # fmt: skip
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
            report = _measure(
                own, "redis", mids, letters, processes, reps, watch_s, log, lambda: _commands(client)
            )
            client.close()
            return report
        finally:
            drop_database(settings.database_url, name)


def _run_rabbitmq(
    settings: Settings, *, letters: int, processes: int, reps: int, watch_s: float, log: Path, amqp_url: str
) -> ConsoleReport:
    from workers.backends.rabbitmq import RabbitmqBackend
    from workers.backends.rabbitmq import synthetic as amqp_synthetic
    from workers.backends.rabbitmq.fleetstate import PostgresFleetState
    from workers.failures import LazyDatabase

    vhost = f"catfleet-bench-console-{uuid4().hex[:8]}"
    name = vhost.replace("-", "_")
    backend = RabbitmqBackend(msgspec.structs.replace(settings, broker_url=amqp_url))
    try:
        with backend.scratch(vhost) as scratch:
            db_url = create_database(settings.database_url, name)
            own = msgspec.structs.replace(
                scratch, database_url=db_url, console_users=f"{USER[0]}:{USER[1]}:admin", metrics_port=0,
            )  # fmt: skip
            try:
                mids = amqp_synthetic.fill(own.broker_url, db_url, f"amqp:{vhost}", letters)
                database = LazyDatabase(db_url, size=1)
                state = PostgresFleetState(database, vhost=vhost, ttl_ms=3_600_000)
                for record in process_records(processes):
                    state.publish(record)
                database.close()
                return _measure(own, "rabbitmq", mids, letters, processes, reps, watch_s, log,
                                lambda: _amqp_frames(vhost))  # fmt: skip
            finally:
                drop_database(settings.database_url, name)
    finally:
        backend.close()


def _amqp_frames(vhost: str) -> int:
    """What the broker has received on the connections of ``vhost`` (``recv_cnt``: one per
    AMQP method frame sent on its own, as pika's blocking connection sends them)."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "vhost", "recv_cnt"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    total = 0
    for line in done.stdout.splitlines():
        parts = line.rsplit("\t", 1)
        if len(parts) == 2 and parts[0] == vhost and parts[1].strip().isdigit():
            total += int(parts[1])
    return total


def _measure(
    own: Settings,
    broker: str,
    mids: dict[int, str],
    letters: int,
    processes: int,
    reps: int,
    watch_s: float,
    log: Path,
    commands: Callable[[], int],
) -> ConsoleReport:
    port = free_port()
    with open(log, "ab") as out:
        console = start_catfleet(["console", "--port", str(port)], own, log=out)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base)
        # the first filtered query indexes every letter (Redis; RabbitMQ's workers index as they
        # go), then the table is vacuumed and analyzed, as autovacuum soon does
        started = time.perf_counter()
        _get(f"{base}/dead-letters?expense_id=1")
        index_s = time.perf_counter() - started
        with psycopg.connect(own.database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE dead_letter_index")
            conn.execute("VACUUM ANALYZE message_failures")
        middle = letters // 2
        _, _, spec = synthetic.letter_of(middle)
        deep = min(DEEP, max(letters - 100, 0))
        cursor = _get_json(f"{base}/api/dead-letters?offset={deep - 50}&limit=50")["next_cursor"]
        pages = [
            "/", "/workers", "/dead-letters", f"/dead-letters?offset={deep}", f"/dead-letters?after={cursor}",
            f"/dead-letters?expense_id={spec['ids'][3]}", f"/dead-letters?correlation_id={spec['cid']}",
            "/dead-letters?error_type=UnknownCategory", f"/dead-letters?error_type=UnknownCategory&after={cursor}",
            "/dead-letters?queue=learn&older_than=2d", "/dead-letters?actor=learn_from_correction",
            f"/dead-letters/{mids[middle]}", "/patterns", "/audit", "/api/status",
            f"/api/dead-letters?expense_id={spec['ids'][0]}",
        ]  # fmt: skip
        timings = [_timed(page, partial(_get, base + page), reps) for page in pages]
        timings.append(_facets(own, reps))
        rates = [_broker_rate(commands, base, n, watch_s) for n in (1, 5)]
    finally:
        console.terminate()
        console.wait(timeout=30)
    return ConsoleReport(
        letters=letters, processes=processes, reps=reps, pages=timings, broker=rates,
        refresh_ms=own.console_refresh_ms, backend=broker, first_filtered_s=round(index_s, 1),
    )  # fmt: skip


def _timed(page: str, get: Callable[[], float], reps: int) -> PageTiming:
    first = get()
    samples = sorted(get() for _ in range(reps))
    return PageTiming(
        page=page, first_ms=round(first, 1), median_ms=round(statistics.median(samples), 1),
        min_ms=round(samples[0], 1), max_ms=round(samples[-1], 1),
        p95_ms=round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 1),
    )  # fmt: skip


def _facets(own: Settings, reps: int) -> PageTiming:
    """The dead-letter store's ``facets()`` in this process (the console reuses them for 10 s)."""
    from workers.backends import backend_class
    from workers.dlq import open_store

    backend_class(own.broker_url).quiet_connect_logs()
    store = open_store(own)
    try:

        def once() -> float:
            started = time.perf_counter()
            store.facets()
            return (time.perf_counter() - started) * 1000

        return _timed("facets() (in process, uncached)", once, reps)
    finally:
        store.close()


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(USER).encode()).decode())
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def _broker_rate(commands: Callable[[], int], base: str, pages_open: int, watch_s: float) -> CommandRate:
    """Idle, open, idle, open: the console's commands per second over the idle ones (medians)."""
    idle, busy = [], []
    for _ in range(2):
        idle.append(_rate(commands, watch_s / 2))
        stop = threading.Event()
        threads = _open_pages(base, pages_open, stop)
        time.sleep(1.0)  # the streams are open
        busy.append(_rate(commands, watch_s / 2))
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
    unit = "Redis commands" if report.backend == "redis" else "AMQP frames received (rabbitmqctl recv_cnt)"
    lines = [
        f"{report.backend}: {report.letters} dead letters, {report.processes} worker process records;"
        f" {report.reps} requests per page after a first (cold) one; wall time of the whole answer at the client;"
        f" the first filtered page (index catch-up) took {report.first_filtered_s} s, then VACUUM ANALYZE",
        f"{'page':<58}{'first':>9}{'median':>9}{'min':>9}{'max':>9}{'p95':>9}  (ms)",
    ]
    lines += [
        f"{t.page[:57]:<58}{t.first_ms:>9.1f}{t.median_ms:>9.1f}{t.min_ms:>9.1f}{t.max_ms:>9.1f}{t.p95_ms:>9.1f}"
        for t in report.pages
    ]
    for b in report.broker:
        lines.append(
            f"{unit}/s with {b.pages_open} live page(s) open: {b.commands_per_s:.1f}"
            f" over an idle {b.idle_per_s:.1f} (refresh every {report.refresh_ms} ms)"
        )
    return "\n".join(lines)
