"""psycopg and pool errors become the project's transient or permanent errors, keeping the cause
(``pipeline.db.translate_errors``: the one place it happens)."""

from __future__ import annotations

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
    (psycopg.errors.UndefinedTable('relation "nope" does not exist'), DatabaseError),
    (psycopg.errors.InFailedSqlTransaction("current transaction is aborted"), DatabaseError),
]


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
