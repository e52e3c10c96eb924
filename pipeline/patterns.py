"""Pattern management: list, switch on and off, add, edit the weight, delete (validated as when
any pattern is saved). ``pipeline.candidates`` stages the same changes instead of applying them.

Every change bumps the ruleset version (the statement trigger), so workers see it on their
next batch.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import psycopg

from pipeline import queries
from pipeline.db import Database
from pipeline.errors import InvalidPattern, UnknownCategory, UnknownPattern
from pipeline.rules import canonical_value, compile_problem
from schemas import PatternKind

SOURCES = ("seed", "user", "learned")
#: Most rows `patterns list` returns.
LIST_LIMIT = 10_000


class PatternRow(msgspec.Struct, kw_only=True):
    """A pattern as an operator sees it."""

    id: int
    user_id: int | None
    category: str
    kind: str
    value: str
    weight: float
    source: str
    active: bool
    usage_count: int
    success_count: int
    updated_at: dt.datetime
    #: Why the workers skip it (its value does not compile: a row written by plain SQL); None: fine.
    problem: str | None = None


def check_weight(weight: float) -> None:
    if not 0.0 < weight <= 1.0:
        raise InvalidPattern(f"weight must be in (0, 1], got {weight}")


def validated_pattern(kind: str, value: str, weight: float) -> tuple[str, str]:
    """(kind, stored value) of a pattern to save; InvalidPattern with the reason otherwise."""
    try:
        kind = PatternKind(kind).value
    except ValueError:
        raise InvalidPattern(
            f"unknown pattern kind {kind!r} (one of {', '.join(k.value for k in PatternKind)})"
        ) from None
    check_weight(weight)
    return kind, canonical_value(kind, value)


class PatternAdmin:
    def __init__(self, db: Database):
        self.db = db

    def list(
        self,
        *,
        user_id: int | None = None,
        source: str | None = None,
        kind: str | None = None,
        active: bool | None = None,
        category: str | None = None,
        search: str | None = None,
        limit: int = LIST_LIMIT,
        offset: int = 0,
    ) -> list[PatternRow]:
        """Patterns by id, filtered (``search``: a case-insensitive substring of the value), each
        with its compile problem if it has one."""
        params = {
            "user_id": user_id,
            "source": source,
            "kind": kind,
            "active": active,
            "category": category,
            "search": search or None,
            "limit": limit,
            "offset": offset,
        }
        rows = self.db.run(lambda c: c.execute(queries.LIST_PATTERNS, params).fetchall(), read=True)
        return [
            PatternRow(
                id=r[0],
                user_id=r[1],
                category=r[2],
                kind=r[3],
                value=r[4],
                weight=round(r[5], 4),
                source=r[6],
                active=r[7],
                usage_count=r[8],
                success_count=r[9],
                updated_at=r[10],
                problem=compile_problem(r[3], r[4]),
            )
            for r in rows
        ]

    def set_active(self, pattern_id: int, active: bool) -> None:
        params = {"id": pattern_id, "active": active}
        row = self.db.run(lambda c: c.execute(queries.SET_PATTERN_ACTIVE, params).fetchone())
        if row is None:
            raise UnknownPattern(pattern_id)

    def edit(self, pattern_id: int, *, weight: float) -> None:
        """Set a pattern's weight (every worker sees it on its next batch)."""
        check_weight(weight)
        params = {"id": pattern_id, "weight": weight}
        if self.db.run(lambda c: c.execute(queries.SET_PATTERN_WEIGHT, params).fetchone()) is None:
            raise UnknownPattern(pattern_id)

    def delete(self, pattern_id: int) -> None:
        """Delete a pattern (rows it made keep their category; their pattern_id becomes NULL)."""
        params = {"id": pattern_id}
        if self.db.run(lambda c: c.execute(queries.DELETE_PATTERN, params).fetchone()) is None:
            raise UnknownPattern(pattern_id)

    def add(
        self, *, kind: str, value: str, category_key: str, user_id: int | None = None, weight: float = 0.9
    ) -> tuple[int, bool]:
        """Save a pattern (source 'user'); returns (id, created). Raises InvalidPattern (e.g. a regex
        RE2 rejects) or UnknownCategory before anything is written."""
        kind, canonical = validated_pattern(kind, value, weight)

        def save(conn: psycopg.Connection[Any]) -> tuple[int, bool]:
            found = conn.execute(
                queries.CATEGORY_ID_BY_KEY, {"key": category_key, "user_id": user_id}
            ).fetchone()
            if found is None:
                raise UnknownCategory(category_key)
            params = {
                "user_id": user_id,
                "category_id": found[0],
                "kind": kind,
                "value": canonical,
                "weight": weight,
            }
            row = conn.execute(queries.ADD_PATTERN, params).fetchone()
            assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
            return row[0], row[1]

        return self.db.run(save)
