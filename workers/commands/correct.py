"""``catfleet correct EXPENSE_ID CATEGORY``: enqueue a user's correction for the learning actor."""

from __future__ import annotations

import argparse
import json
from typing import Any

from workers.settings import Settings


def cmd_correct(settings: Settings, args: argparse.Namespace) -> int:
    from workers.app import build_app
    from workers.producer import Producer

    app = build_app(settings)
    try:
        correction = Producer(app.broker, batch_size=settings.batch_size).correct(
            args.expense_id, args.category, idempotency_key=args.key, correlation_id=args.correlation_id
        )
    except ValueError as exc:
        raise SystemExit(f"catfleet correct: {exc}") from None
    finally:
        app.close()
    if args.json:
        print(
            json.dumps({"expense_id": correction.expense_id, "idempotency_key": correction.idempotency_key})
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
    p.add_argument("category", metavar="CATEGORY", help="category key")
    p.add_argument(
        "--key",
        help="idempotency key (default: derived from EXPENSE_ID and CATEGORY, 'correct:<id>:<sha256>',"
        " so the same correction sent twice is recorded once)",
    )
    p.add_argument("--correlation-id", help="carried into the logs and the stored row")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_correct)
