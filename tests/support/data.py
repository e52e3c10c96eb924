"""Small, explicit fixtures: a few categories, patterns and expenses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import psycopg

from pipeline.rules import canonical_value

CATEGORIES = ["coffee", "groceries", "rideshare", "dining", "fuel"]


def reset(conn: psycopg.Connection[Any]) -> dict[str, int]:
    conn.execute(
        "TRUNCATE categorizations, corrections, categorization_patterns, expenses, categories,"
        " ruleset_candidates, ruleset_candidate_changes, ruleset_candidate_backups RESTART IDENTITY"
    )
    conn.execute("UPDATE ruleset SET rollout_candidate = NULL, rollout_percent = 0")
    ids = {}
    for key in CATEGORIES:
        row = conn.execute(
            "INSERT INTO categories (key, name) VALUES (%s, %s) RETURNING id", (key, key.title())
        )
        ids[key] = row.fetchone()[0]  # type: ignore[index]
    return ids


def add_pattern(
    conn: psycopg.Connection[Any],
    category_id: int,
    kind: str,
    value: str,
    *,
    weight: float = 0.95,
    user_id: int | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO categorization_patterns (user_id, category_id, kind, value, weight)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (user_id, category_id, kind, canonical_value(kind, value), weight),
    ).fetchone()
    return row[0]  # type: ignore[index]


def seed_patterns(conn: psycopg.Connection[Any], cats: dict[str, int]) -> None:
    add_pattern(conn, cats["coffee"], "merchant", "STARBUCKS")
    add_pattern(conn, cats["groceries"], "merchant", "WALMART")
    add_pattern(conn, cats["rideshare"], "merchant", "UBER")
    add_pattern(conn, cats["dining"], "keyword", "pizza", weight=0.8)
    add_pattern(conn, cats["fuel"], "keyword", "fuel", weight=0.88)


def add_expenses(
    conn: psycopg.Connection[Any], merchants: Iterable[str], *, user_id: int = 1, amount: float = 12.5
) -> list[int]:
    ids = []
    with conn.cursor() as cur:
        for merchant in merchants:
            cur.execute(
                "INSERT INTO expenses (user_id, merchant_name, amount, transaction_date)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (user_id, merchant, amount, dt.date(2026, 3, 14)),
            )
            ids.append(cur.fetchone()[0])  # type: ignore[index]
    return ids


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


def count_rows(conn: psycopg.Connection[Any]) -> int:
    """Rows in categorizations."""
    return categorized(conn)[0]


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT expense_id, category_id, pattern_id, confidence, band, method, explanation, ruleset_version,"
        " message_id, source, categorized_at FROM categorizations ORDER BY expense_id"
    ).fetchall()


#: A trigger that fails the write of any expense listed in ``poison`` with a transient error
#: (``serialization_failure``: retried, then dead-lettered); delete the row to cure it.
POISON = """
CREATE TABLE poison (expense_id bigint PRIMARY KEY);
CREATE FUNCTION poison_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM poison WHERE expense_id = NEW.expense_id) THEN
    RAISE EXCEPTION 'poisoned expense %', NEW.expense_id USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER poison_check BEFORE INSERT OR UPDATE ON categorizations
  FOR EACH ROW EXECUTE FUNCTION poison_check();
"""
