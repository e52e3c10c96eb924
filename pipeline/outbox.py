"""The transactional outbox (``categorization_requests``): the statements a relay and a Python
host application run. Every method takes the caller's connection: the relay claims, enqueues
and marks inside one transaction of its own; a host writes requests inside its transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import psycopg

from pipeline import queries
from pipeline.db import translate_errors


class Request(msgspec.Struct, frozen=True):
    id: int
    expense_id: int
    correlation_id: str | None
    #: Seconds since the request was committed (database clock), when it was claimed.
    age: float


class Backlog(msgspec.Struct, frozen=True):
    pending: int
    #: Age in seconds of the oldest pending request (0 when none).
    oldest_age: float


def request(
    conn: psycopg.Connection[Any], expense_ids: Iterable[int], correlation_id: str | None = None
) -> None:
    """Ask for these expenses to be categorized, in the caller's transaction."""
    with translate_errors():
        conn.execute(
            queries.INSERT_REQUESTS, {"expense_ids": list(expense_ids), "correlation_id": correlation_id}
        )


def claim(conn: psycopg.Connection[Any], limit: int) -> list[Request]:
    """Lock up to ``limit`` pending requests (skipping those other relays hold); in a transaction."""
    with translate_errors():
        rows = conn.execute(queries.CLAIM_REQUESTS, {"limit": limit}).fetchall()
    return [Request(*row) for row in rows]


def mark_sent(conn: psycopg.Connection[Any], ids: Sequence[int], message_ids: Sequence[str]) -> None:
    with translate_errors():
        conn.execute(queries.MARK_REQUESTS_SENT, {"ids": list(ids), "message_ids": list(message_ids)})


def backlog(conn: psycopg.Connection[Any]) -> Backlog:
    with translate_errors():
        row = conn.execute(queries.PENDING_REQUESTS).fetchone()
    assert row is not None
    return Backlog(pending=row[0], oldest_age=row[1])


def prune(conn: psycopg.Connection[Any], *, retention_seconds: float, limit: int = 10_000) -> int:
    """Delete up to ``limit`` requests sent more than ``retention_seconds`` ago; returns how many."""
    with translate_errors():
        cur = conn.execute(queries.PRUNE_SENT_REQUESTS, {"retention": retention_seconds, "limit": limit})
    return cur.rowcount
