"""Migrations on a fresh database: applied once, recorded, safe to run concurrently; a failed,
changed or bad migration is a ``MigrationError``; the schema's constraints are named in errors."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import psycopg
import psycopg.errors
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.db import translate_errors
from pipeline.errors import DatabaseError, MigrationError, PermanentError
from pipeline.migrate import MIGRATION_LOCK_KEY, available, migrate
from tests.support import data
from tests.support.services import run_catfleet
from workers.harness.databases import admin_url
from workers.settings import Settings


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


def test_cli_names_a_missing_database_or_creates_it_when_asked(settings: Settings) -> None:
    """``catfleet migrate`` on a database the server does not have: one line naming it, exit 2,
    nothing created; ``--create-database`` creates and migrates it; several at once agree."""
    name = f"catfleet_mig_{uuid4().hex[:8]}"
    own = msgspec.structs.replace(settings, database_url=make_conninfo(settings.database_url, dbname=name))
    host, port = (
        conninfo_to_dict(settings.database_url)["host"],
        conninfo_to_dict(settings.database_url)["port"],
    )
    try:
        done = run_catfleet(own, "migrate")
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.splitlines() == [
            f"catfleet migrate: database '{name}' does not exist on {host}:{port}: create it"
            " (catfleet migrate --create-database) or point CATFLEET_DATABASE_URL at an existing one"
        ]
        with psycopg.connect(admin_url(settings.database_url), autocommit=True) as c:
            assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
        runs: list[subprocess.CompletedProcess[str]] = []
        threads = [
            threading.Thread(target=lambda: runs.append(run_catfleet(own, "migrate", "--create-database")))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
        assert sum(f"created database {name}" in r.stdout for r in runs) == 1
        assert sum(f"applied {len(available())} migration(s)" in r.stdout for r in runs) == 1
        again = run_catfleet(own, "migrate", "--create-database")
        assert (again.returncode, again.stdout) == (0, "applied 0 migration(s)\n")
    finally:
        with psycopg.connect(admin_url(settings.database_url), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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


def _write(directory: Path, files: dict[str, str | bytes]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return directory


def _lock_held(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
        (MIGRATION_LOCK_KEY & 0xFFFFFFFF,),
    ).fetchone()
    return bool(row and row[0])


def test_a_failed_migration_names_its_version_line_and_sqlstate(empty_db: str, tmp_path: Path) -> None:
    directory = _write(
        tmp_path,
        {
            "0001_ok.sql": "CREATE TABLE t (id int);\n",
            "0002_broken.sql": "CREATE TABLE u (id int);\nSELEC 1;\n",
        },
    )
    with psycopg.connect(empty_db, autocommit=True) as conn:
        with pytest.raises(MigrationError) as caught:
            migrate(conn, directory=directory)
        recorded = conn.execute("SELECT version FROM catfleet_migrations").fetchall()
        u_exists = conn.execute("SELECT to_regclass('u') IS NOT NULL").fetchone()
        assert not _lock_held(conn)
    error = caught.value
    assert isinstance(error, PermanentError)
    assert (error.version, error.sqlstate) == (2, "42601")
    assert isinstance(error.__cause__, psycopg.errors.SyntaxError)
    assert (
        str(error)
        == 'migration 0002_broken failed at line 2: syntax error at or near "SELEC" (SQLSTATE 42601)'
    )
    assert recorded == [(1,)] and u_exists == (False,)  # 0002 rolled back as a whole


def test_a_migration_violating_a_constraint_carries_its_name(empty_db: str, tmp_path: Path) -> None:
    directory = _write(
        tmp_path,
        {
            "0001_t.sql": "CREATE TABLE t (v int);\nINSERT INTO t VALUES (1), (1);\n",
            "0002_unique.sql": "ALTER TABLE t ADD CONSTRAINT t_v_uniq UNIQUE (v);\n",
        },
    )
    with psycopg.connect(empty_db, autocommit=True) as conn, pytest.raises(MigrationError) as caught:
        migrate(conn, directory=directory)
    error = caught.value
    assert (error.version, error.sqlstate, error.constraint_name) == (2, "23505", "t_v_uniq")
    assert isinstance(error.__cause__, psycopg.errors.UniqueViolation)
    assert "\n" not in str(error) and str(error).startswith("migration 0002_unique failed")


def test_a_migration_changed_after_it_was_applied_is_refused(empty_db: str, tmp_path: Path) -> None:
    directory = _write(tmp_path, {"0001_t.sql": "CREATE TABLE t (id int);\n"})
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert [m.version for m in migrate(conn, directory=directory)] == [1]
        _write(tmp_path, {"0001_t.sql": "CREATE TABLE t (id bigint);\n"})
        with pytest.raises(MigrationError, match=r"^migration 0001_t changed after it was applied") as caught:
            migrate(conn, directory=directory)
        assert not _lock_held(conn)
    assert (caught.value.version, caught.value.sqlstate) == (1, None)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("files", "version", "message"),
    [
        ({"0001_a.sql": "", "0001_b.sql": ""}, 1, r"version 0001 is also 0001_[ab]$"),
        ({"1_short.sql": ""}, None, r"^1_short\.sql: not a migration file name"),
        ({"0003_latin1.sql": b"-- caf\xe9\n"}, 3, r"^0003_latin1\.sql: not UTF-8 \(byte 6\)$"),
    ],
    ids=["duplicate-version", "bad-name", "not-utf8"],
)
def test_a_bad_migration_file_is_refused_before_anything_runs(
    tmp_path: Path, files: dict[str, str | bytes], version: int | None, message: str
) -> None:
    _write(tmp_path, {"README": "not SQL", **files})
    with pytest.raises(MigrationError, match=message) as caught:
        available(tmp_path)
    assert caught.value.version == version


def test_constraint_violations_carry_sqlstate_and_constraint(empty_db: str) -> None:
    """The migrated schema's own constraints, as PostgreSQL names them."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        migrate(conn)
        conn.execute("INSERT INTO categories (key, name) VALUES ('coffee', 'Coffee')")
        statements = {
            "unique": "INSERT INTO categories (key, name) VALUES ('coffee', 'Again')",
            "check": "INSERT INTO categories (key, name) VALUES ('', 'Empty')",
            "foreign": "INSERT INTO categorization_patterns (category_id, kind, value) VALUES (999, 'merchant', 'X')",
            "not_null": "INSERT INTO categories (key) VALUES ('tea')",
        }
        caught: dict[str, DatabaseError] = {}
        for kind, statement in statements.items():
            with pytest.raises(DatabaseError) as info, translate_errors():
                conn.execute(statement)
            caught[kind] = info.value
    got = {k: (type(e.__cause__), e.sqlstate, e.constraint_name, e.table_name) for k, e in caught.items()}
    assert got == {
        "unique": (psycopg.errors.UniqueViolation, "23505", "categories_key_key", "categories"),
        "check": (psycopg.errors.CheckViolation, "23514", "categories_key_check", "categories"),
        "foreign": (
            psycopg.errors.ForeignKeyViolation,
            "23503",
            "categorization_patterns_category_id_fkey",
            "categorization_patterns",
        ),
        "not_null": (psycopg.errors.NotNullViolation, "23502", None, "categories"),
    }
    assert caught["not_null"].column_name == "name"
    assert all(
        type(e) is DatabaseError for e in caught.values()
    )  # the class (and dead-letter name) is unchanged
