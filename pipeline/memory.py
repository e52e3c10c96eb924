"""In-memory stores for tests, like Dramatiq's ``StubBroker``: the same contracts as the
PostgreSQL stores (``pipeline.stores``) and the same semantics as their statements
(``pipeline.queries``), with no server::

    db = MemoryDatabase()
    db.add_pattern(category_id=1, kind="merchant", value="STARBUCKS")
    db.add_expenses(Expense(id=1, user_id=7, merchant_name="SQ *STARBUCKS", description="", amount=4.5,
                            currency="USD", transaction_date=date(2026, 3, 14)))
    categorizer = Categorizer(
        expenses=MemoryExpenseStore(db),
        resolver=PatternResolver(MemoryPatternStore(db), [LocalTier(max_entries=1000, ttl_seconds=60)]),
        writer=MemoryCategorizationStore(db),
        thresholds=Thresholds(auto=0.85, suggest=0.70),
    )
"""

from __future__ import annotations

import datetime as dt
import struct
import threading
from collections.abc import Collection, Iterable, Sequence

import msgspec

from pipeline.matcher import USER_ENTRY, USER_ENTRY_MAX, Decision, MerchantKey
from pipeline.rules import canonical_value
from pipeline.stores import CategorizationSink, ExpenseSource, LoadedBatch, PatternSource, WriteMeta
from schemas import Categorization, Expense, Pattern, PatternKind

__all__ = [
    "MemoryCategorizationStore",
    "MemoryDatabase",
    "MemoryExpenseStore",
    "MemoryPatternStore",
    "StoredCategorization",
]

_json = msgspec.json.Encoder()


def _real(x: float) -> float:
    """``x`` as a ``real`` column stores it (single precision), as PostgreSQL gives it back."""
    value: float = struct.unpack("f", struct.pack("f", x))[0]
    return value


class StoredCategorization(Categorization, frozen=True, kw_only=True):
    """A row of ``categorizations``; ``explanation`` is the JSON text as written."""

    ruleset_version: int
    source: str  # auto | user
    message_id: str | None = None
    correlation_id: str | None = None
    enqueued_at: dt.datetime | None = None
    categorized_at: dt.datetime


class MemoryDatabase:
    """The tables the stores read and write. Change them through the methods (each, like the
    statement it stands for, bumps the ruleset version when it changes patterns); hold ``lock``
    to read the attributes while other threads write."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expenses: dict[int, Expense] = {}
        self.deleted: set[int] = set()  # ids with deleted_at set
        self.patterns: dict[int, Pattern] = {}  # in id order
        self.inactive: set[int] = set()
        self.rows: dict[int, StoredCategorization] = {}  # by expense id
        self.ruleset_version = 1

    def add_expenses(self, *expenses: Expense) -> None:
        """Insert expenses as they are (ids included)."""
        with self.lock:
            self.expenses.update((e.id, e) for e in expenses)

    def delete_expense(self, expense_id: int) -> None:
        """Set ``deleted_at``: the pipeline counts the id as missing from now on."""
        with self.lock:
            self.deleted.add(expense_id)

    def add_pattern(
        self,
        *,
        category_id: int,
        kind: PatternKind | str,
        value: str,
        weight: float = 0.9,
        user_id: int | None = None,
    ) -> Pattern:
        """Insert an active pattern, its value in the stored form (``canonical_value``)."""
        kind = PatternKind(kind)
        value = canonical_value(kind, value)
        with self.lock:
            unique = (user_id, kind, value, category_id)
            if any((p.user_id, p.kind, p.value, p.category_id) == unique for p in self.patterns.values()):
                raise ValueError(f"categorization_patterns_uniq: {unique} exists")
            pattern = Pattern(
                id=len(self.patterns) + 1,
                user_id=user_id,
                category_id=category_id,
                kind=kind,
                value=value,
                weight=_real(weight),
            )
            self.patterns[pattern.id] = pattern
            self.ruleset_version += 1
        return pattern

    def update_pattern(
        self,
        pattern_id: int,
        *,
        category_id: int | None = None,
        weight: float | None = None,
        active: bool | None = None,
    ) -> None:
        """Change a pattern in place (same id)."""
        with self.lock:
            p = self.patterns[pattern_id]
            self.patterns[pattern_id] = msgspec.structs.replace(
                p,
                category_id=p.category_id if category_id is None else category_id,
                weight=p.weight if weight is None else _real(weight),
            )
            if active is not None:
                (self.inactive.discard if active else self.inactive.add)(pattern_id)
            self.ruleset_version += 1

    def choose_category(self, expense_id: int, category_id: int) -> None:
        """The user's own category (``WRITE_USER_CATEGORIZATION``): automatic runs leave it alone."""
        with self.lock:
            self.rows[expense_id] = StoredCategorization(
                expense_id=expense_id,
                category_id=category_id,
                pattern_id=None,
                confidence=1.0,
                band="auto",
                method="user",
                explanation="{}",
                ruleset_version=self.ruleset_version,
                source="user",
                categorized_at=dt.datetime.now(dt.UTC),
            )

    def categorizations(self) -> list[StoredCategorization]:
        with self.lock:
            return [self.rows[i] for i in sorted(self.rows)]


class MemoryExpenseStore(ExpenseSource):
    def __init__(self, db: MemoryDatabase):
        self.db = db

    def load(self, ids: Sequence[int]) -> LoadedBatch:
        db = self.db
        with db.lock:
            live = [db.expenses[i] for i in sorted(set(ids)) if i in db.expenses and i not in db.deleted]
            owned = {e.id for e in live if e.id in db.rows and db.rows[e.id].source == "user"}
            return LoadedBatch(live, db.ruleset_version if live else None, owned)

    def uncategorized_ids(self, user_id: int | None = None) -> list[int]:
        db = self.db
        with db.lock:
            return [
                i
                for i, e in sorted(db.expenses.items())
                if i not in db.deleted and i not in db.rows and (user_id is None or e.user_id == user_id)
            ]


class MemoryPatternStore(PatternSource):
    name = "l3"

    def __init__(self, db: MemoryDatabase):
        self.db = db

    def load_merchants(self, keys: Collection[MerchantKey]) -> dict[MerchantKey, tuple[Pattern, ...]]:
        with self.db.lock:
            merchants = [
                p
                for p in self.db.patterns.values()
                if p.kind is PatternKind.MERCHANT and p.id not in self.db.inactive
            ]
        found: dict[MerchantKey, tuple[Pattern, ...]] = {}
        for user, value in keys:
            if value == USER_ENTRY:  # user 0 has no entry: global patterns are asked by name
                own = [p for p in merchants if user and p.user_id == user]
                found[(user, value)] = tuple(own[: USER_ENTRY_MAX + 1])
            else:
                scope = user or None
                found[(user, value)] = tuple(p for p in merchants if p.value == value and p.user_id == scope)
        return found

    def load_rules(self) -> tuple[int, tuple[Pattern, ...]]:
        with self.db.lock:  # one snapshot: the version describes these rules
            rules = tuple(
                p
                for p in self.db.patterns.values()
                if p.kind is not PatternKind.MERCHANT and p.id not in self.db.inactive
            )
            return self.db.ruleset_version, rules


class MemoryCategorizationStore(CategorizationSink):
    def __init__(self, db: MemoryDatabase):
        self.db = db

    def upsert(self, decisions: Iterable[tuple[int, Decision]], meta: WriteMeta) -> set[int]:
        """``UPSERT_CATEGORIZATIONS``: insert, or update an 'auto' row of the same or an older
        ruleset version whose category, pattern, confidence, band or explanation differ."""
        items = list(decisions)
        ids = [i for i, _ in items]
        if len(set(ids)) < len(ids):
            raise ValueError("ON CONFLICT DO UPDATE command cannot affect row a second time")
        written: set[int] = set()
        with self.db.lock:
            if unknown := set(ids) - self.db.expenses.keys():  # the foreign key; nothing written
                raise KeyError(f"no expenses {sorted(unknown)}")
            for expense_id, d in items:
                new = StoredCategorization(
                    expense_id=expense_id,
                    category_id=d.category_id,
                    pattern_id=d.pattern_id,
                    confidence=_real(d.confidence),
                    band=d.band,
                    method=d.method,
                    explanation=_json.encode(d.explanation).decode(),
                    ruleset_version=meta.ruleset_version,
                    source="auto",
                    message_id=meta.message_id,
                    correlation_id=meta.correlation_id,
                    enqueued_at=meta.enqueued_at,
                    categorized_at=dt.datetime.now(dt.UTC),
                )
                old = self.db.rows.get(expense_id)
                if old is None or (
                    old.source == "auto"
                    and new.ruleset_version >= old.ruleset_version
                    and _compared(new) != _compared(old)
                ):
                    self.db.rows[expense_id] = new
                    written.add(expense_id)
                elif (
                    old.source == "auto"
                    and new.ruleset_version >= old.ruleset_version
                    and old.correlation_id != new.correlation_id
                ):  # the same result from another run: re-tagged, not counted as written
                    self.db.rows[expense_id] = msgspec.structs.replace(
                        old, message_id=new.message_id, correlation_id=new.correlation_id
                    )
        return written


def _compared(row: StoredCategorization) -> tuple[object, ...]:
    """The columns the upsert compares (``IS DISTINCT FROM``): not method, ids or timestamps."""
    return (row.category_id, row.pattern_id, row.confidence, row.band, row.explanation)
