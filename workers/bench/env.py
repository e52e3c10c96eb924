"""A throwaway benchmark environment: its own database and broker namespace, real workers."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import psycopg

from workers.app import App, build_app
from workers.demo.data import load_demo_data
from workers.harness.databases import create_database, dbname, drop_database
from workers.harness.processes import free_port, start_workers, stop_workers, wait_ready
from workers.settings import Settings

RESULTS_DIR = Path("bench-results")


class BenchEnv:
    def __init__(self, settings: Settings, app: App, log_dir: Path):
        self.settings = settings
        self.app = app
        self.log_dir = log_dir
        self.conn = psycopg.connect(settings.database_url, autocommit=True)

    def load(self, expenses: int, *, users: int = 500) -> list[int]:
        """Fresh demo data; returns the IDs of the live expenses."""
        load_demo_data(self.conn, expenses=expenses, users=users)
        self.conn.execute("UPDATE expenses SET deleted_at = NULL")
        return [r[0] for r in self.conn.execute("SELECT id FROM expenses ORDER BY id").fetchall()]

    def reset_results(self) -> None:
        self.conn.execute("TRUNCATE categorizations")

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM categorizations").fetchone()[0]  # type: ignore[index]

    def wait_rows(self, n: int, *, timeout: float = 1800.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count()} of {n} rows after {timeout}s")
            time.sleep(0.02)

    def last_commit_epoch(self) -> float:
        row = self.conn.execute(
            "SELECT extract(epoch FROM max(categorized_at)) FROM categorizations"
        ).fetchone()
        return float(row[0])  # type: ignore[index]

    def latencies_ms(self) -> list[float]:
        rows = self.conn.execute(
            "SELECT extract(epoch FROM categorized_at - enqueued_at) * 1000 FROM categorizations"
            " WHERE enqueued_at IS NOT NULL ORDER BY 1"
        ).fetchall()
        return [float(r[0]) for r in rows]

    @contextlib.contextmanager
    def workers(self, name: str, **kwargs: Any) -> Iterator[Any]:
        self.flush_queues()
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = start_workers(self.settings, log=log, **kwargs)
            try:
                wait_ready(self.settings, proc)
                yield proc
            finally:
                stop_workers(proc)

    def flush_queues(self) -> None:
        from workers.backends import backend_for

        backend = backend_for(self.settings)
        try:
            backend.flush()
        finally:
            backend.close()


@contextlib.contextmanager
def bench_env(settings: Settings, **overrides: Any) -> Iterator[BenchEnv]:
    suffix = uuid4().hex[:8]
    name = f"{dbname(settings.database_url) or 'catfleet'}_bench_{suffix}"
    url = create_database(settings.database_url, name)
    s = msgspec.structs.replace(
        settings,
        database_url=url,
        broker_namespace=f"cfbench-{suffix}",
        log_level="WARNING",
        metrics_port=free_port(),  # metrics on, as in production, on a port of our own
        **overrides,
    )
    app = build_app(s)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = BenchEnv(s, app, log_dir)
    try:
        yield env
    finally:
        env.flush_queues()
        env.conn.close()
        app.close()
        drop_database(settings.database_url, name)


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def write_results(scenario: str, doc: dict[str, Any], path: str | None) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    out = Path(path) if path else RESULTS_DIR / f"{scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    return out
