"""Running a backfill: select (``pipeline.backfill``), enqueue on the bulk lane from the run's
checkpoint on, and follow the run to completion by counting the rows that carry its id.

Guarantee: every batch message is sent before the checkpoint that covers it is committed, one
checkpoint per message. A run killed at any point (Ctrl-C, SIGKILL, a lost host) and resumed
(``--resume RUN``) re-sends at most the one message it had sent past its last checkpoint; the
idempotent upsert absorbs that repeat (still one row per expense). Nothing selected before the
checkpoint is enqueued again."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import psycopg

from pipeline import backfill as store
from pipeline.backfill import Run, Selector
from pipeline.db import translate_errors
from schemas import LANE_BULK
from workers.settings import Settings

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_S = 5
#: A run whose rows stop coming for this long, with its lane's queue empty, is ``incomplete``.
DEFAULT_STALL_S = 30.0
DEFAULT_POLL_S = 1.0


class Progress(msgspec.Struct, kw_only=True):
    """One look at a run: what is enqueued (to the checkpoint) and done (rows with its id)."""

    run: str
    phase: str  # enqueuing, following, done, incomplete
    total: int
    enqueued: int
    done: int
    outcomes: dict[str, int]
    elapsed_s: float
    rate: float | None  # rows per second since this process started following
    eta_s: float | None


def connect(settings: Settings) -> psycopg.Connection[Any]:
    """An autocommit connection; a server that does not answer is one error within 5 s."""
    with translate_errors():
        return psycopg.connect(settings.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


class Backfill:
    """One run's enqueue and follow, on two connections (the cursor's transaction and the
    checkpoints) and the fleet's producer."""

    def __init__(
        self, settings: Settings, *, poll_s: float = DEFAULT_POLL_S, stall_s: float = DEFAULT_STALL_S
    ):
        self.settings = settings
        self.poll_s = poll_s
        self.stall_s = stall_s
        self.db = connect(settings)
        self.reader = connect(settings)
        self._app: Any = None
        self._started = time.monotonic()
        self._first_done: int | None = None

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
        self.reader.close()
        self.db.close()

    def _producer(self, batch_size: int) -> Any:
        from workers.app import build_app
        from workers.producer import Producer

        if self._app is None:
            self._app = build_app(self.settings)
        return Producer(self._app.broker, batch_size=batch_size)

    def start(
        self,
        selector: Selector,
        *,
        batch_size: int,
        rate: float | None = None,
        ids: Iterable[int] | None = None,
    ) -> Run:
        return store.create_run(self.db, selector, lane=LANE_BULK, batch_size=batch_size, rate=rate, ids=ids)

    def get(self, run_id: str) -> Run | None:
        return store.get_run(self.db, run_id)

    def look(self, run: Run, phase: str) -> Progress:
        outcomes = store.progress(self.db, run.id)
        done = sum(outcomes.values())
        elapsed = time.monotonic() - self._started
        if self._first_done is None:
            self._first_done = done
        rate = (done - self._first_done) / elapsed if elapsed > 0 and done > self._first_done else None
        eta = (run.total - done) / rate if rate else None
        return Progress(
            run=run.id,
            phase=phase,
            total=run.total,
            enqueued=run.enqueued,
            done=done,
            outcomes=outcomes,
            elapsed_s=round(elapsed, 3),
            rate=round(rate, 1) if rate is not None else None,
            eta_s=round(max(eta, 0.0), 1) if eta is not None else None,
        )

    def enqueue(self, run: Run, on_progress: Callable[[Progress], None]) -> Run:
        """Send the run's selected ids after its checkpoint, one message at a time, each followed
        by its checkpoint; at most ``run.rate`` ids per second (pyrate-limiter's bucket)."""
        if run.state not in ("selecting", "enqueuing"):
            return run
        size = run.batch_size
        limiter = None
        if run.rate is not None:
            from pyrate_limiter import Limiter, Rate

            limit = max(1, int(run.rate))
            size = min(size, limit)  # a message never weighs more than the bucket holds
            limiter = Limiter(Rate(limit, max(1, math.ceil(1000 * limit / run.rate))))
        producer = self._producer(size)
        next_look = time.monotonic()
        with self.reader.transaction():
            for ids in store.iter_selected(self.reader, run.selector, run.id, after=run.last_id, chunk=size):
                if limiter is not None:
                    limiter.try_acquire("backfill", weight=len(ids))
                producer.send([producer.batch_message(ids, run.id, lane=run.lane)])
                store.checkpoint(self.db, run.id, last_id=ids[-1], n=len(ids))
                run.last_id, run.enqueued = ids[-1], run.enqueued + len(ids)
                if time.monotonic() >= next_look:
                    on_progress(self.look(run, "enqueuing"))
                    next_look = time.monotonic() + self.poll_s
        store.mark_enqueued(self.db, run.id)
        return self.get(run.id) or run

    def follow(self, run: Run, on_progress: Callable[[Progress], None]) -> Progress:
        """Until every selected expense has a row with the run's id (``done``), or none has come
        for ``stall_s`` while the lane's queue holds nothing (``incomplete``: deleted or chosen
        by their user meanwhile, or dead-lettered); polled every ``poll_s``."""
        if run.state in ("done", "incomplete"):
            return self.look(run, run.state)
        queue = self._queue(run.lane)
        last_done, changed_at = -1, time.monotonic()
        while True:
            seen = self.look(run, "following")
            if seen.done >= run.total:
                return self._finish(run, seen, "done")
            now = time.monotonic()
            if seen.done != last_done:
                last_done, changed_at = seen.done, now
            elif now - changed_at >= self.stall_s and self._queue_empty(queue):
                return self._finish(run, seen, "incomplete")
            on_progress(seen)
            time.sleep(self.poll_s)

    def _finish(self, run: Run, seen: Progress, state: str) -> Progress:
        store.finish(self.db, run.id, state=state, outcomes=seen.outcomes)
        return msgspec.structs.replace(seen, phase=state, eta_s=None if state != "done" else 0.0)

    @staticmethod
    def _queue(lane: str) -> str:
        from workers.producer import lane_queue

        return lane_queue(lane)

    def _queue_empty(self, queue: str) -> bool:
        if self._app is None:
            self._producer(self.settings.batch_size)
        [stats] = self._app.backend.queue_stats([queue])
        return bool(stats.ready == 0 and stats.delayed == 0 and not stats.in_flight)
