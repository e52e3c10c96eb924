"""``catfleet migrate``: apply pending database migrations."""

from __future__ import annotations

import argparse
from typing import Any

from workers.settings import Settings

#: Seconds to wait for PostgreSQL to accept the connection (a port that does not speak it).
CONNECT_TIMEOUT_S = 5


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from pipeline.db import translate_errors
    from pipeline.migrate import migrate

    with translate_errors():  # a server that does not answer: one line, exit 2 (CatfleetError)
        conn = psycopg.connect(settings.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    with conn:
        applied = migrate(conn)
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version:04d}_{m.name}" for m in applied))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply pending database migrations (safe to run concurrently)")
    p.set_defaults(func=cmd_migrate)
