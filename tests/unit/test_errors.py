"""psycopg and pool errors become the project's transient or permanent errors, keeping the cause
(``pipeline.db.translate_errors``: the one place it happens), and the SQLSTATE with them."""

from __future__ import annotations

import pickle

import psycopg
import psycopg.errors
import psycopg_pool
import pytest

from pipeline.db import translate_errors
from pipeline.errors import (
    CatfleetError,
    DatabaseConflict,
    DatabaseError,
    DatabaseUnavailable,
    MigrationError,
    PermanentError,
    TransientError,
    UnknownExpense,
)

CASES = [
    # the transaction can simply be run again
    (psycopg.errors.SerializationFailure("could not serialize access"), DatabaseConflict),
    (psycopg.errors.DeadlockDetected("deadlock detected"), DatabaseConflict),
    # the server went away or would not take the connection: later, or on another one
    (
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        DatabaseUnavailable,
    ),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), DatabaseUnavailable),
    (psycopg.errors.ConnectionFailure("server closed the connection unexpectedly"), DatabaseUnavailable),
    (psycopg.errors.TooManyConnections("too many clients already"), DatabaseUnavailable),
    (psycopg.OperationalError("consuming input failed: server closed the connection"), DatabaseUnavailable),
    (psycopg.InterfaceError("the connection is closed"), DatabaseUnavailable),
    (psycopg_pool.PoolTimeout("couldn't get a connection after 10.00 sec"), DatabaseUnavailable),
    # the statement itself is wrong, or the data: retrying cannot help
    (psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"), DatabaseError),
    (psycopg.errors.ForeignKeyViolation("violates foreign key constraint"), DatabaseError),
    (psycopg.errors.NumericValueOutOfRange("bigint out of range"), DatabaseError),
    (psycopg.errors.InFailedSqlTransaction("current transaction is aborted"), DatabaseError),
]


def test_a_missing_table_says_the_database_is_not_migrated() -> None:
    error = psycopg.errors.UndefinedTable('relation "nope" does not exist')
    with pytest.raises(DatabaseError) as caught, translate_errors():
        raise error
    assert type(caught.value) is DatabaseError and caught.value.__cause__ is error
    assert str(caught.value) == (
        'relation "nope" does not exist: the database is not migrated (run catfleet migrate)'
        " or CATFLEET_DATABASE_URL names another"
    )
    assert caught.value.sqlstate == "42P01"


@pytest.mark.parametrize(("error", "expected"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_driver_errors_become_project_errors_keeping_the_cause(
    error: psycopg.Error, expected: type[CatfleetError]
) -> None:
    with pytest.raises(CatfleetError) as caught, translate_errors():
        raise error
    translated = caught.value
    assert type(translated) is expected
    assert translated.__cause__ is error
    assert str(translated) == str(error)
    assert translated.sqlstate == error.sqlstate  # the class's code: these were not sent by a server
    assert translated.constraint_name is None and translated.table_name is None
    branch = TransientError if expected in (DatabaseConflict, DatabaseUnavailable) else PermanentError
    assert isinstance(translated, branch)


def test_an_error_without_text_is_named_by_its_type() -> None:
    with pytest.raises(DatabaseUnavailable, match=r"^PoolTimeout$"), translate_errors():
        raise psycopg_pool.PoolTimeout()


@pytest.mark.parametrize("error", [ValueError("not a driver error"), UnknownExpense(7)])
def test_other_errors_pass_through_untouched(error: Exception) -> None:
    with pytest.raises(type(error)) as caught, translate_errors():
        raise error
    assert caught.value is error and caught.value.__cause__ is None


def test_the_error_data_defaults_to_none_and_survives_pickling() -> None:
    plain = UnknownExpense(7)
    assert [plain.sqlstate, plain.constraint_name, plain.table_name, plain.column_name] == [None] * 4
    error = DatabaseError("duplicate key", sqlstate="23505", constraint_name="categories_key_key")
    copy = pickle.loads(pickle.dumps(error))
    assert [str(copy), copy.sqlstate, copy.constraint_name, copy.table_name] == [
        "duplicate key", "23505", "categories_key_key", None,
    ]  # fmt: skip


def test_a_migration_error_is_permanent_and_keeps_its_version() -> None:
    error = MigrationError("migration 0007_x failed", version=7, sqlstate="42601")
    assert isinstance(error, PermanentError)
    assert [error.version, error.sqlstate, error.constraint_name] == [7, "42601", None]
    assert pickle.loads(pickle.dumps(error)).version == 7
