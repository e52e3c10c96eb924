"""``pipeline.db.Database`` on the real PostgreSQL: the in-call retry of transient errors (a fresh
connection each try), no retry of permanent ones, and a pool that never hands out a connection
that broke while idle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest

from pipeline.db import IN_CALL_ATTEMPTS, Database
from pipeline.errors import DatabaseConflict, DatabaseError
from tests.support.services import wait_for
from workers.settings import Settings

Conn = psycopg.Connection[Any]


def raise_sqlstate(conn: Conn, errcode: str) -> None:
    """Make the server raise an error with this SQLSTATE condition name."""
    conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'injected {errcode}' USING ERRCODE = '{errcode}'; END $$")


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """One pooled connection: every call gets the same one unless it is replaced."""
    database = Database.connect(settings.database_url, size=1, wait=True)
    yield database
    database.close()


def test_transient_errors_are_retried_then_the_call_succeeds(db: Database) -> None:
    attempts: list[int] = []

    def fn(conn: Conn) -> int:
        attempts.append(conn.info.backend_pid)
        if len(attempts) == 1:
            raise_sqlstate(conn, "serialization_failure")
        if len(attempts) == 2:
            raise_sqlstate(conn, "deadlock_detected")
        row = conn.execute("SELECT 42").fetchone()
        assert row is not None
        return int(row[0])

    assert db.run(fn) == 42
    assert len(attempts) == 3 == IN_CALL_ATTEMPTS


def test_a_transient_error_that_persists_goes_up_after_the_in_call_attempts(db: Database) -> None:
    attempts: list[int] = []

    def fn(conn: Conn) -> None:
        attempts.append(1)
        raise_sqlstate(conn, "deadlock_detected")

    with pytest.raises(DatabaseConflict, match="injected deadlock_detected") as caught:
        db.run(fn)
    assert isinstance(caught.value.__cause__, psycopg.errors.DeadlockDetected)
    assert len(attempts) == IN_CALL_ATTEMPTS


def test_a_permanent_error_is_not_retried(db: Database) -> None:
    attempts: list[int] = []

    def fn(conn: Conn) -> None:
        attempts.append(1)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS once (id int PRIMARY KEY)")
        conn.execute("INSERT INTO once VALUES (1) ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO once VALUES (1)")

    with pytest.raises(DatabaseError, match="duplicate key") as caught:
        db.run(fn)
    assert isinstance(caught.value.__cause__, psycopg.errors.UniqueViolation)
    assert attempts == [1]


def test_a_backend_killed_mid_call_is_retried_on_a_fresh_connection(db: Database) -> None:
    pids: list[int] = []

    def fn(conn: Conn) -> str:
        pids.append(conn.info.backend_pid)
        if len(pids) == 1:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # admin_shutdown, mid-call
        row = conn.execute("SELECT 'done'").fetchone()
        assert row is not None
        return str(row[0])

    assert db.run(fn) == "done"
    assert len(pids) == 2 and pids[0] != pids[1]


def test_a_connection_broken_while_idle_is_never_handed_out(db: Database, settings: Settings) -> None:
    idle_pid = db.run(lambda conn: conn.info.backend_pid)
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (idle_pid,))
        wait_for(
            lambda: (
                admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (idle_pid,)).fetchone()
                == (0,)
            ),
            what="the idle backend gone",
        )
    pids: list[int] = []

    def fn(conn: Conn) -> int:
        pids.append(conn.info.backend_pid)
        row = conn.execute("SELECT 1").fetchone()
        assert row is not None
        return int(row[0])

    assert db.run(fn) == 1
    # the pool's check found the dead connection and replaced it: the call ran once, no retry
    assert len(pids) == 1 and pids[0] != idle_pid
