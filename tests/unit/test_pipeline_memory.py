"""The categorization pipeline on the in-memory stores (pipeline/memory.py), with the real L1 as
its only cache tier.

``TestStoreContract`` runs every case on the memory stores and on the PostgreSQL stores (the
``postgres`` cases need the real server of tests/conftest.py; ``-k "not postgres"`` runs only the fakes),
so the fake is held to the expectations of tests/integration/test_pipeline.py and cannot drift.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import string
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import psycopg
import psycopg_pool
import pytest

from pipeline import queries
from pipeline.cache import LocalTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.matcher import USER_ENTRY, USER_ENTRY_MAX, Decision, Thresholds
from pipeline.memory import MemoryCategorizationStore, MemoryDatabase, MemoryExpenseStore, MemoryPatternStore
from pipeline.resolver import PatternResolver
from pipeline.stores import (
    CategorizationSink,
    CategorizationStore,
    ExpenseSource,
    ExpenseStore,
    PatternSource,
    PatternStore,
    WriteMeta,
)
from pipeline.tokens import token_key
from schemas import Expense
from tests.support import data

THRESHOLDS = Thresholds(auto=0.85, suggest=0.70)  # as tests/support/cache.categorizer
#: tests/support/data.seed_patterns: (category, kind, value, weight)
SEED = [
    ("coffee", "merchant", "STARBUCKS", 0.95),
    ("groceries", "merchant", "WALMART", 0.95),
    ("rideshare", "merchant", "UBER", 0.95),
    ("dining", "keyword", "pizza", 0.8),
    ("fuel", "keyword", "fuel", 0.88),
]


class Row(NamedTuple):
    """A categorizations row, as tests/support/data.rows reads it (without the expense id)."""

    category_id: int | None
    pattern_id: int | None
    confidence: float
    band: str
    method: str
    explanation: dict[str, Any]
    ruleset_version: int
    message_id: str | None
    source: str
    categorized_at: dt.datetime


class Backend(abc.ABC):
    """One set of stores with the seed of tests/conftest.py's ``cats``, and the means to change
    their data the way tests/support/data.py does."""

    expenses: ExpenseSource
    patterns: PatternSource
    writer: CategorizationSink
    cats: dict[str, int]
    seeded: dict[str, int]  # stored value -> id of the SEED patterns

    def categorizer(self) -> Categorizer:
        return Categorizer(
            expenses=self.expenses,
            resolver=PatternResolver(self.patterns, [LocalTier(max_entries=1000, ttl_seconds=60)]),
            writer=self.writer,
            thresholds=THRESHOLDS,
        )

    @abc.abstractmethod
    def add_expenses(self, merchants: Iterable[str], *, user_id: int = 1) -> list[int]: ...

    @abc.abstractmethod
    def add_pattern(
        self, category_id: int, kind: str, value: str, *, weight: float = 0.95, user_id: int | None = None
    ) -> int: ...

    @abc.abstractmethod
    def update_pattern(
        self, pattern_id: int, *, category_id: int | None = None, active: bool | None = None
    ) -> None: ...

    @abc.abstractmethod
    def delete_expense(self, expense_id: int) -> None: ...

    @abc.abstractmethod
    def choose_category(self, expense_id: int, category_id: int) -> None: ...

    @abc.abstractmethod
    def rows(self) -> dict[int, Row]: ...


class MemoryBackend(Backend):
    def __init__(self) -> None:
        self.db = MemoryDatabase()
        self.expenses = MemoryExpenseStore(self.db)
        self.patterns = MemoryPatternStore(self.db)
        self.writer = MemoryCategorizationStore(self.db)
        self.cats = {key: i for i, key in enumerate(data.CATEGORIES, 1)}
        self.seeded = {}
        for category, kind, value, weight in SEED:
            p = self.db.add_pattern(category_id=self.cats[category], kind=kind, value=value, weight=weight)
            self.seeded[p.value] = p.id

    def add_expenses(self, merchants: Iterable[str], *, user_id: int = 1) -> list[int]:
        first = len(self.db.expenses) + 1
        new = [
            Expense(
                id=first + i,
                user_id=user_id,
                merchant_name=m,
                description="",
                amount=12.5,
                currency="USD",
                transaction_date=dt.date(2026, 3, 14),
            )
            for i, m in enumerate(merchants)
        ]
        self.db.add_expenses(*new)
        return [e.id for e in new]

    def add_pattern(
        self, category_id: int, kind: str, value: str, *, weight: float = 0.95, user_id: int | None = None
    ) -> int:
        return self.db.add_pattern(
            category_id=category_id, kind=kind, value=value, weight=weight, user_id=user_id
        ).id

    def update_pattern(
        self, pattern_id: int, *, category_id: int | None = None, active: bool | None = None
    ) -> None:
        self.db.update_pattern(pattern_id, category_id=category_id, active=active)

    def delete_expense(self, expense_id: int) -> None:
        self.db.delete_expense(expense_id)

    def choose_category(self, expense_id: int, category_id: int) -> None:
        self.db.choose_category(expense_id, category_id)

    def rows(self) -> dict[int, Row]:
        return {
            r.expense_id: Row(
                r.category_id,
                r.pattern_id,
                r.confidence,
                r.band,
                r.method,
                json.loads(r.explanation),
                r.ruleset_version,
                r.message_id,
                r.source,
                r.categorized_at,
            )
            for r in self.db.categorizations()
        }


class PostgresBackend(Backend):
    def __init__(self, db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]) -> None:
        self.conn = conn
        self.expenses = ExpenseStore(db)
        self.patterns = PatternStore(db)
        self.writer = CategorizationStore(db)
        self.cats = cats
        self.seeded = dict(conn.execute("SELECT value, id FROM categorization_patterns").fetchall())

    def add_expenses(self, merchants: Iterable[str], *, user_id: int = 1) -> list[int]:
        return data.add_expenses(self.conn, merchants, user_id=user_id)

    def add_pattern(
        self, category_id: int, kind: str, value: str, *, weight: float = 0.95, user_id: int | None = None
    ) -> int:
        return data.add_pattern(self.conn, category_id, kind, value, weight=weight, user_id=user_id)

    def update_pattern(
        self, pattern_id: int, *, category_id: int | None = None, active: bool | None = None
    ) -> None:
        self.conn.execute(
            "UPDATE categorization_patterns SET category_id = coalesce(%s, category_id),"
            " active = coalesce(%s, active) WHERE id = %s",
            (category_id, active, pattern_id),
        )

    def delete_expense(self, expense_id: int) -> None:
        self.conn.execute("UPDATE expenses SET deleted_at = now() WHERE id = %s", (expense_id,))

    def choose_category(self, expense_id: int, category_id: int) -> None:
        params = {
            "expense_id": expense_id,
            "category_id": category_id,
            "pattern_id": None,
            "explanation": "{}",
            "message_id": None,
            "correlation_id": None,
        }
        self.conn.execute(queries.WRITE_USER_CATEGORIZATION, params)

    def rows(self) -> dict[int, Row]:
        return {r[0]: Row(*r[1:]) for r in data.rows(self.conn)}


@pytest.fixture(params=["memory", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    cats = request.getfixturevalue("cats")  # tests/conftest.py: a seeded throwaway database
    settings = request.getfixturevalue("settings")
    pool = psycopg_pool.ConnectionPool(
        settings.database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True
    )
    try:
        yield PostgresBackend(Database(pool), request.getfixturevalue("conn"), cats)
    finally:
        pool.close()


class TestStoreContract:
    def test_a_merchant_pattern_decides_auto_with_an_explanation(self, backend: Backend) -> None:
        [eid] = backend.add_expenses(["PAYPAL *STARBUCKS 402935"])
        report = backend.categorizer().categorize([eid], message_id="m1")
        coffee, starbucks = backend.cats["coffee"], backend.seeded["starbucks"]
        assert (report.outcomes, report.written, report.categories) == ({"categorized": 1}, 1, {coffee: 1})
        row = backend.rows()[eid]
        assert (row.category_id, row.pattern_id, row.band, row.method) == (
            coffee,
            starbucks,
            "auto",
            "merchant",
        )
        assert (row.source, row.message_id, row.ruleset_version) == ("auto", "m1", report.ruleset_version)
        assert row.confidence >= THRESHOLDS.auto
        assert row.explanation["decided_by"] == "global_merchant"
        fired = row.explanation["fired"][0]
        assert (fired["pattern_id"], fired["kind"], fired["scope"]) == (starbucks, "merchant", "global")

    def test_token_keys_without_learned_votes_answer_empty(self, backend: Backend) -> None:
        """Token votes are learned from corrections (PostgreSQL only): with none, a token key is a
        negative entry in both stores, next to the merchant entries of the same lookup."""
        keys = {(1, token_key("starbucks")), (0, token_key("starbucks")), (0, "starbucks")}
        found = backend.patterns.load_merchants(keys)
        assert found.keys() == keys
        assert found[(1, token_key("starbucks"))] == () == found[(0, token_key("starbucks"))]
        assert [p.id for p in found[(0, "starbucks")]] == [backend.seeded["starbucks"]]

    def test_a_users_own_pattern_beats_the_global_one(self, backend: Backend) -> None:
        cats, starbucks = backend.cats, backend.seeded["starbucks"]
        version, _ = backend.patterns.load_rules()
        mine = backend.add_pattern(cats["dining"], "merchant", "STARBUCKS", user_id=5, weight=0.97)
        assert backend.patterns.load_rules()[0] > version  # every pattern change bumps it
        [own, walmart] = backend.add_expenses(["SQ *STARBUCKS", "WALMART"], user_id=5)
        [other] = backend.add_expenses(["STARBUCKS"], user_id=7)
        backend.categorizer().categorize([own, walmart, other])
        rows = backend.rows()
        assert (rows[own].category_id, rows[own].pattern_id) == (cats["dining"], mine)
        assert rows[own].explanation["decided_by"] == "user_merchant"
        assert rows[walmart].category_id == cats["groceries"]  # no own pattern: the global one
        assert (rows[other].category_id, rows[other].pattern_id) == (cats["coffee"], starbucks)
        keys = {(0, "starbucks"), (5, "starbucks"), (7, "starbucks"), (5, USER_ENTRY), (0, USER_ENTRY)}
        got = {k: [p.id for p in v] for k, v in backend.patterns.load_merchants(keys).items()}
        assert got == {
            (0, "starbucks"): [starbucks],
            (5, "starbucks"): [mine],
            (7, "starbucks"): [],
            (5, USER_ENTRY): [mine],
            (0, USER_ENTRY): [],
        }

    def test_a_user_with_very_many_patterns_is_looked_up_by_name(self, backend: Backend) -> None:
        fuel = backend.cats["fuel"]
        names = [f"shop{a}{b}" for a in string.ascii_lowercase for b in string.ascii_lowercase]
        for name in names[: USER_ENTRY_MAX + 1]:  # letters: normalizing drops digits
            backend.add_pattern(fuel, "merchant", name, user_id=6, weight=0.97)
        walmart = backend.add_pattern(fuel, "merchant", "walmart", user_id=6, weight=0.97)
        many = backend.add_expenses(["STARBUCKS", "TST* WALMART #12"], user_id=6)
        backend.categorizer().categorize(many)
        rows = backend.rows()
        assert [rows[i].category_id for i in many] == [backend.cats["coffee"], fuel]
        assert rows[many[1]].pattern_id == walmart
        [entry] = backend.patterns.load_merchants({(6, USER_ENTRY)}).values()
        assert len(entry) == USER_ENTRY_MAX + 1  # cut at one more than an entry holds: "too many"

    def test_unknown_and_deleted_ids_count_as_missing(self, backend: Backend) -> None:
        cats = backend.cats
        ids = backend.add_expenses(["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "Tailor Shop"])
        backend.delete_expense(ids[2])
        report = backend.categorizer().categorize([*ids, 999_999, 888_888], message_id="m1")
        assert report.requested == 5
        assert report.outcomes == {"missing": 3, "categorized": 2}
        got = {i: (r.category_id, r.band, r.message_id) for i, r in backend.rows().items()}
        assert got == {ids[0]: (cats["coffee"], "auto", "m1"), ids[1]: (cats["groceries"], "auto", "m1")}
        nothing = backend.categorizer().categorize([ids[2], 999_999])
        assert (nothing.outcomes, nothing.ruleset_version, nothing.written) == ({"missing": 2}, None, 0)

    def test_uncategorized_ids_are_live_expenses_without_a_row(self, backend: Backend) -> None:
        mine = backend.add_expenses(["STARBUCKS", "WALMART", "GONE"])
        theirs = backend.add_expenses(["UBER"], user_id=2)
        backend.delete_expense(mine[2])
        backend.categorizer().categorize([mine[0]])
        assert backend.expenses.uncategorized_ids() == [mine[1], *theirs]
        assert backend.expenses.uncategorized_ids(2) == theirs

    def test_the_same_batch_twice_leaves_identical_rows(self, backend: Backend) -> None:
        ids = backend.add_expenses(["STARBUCKS SEATTLE WA", "WALMART #12", "SHELL FUEL 7"])
        categorizer = backend.categorizer()
        first = categorizer.categorize(ids, message_id="same")
        before = backend.rows()
        second = categorizer.categorize(ids, message_id="same")
        third = categorizer.categorize(ids, message_id="another")  # the message id is not compared
        assert backend.rows() == before  # not even categorized_at moved
        assert (first.written, second.written, second.unchanged, third.written) == (3, 0, 3, 0)
        assert first.outcomes == second.outcomes == third.outcomes

    def test_duplicate_ids_in_one_batch_are_written_once(self, backend: Backend) -> None:
        [eid] = backend.add_expenses(["STARBUCKS"])
        report = backend.categorizer().categorize([eid, eid, eid])
        assert (report.requested, report.written) == (3, 1)
        assert list(backend.rows()) == [eid]

    def test_a_users_category_is_never_overwritten_by_auto(self, backend: Backend) -> None:
        cats = backend.cats
        ids = backend.add_expenses(["STARBUCKS", "WALMART"])
        backend.choose_category(ids[0], cats["dining"])
        before = backend.rows()[ids[0]]
        report = backend.categorizer().categorize(ids)
        assert report.outcomes == {"user_kept": 1, "categorized": 1}
        after = backend.rows()
        assert after[ids[0]] == before and before.source == "user"
        assert after[ids[1]].category_id == cats["groceries"]
        # the sink itself refuses too, whatever the version
        decision = Decision(cats["coffee"], backend.seeded["starbucks"], 0.95, "auto", "merchant", {})
        assert backend.writer.upsert([(ids[0], decision)], WriteMeta(ruleset_version=10**9)) == set()
        assert backend.rows()[ids[0]] == before

    def test_only_a_changed_decision_of_the_same_or_a_newer_ruleset_is_written(
        self, backend: Backend
    ) -> None:
        [eid] = backend.add_expenses(["STARBUCKS"])
        v = backend.categorizer().categorize([eid]).ruleset_version
        assert v is not None
        d = Decision(backend.cats["fuel"], None, 0.9, "suggest", "keyword", {"why": "test"})
        assert backend.writer.upsert([(eid, d)], WriteMeta(ruleset_version=v - 1)) == set()  # older
        assert backend.writer.upsert([(eid, d)], WriteMeta(ruleset_version=v)) == {eid}
        same = Decision(d.category_id, None, 0.9, "suggest", "regex", {"why": "test"})  # method: not compared
        assert backend.writer.upsert([(eid, same)], WriteMeta(ruleset_version=v + 1)) == set()
        row = backend.rows()[eid]
        assert (row.category_id, row.method, row.ruleset_version) == (d.category_id, "keyword", v)
        assert backend.writer.upsert([], WriteMeta(ruleset_version=v)) == set()

    def test_a_disabled_pattern_changes_the_next_batch(self, backend: Backend) -> None:
        categorizer = backend.categorizer()  # one L1 throughout: versioned keys go stale at once
        [eid] = backend.add_expenses(["STARBUCKS"])
        first = categorizer.categorize([eid])
        backend.update_pattern(backend.seeded["starbucks"], active=False)
        second = categorizer.categorize([eid])
        assert first.ruleset_version is not None and second.ruleset_version is not None
        assert second.ruleset_version > first.ruleset_version
        assert (first.outcomes, second.outcomes, second.written) == (
            {"categorized": 1},
            {"uncategorized": 1},
            1,
        )
        row = backend.rows()[eid]
        assert (row.category_id, row.band, row.ruleset_version) == (None, "none", second.ruleset_version)
        assert row.explanation["reason"] == "no pattern fired"
        backend.update_pattern(backend.seeded["pizza"], active=False)
        version, rules = backend.patterns.load_rules()
        assert version > second.ruleset_version
        assert [p.id for p in rules] == [backend.seeded["fuel"]]

    def test_a_pattern_edited_in_place_is_seen_by_the_next_batch(self, backend: Backend) -> None:
        cats = backend.cats
        categorizer = backend.categorizer()
        first = backend.add_expenses(["STARBUCKS", "STARBUCKS #12"])
        categorizer.categorize(first)
        assert {r.category_id for r in backend.rows().values()} == {cats["coffee"]}
        backend.update_pattern(backend.seeded["starbucks"], category_id=cats["dining"])
        again = backend.add_expenses(["STARBUCKS"])
        categorizer.categorize([*first, *again])
        assert {i: r.category_id for i, r in backend.rows().items()} == dict.fromkeys(
            [*first, *again], cats["dining"]
        )

    def test_suggest_and_none_bands_follow_the_thresholds(self, backend: Backend) -> None:
        cats = backend.cats
        ids = backend.add_expenses(["UBER *TRIP HELP.UBER.COM", "MARIO'S PIZZA", "XYZZY HOLDINGS"])
        report = backend.categorizer().categorize(ids)
        assert report.outcomes == {"categorized": 1, "suggested": 1, "uncategorized": 1}
        uber, pizza, unknown = (backend.rows()[i] for i in ids)
        assert (uber.category_id, uber.band, uber.explanation["fired"][0]["kind"]) == (
            cats["rideshare"],
            "auto",
            "merchant",
        )
        assert (pizza.category_id, pizza.band, pizza.method) == (cats["dining"], "suggest", "keyword")
        assert THRESHOLDS.suggest <= pizza.confidence < THRESHOLDS.auto
        assert (unknown.category_id, unknown.band, unknown.method) == (None, "none", "none")
        assert unknown.explanation["reason"] == "no pattern fired"


def test_memory_stores_share_one_lock_across_threads() -> None:
    backend = MemoryBackend()
    ids = backend.add_expenses([f"STARBUCKS #{i}" for i in range(200)] + ["WALMART"] * 200)
    categorizer = backend.categorizer()
    written: list[int] = []

    def run(offset: int) -> None:
        written.append(categorizer.categorize(ids[offset:] + ids[:offset]).written)

    threads = [threading.Thread(target=run, args=(i * 50,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(written) == len(ids)  # each row inserted exactly once, the rest identical repeats
    assert len(backend.rows()) == len(ids)
