"""Helpers of the fault tests: bulk data, broker queue state, worker restarts."""

from __future__ import annotations

from typing import Any

import psycopg
import redis

from pipeline.settings import Settings
from schemas import CATEGORIZE_QUEUE


def bulk_expenses(conn: psycopg.Connection[Any], n: int, *, merchants: tuple[str, ...] = ("STARBUCKS", "WALMART", "UBER *TRIP", "JOE'S PIZZA")) -> list[int]:  # fmt: skip
    """``n`` expenses in one statement; their ids in order."""
    rows = conn.execute(
        "INSERT INTO expenses (user_id, merchant_name, amount, transaction_date)"
        " SELECT 1 + g %% 50, (%s::text[])[1 + g %% %s], 10 + g %% 90, DATE '2026-03-14'"
        " FROM generate_series(1, %s) g RETURNING id",
        (list(merchants), len(merchants), n),
    ).fetchall()
    return sorted(r[0] for r in rows)


def categorized(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(rows, distinct expenses) in categorizations."""
    row = conn.execute("SELECT count(*), count(DISTINCT expense_id) FROM categorizations").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def queue_state(settings: Settings, queue: str = CATEGORIZE_QUEUE) -> dict[str, int]:
    """Everything the Redis broker holds for a queue: live, delayed, unacked, dead."""
    client = redis.Redis.from_url(settings.broker_url)
    ns = settings.broker_namespace
    try:
        acks = sum(client.scard(k) for k in client.scan_iter(f"{ns}:__acks__.*", count=1000))
        return {
            "queued": client.llen(f"{ns}:{queue}"),
            "messages": client.hlen(f"{ns}:{queue}.msgs"),
            "delayed": client.hlen(f"{ns}:{queue}.DQ.msgs"),
            "unacked": acks,
            "dead": client.zcard(f"{ns}:{queue}.XQ"),
        }
    finally:
        client.close()


EMPTY = {"queued": 0, "messages": 0, "delayed": 0, "unacked": 0, "dead": 0}
