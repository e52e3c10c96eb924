"""What the pipeline reads and writes: one abstract base per store, and their PostgreSQL
implementations (each method one statement, one round trip). ``pipeline.memory`` has in-memory
ones for tests."""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import msgspec

from pipeline import queries
from pipeline.db import Database
from pipeline.matcher import USER_ENTRY, USER_ENTRY_MAX, Decision, MerchantKey
from pipeline.overlay import Overlay, Rollout
from pipeline.tokens import (
    TOKEN_ENTRY,
    TOKEN_ENTRY_MAX,
    TOKEN_KEY_PREFIX,
    TOKEN_MIN_MERCHANTS,
    is_token_key,
    token_key,
    token_weight,
)
from schemas import Expense, Pattern, PatternKind

_json = msgspec.json.Encoder()


class LoadedBatch(msgspec.Struct):
    expenses: list[Expense]
    ruleset_version: int | None  # None when no expense was found
    user_owned: set[int]  # ids whose categorization the user chose
    rollout: Rollout | None = None  # the candidate ruleset rolled out to a share of users


class ExpenseSource(abc.ABC):
    """Where the expenses to categorize come from."""

    @abc.abstractmethod
    def load(self, ids: Sequence[int]) -> LoadedBatch:
        """The live expenses among ``ids`` (unknown and deleted ones are left out), the current
        ruleset version, and which of them the user already categorized."""

    @abc.abstractmethod
    def uncategorized_ids(self, user_id: int | None = None) -> list[int]:
        """Live expenses with no categorization row at all (of one user, or all), in id order."""


class PatternSource(abc.ABC):
    """The source of truth for patterns (L3), behind the cache tiers."""

    @abc.abstractmethod
    def load_merchants(self, keys: Collection[MerchantKey]) -> dict[MerchantKey, tuple[Pattern, ...]]:
        """An entry for every key asked, patterns in id order (empty: none match). ``(user, value)``
        is the user's active merchant patterns for ``value`` (user 0: the global ones);
        ``(user, USER_ENTRY)`` is all of the user's, at most ``USER_ENTRY_MAX + 1``;
        ``(user, token_key(token))`` is the user's learned token votes (user 0: the fleet's), as
        ``PatternKind.TOKEN`` patterns of at least ``TOKEN_MIN_MERCHANTS`` merchants, and
        ``(user, TOKEN_ENTRY)`` all of the user's, at most ``TOKEN_ENTRY_MAX + 1`` (a store without
        token learning answers both empty)."""

    @abc.abstractmethod
    def load_rules(self) -> tuple[int, tuple[Pattern, ...]]:
        """The ruleset version and its active non-merchant patterns in id order, one snapshot."""


class CategorizationSink(abc.ABC):
    """Where decisions are written."""

    @abc.abstractmethod
    def upsert(self, decisions: Iterable[tuple[int, Decision]], meta: WriteMeta) -> set[int]:
        """Write the decisions as source 'auto'; returns the ids whose row was inserted or changed.
        A user's row, an identical repeat and a row of a newer ruleset version are left alone."""


class ExpenseStore(ExpenseSource):
    def __init__(self, db: Database):
        self.db = db

    def load(self, ids: Sequence[int]) -> LoadedBatch:
        rows = self.db.run(
            lambda c: c.execute(queries.LOAD_EXPENSES, {"ids": list(ids)}).fetchall(), read=True
        )
        expenses, owned, version, rollout = [], set(), None, None
        for r in rows:
            expenses.append(expense_from_row(r))
            version = r[8]
            if r[9]:
                owned.add(r[0])
        if rows and rows[0][10] is not None:
            candidate, revision, percent = rows[0][10]
            rollout = Rollout(candidate, revision, percent)
        return LoadedBatch(expenses, version, owned, rollout)

    def uncategorized_ids(self, user_id: int | None = None) -> list[int]:
        rows = self.db.run(
            lambda c: c.execute(queries.UNCATEGORIZED_IDS, {"user_id": user_id}).fetchall(), read=True
        )
        return [r[0] for r in rows]


def expense_from_row(r: Sequence[Any]) -> Expense:
    """An Expense from the first eight columns of ``LOAD_EXPENSES`` (and queries shaped like it)."""
    return Expense(
        id=r[0],
        user_id=r[1],
        merchant_name=r[2],
        description=r[3],
        amount=r[4],
        currency=r[5].strip(),
        transaction_date=r[6],
        transaction_time=r[7],
    )


def pattern_from_row(row: Sequence[Any]) -> Pattern:
    """A Pattern from (id, user_id, category_id, kind, value, weight[, support, seen])."""
    return Pattern(
        id=row[0],
        user_id=row[1],
        category_id=row[2],
        kind=PatternKind(row[3]),
        value=row[4],
        weight=row[5],
        support=row[6] if len(row) > 6 else 0,
        seen=row[7] if len(row) > 7 else 0,
    )


def token_pattern(vote_id: int, scope: int, category_id: int, token: str, support: int, seen: int) -> Pattern:
    """A token vote as the matcher reads it (id: minus the vote's id, never a pattern's)."""
    return Pattern(
        id=-abs(vote_id),
        user_id=scope or None,
        category_id=category_id,
        kind=PatternKind.TOKEN,
        value=token,
        weight=token_weight(support, seen),
        support=support,
        seen=seen,
    )


class PatternStore(PatternSource):
    """L3: the source of truth for patterns."""

    name = "l3"

    def __init__(self, db: Database):
        self.db = db

    def load_merchants(self, keys: Collection[MerchantKey]) -> dict[MerchantKey, tuple[Pattern, ...]]:
        """An entry for every key asked (empty when nothing matches: negative entries). The key
        ``(user, USER_ENTRY)`` asks for all of the user's merchant patterns (at most
        ``USER_ENTRY_MAX + 1``: one more says "too many, look them up by name")."""
        names = [(u, v) for u, v in keys if v != USER_ENTRY and not is_token_key(v)]
        tokens = sorted(
            (u, v[len(TOKEN_KEY_PREFIX) :]) for u, v in keys if is_token_key(v) and v != TOKEN_ENTRY
        )
        values = sorted({v for _, v in names})
        users = sorted({u for u, _ in names if u})
        entry_users = sorted({u for u, v in keys if u and v == USER_ENTRY})
        params = {
            "values": values,
            "users": users,
            "entry_users": entry_users,
            "entry_max": USER_ENTRY_MAX,
            "token_users": [u for u, _ in tokens],
            "tokens": [t for _, t in tokens],
            "token_min": TOKEN_MIN_MERCHANTS,
            "token_entry_users": sorted({u for u, v in keys if u and v == TOKEN_ENTRY}),
            "token_entry_max": TOKEN_ENTRY_MAX,
        }
        rows = self.db.run(lambda c: c.execute(queries.LOAD_MERCHANT_PATTERNS, params).fetchall(), read=True)
        found: dict[MerchantKey, list[Pattern]] = {key: [] for key in keys}
        for row in rows:
            if row[0] >= 2:  # a token vote: (part, -id, scope, category, 'token', token, _, support, seen)
                p = token_pattern(row[1], row[2], row[3], row[5], row[7], row[8])
                key = (row[2], token_key(p.value) if row[0] == 2 else TOKEN_ENTRY)
            else:
                p = pattern_from_row(row[1:])
                key = (p.user_id or 0, USER_ENTRY if row[0] else p.value)
            bucket = found.get(key)
            if bucket is not None:
                bucket.append(p)
        return {k: tuple(sorted(v, key=lambda p: p.id)) for k, v in found.items()}

    def load_rules(self) -> tuple[int, tuple[Pattern, ...]]:
        """The ruleset version and its non-merchant patterns, in one statement."""
        rows = self.db.run(lambda c: c.execute(queries.LOAD_RULES).fetchall(), read=True)
        version = rows[0][0] if rows else 0
        return version, tuple(pattern_from_row(r[1:]) for r in rows if r[1] is not None)


class WriteMeta(msgspec.Struct, frozen=True, kw_only=True):
    ruleset_version: int
    message_id: str | None = None
    correlation_id: str | None = None
    enqueued_at: dt.datetime | None = None


class CategorizationStore(CategorizationSink):
    def __init__(self, db: Database):
        self.db = db

    def upsert(self, decisions: Iterable[tuple[int, Decision]], meta: WriteMeta) -> set[int]:
        """Write every decision in one statement; returns the ids whose row was inserted or changed."""
        items = sorted(decisions, key=lambda item: item[0])  # one lock order for all writers
        if not items:
            return set()
        params = {
            "expense_ids": [i for i, _ in items],
            "category_ids": [d.category_id for _, d in items],
            "pattern_ids": [d.pattern_id for _, d in items],
            "confidences": [d.confidence for _, d in items],
            "bands": [d.band for _, d in items],
            "methods": [d.method for _, d in items],
            "explanations": [_json.encode(d.explanation).decode() for _, d in items],
            "ruleset_version": meta.ruleset_version,
            "message_id": meta.message_id,
            "correlation_id": meta.correlation_id,
            "enqueued_at": meta.enqueued_at,
            # empty unless a rollout user is in the batch: unnest pads it with NULLs
            "candidate_ids": (
                [d.candidate_id for _, d in items] if any(d.candidate_id for _, d in items) else []
            ),
        }
        rows = self.db.run(lambda c: c.execute(queries.UPSERT_CATEGORIZATIONS, params).fetchall())
        return {r[0] for r in rows}


class CandidateSource(abc.ABC):
    """Where a worker gets the overlay of the candidate ruleset being rolled out."""

    @abc.abstractmethod
    def overlay(self, rollout: Rollout) -> Overlay:
        """The candidate's overlay at the rollout's revision."""


class CandidateStore(CandidateSource):
    def __init__(self, db: Database):
        self.db = db

    def overlay(self, rollout: Rollout) -> Overlay:
        from pipeline.candidates import load_overlay

        # the primary: a replica behind it could hold an older revision than the one asked
        return self.db.run(lambda c: load_overlay(c, rollout.candidate_id, rollout.revision))
