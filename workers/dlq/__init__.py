"""Dead-letter tooling: list, page, show, replay, purge and audit, for every broker backend. The store
contract and its shared logic are in ``workers.dlq.base``; each backend has its store."""

from __future__ import annotations

from workers.dlq.base import (
    ActionReport,
    AuditEntry,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    Page,
    PostgresAuditLog,
)
from workers.failures import LazyDatabase
from workers.settings import Settings


def open_store(settings: Settings) -> DeadLetterStore:
    """The configured broker's store. Replays and purges are audited in PostgreSQL."""
    from workers.backends import backend_for

    backend = backend_for(settings)
    database = LazyDatabase(settings.database_url, size=1)
    store = backend.dead_letters(PostgresAuditLog(database))
    store.closers += [database.close, backend.close]
    return store


__all__ = [
    "ActionReport",
    "AuditEntry",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStore",
    "Page",
    "open_store",
]
