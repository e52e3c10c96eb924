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
