"""``catfleet correct EXPENSE_ID CATEGORY``: enqueue a user's correction for the learning actor.

Before enqueueing, the expense and the category key are checked in PostgreSQL, as the actor
will check them (``LOAD_CORRECTION_CONTEXT``: a live expense, a key shared or the expense's
user's own): a correction the actor would only dead-letter is refused with one line, exit 1.
When the database cannot be asked (down, unreachable, not migrated) the correction is enqueued
anyway, with one warning line on stderr (``validated: false`` with ``--json``): producer hosts
need not reach PostgreSQL, and the actor still refuses a bad one (dead-lettered)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from workers.settings import Settings

if TYPE_CHECKING:
    from schemas import Correction

#: Seconds to wait for PostgreSQL before enqueueing unvalidated.
CONNECT_TIMEOUT_S = 5
#: Category keys named in the one line that refuses an unknown key.
KEYS_SHOWN = 20


def validate(settings: Settings, correction: Correction) -> str | None:
    """None when the database confirmed the expense and the key; the reason (one line) when it
    could not be asked. ``SystemExit`` (exit 1, one line) when it says no."""
    import psycopg

    from pipeline import queries
    from pipeline.settings import redact

    params = {"expense_id": correction.expense_id, "category_key": correction.category_key}
    try:
        with psycopg.connect(
            settings.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
        ) as conn:
            row = conn.execute(queries.LOAD_CORRECTION_CONTEXT, params).fetchone()
            if row is None:
                raise SystemExit(
                    f"catfleet correct: unknown expense {correction.expense_id}"
                    " (it does not exist or was deleted); nothing enqueued"
                )
            user_id, chosen = row[0], row[-1]
            if chosen is not None:
                return None
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT key FROM categories WHERE user_id IS NULL OR user_id = %s ORDER BY key LIMIT %s",
                    (user_id, KEYS_SHOWN + 1),
                ).fetchall()
            ]
    except psycopg.Error as exc:
        return redact(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
    shown = ", ".join(keys[:KEYS_SHOWN]) + (", ..." if len(keys) > KEYS_SHOWN else "")
    raise SystemExit(
        f"catfleet correct: unknown category {correction.category_key!r} for user {user_id}"
        f" (valid: {shown or 'none'}; see catfleet categories list --user {user_id}); nothing enqueued"
    )


def cmd_correct(settings: Settings, args: argparse.Namespace) -> int:
    from workers.app import build_app
    from workers.producer import Producer

    try:
        correction = Producer.build_correction(
            args.expense_id, args.category, idempotency_key=args.key, correlation_id=args.correlation_id
        )
    except ValueError as exc:
        raise SystemExit(f"catfleet correct: {exc}") from None
    unvalidated = validate(settings, correction)
    app = build_app(settings)
    try:
        Producer(app.broker, batch_size=settings.batch_size).send_correction(correction)
    finally:
        app.close()
    if unvalidated is not None:
        print(
            "catfleet correct: warning: expense and category not validated (database: "
            f"{unvalidated}); enqueued anyway: an unknown one is dead-lettered by the worker",
            file=sys.stderr,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "expense_id": correction.expense_id,
                    "category": correction.category_key,
                    "idempotency_key": correction.idempotency_key,
                    "correlation_id": correction.correlation_id,
                    "validated": unvalidated is None,
                }
            )
        )
    else:
        print(
            f"enqueued correction of expense {correction.expense_id} to {correction.category_key!r}"
            f" (key {correction.idempotency_key})"
        )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "correct",
        help="enqueue a user's correction: the expense gets CATEGORY and the rules learn from it",
    )
    p.add_argument("expense_id", type=int, metavar="EXPENSE_ID")
    p.add_argument("category", metavar="CATEGORY", help="category key (catfleet categories list)")
    p.add_argument(
        "--key",
        help="idempotency key (default: derived from EXPENSE_ID and CATEGORY, 'correct:<id>:<sha256>',"
        " so the same correction sent twice is recorded once)",
    )
    p.add_argument("--correlation-id", help="carried into the logs and the stored row")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_correct)
