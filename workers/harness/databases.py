"""Creating and dropping whole databases (demo, benchmarks, tests) through the maintenance DB."""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.db import translate_errors
from pipeline.migrate import migrate


def with_dbname(url: str, name: str) -> str:
    return make_conninfo(url, dbname=name)


def admin_url(url: str) -> str:
    """The URL of the maintenance database ``postgres`` on the server of ``url``."""
    return with_dbname(url, "postgres")


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "")


def create_database(url: str, name: str, *, exist_ok: bool = False) -> str:
    """Create database ``name`` on the server of ``url`` and migrate it; returns its URL."""
    with translate_errors(), psycopg.connect(admin_url(url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not (exists and exist_ok):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = with_dbname(url, name)
    with translate_errors(), psycopg.connect(target, autocommit=True) as conn:
        migrate(conn)
    return target


def drop_database(url: str, name: str) -> None:
    with translate_errors(), psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
