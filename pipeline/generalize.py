"""Maintaining the generalizations of a correction, in the correction's transaction.

A corrected expense is labelled with its normalized merchant and the chosen category
(``learned_labels``, one row per expense: correcting it again moves the label). A merchant's
vote, per user, is the majority of its labels; when it changes, each of the merchant's tokens
moves one merchant from the old category to the new (``learned_token_votes``), so a token counts
once per distinct merchant however often that merchant is corrected. The fleet's vote for a
merchant needs ``FLEET_MIN_USERS`` different users agreeing; it is kept as a global learned
``merchant`` pattern and feeds the fleet-wide token votes the same way. Repeating a correction
changes nothing: its label, and so every vote, is already there.

Thresholds and smoothing are in ``pipeline.tokens``; reading the votes back is
``PatternStore.load_merchants``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from pipeline import queries
from pipeline.tokens import FLEET_MIN_USERS, FLEET_PRIOR, merchant_tokens

FLEET = 0  # the scope of the fleet's votes


class Generalized(msgspec.Struct, kw_only=True):
    """What one correction changed beyond the user's merchant pattern."""

    user_vote: tuple[int | None, int | None] | None = None  # (before, after) when it moved
    fleet_vote: tuple[int | None, int | None] | None = None
    fleet_pattern_id: int | None = None  # the global learned pattern (created or updated)
    dropped_fleet_patterns: list[int] = msgspec.field(default_factory=list)


def apply_label(
    conn: psycopg.Connection[Any], *, expense_id: int, user_id: int, merchant: str, category_id: int
) -> Generalized:
    """Label the expense and move the votes this changes (nothing, for a repeat)."""
    out = Generalized()
    before = conn.execute(queries.LOAD_LABEL, {"expense_id": expense_id}).fetchone()
    if before is not None and tuple(before) == (merchant, category_id):
        return out
    conn.execute(
        queries.SAVE_LABEL,
        {"expense_id": expense_id, "user_id": user_id, "merchant": merchant, "category_id": category_id},
    )
    merchants = [merchant]
    if before is not None and before[0] != merchant:  # the expense's merchant name changed
        merchants.insert(0, before[0])
    for name in merchants:
        moved = _revote(conn, user_id, name, category_id)
        if name == merchant:
            out.user_vote = moved
        if moved is not None:
            fleet = _revote_fleet(conn, name, out)
            if name == merchant:
                out.fleet_vote = fleet
    return out


def _revote(
    conn: psycopg.Connection[Any], user_id: int, merchant: str, chosen: int
) -> tuple[int | None, int | None] | None:
    row = conn.execute(
        queries.REVOTE_MERCHANT, {"user_id": user_id, "merchant": merchant, "category_id": chosen}
    ).fetchone()
    old, new = (row[0], row[1]) if row else (None, None)
    if old == new:
        return None
    _move_tokens(conn, user_id, merchant, old, new)
    return old, new


def _revote_fleet(
    conn: psycopg.Connection[Any], merchant: str, out: Generalized
) -> tuple[int | None, int | None] | None:
    """The users' tally for the merchant changed: the fleet's vote and its global pattern follow."""
    row = conn.execute(queries.REVOTE_FLEET, {"merchant": merchant, "min_users": FLEET_MIN_USERS}).fetchone()
    old, new, users, voters = row if row else (None, None, 0, 0)  # the statement returns one row
    out.dropped_fleet_patterns += [
        r[0] for r in conn.execute(queries.DROP_FLEET_PATTERNS, {"merchant": merchant, "category_id": new})
    ]
    if new is not None:
        saved = conn.execute(
            queries.SAVE_FLEET_PATTERN,
            {
                "category_id": new,
                "merchant": merchant,
                "weight": round(int(users) / (int(voters) + FLEET_PRIOR), 4),
                "users": users,
                "voters": voters,
            },
        ).fetchone()
        out.fleet_pattern_id = saved[0] if saved else None
    if old == new:
        return None
    _move_tokens(conn, FLEET, merchant, old, new)
    return old, new


def _move_tokens(
    conn: psycopg.Connection[Any], scope: int, merchant: str, old: int | None, new: int | None
) -> None:
    tokens = list(merchant_tokens(merchant))
    if tokens:
        conn.execute(queries.MOVE_TOKEN_VOTES, {"scope": scope, "tokens": tokens, "old": old, "new": new})
