"""``catfleet bench relay``: the outbox path end to end on real servers.

A burst of N expenses inserted in one transaction (the outbox triggers turn it into N
requests) is drained by ``catfleet relay`` processes and categorized by ``catfleet worker``
processes; then single-expense transactions trickle in at a steady rate to measure the
latency the relay adds (request commit -> message in the broker) and the end-to-end latency
(commit -> categorization row)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from workers.bench.env import BenchEnv
from workers.demo.data import generate_expenses, load_demo_data
from workers.harness.processes import start_catfleet, stop_workers

TIMEOUT_S = 900
INSERT_ONE = (
    "INSERT INTO expenses (user_id, merchant_name, description, amount, currency, transaction_date,"
    " transaction_time) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def _wait(conn: psycopg.Connection[Any], query: str, target: int, procs: list[Any]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while _scalar(conn, query) < target:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a relay or worker process exited: see bench-results/logs/relay.log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {TIMEOUT_S}s")
        time.sleep(0.5)  # a slow poll: the figures come from the rows' own timestamps


def _percentiles(conn: psycopg.Connection[Any], expr: str, where: str) -> dict[str, float]:
    row = conn.execute(
        f"SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {expr})"  # type: ignore[arg-type]
        f" FROM categorization_requests r JOIN categorizations c ON c.expense_id = r.expense_id WHERE {where}"
    ).fetchone()
    p = row[0] if row and row[0] else [0.0, 0.0, 0.0]
    return {"p50_ms": round(p[0], 2), "p95_ms": round(p[1], 2), "p99_ms": round(p[2], 2)}


def relay(
    env: BenchEnv,
    *,
    expenses: int,
    relays: int,
    processes: int,
    samples: int,
    rate: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    conn = env.conn
    load_demo_data(conn, expenses=0, users=500)
    conn.execute("SELECT catfleet_install_outbox_triggers()")
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(env.log_dir / "relay.log", "wb"))
        procs = [stack.enter_context(env.workers("relay-workers", processes=processes))]
        for _ in range(relays):
            proc = start_catfleet(["relay"], env.settings, log=log)
            stack.callback(stop_workers, proc)
            procs.append(proc)
        time.sleep(2)  # relays LISTEN

        say(f"burst: {expenses:,} expenses inserted in one transaction (COPY) ...")
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(
                "COPY expenses (user_id, merchant_name, description, amount, currency, transaction_date,"
                " transaction_time) FROM STDIN"
            ) as copy,
        ):
            for row in generate_expenses(expenses, users=500, seed=11):
                copy.write_row(row)
        live = int(_scalar(conn, "SELECT count(*) FROM categorization_requests"))
        _wait(conn, "SELECT count(*) FROM categorization_requests WHERE sent_at IS NOT NULL", live, procs)
        relay_span = float(
            _scalar(
                conn, "SELECT extract(epoch FROM max(sent_at) - min(created_at)) FROM categorization_requests"
            )
        )
        _wait(conn, "SELECT count(*) FROM categorizations", live, procs)
        e2e_span = float(
            _scalar(
                conn,
                "SELECT extract(epoch FROM (SELECT max(categorized_at) FROM categorizations)"
                " - (SELECT min(created_at) FROM categorization_requests))",
            )
        )
        last_burst = int(_scalar(conn, "SELECT max(id) FROM categorization_requests"))

        say(f"trickle: {samples} single-expense transactions at {rate:g}/s ...")
        commits = []
        for i, row in enumerate(generate_expenses(samples, users=500, seed=12)):
            t = time.monotonic()
            conn.execute(INSERT_ONE, row)
            commits.append((time.monotonic() - t) * 1000)
            if i + 1 < samples:
                time.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
        _wait(conn, "SELECT count(*) FROM categorizations", live + samples, procs)
    ms = "extract(epoch FROM {}) * 1000"
    where = f"r.id > {last_burst}"
    commits.sort()
    return {
        "relays": relays,
        "processes": processes,
        "burst": live,
        "relay_drain_per_s": round(live / relay_span),
        "end_to_end_per_s": round(live / e2e_span),
        "trickle": {"samples": samples, "rate_per_s": rate},
        "relay_added": _percentiles(conn, ms.format("r.sent_at - r.created_at"), where),
        "fleet": _percentiles(conn, ms.format("c.categorized_at - c.enqueued_at"), where),
        "end_to_end": _percentiles(conn, ms.format("c.categorized_at - r.created_at"), where),
        "host_insert_commit_p50_ms": round(commits[len(commits) // 2], 2),
    }
