"""``catfleet bench relay``: the outbox path measured end to end on real servers.

A burst of N expenses inserted in one transaction (the outbox triggers turn it into N
requests) is drained by ``catfleet relay`` processes and categorized by ``catfleet worker``
processes; then single-expense transactions trickle in at a steady rate to measure the
latency the relay adds (request commit -> message in the broker) and the end-to-end latency
(commit -> categorization row). Uses a throwaway database ``<database>_bench_relay`` and the
broker namespace ``catfleet-bench-relay``."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.migrate import migrate
from pipeline.settings import Settings
from workers.config import env_name

NAMESPACE = "catfleet-bench-relay"
TIMEOUT_S = 900


def _recreate_database(settings: Settings) -> str:
    name = f"{conninfo_to_dict(settings.database_url).get('dbname') or 'catfleet'}_bench_relay"
    with psycopg.connect(make_conninfo(settings.database_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(settings.database_url, dbname=name)


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "workers", *argv], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def _wait(
    conn: psycopg.Connection[Any], query: str, target: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while _scalar(conn, query) < target:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a relay or worker process exited: see .bench/relay-bench.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {TIMEOUT_S}s: see .bench/relay-bench.log")
        time.sleep(0.05)


def _percentiles(conn: psycopg.Connection[Any], expr: str, where: str) -> str:
    row = conn.execute(
        f"SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {expr})"  # type: ignore[arg-type]
        f" FROM categorization_requests r JOIN categorizations c ON c.expense_id = r.expense_id WHERE {where}"
    ).fetchone()
    p = row[0] if row and row[0] else [0.0, 0.0, 0.0]
    return f"p50 {p[0]:7.1f}  p95 {p[1]:7.1f}  p99 {p[2]:7.1f}"


def cmd_bench_relay(settings: Settings, args: argparse.Namespace) -> int:
    from workers.demo.data import generate_expenses, load_demo_data

    db_url = _recreate_database(settings)
    bench = msgspec.structs.replace(settings, database_url=db_url, broker_namespace=NAMESPACE)
    env = dict(os.environ, **{env_name(f): str(v) for f, v in msgspec.structs.asdict(bench).items()})
    env[env_name("log_level")] = "WARNING"
    log = Path(".bench")
    log.mkdir(exist_ok=True)
    log = log / "relay-bench.log"
    log.write_bytes(b"")
    if bench.broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(bench.broker_url)
        for key in client.scan_iter(f"{NAMESPACE}:*", count=1000):
            client.delete(key)
        client.close()
    with psycopg.connect(db_url, autocommit=True) as conn, ExitStack() as stack:
        migrate(conn)
        load_demo_data(conn, expenses=0, users=args.users)
        conn.execute("SELECT catfleet_install_outbox_triggers()")
        procs = [_start(["worker", "--processes", str(args.processes or bench.worker_processes)], env, log)]
        procs += [_start(["relay"], env, log) for _ in range(args.relays)]
        for p in procs:
            stack.callback(_stop, p)
        time.sleep(3)  # workers boot and relays LISTEN

        print(f"burst: {args.expenses:,} expenses inserted in one transaction (COPY) ...", flush=True)
        rows = generate_expenses(args.expenses, users=args.users, seed=11)
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(
                "COPY expenses (user_id, merchant_name, description, amount, currency, transaction_date,"
                " transaction_time) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        live = _scalar(conn, "SELECT count(*) FROM categorization_requests")
        _wait(conn, "SELECT count(*) FROM categorization_requests WHERE sent_at IS NOT NULL", live, procs)
        relay_span = _scalar(conn, "SELECT extract(epoch FROM max(sent_at) - min(created_at))::float8"
                             " FROM categorization_requests")  # fmt: skip
        _wait(conn, "SELECT count(*) FROM categorizations", live, procs)
        e2e_span = _scalar(
            conn,
            "SELECT extract(epoch FROM (SELECT max(categorized_at) FROM categorizations)"
            " - (SELECT min(created_at) FROM categorization_requests))::float8",
        )
        last_burst = _scalar(conn, "SELECT max(id) FROM categorization_requests")

        print(f"trickle: {args.samples} single-expense transactions at {args.rate:g}/s ...", flush=True)
        one = generate_expenses(args.samples, users=args.users, seed=12)
        commits = []
        for i, row in enumerate(one):
            t = time.monotonic()
            conn.execute(
                "INSERT INTO expenses (user_id, merchant_name, description, amount, currency,"
                " transaction_date, transaction_time) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                row,
            )
            commits.append((time.monotonic() - t) * 1000)
            if i + 1 < len(one):
                time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - t)))
        _wait(conn, "SELECT count(*) FROM categorizations", live + args.samples, procs)
        ms = "extract(epoch FROM {}) * 1000"
        where = f"r.id > {int(last_burst)}"
        relay_lat = _percentiles(conn, ms.format("r.sent_at - r.created_at"), where)
        fleet_lat = _percentiles(conn, ms.format("c.categorized_at - c.enqueued_at"), where)
        e2e_lat = _percentiles(conn, ms.format("c.categorized_at - r.created_at"), where)

    print(f"\n=== catfleet bench relay ({dt.date.today()}, {args.relays} relay(s), "
          f"{args.processes or bench.worker_processes} worker process(es) x {bench.worker_threads} threads) ===")  # fmt: skip
    print(f"burst of {live:,} requests")
    print(
        f"  relay drain      : {live / relay_span:10,.0f} requests/s  ({relay_span:.2f}s commit -> last sent)"
    )
    print(f"  end to end       : {live / e2e_span:10,.0f} expenses/s  ({e2e_span:.2f}s commit -> last row)")
    print(f"trickle of {args.samples} at {args.rate:g}/s, latency in ms")
    print(f"  relay added      : {relay_lat}   (request commit -> message in the broker)")
    print(f"  fleet            : {fleet_lat}   (message in the broker -> row committed)")
    print(f"  end to end       : {e2e_lat}   (request commit -> row committed)")
    commits.sort()
    print(f"  (the host's INSERT + COMMIT itself took p50 {commits[len(commits) // 2]:.1f} ms and is")
    print("   included above: request times are taken at the INSERT, before the commit)")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks on real servers (a throwaway database)")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    r = bench_sub.add_parser("relay", help="outbox -> relay -> workers: burst throughput and added latency")
    r.add_argument("--expenses", type=int, default=50_000, help="size of the burst")
    r.add_argument("--users", type=int, default=500)
    r.add_argument("--relays", type=int, default=1, help="relay processes")
    r.add_argument("--processes", type=int, help="worker processes (default: CATFLEET_WORKER_PROCESSES)")
    r.add_argument("--samples", type=int, default=200, help="single-expense transactions for latency")
    r.add_argument("--rate", type=float, default=20.0, help="their rate per second")
    r.set_defaults(func=cmd_bench_relay)
