"""PostgreSQL access: pooled connections, the one place psycopg errors become catfleet errors,
and the short in-call retry of transient failures (tenacity)."""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from pipeline.errors import DatabaseConflict, DatabaseError, DatabaseUnavailable, TransientError
from pipeline.settings import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S, PipelineSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: In-call retries of a transient PostgreSQL failure before it goes up to Dramatiq.
IN_CALL_ATTEMPTS = 3

_CONFLICTS = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

_DEFAULTS = PipelineSettings()


def _diagnostics(exc: psycopg.Error) -> dict[str, str | None]:
    """What PostgreSQL reported about ``exc``, as ``CatfleetError`` keywords (None where it said
    nothing; a client-side error has only the SQLSTATE of its class, if any)."""
    diag = exc.diag
    return {
        "sqlstate": diag.sqlstate or exc.sqlstate,
        "constraint_name": diag.constraint_name,
        "table_name": diag.table_name,
        "column_name": diag.column_name,
    }


def not_migrated(exc: psycopg.errors.UndefinedTable) -> str:
    """What an operator reads for a table that is not there: the database has no catfleet schema."""
    what = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    return (
        f"{what}: the database is not migrated (run catfleet migrate) or CATFLEET_DATABASE_URL names another"
    )


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn psycopg and pool errors into the project's tree, keeping the cause and the server's
    diagnostics (``sqlstate``, ``constraint_name``, ...)."""
    try:
        yield
    except _CONFLICTS as exc:
        raise DatabaseConflict(str(exc).strip(), **_diagnostics(exc)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
        raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__, **_diagnostics(exc)) from exc
    except psycopg.errors.UndefinedTable as exc:  # a database without catfleet's schema (yet)
        raise DatabaseError(not_migrated(exc), **_diagnostics(exc)) from exc
    except psycopg.Error as exc:
        raise DatabaseError(str(exc).strip(), **_diagnostics(exc)) from exc


retry_transient = retry(
    retry=retry_if_exception_type(TransientError),
    stop=stop_after_attempt(IN_CALL_ATTEMPTS),
    wait=wait_random_exponential(multiplier=0.05, max=1.0),
    before_sleep=before_sleep_log(log, logging.WARNING),
    reraise=True,
)


def check_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check, without a round trip: an idle connection the server has written to or
    closed is broken. A backend that is terminated or shut down sends its FATAL error before it
    closes, so its socket is readable; our pooled connections never LISTEN, so nothing else
    arrives unasked. (A connection cut off silently fails when used, and the call is retried.)
    psycopg_pool's own ``check_connection`` would cost a round trip per checkout: one per
    batch, and several per expense for a one-expense-per-message producer."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        conn.close()  # so that the pool discards it rather than taking it back
        raise psycopg.OperationalError("the server wrote to or closed the idle connection")


def fail_fast_conninfo(
    dsn: str,
    *,
    keepalive_s: int = _DEFAULTS.tcp_keepalive_s,
    user_timeout_ms: int = _DEFAULTS.tcp_user_timeout_ms,
) -> str:
    """``dsn`` (URL or key=value) with libpq's TCP keepalives and user timeout, so that a
    connection whose peer vanished (a cut link) fails within max(user timeout, keepalive + 3 s)
    instead of blocking a thread for the kernel's ~15 minutes. A parameter the DSN sets is kept."""
    given = conninfo_to_dict(dsn)
    wanted: dict[str, int] = {
        "keepalives": 1,
        "keepalives_idle": keepalive_s,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": user_timeout_ms,
    }
    return make_conninfo(dsn, **{k: v for k, v in wanted.items() if k not in given})


def open_pool(
    dsn: str,
    *,
    size: int,
    name: str,
    wait: bool = False,
    keepalive_s: int = _DEFAULTS.tcp_keepalive_s,
    user_timeout_ms: int = _DEFAULTS.tcp_user_timeout_ms,
) -> psycopg_pool.ConnectionPool:
    """A pool of autocommit connections: one statement is one round trip (no BEGIN/COMMIT).

    Every connection is checked as it is handed out (``check_idle``, no round trip): one that
    broke while idle (server restarted, backend terminated) is discarded and replaced, never used.
    Every connection fails fast on a vanished peer (``fail_fast_conninfo``)."""
    pool = psycopg_pool.ConnectionPool(
        fail_fast_conninfo(dsn, keepalive_s=keepalive_s, user_timeout_ms=user_timeout_ms),
        min_size=1,
        max_size=max(1, size),
        kwargs={"autocommit": True},
        check=check_idle,
        name=name,
        timeout=10.0,
        reconnect_timeout=60.0,
        open=False,
    )
    pool.open(wait=wait)
    return pool


class Database:
    """A write pool and an optional read pool (replica) behind one small interface."""

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, read_pool: psycopg_pool.ConnectionPool | None = None
    ):
        self.pool = pool
        self.read_pool = read_pool or pool

    @classmethod
    def connect(
        cls,
        dsn: str,
        *,
        size: int,
        read_dsn: str = "",
        wait: bool = False,
        keepalive_s: int = _DEFAULTS.tcp_keepalive_s,
        user_timeout_ms: int = _DEFAULTS.tcp_user_timeout_ms,
    ) -> Database:
        def pool_of(url: str, name: str) -> psycopg_pool.ConnectionPool:
            return open_pool(
                url, size=size, name=name, wait=wait, keepalive_s=keepalive_s, user_timeout_ms=user_timeout_ms
            )

        with translate_errors():
            pool = pool_of(dsn, "catfleet-write")
            read_pool = pool_of(read_dsn, "catfleet-read") if read_dsn else None
        return cls(pool, read_pool)

    @contextmanager
    def connection(self, *, read: bool = False) -> Iterator[psycopg.Connection[Any]]:
        with translate_errors(), (self.read_pool if read else self.pool).connection() as conn:
            yield conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *, read: bool = False) -> T:
        """Call ``fn(conn)``, retrying it a few times on a transient failure (a fresh connection each try)."""

        @retry_transient
        def attempt() -> T:
            with self.connection(read=read) as conn:
                return fn(conn)

        return attempt()

    def close(self) -> None:
        if self.read_pool is not self.pool:
            self.read_pool.close()
        self.pool.close()
