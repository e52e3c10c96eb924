"""``catfleet demo``: a demo database, a broker space made for this run and deleted afterwards
(``Backend.scratch``: a Redis namespace or a RabbitMQ vhost ``catfleet-demo-<random>``; the demo
never flushes, purges or consumes queues it did not make), real worker processes, every expense
enqueued, progress while it runs, and a summary at the end."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from workers.app import build_app
from workers.config import env_name
from workers.demo.data import load_demo_data
from workers.harness.databases import admin_url, create_database, dbname, with_dbname
from workers.harness.processes import free_port, start_workers, stop_workers, wait_ready
from workers.producer import Producer
from workers.settings import Settings

#: Prefix of the per-run broker space (Redis namespace, RabbitMQ vhost).
DEMO_PREFIX = "catfleet-demo-"
#: IDs that exist nowhere, sent along to show they are counted, not lost.
UNKNOWN_IDS = 25
TIMEOUT_S = 600


def demo_database_url(settings: Settings) -> str:
    return with_dbname(settings.database_url, f"{dbname(settings.database_url) or 'catfleet'}_demo")


@contextmanager
def demo_broker(settings: Settings) -> Iterator[Settings]:
    """``settings`` pointed at a broker space made for this run, deleted on the way out."""
    from workers.backends import backend_for

    backend = backend_for(settings)
    try:
        with backend.scratch(f"{DEMO_PREFIX}{uuid.uuid4().hex[:8]}") as own:
            yield own
    finally:
        backend.close()


def check_services(settings: Settings) -> None:
    # The server, not the configured database: the demo makes a database of its own.
    try:
        with psycopg.connect(admin_url(settings.database_url), connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL is not reachable at {env_name('database_url')}: {exc}") from None
    from workers.backends import backend_for

    backend = backend_for(settings)
    try:
        check = backend.check()
    finally:
        backend.close()
    if not check.ok:
        raise SystemExit(f"The broker is not reachable at {env_name('broker_url')}: {check.error}")


def _percentiles(conn: psycopg.Connection[Any]) -> tuple[float, float, float]:
    row = conn.execute(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP ("
        " ORDER BY extract(epoch FROM categorized_at - enqueued_at) * 1000)"
        " FROM categorizations WHERE enqueued_at IS NOT NULL"
    ).fetchone()
    p = row[0] if row and row[0] else [0.0, 0.0, 0.0]
    return p[0], p[1], p[2]


def run_demo(settings: Settings, *, expenses: int, users: int, processes: int | None) -> int:
    check_services(settings)
    db_url = demo_database_url(settings)
    create_database(settings.database_url, dbname(db_url), exist_ok=True)
    with demo_broker(settings) as own:  # never the configured namespace or vhost
        with psycopg.connect(db_url, autocommit=True) as conn:
            print(f"loading {expenses:,} demo expenses for {users:,} users ...", flush=True)
            ids = load_demo_data(conn, expenses=expenses, users=users)
            live = conn.execute("SELECT count(*) FROM expenses WHERE deleted_at IS NULL").fetchone()[0]  # type: ignore[index]
        demo = msgspec.structs.replace(own, database_url=db_url, metrics_port=free_port())
        return _run(demo, ids, live, processes or settings.worker_processes)


def _run(demo: Settings, ids: list[int], live: int, n_proc: int) -> int:
    app = build_app(demo)
    log_dir = Path(".demo")
    log_dir.mkdir(exist_ok=True)
    print(f"starting {n_proc} worker process(es) x {demo.worker_threads} threads ...", flush=True)
    # Quiet workers unless the user asked for a level: the demo prints its own progress.
    quiet = (
        demo if env_name("log_level") in os.environ else msgspec.structs.replace(demo, log_level="WARNING")
    )
    with open(log_dir / "worker.log", "wb") as log_file:
        worker = start_workers(quiet, log=log_file, processes=n_proc)
        try:
            try:
                wait_ready(demo, worker)
            except RuntimeError as exc:
                raise SystemExit(f"the demo workers did not start ({exc}): see .demo/worker.log") from None
            return _drive(app, demo, demo.database_url, ids, live)
        finally:
            stop_workers(worker)
            app.close()
            print("workers stopped (log: .demo/worker.log)")


def _drive(app: Any, settings: Settings, db_url: str, ids: list[int], live: int) -> int:
    unknown = list(range(10**12, 10**12 + UNKNOWN_IDS))
    started = time.monotonic()
    report = Producer(app.broker, batch_size=settings.batch_size).enqueue(
        ids + unknown, correlation_id="demo"
    )
    print(f"enqueued {report.ids:,} ids in {report.messages:,} messages ({time.monotonic() - started:.2f}s)")
    with psycopg.connect(db_url, autocommit=True) as conn:
        done, tty, last_print = 0, sys.stdout.isatty(), 0.0
        while done < live:
            time.sleep(0.25)
            done = conn.execute("SELECT count(*) FROM categorizations").fetchone()[0]  # type: ignore[index]
            elapsed = time.monotonic() - started
            if tty:
                print(f"\r  {done:>8,} / {live:,} categorized  {elapsed:6.1f}s", end="", flush=True)
            elif elapsed - last_print >= 2 or done >= live:
                print(f"  {done:>8,} / {live:,} categorized  {elapsed:6.1f}s", flush=True)
                last_print = elapsed
            if elapsed > TIMEOUT_S:
                print(f"\ndemo timed out after {TIMEOUT_S}s: see .demo/worker.log")
                return 1
        if tty:
            print()
        span = conn.execute(
            "SELECT extract(epoch FROM max(categorized_at) - min(enqueued_at)) FROM categorizations"
        ).fetchone()[0]  # type: ignore[index]
        bands: dict[str, int] = dict(
            conn.execute("SELECT band, count(*) FROM categorizations GROUP BY band").fetchall()
        )
        top = conn.execute(
            "SELECT k.name, count(*) FROM categorizations c JOIN categories k ON k.id = c.category_id"
            " WHERE c.band = 'auto' GROUP BY k.name ORDER BY count(*) DESC, k.name LIMIT 8"
        ).fetchall()
        p50, p95, p99 = _percentiles(conn)
    missing = len(ids) + UNKNOWN_IDS - live
    rate = live / float(span) if span else 0.0
    print("\n=== catfleet demo summary ===")
    print(f"expenses categorized per second : {rate:,.0f}  ({live:,} rows in {float(span):.2f}s)")
    print(f"enqueue -> commit latency (ms)  : p50 {p50:,.0f}  p95 {p95:,.0f}  p99 {p99:,.0f}")
    print("  (the whole backlog is enqueued at once, so latency here is mostly time spent queued)")
    print(
        f"outcomes                        : categorized {bands.get('auto', 0):,}  "
        f"suggested {bands.get('suggest', 0):,}  uncategorized {bands.get('none', 0):,}  missing {missing:,}"
    )
    print("top categories (auto-applied)   :")
    for name, count in top:
        print(f"  {name:<24} {count:>8,}")
    return 0
