"""The lanes scenario (issue 12), for ``catfleet bench lanes`` to register: interactive
enqueue-to-commit latency at a steady rate alone and while a bulk-lane backfill runs, and the
backfill's throughput unloaded and with the interactive trickle beside it.

Here (tooling, not the product) so it may use the harness; ``workers/bench`` is another
engineer's. A sample's latency is ``categorized_at - enqueued_at`` of its row: the message's
timestamp (this process's clock) to the write's ``clock_timestamp()`` on the same machine, a
hair before COMMIT. Throughput: backfill rows over first enqueue to the last row's
``categorized_at``."""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import uuid4

import msgspec
import psycopg

from schemas import LANE_BULK, LANE_INTERACTIVE
from workers.harness.databases import create_database, dbname, drop_database
from workers.harness.processes import free_port, start_workers, stop_workers, wait_ready
from workers.settings import Settings

MERCHANTS = ("STARBUCKS", "WALMART", "UBER *TRIP", "SHELL OIL 5744", "JOE'S PIZZA", "NOWHERE SHOP")


class LatencyReport(msgspec.Struct):
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class LanesReport(msgspec.Struct):
    #: The fleet-wide bulk lane limit the workers ran with (CATFLEET_BULK_WRITES_PER_S; 0: none).
    bulk_limit: int
    backfill: int
    rate: float
    processes: int
    threads: int
    batch_size: int
    alone: list[LatencyReport]
    during: list[LatencyReport]
    unloaded_per_s: list[float]
    loaded_per_s: list[float]

    def summary(self) -> dict[str, Any]:
        def med(xs: list[float]) -> str:
            return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"

        return {
            "bulk lane limit /s": self.bulk_limit or "none",
            "interactive alone p50/p99 ms": f"{med([r.p50_ms for r in self.alone])} / {med([r.p99_ms for r in self.alone])}",
            "interactive during backfill p50/p99 ms": f"{med([r.p50_ms for r in self.during])} / {med([r.p99_ms for r in self.during])}",
            "backfill unloaded /s": med(self.unloaded_per_s),
            "backfill with trickle /s": med(self.loaded_per_s),
            "loaded / unloaded": f"{statistics.median(self.loaded_per_s) / statistics.median(self.unloaded_per_s):.2f}",
        }


def _latency(conn: psycopg.Connection[Any], ids: list[int]) -> LatencyReport:
    rows = conn.execute(
        "SELECT extract(epoch FROM categorized_at - enqueued_at) * 1000 FROM categorizations"
        " WHERE expense_id = ANY(%s) ORDER BY 1",
        (ids,),
    ).fetchall()
    ms = [float(r[0]) for r in rows]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return LatencyReport(
        samples=len(ms), p50_ms=round(statistics.median(ms), 1), p99_ms=round(p99, 1), max_ms=round(ms[-1], 1)
    )


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    suffix = uuid4().hex[:8]
    name = f"{dbname(settings.database_url) or 'catfleet'}_bench_lanes_{suffix}"
    url = create_database(settings.database_url, name)
    try:
        yield msgspec.structs.replace(
            settings, database_url=url, broker_namespace=f"cfbench-{suffix}", metrics_port=free_port()
        )
    finally:
        drop_database(settings.database_url, name)


def _load(conn: psycopg.Connection[Any], n: int) -> list[int]:
    cats = {}
    for key in ("coffee", "groceries", "rideshare", "fuel", "dining"):
        cats[key] = conn.execute("INSERT INTO categories (key, name) VALUES (%s, %s) RETURNING id", (key, key)).fetchone()[0]  # type: ignore[index]  # fmt: skip
    for value, key in (
        ("starbucks", "coffee"),
        ("walmart", "groceries"),
        ("uber", "rideshare"),
        ("shell oil", "fuel"),
    ):
        conn.execute(
            "INSERT INTO categorization_patterns (category_id, kind, value, weight) VALUES (%s, 'merchant', %s, 0.95)",
            (cats[key], value),
        )
    conn.execute(
        "INSERT INTO categorization_patterns (category_id, kind, value, weight) VALUES (%s, 'keyword', 'pizza', 0.8)",
        (cats["dining"],),
    )
    rows = conn.execute(
        "INSERT INTO expenses (user_id, merchant_name, amount, transaction_date)"
        " SELECT 1 + g %% 500, (%s::text[])[1 + g %% %s] || ' ' || (g %% 997), 5 + g %% 90, DATE '2026-03-14'"
        " FROM generate_series(1, %s) g RETURNING id",
        (list(MERCHANTS), len(MERCHANTS), n),
    ).fetchall()
    return sorted(r[0] for r in rows)


def _trickle(producer: Any, ids: list[int], rate: float, stop: threading.Event) -> list[int]:
    sent: list[int] = []
    start = time.perf_counter()
    for i, expense in enumerate(ids):
        if stop.is_set():
            break
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.enqueue([expense], lane=LANE_INTERACTIVE)
        sent.append(expense)
    return sent


def _backfill(conn: psycopg.Connection[Any], producer: Any, ids: list[int], tag: str) -> float:
    """Enqueue ``ids`` on the bulk lane; rows per second until the last one is written."""
    started = time.time()
    for i in range(0, len(ids), 10_000):
        producer.enqueue(ids[i : i + 10_000], correlation_id=tag, lane=LANE_BULK)
    query = "SELECT count(*), extract(epoch FROM max(categorized_at)) FROM categorizations WHERE correlation_id = %s"
    while True:
        n, last = conn.execute(query, (tag,)).fetchone()  # type: ignore[misc]
        if n >= len(ids):
            return len(ids) / (float(last) - started)
        time.sleep(0.5)


def run(
    settings: Settings,
    *,
    backfill: int = 100_000,
    rate: float = 10.0,
    samples: int = 150,
    reps: int = 1,
    processes: int = 2,
    threads: int = 4,
    bulk_limits: Sequence[int] = (0,),
    log_path: str = "/dev/null",
) -> list[LanesReport]:
    """Per rep and per bulk lane limit, alternated (limit A, B, A, B...; workers restarted with
    each): ``samples`` interactive expenses at ``rate``/s alone; a ``backfill``-expense bulk run
    unloaded; the same again with the interactive trickle running until it is done."""
    from workers.app import build_app
    from workers.producer import Producer

    reports = [
        LanesReport(
            bulk_limit=limit,
            backfill=backfill,
            rate=rate,
            processes=processes,
            threads=threads,
            batch_size=settings.batch_size,
            alone=[],
            during=[],
            unloaded_per_s=[],
            loaded_per_s=[],
        )
        for limit in bulk_limits
    ]
    with _database(settings) as s, psycopg.connect(s.database_url, autocommit=True) as conn:
        ids = _load(conn, (2 * backfill + 51 * samples) * reps * len(reports))
        app = build_app(s)
        producer = Producer(app.broker, batch_size=s.batch_size)
        pool = iter(ids)
        take = lambda n: [next(pool) for _ in range(n)]  # noqa: E731
        try:
            with open(log_path, "wb") as log:
                for rep in range(reps):
                    for report in reports:
                        own = msgspec.structs.replace(
                            s, bulk_writes_per_s=report.bulk_limit, cache_prefix=f"cfbench-{uuid4().hex[:10]}"
                        )
                        proc = start_workers(own, log=log, processes=processes, threads=threads)
                        try:
                            wait_ready(own, proc, processes=processes)
                            _measure(
                                conn,
                                producer,
                                report,
                                take,
                                rate=rate,
                                samples=samples,
                                tag=f"{rep}-{report.bulk_limit}",
                            )
                        finally:
                            stop_workers(proc)
        finally:
            app.close()
    return reports


def _measure(
    conn: psycopg.Connection[Any],
    producer: Any,
    report: LanesReport,
    take: Any,
    *,
    rate: float,
    samples: int,
    tag: str,
) -> None:
    alone = take(samples)
    _trickle(producer, alone, rate, threading.Event())
    time.sleep(1.0)
    report.alone.append(_latency(conn, alone))
    report.unloaded_per_s.append(
        round(_backfill(conn, producer, take(report.backfill), f"unloaded-{tag}"), 1)
    )
    trickle_ids, bulk = take(samples * 50), take(report.backfill)
    stop = threading.Event()
    sent: list[int] = []
    t = threading.Thread(target=lambda: sent.extend(_trickle(producer, trickle_ids, rate, stop)))
    t.start()
    try:
        report.loaded_per_s.append(round(_backfill(conn, producer, bulk, f"loaded-{tag}"), 1))
    finally:
        stop.set()
        t.join()
    time.sleep(1.0)
    report.during.append(_latency(conn, sent))
