"""A throwaway benchmark environment: its own database and broker namespace, real workers, and
a listener that observes completion without loading the server."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import threading
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
#: The log level production runs at (the settings' default); every bench uses it unless told otherwise.
PRODUCTION_LOG_LEVEL: str = Settings().log_level
#: The channel the bench database's trigger notifies on, once per INSERT statement into
#: ``categorizations``, with "<rows inserted> <lowest expense_id> <highest expense_id>".
ROWS_CHANNEL = "bench_rows_written"
#: Created in the bench's own throwaway database only (never a migration of the product). A
#: statement-level trigger: one NOTIFY per batch write, delivered only once the write commits.
NOTIFY_TRIGGER = f"""
CREATE FUNCTION catfleet_bench_notify_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint; lo bigint; hi bigint;
BEGIN
  SELECT count(*), min(expense_id), max(expense_id) INTO n, lo, hi FROM written;
  IF n > 0 THEN
    PERFORM pg_notify('{ROWS_CHANNEL}', n || ' ' || lo || ' ' || hi);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER catfleet_bench_notify_rows AFTER INSERT ON categorizations
  REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION catfleet_bench_notify_rows();
"""


class Written(msgspec.Struct, frozen=True):
    """One committed INSERT statement into ``categorizations``, as the listener received it."""

    at: float  # time.perf_counter() on receipt, after the COMMIT
    rows: int
    lo: int
    hi: int


class RowListener:
    """LISTENs on the bench database on a thread of its own: counts the categorization rows
    inserted and timestamps each write on receipt of its NOTIFY. PostgreSQL delivers a NOTIFY only
    after the transaction that sent it commits, so a timestamp here is after COMMIT, as a producer's
    service would see it; and waiting costs the server nothing (no polling query)."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {ROWS_CHANNEL}")
        self.backend_pid: int = self.conn.info.backend_pid
        self._cond = threading.Condition()
        self._rows = 0
        self._events: list[Written] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for note in self.conn.notifies(timeout=0.2):
                at = time.perf_counter()
                rows, lo, hi = (int(x) for x in note.payload.split())
                with self._cond:
                    self._rows += rows
                    self._events.append(Written(at, rows, lo, hi))
                    self._cond.notify_all()

    @property
    def rows(self) -> int:
        with self._cond:
            return self._rows

    def events(self) -> list[Written]:
        with self._cond:
            return list(self._events)

    def reset(self) -> None:
        with self._cond:
            self._rows = 0
            self._events = []

    def wait_rows(self, n: int, timeout: float) -> float:
        """Until ``n`` rows are in (since the last reset); the receipt time of the last write."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._rows >= n, timeout):
                raise RuntimeError(f"only {self._rows} of {n} rows after {timeout}s")
            return self._events[-1].at

    def rows_by(self, deadline: float) -> int:
        """Rows whose write was received at or before ``deadline`` (a perf_counter time)."""
        with self._cond:
            return sum(e.rows for e in self._events if e.at <= deadline)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()


class BenchEnv:
    def __init__(self, settings: Settings, app: App, log_dir: Path):
        self.settings = settings
        self.app = app
        self.log_dir = log_dir
        self.conn = psycopg.connect(settings.database_url, autocommit=True)
        self.dbname = dbname(settings.database_url)
        self.listener = RowListener(settings.database_url)

    def control_pids(self) -> list[int]:
        """The bench's own backends (this connection and the listener's): not the workload's."""
        return [self.conn.info.backend_pid, self.listener.backend_pid]

    def load(self, expenses: int, *, users: int = 500) -> list[int]:
        """Fresh demo data; returns the IDs of the live expenses."""
        load_demo_data(self.conn, expenses=expenses, users=users)
        self.conn.execute("UPDATE expenses SET deleted_at = NULL")
        return [r[0] for r in self.conn.execute("SELECT id FROM expenses ORDER BY id").fetchall()]

    def reset_results(self) -> None:
        self.conn.execute("TRUNCATE categorizations")
        self.listener.reset()

    def set_notify(self, on: bool) -> None:
        """The completion trigger on or off (off: count with ``committed_rows``)."""
        self.conn.execute(
            f"ALTER TABLE categorizations {'ENABLE' if on else 'DISABLE'} TRIGGER catfleet_bench_notify_rows"
        )

    def committed_rows(self) -> int:
        """Rows in ``categorizations`` (one query: for a slow poll, never a tight loop)."""
        return int(self.conn.execute("SELECT count(*) FROM categorizations").fetchone()[0])  # type: ignore[index]

    def count(self) -> int:
        """Rows inserted since the last reset, as the listener heard them (no query)."""
        return self.listener.rows

    def wait_rows(self, n: int, *, timeout: float = 1800.0) -> float:
        """Until ``n`` rows are committed; the perf_counter time the last one was heard."""
        return self.listener.wait_rows(n, timeout)

    @contextlib.contextmanager
    def workers(self, name: str, **kwargs: Any) -> Iterator[Any]:
        """``catfleet worker`` (``kwargs``: ``start_workers``'s), until each of its processes runs."""
        self.flush_queues()
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = start_workers(self.settings, log=log, **kwargs)
            try:
                wait_ready(self.settings, proc, processes=kwargs.get("processes") or 1)
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
def bench_env(
    settings: Settings, *, log_level: str = PRODUCTION_LOG_LEVEL, **overrides: Any
) -> Iterator[BenchEnv]:
    """A migrated throwaway database (with the completion trigger) and broker namespace; workers
    started in it log at ``log_level`` (production's default unless told otherwise)."""
    suffix = uuid4().hex[:8]
    name = f"{dbname(settings.database_url) or 'catfleet'}_bench_{suffix}"
    url = create_database(settings.database_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(NOTIFY_TRIGGER.encode())
    s = msgspec.structs.replace(
        settings,
        database_url=url,
        broker_namespace=f"cfbench-{suffix}",
        log_level=log_level,
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
        env.listener.close()
        env.conn.close()
        app.close()
        drop_database(settings.database_url, name)


def batch_log_level(env: BenchEnv) -> str:
    """The bench's log level, or INFO if that is quieter: a scenario that reads the workers' batch
    log lines (``batch-size``, ``degraded``) needs them."""
    return env.settings.log_level if env.settings.log_level in ("DEBUG", "INFO") else "INFO"


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ascending values: the smallest value with at
    least ``q`` of them at or below it (p99.9 of 2,000 samples is the 1,998th)."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def write_results(scenario: str, doc: dict[str, Any], path: str | None) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    out = Path(path) if path else RESULTS_DIR / f"{scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    return out
