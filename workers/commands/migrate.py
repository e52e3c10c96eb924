"""``catfleet migrate``: apply pending database migrations."""

from __future__ import annotations

import argparse
from typing import Any

from workers.settings import Settings

#: Seconds to wait for PostgreSQL to accept the connection (a port that does not speak it).
CONNECT_TIMEOUT_S = 5


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from pipeline.db import translate_errors
    from pipeline.errors import DatabaseUnavailable
    from pipeline.migrate import create_database, database_exists, migrate, missing_database

    def connect() -> psycopg.Connection[object]:
        with translate_errors():  # a server that does not answer: one line, exit 2 (CatfleetError)
            return psycopg.connect(settings.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    try:
        conn = connect()
    except DatabaseUnavailable:
        exists = database_exists(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S)
        if exists is None:  # the server cannot be asked: its error is the one to show
            raise
        if not exists:
            if not args.create_database:
                raise missing_database(settings.database_url) from None  # one line naming it, exit 2
            if create_database(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S):
                print(f"created database {conninfo_to_dict(settings.database_url).get('dbname')}")
        # else another host created it between the first connect and the look (migrations started
        # together on a new server): connect again
        conn = connect()
    with conn:
        applied = migrate(conn)
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version:04d}_{m.name}" for m in applied))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply pending database migrations (safe to run concurrently)")
    p.add_argument(
        "--create-database",
        action="store_true",
        help="create the database CATFLEET_DATABASE_URL names if the server does not have it"
        " (needs CREATEDB; without this flag a missing database is an error, exit 2)",
    )
    p.set_defaults(func=cmd_migrate)
