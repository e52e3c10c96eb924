"""Versioned SQL migrations from ``schemas/migrations``: applied in order, recorded, under an
advisory lock so that several hosts can run ``catfleet migrate`` at once."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import msgspec
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.db import translate_errors
from pipeline.errors import CatfleetError, DatabaseError, MigrationError

#: The database every PostgreSQL server has, where a missing one is looked up and created.
MAINTENANCE_DB = "postgres"

#: pg_advisory_lock key: 'catfleet' in ASCII.
MIGRATION_LOCK_KEY = 0x63617466_6C656574 & 0x7FFFFFFFFFFFFFFF

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def available(directory: Traversable | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: ``schemas/migrations``), by version. A ``.sql``
    file with a bad name, a version used twice or text that is not UTF-8 is a ``MigrationError``."""
    root = resources.files("schemas").joinpath("migrations") if directory is None else directory
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if not match:
            raise MigrationError(f"{entry.name}: not a migration file name (NNNN_lower_snake_case.sql)")
        version = int(match[1])
        if version in found:
            raise MigrationError(
                f"{entry.name}: version {version:04d} is also {found[version].label}", version=version
            )
        try:
            text = entry.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{entry.name}: not UTF-8 (byte {exc.start})", version=version) from exc
        found[version] = Migration(version, match[2], text)
    return [found[v] for v in sorted(found)]


def _failed(m: Migration, exc: DatabaseError) -> MigrationError:
    """One line: the migration, the line of its file, the server's primary message and SQLSTATE."""
    diag = exc.__cause__.diag if isinstance(exc.__cause__, psycopg.Error) else None
    reason = (diag.message_primary if diag else None) or str(exc)
    where = ""
    if diag and diag.statement_position and diag.statement_position.isdigit():
        line = m.sql[: int(diag.statement_position) - 1].count("\n") + 1
        where = f" at line {line}"
    code = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    return MigrationError(
        f"migration {m.label} failed{where}: {' '.join(reason.split())}{code}",
        version=m.version,
        sqlstate=exc.sqlstate,
        constraint_name=exc.constraint_name,
        table_name=exc.table_name,
        column_name=exc.column_name,
    )


def _apply(conn: psycopg.Connection[Any], m: Migration) -> None:
    try:
        with translate_errors(), conn.transaction():
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO catfleet_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )
    except DatabaseError as exc:  # the SQL was rejected; a lost connection or a deadlock stays transient
        raise _failed(m, exc) from exc.__cause__


def migrate(conn: psycopg.Connection[Any], *, directory: Traversable | None = None) -> list[Migration]:
    """Apply the pending migrations; returns those applied now. Idempotent.

    Raises ``MigrationError`` (with the ``version``; the ``sqlstate`` if PostgreSQL rejected the
    SQL) for a failed migration, one changed after it was applied, or a bad file."""
    pending = available(directory)
    with translate_errors():
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS catfleet_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = dict(conn.execute("SELECT version, checksum FROM catfleet_migrations").fetchall())
            applied = []
            for m in pending:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.label} changed after it was applied (checksum"
                            f" {m.checksum[:12]}, recorded {str(done[m.version])[:12]})",
                            version=m.version,
                        )
                    continue
                _apply(conn, m)
                applied.append(m)
            return applied
        finally:
            if not conn.closed:  # a lost connection released the lock; its error is the one to report
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


class DatabaseMissing(CatfleetError):
    """The server answers, but the DSN's database does not exist on it."""


def _where(dsn: str) -> tuple[str, str]:
    """(database name, ``host:port``) of ``dsn``, for a message (no user, no password)."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    return str(params.get("dbname") or params.get("user") or ""), f"{host}:{params.get('port') or 5432}"


def database_exists(dsn: str, *, connect_timeout: int) -> bool | None:
    """Whether the server has the database ``dsn`` names, asked through its maintenance database
    (the catalog, not the server's translatable message); None when that cannot be told (the
    server is down, the maintenance database is not open to this user, no name)."""
    name, _ = _where(dsn)
    if not name or name == MAINTENANCE_DB:
        return None
    try:
        with psycopg.connect(
            make_conninfo(dsn, dbname=MAINTENANCE_DB), autocommit=True, connect_timeout=connect_timeout
        ) as conn:
            return (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
            )
    except psycopg.Error:
        return None


def missing_database(dsn: str) -> DatabaseMissing:
    """The error for a server that has no database of the name ``dsn`` gives."""
    name, where = _where(dsn)
    return DatabaseMissing(
        f"database {name!r} does not exist on {where}: create it (catfleet migrate --create-database)"
        " or point CATFLEET_DATABASE_URL at an existing one"
    )


def create_database(dsn: str, *, connect_timeout: int) -> bool:
    """Create the database ``dsn`` names, through the server's maintenance database (needs the
    CREATEDB privilege); False when it exists already (another host may create it at the same
    moment: that is not an error)."""
    name, _ = _where(dsn)
    with (
        translate_errors(),
        psycopg.connect(
            make_conninfo(dsn, dbname=MAINTENANCE_DB), autocommit=True, connect_timeout=connect_timeout
        ) as conn,
    ):
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            return False  # created by another host just now (the catalog's unique index said so)
    return True
