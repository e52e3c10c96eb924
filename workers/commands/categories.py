"""``catfleet categories list``: the category keys ``correct`` and ``patterns add`` accept."""

from __future__ import annotations

import argparse
import json
from typing import Any

from workers.settings import Settings

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_S = 5
_COLUMNS = ("key", "name", "parent", "user")

#: Every category (or those one user may choose: the shared ones and the user's own), by key.
LIST_CATEGORIES = """
SELECT k.id, k.key, k.name, p.key, k.user_id
FROM categories k LEFT JOIN categories p ON p.id = k.parent_id
WHERE %(user_id)s::bigint IS NULL OR k.user_id IS NULL OR k.user_id = %(user_id)s
ORDER BY k.key
"""


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from pipeline.db import translate_errors

    with (
        translate_errors(),  # a server that does not answer: one line, exit 2
        psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn,
    ):
        rows = conn.execute(LIST_CATEGORIES, {"user_id": args.user}).fetchall()
    if args.json:
        keys = ("id", "key", "name", "parent", "user_id")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows]))
        return 0
    table = [
        (key, name, parent or "", "shared" if user is None else str(user))
        for _, key, name, parent, user in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(_COLUMNS)]
    for row in [_COLUMNS, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} categor{'y' if len(rows) == 1 else 'ies'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("categories", help="list the category keys (for correct and patterns add)")
    csub = p.add_subparsers(dest="categories_command", required=True)
    q = csub.add_parser("list", help="every category: key, name, parent, shared or a user's own")
    q.add_argument("--user", type=int, help="only the keys this user may choose (shared and the user's own)")
    q.add_argument("--json", action="store_true", help="a JSON array")
    q.set_defaults(func=cmd_list)
