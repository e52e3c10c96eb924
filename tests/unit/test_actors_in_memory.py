"""The fleet's actors, middleware and dead-letter path on the in-memory backend (Dramatiq's
StubBroker) with the in-memory stores: no server, each test well under a second."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from pipeline.cache import LocalTier
from pipeline.categorize import Categorizer
from pipeline.matcher import Thresholds
from pipeline.memory import MemoryCategorizationStore, MemoryDatabase, MemoryExpenseStore, MemoryPatternStore
from pipeline.resolver import PatternResolver
from schemas import CATEGORIZE_QUEUE, Expense
from workers.app import App, build_app
from workers.backends.memory import MemoryAuditLog, MemoryBackend
from workers.dlq.base import DeadLetterFilter
from workers.producer import Producer
from workers.runtime import RuntimeHolder
from workers.settings import Settings


class MemoryRuntime:
    """What the actors use of a worker process's runtime, on in-memory stores."""

    def __init__(self, db: MemoryDatabase, settings: Settings):
        self.categorizer = Categorizer(
            expenses=MemoryExpenseStore(db),
            resolver=PatternResolver(MemoryPatternStore(db), [LocalTier(max_entries=1000, ttl_seconds=60)]),
            writer=MemoryCategorizationStore(db),
            thresholds=Thresholds(auto=settings.auto_threshold, suggest=settings.suggest_threshold),
        )
        self.learner: Any = None
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def db() -> MemoryDatabase:
    db = MemoryDatabase()
    db.add_pattern(category_id=1, kind="merchant", value="STARBUCKS", weight=0.95)
    db.add_expenses(
        *(
            Expense(
                id=i,
                user_id=7,
                merchant_name="SQ *STARBUCKS #12" if i % 2 else "UNKNOWN SHOP",
                description="",
                amount=4.5,
                currency="USD",
                transaction_date=dt.date(2026, 3, 14),
            )
            for i in range(1, 11)
        )
    )
    return db


@pytest.fixture
def fleet(db: MemoryDatabase) -> Iterator[tuple[App, dramatiq.Worker]]:
    settings = Settings(
        broker_url="memory://", metrics_port=0, max_retries=0, min_backoff_ms=1, max_backoff_ms=1
    )
    app = build_app(
        settings, runtime=RuntimeHolder(settings, open_runtime=lambda: MemoryRuntime(db, settings))
    )
    assert isinstance(app.backend, MemoryBackend)
    worker = dramatiq.Worker(app.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield app, worker
    worker.stop()
    app.close()


def test_a_batch_is_categorized_through_the_real_actor_and_middleware(
    fleet: tuple[App, dramatiq.Worker], db: MemoryDatabase
) -> None:
    app, _ = fleet
    report = Producer(app.broker, batch_size=4).enqueue(range(1, 13), correlation_id="mem")
    assert (report.messages, report.ids) == (3, 12)
    app.broker.join(CATEGORIZE_QUEUE, timeout=5_000)
    rows = {r.expense_id: r for r in db.categorizations()}
    assert sorted(rows) == list(range(1, 11))  # 11 and 12 do not exist: missing, no row
    assert {i: (r.category_id, r.band, r.correlation_id) for i, r in rows.items()} == {
        i: (1, "auto", "mem") if i % 2 else (None, "none", "mem") for i in range(1, 11)
    }
    [stats] = [s for s in app.backend.queue_stats() if s.queue == CATEGORIZE_QUEUE]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_an_invalid_payload_is_dead_lettered_with_its_reason(fleet: tuple[App, dramatiq.Worker]) -> None:
    app, _ = fleet
    bad = dramatiq.Message(
        queue_name=CATEGORIZE_QUEUE,
        actor_name="categorize_batch",
        args=({"expense_ids": ["x"]},),
        kwargs={},
        options={},
    )
    app.broker.enqueue(bad)
    app.broker.join(CATEGORIZE_QUEUE, timeout=5_000, fail_fast=False)
    store = app.backend.dead_letters(MemoryAuditLog())
    [letter] = store.find(DeadLetterFilter(queue=CATEGORIZE_QUEUE))
    assert (letter.message_id, letter.error_type) == (bad.message_id, "InvalidMessage")
    assert "Expected `int`, got `str`" in letter.error
    assert [(r.error_type, r.dead, r.retries) for r in letter.history] == [("InvalidMessage", True, 0)]
    audit = MemoryAuditLog()
    report = app.backend.dead_letters(audit).purge(DeadLetterFilter(ids=(bad.message_id,)), operator="t")
    assert (report.done, audit.entries[0]["count"], audit.entries[0]["message_ids"]) == (
        1,
        1,
        [bad.message_id],
    )
    assert app.backend.queue_stats([CATEGORIZE_QUEUE])[0].dead == 0
