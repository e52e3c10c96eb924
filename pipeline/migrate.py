"""Versioned SQL migrations from ``schemas/migrations``: applied in order, recorded, under an
advisory lock so that several hosts can run ``catfleet migrate`` at once."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

import msgspec
import psycopg

from pipeline.db import translate_errors

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


def available() -> list[Migration]:
    found = []
    for entry in resources.files("schemas").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply the pending migrations; returns those applied now. Idempotent."""
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
            for m in available():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise RuntimeError(f"migration {m.version:04d}_{m.name} changed after it was applied")
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO catfleet_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                applied.append(m)
            return applied
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
