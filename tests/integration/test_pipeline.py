"""The categorization pipeline against the real PostgreSQL, without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from pipeline import rules
from pipeline.cache import LocalTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.matcher import USER_ENTRY_MAX
from tests.support import cache, data
from workers.settings import Settings


class CountingCursor(psycopg.Cursor[Any]):
    """Counts statements sent: one execute is one round trip on an autocommit connection."""

    calls: list[str] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        CountingCursor.calls.append(str(query)[:60])
        return super().execute(query, params, **kwargs)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    pool = psycopg_pool.ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=2,
        kwargs={"autocommit": True, "cursor_factory": CountingCursor},
        open=True,
    )
    yield Database(pool)
    pool.close()


def make_categorizer(db: Database) -> Categorizer:
    return cache.categorizer(db, [LocalTier(max_entries=1000, ttl_seconds=60)])


def test_mixed_known_and_unknown_ids(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "Tailor Shop"])
    conn.execute("UPDATE expenses SET deleted_at = now() WHERE id = %s", (ids[2],))
    report = make_categorizer(db).categorize([*ids, 999_999, 888_888], message_id="m1")
    assert report.requested == 5
    assert report.outcomes == {"missing": 3, "categorized": 2}
    got = {r[0]: (r[1], r[4], r[8]) for r in data.rows(conn)}
    assert got == {ids[0]: (cats["coffee"], "auto", "m1"), ids[1]: (cats["groceries"], "auto", "m1")}


def test_every_existing_expense_gets_a_row_even_uncategorized(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["UBER *TRIP HELP.UBER.COM", "MARIO'S PIZZA", "XYZZY HOLDINGS"])
    report = make_categorizer(db).categorize(ids)
    assert sum(report.outcomes.values()) == 3
    by_id = {r[0]: r for r in data.rows(conn)}
    assert by_id[ids[0]][1] == cats["rideshare"]
    assert by_id[ids[1]][1] == cats["dining"] and by_id[ids[1]][4] == "suggest"
    assert by_id[ids[2]][1] is None and by_id[ids[2]][4] == "none"
    assert by_id[ids[2]][6]["reason"] == "no pattern fired"
    assert by_id[ids[0]][6]["fired"][0]["kind"] == "merchant"


def test_same_batch_twice_leaves_identical_rows(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["STARBUCKS SEATTLE WA", "WALMART #12", "SHELL FUEL 7"])
    categorizer = make_categorizer(db)
    first = categorizer.categorize(ids, message_id="same")
    before = data.rows(conn)
    second = categorizer.categorize(ids, message_id="same")
    assert data.rows(conn) == before  # not even categorized_at moved
    assert first.written == 3 and second.written == 0 and second.unchanged == 3
    assert conn.execute("SELECT count(*) FROM categorizations").fetchone()[0] == 3  # type: ignore[index]


def test_duplicate_ids_in_one_batch_are_written_once(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [eid] = data.add_expenses(conn, ["STARBUCKS"])
    report = make_categorizer(db).categorize([eid, eid, eid])
    assert report.written == 1
    assert len(data.rows(conn)) == 1


def test_user_categorization_survives_an_auto_run(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
    conn.execute(
        "INSERT INTO categorizations (expense_id, category_id, confidence, band, method, explanation,"
        " ruleset_version, source) VALUES (%s, %s, 1, 'auto', 'user', '{}', 1, 'user')",
        (ids[0], cats["dining"]),
    )
    before = data.rows(conn)[0]
    report = make_categorizer(db).categorize(ids)
    assert report.outcomes.get("user_kept") == 1
    after = data.rows(conn)
    assert after[0] == before
    assert after[1][1] == cats["groceries"]


def test_round_trips_per_batch_do_not_grow_with_batch_size(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    merchants = [f"STARBUCKS #{i}" for i in range(250)] + [f"LOCAL SHOP {i}" for i in range(250)]
    ids = data.add_expenses(conn, merchants)
    counts = []
    for size in (5, 50, 500):
        conn.execute("DELETE FROM categorizations")
        categorizer = make_categorizer(db)  # cold caches each time: the worst case
        CountingCursor.calls.clear()
        categorizer.categorize(ids[:size])
        counts.append(len(CountingCursor.calls))
    assert counts[0] == counts[1] == counts[2], counts
    # expenses read + merchant patterns (cold L1) + rule set (once per version) + the write
    assert counts[0] == 4, CountingCursor.calls
    CountingCursor.calls.clear()
    categorizer.categorize(ids[:500])  # warm: the caches answer for the patterns
    assert len(CountingCursor.calls) == 2, CountingCursor.calls


def test_user_patterns_come_in_one_entry_per_user_unless_there_are_very_many(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    data.add_pattern(conn, cats["dining"], "merchant", "STARBUCKS", user_id=5, weight=0.97)
    with conn.cursor() as cur:  # user 6 has more merchant patterns than one cache entry holds
        cur.executemany(
            "INSERT INTO categorization_patterns (user_id, category_id, kind, value, weight)"
            " VALUES (6, %s, 'merchant', %s, 0.97)",
            [(cats["fuel"], f"shop {i:04d}") for i in range(USER_ENTRY_MAX)] + [(cats["fuel"], "walmart")],
        )
    mine = data.add_expenses(conn, ["SQ *STARBUCKS", "WALMART"], user_id=5)
    many = data.add_expenses(conn, ["STARBUCKS", "TST* WALMART #12"], user_id=6)
    others = data.add_expenses(conn, ["STARBUCKS"], user_id=7)
    CountingCursor.calls.clear()
    make_categorizer(db).categorize([*mine, *many, *others])
    got = {r[0]: r[1] for r in data.rows(conn)}
    assert [got[i] for i in mine] == [cats["dining"], cats["groceries"]]  # user 5's own entry wins
    assert [got[i] for i in many] == [cats["coffee"], cats["fuel"]]  # user 6, looked up by name
    assert [got[i] for i in others] == [cats["coffee"]]
    # expenses + patterns (names and user entries) + user 6's names + rule set + write
    assert len(CountingCursor.calls) == 5, CountingCursor.calls


def test_hostile_merchant_strings_are_stored_safely(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    hostile = [
        "'; DROP TABLE categorizations; --",
        "Robert'); DELETE FROM expenses;--",
        "日本料理 東京 🍣",
        "Crème Brûlée ☕ café",
        "\u202eRTL override",
        "x" * 1_000_000,
        "NUL-free but weird \\ % _ $1 :param",
    ]
    ids = data.add_expenses(conn, hostile)
    report = make_categorizer(db).categorize(ids)
    assert sum(report.outcomes.values()) == len(hostile)
    assert len(data.rows(conn)) == len(hostile)
    assert conn.execute("SELECT count(*) FROM expenses").fetchone()[0] == len(hostile)  # type: ignore[index]


def test_remembered_decisions_follow_a_rule_change_at_once(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """The categorizer memoizes decisions per ruleset version: the same hits decide alike, and a
    pattern edited in place (same id, new category) is seen by the very next batch."""
    categorizer = make_categorizer(db)
    first = data.add_expenses(conn, ["STARBUCKS", "STARBUCKS #12"])
    categorizer.categorize(first)
    before = {r[0]: r[1:7] for r in data.rows(conn)}
    assert before[first[0]] == before[first[1]] and before[first[0]][0] == cats["coffee"]
    conn.execute(
        "UPDATE categorization_patterns SET category_id = %s WHERE kind = 'merchant' AND value = 'starbucks'",
        (cats["dining"],),
    )
    again = data.add_expenses(conn, ["STARBUCKS"])
    categorizer.categorize([*first, *again])
    after = {r[0]: r[1] for r in data.rows(conn)}
    assert after == {first[0]: cats["dining"], first[1]: cats["dining"], again[0]: cats["dining"]}


def test_a_stored_regex_re2_rejects_is_skipped_not_fatal(
    db: Database, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """A row inserted by plain SQL, around the save-time check: every batch still commits, the
    rest of the rules still fire, and the skip reaches the hooks (the worker counts it)."""
    skipped: list[tuple[str, int]] = []

    def hook(s: rules.SkippedPattern, version: int) -> None:
        skipped.append((s.pattern.value, version))

    rules.on_skipped_pattern(hook)
    conn.execute(
        "INSERT INTO categorization_patterns (category_id, kind, value) VALUES (%s, 'regex', %s)",
        (cats["fuel"], r"(a)\1"),  # a backreference: RE2 refuses it
    )
    ids = data.add_expenses(conn, ["STARBUCKS", "PIZZA PALACE"])
    try:
        report = make_categorizer(db).categorize(ids)
    finally:
        rules._skip_hooks.remove(hook)
    assert report.outcomes == {"categorized": 1, "suggested": 1}
    got = {r[0]: r[1] for r in data.rows(conn)}
    assert got[ids[0]] == cats["coffee"] and set(got) == set(ids)
    assert [v for v, _ in skipped] == [r"(a)\1"]
