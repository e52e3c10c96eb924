"""``catfleet enqueue``: send expense IDs for categorization, in batches."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from schemas import LANE_BULK, LANE_INTERACTIVE, LANES
from workers.settings import Settings

if TYPE_CHECKING:  # the CLI starts without importing psycopg
    from pipeline.db import Database

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_S = 5


def _read_ids(stream: TextIO) -> Iterator[int]:
    for lineno, line in enumerate(stream, 1):
        for token in line.replace(",", " ").split():
            try:
                yield int(token)
            except ValueError:
                raise SystemExit(
                    f"catfleet enqueue: line {lineno}: not an integer expense id: {token[:40]!r}"
                ) from None


def _database(settings: Settings) -> Database:
    """One connection's pool; a server that does not answer is one ``DatabaseUnavailable`` within
    ``CONNECT_TIMEOUT_S`` (the pool alone would retry for 30 s)."""
    import psycopg

    from pipeline.db import Database, translate_errors

    with translate_errors():
        psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S).close()
    return Database.connect(settings.database_url, size=1, wait=True)


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from workers.app import build_app
    from workers.producer import Producer

    if args.all_uncategorized:
        if args.ids or args.file:
            raise SystemExit("catfleet enqueue: --all-uncategorized takes no ids")
        from pipeline.stores import ExpenseStore

        db = _database(settings)
        try:
            ids = ExpenseStore(db).uncategorized_ids(args.user)
        finally:
            db.close()
    elif args.file:
        with sys.stdin if args.file == "-" else open(args.file, encoding="utf-8") as stream:
            ids = list(_read_ids(stream))
    else:
        ids = args.ids
    if args.user is not None and not args.all_uncategorized:
        raise SystemExit("catfleet enqueue: --user only filters --all-uncategorized")
    # a sweep over every uncategorized expense is a backfill: the bulk lane unless told otherwise
    lane = args.lane or (LANE_BULK if args.all_uncategorized else LANE_INTERACTIVE)
    app = build_app(settings)
    try:
        report = Producer(app.broker, batch_size=args.batch_size or settings.batch_size).enqueue(
            ids, correlation_id=args.correlation_id, lane=lane
        )
    except ValueError as exc:
        raise SystemExit(f"catfleet enqueue: {exc}") from None
    finally:
        app.close()
    if args.json:
        # each message's id; a row's correlation_id is the one given, else its message's id
        print(
            json.dumps(
                {
                    "messages": report.messages,
                    "ids": report.ids,
                    "message_ids": report.message_ids,
                    "correlation_id": args.correlation_id or None,
                    "lane": lane,
                }
            )
        )
    else:
        print(
            f"enqueued {report.ids} expense id(s) in {report.messages} message(s)"
            + (f" on the {lane} lane" if lane != LANE_INTERACTIVE else "")
        )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("enqueue", help="enqueue expense IDs for categorization, in batches")
    p.add_argument("ids", nargs="*", type=int, help="expense IDs")
    p.add_argument("--file", help="read IDs from a file ('-': stdin), whitespace or comma separated")
    p.add_argument("--all-uncategorized", action="store_true", help="every expense without a categorization")
    p.add_argument("--user", type=int, help="with --all-uncategorized: only this user's expenses")
    p.add_argument("--batch-size", type=int, help="IDs per message (default: CATFLEET_BATCH_SIZE)")
    p.add_argument("--correlation-id", help="carried into the logs and the stored rows")
    p.add_argument(
        "--lane",
        choices=list(LANES),
        help="interactive (queue categorize; the default) or bulk (queue categorize_bulk: workers run"
        " interactive messages first; the default of --all-uncategorized)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_enqueue)
