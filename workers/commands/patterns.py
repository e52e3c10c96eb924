"""``catfleet patterns list|disable|enable|add|edit|delete``: look at and manage categorization
patterns. With ``--stage`` a change goes into the candidate ruleset (``catfleet rules``) instead
of taking effect at once."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from schemas import PatternKind
from workers.settings import Settings

if TYPE_CHECKING:  # the CLI starts without importing psycopg
    from pipeline.candidates import CandidateAdmin, Staged
    from pipeline.db import Database
    from pipeline.patterns import PatternAdmin

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_S = 5
_COLUMNS = ("id", "user", "kind", "value", "category", "weight", "source", "active", "used", "ok", "problem")


def _database(settings: Settings) -> Database:
    """One connection's pool; a server that does not answer is one ``DatabaseUnavailable`` within
    ``CONNECT_TIMEOUT_S`` (the pool alone would retry for 30 s)."""
    import psycopg

    from pipeline.db import Database, translate_errors

    with translate_errors():
        psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S).close()
    return Database.connect(settings.database_url, size=1, wait=True)


@contextmanager
def _admin(settings: Settings) -> Iterator[PatternAdmin]:
    from pipeline.patterns import PatternAdmin

    db = _database(settings)
    try:
        yield PatternAdmin(db)
    finally:
        db.close()


@contextmanager
def _candidates(settings: Settings) -> Iterator[CandidateAdmin]:
    from pipeline.candidates import CandidateAdmin
    from workers.dlq.base import operator_name

    db = _database(settings)
    try:
        yield CandidateAdmin(db, operator=operator_name())
    finally:
        db.close()


def _staged(staged: Staged, as_json: bool = False) -> int:
    if as_json:
        print(msgspec.json.encode(staged).decode())
        return 0
    what = "new pattern" if staged.created else "pattern"
    live = "; the candidate is rolled out: its users get it now" if staged.version_bumped else ""
    print(
        f"staged {staged.op} of {what} {staged.pattern_id} into candidate {staged.candidate_id}"
        f" (change {staged.change_id}){live}: catfleet rules show / diff / rollout / promote"
    )
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    with _admin(settings) as admin:
        rows = admin.list(
            user_id=args.user,
            source=args.source,
            kind=args.kind,
            active=args.active,
            category=args.category,
            search=args.search,
        )
    if args.json:
        print(msgspec.json.encode(rows).decode())
        return 0
    table = [
        (
            str(r.id),
            "global" if r.user_id is None else str(r.user_id),
            r.kind,
            r.value if len(r.value) <= 40 else r.value[:39] + "…",
            r.category,
            f"{r.weight:.3f}",
            r.source,
            "yes" if r.active else "no",
            str(r.usage_count),
            str(r.success_count),
            f"SKIPPED: {r.problem}" if r.problem else "",
        )
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(_COLUMNS)]
    for row in [_COLUMNS, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    broken = sum(1 for r in rows if r.problem)
    print(
        f"{len(rows)} pattern(s)"
        + (f", {broken} skipped by the workers (their value does not compile)" if broken else "")
    )
    return 0


def _switch(active: bool) -> Callable[[Settings, argparse.Namespace], int]:
    def cmd(settings: Settings, args: argparse.Namespace) -> int:
        if args.stage:
            with _candidates(settings) as candidates:
                return _staged(candidates.stage_active(args.id, active))
        with _admin(settings) as admin:
            admin.set_active(args.id, active)
        print(f"pattern {args.id} {'enabled' if active else 'disabled'}")
        return 0

    return cmd


def cmd_edit(settings: Settings, args: argparse.Namespace) -> int:
    if args.stage:
        with _candidates(settings) as candidates:
            return _staged(candidates.stage_edit(args.id, weight=args.weight))
    with _admin(settings) as admin:
        admin.edit(args.id, weight=args.weight)
    print(f"pattern {args.id} weight set to {args.weight}")
    return 0


def cmd_delete(settings: Settings, args: argparse.Namespace) -> int:
    if args.stage:
        with _candidates(settings) as candidates:
            return _staged(candidates.stage_delete(args.id))
    with _admin(settings) as admin:
        admin.delete(args.id)
    print(f"pattern {args.id} deleted")
    return 0


def cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    if args.stage:
        with _candidates(settings) as candidates:
            staged = candidates.stage_add(
                kind=args.kind,
                value=args.value,
                category_key=args.category,
                user_id=args.user,
                weight=args.weight,
            )
        return _staged(staged, args.json)
    with _admin(settings) as admin:
        pattern_id, created = admin.add(
            kind=args.kind,
            value=args.value,
            category_key=args.category,
            user_id=args.user,
            weight=args.weight,
        )
    if args.json:
        print(json.dumps({"id": pattern_id, "created": created}))
    else:
        print(f"pattern {pattern_id} {'added' if created else 'updated and enabled'}")
    return 0


def register(sub: Any) -> None:
    kinds = [k.value for k in PatternKind]
    p = sub.add_parser(
        "patterns",
        help="list, disable, enable, add, edit and delete categorization patterns (or --stage them)",
    )
    psub = p.add_subparsers(dest="patterns_command", required=True)

    q = psub.add_parser("list", help="list patterns (learned ones included)")
    q.add_argument("--user", type=int, help="only this user's patterns")
    q.add_argument("--source", choices=["seed", "user", "learned"])
    q.add_argument("--kind", choices=kinds)
    q.add_argument("--category", help="only this category key")
    state = q.add_mutually_exclusive_group()
    state.add_argument("--active", dest="active", action="store_const", const=True, help="only active ones")
    state.add_argument(
        "--inactive", dest="active", action="store_const", const=False, help="only disabled ones"
    )
    q.add_argument("--search", help="value contains this text (case-insensitive)")
    q.add_argument("--json", action="store_true", help="a JSON array")
    q.set_defaults(func=cmd_list)

    stage = "record the change in the candidate ruleset instead of applying it (catfleet rules)"
    for name, active in (("disable", False), ("enable", True)):
        q = psub.add_parser(name, help=f"{name} a pattern (every worker sees it on its next batch)")
        q.add_argument("id", type=int, metavar="ID")
        q.add_argument("--stage", action="store_true", help=stage)
        q.set_defaults(func=_switch(active))

    q = psub.add_parser("edit", help="set a pattern's weight")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--weight", type=float, required=True, help="in (0, 1]")
    q.add_argument("--stage", action="store_true", help=stage)
    q.set_defaults(func=cmd_edit)

    q = psub.add_parser("delete", help="delete a pattern")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--stage", action="store_true", help=stage)
    q.set_defaults(func=cmd_delete)

    q = psub.add_parser("add", help="save a pattern (source user); a regex RE2 rejects is refused")
    q.add_argument("--kind", required=True, choices=kinds)
    q.add_argument("--value", required=True)
    q.add_argument("--category", required=True, help="category key")
    q.add_argument("--user", type=int, help="the user it belongs to (default: global)")
    q.add_argument("--weight", type=float, default=0.9, help="in (0, 1], default 0.9")
    q.add_argument("--stage", action="store_true", help=stage)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_add)
