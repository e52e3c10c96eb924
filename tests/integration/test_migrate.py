"""Migrations on a fresh database: applied once, recorded, safe to run concurrently."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pipeline.dbadmin import admin_url
from pipeline.migrate import available, migrate
from pipeline.settings import Settings
from tests.support import data


@pytest.fixture
def empty_db(settings: Settings) -> Iterator[str]:
    name = f"catfleet_mig_{uuid4().hex[:8]}"
    with psycopg.connect(admin_url(settings.database_url), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(settings.database_url, dbname=name)
    with psycopg.connect(admin_url(settings.database_url), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_migrate_is_idempotent_and_recorded(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        first = migrate(conn)
        second = migrate(conn)
        recorded = conn.execute("SELECT version FROM catfleet_migrations ORDER BY version").fetchall()
    assert [m.version for m in first] == [m.version for m in available()]
    assert second == []
    assert [r[0] for r in recorded] == [m.version for m in available()]


def test_concurrent_migrations_apply_each_once(empty_db: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_db, autocommit=True) as conn:
                results.append(len(migrate(conn)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [0, 0, 0, len(available())]


def test_ruleset_version_bumps_on_rule_changes_not_on_counters(settings: Settings) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE categorizations, corrections, categorization_patterns, expenses, categories CASCADE"
        )
        cid = conn.execute("INSERT INTO categories (key, name) VALUES ('k', 'K') RETURNING id").fetchone()[0]  # type: ignore[index]
        v0 = conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO categorization_patterns (category_id, kind, value) VALUES (%s, 'merchant', 'x')",
            (cid,),
        )
        v1 = conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE categorization_patterns SET usage_count = usage_count + 1")
        v2 = conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE categorization_patterns SET weight = 0.5")
        v3 = conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]
    assert v1 > v0 and v2 == v1 and v3 > v2


def test_deleting_a_category_or_pattern_clears_the_categorizations_pointing_at_it(settings: Settings) -> None:
    """0006 replaced the foreign keys of categorizations by statement triggers: ON DELETE SET NULL."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        cats = data.reset(conn)
        coffee, fuel = (
            data.add_pattern(conn, cats["coffee"], "merchant", "STARBUCKS"),
            data.add_pattern(conn, cats["fuel"], "merchant", "SHELL"),
        )
        e1, e2, e3 = data.add_expenses(conn, ["STARBUCKS", "SHELL", "SHELL"])
        for expense, cat, pattern in ((e1, "coffee", coffee), (e2, "fuel", fuel), (e3, "fuel", None)):
            conn.execute(
                "INSERT INTO categorizations (expense_id, category_id, pattern_id, confidence, band, method,"
                " explanation, ruleset_version) VALUES (%s, %s, %s, 0.9, 'auto', 'merchant', '{}', 1)",
                (expense, cats[cat], pattern),
            )
        conn.execute("DELETE FROM categorization_patterns WHERE id = %s", (fuel,))
        after_pattern = dict(conn.execute("SELECT expense_id, pattern_id FROM categorizations").fetchall())
        conn.execute("DELETE FROM categories WHERE id = %s", (cats["coffee"],))  # its pattern cascades
        after_category = conn.execute(
            "SELECT expense_id, category_id, pattern_id FROM categorizations ORDER BY expense_id"
        ).fetchall()
    assert after_pattern == {e1: coffee, e2: None, e3: None}
    assert after_category == [(e1, None, None), (e2, cats["fuel"], None), (e3, cats["fuel"], None)]
