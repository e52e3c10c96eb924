"""``catfleet dlq list|show|replay|purge``: the dead-letter queue, for either broker
(``workers.dlq.open_store``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from workers.commands.args import duration, positive_float
from workers.settings import Settings

if TYPE_CHECKING:  # workers.dlq imports the broker clients
    from workers.dlq.base import ActionReport, DeadLetter, DeadLetterFilter


def register(sub: Any) -> None:
    """Add ``dlq`` and its subcommands to the ``catfleet`` parser."""
    p = sub.add_parser("dlq", help="list, show, replay and purge dead-lettered messages")
    p.set_defaults(func=cmd_dlq)
    dlq = p.add_subparsers(dest="dlq_command", required=True)

    def filters(q: argparse.ArgumentParser, *, ids: bool) -> None:
        if ids:
            q.add_argument("ids", nargs="*", help="message ids")
        q.add_argument("--queue", help="only this queue")
        q.add_argument("--actor", help="only this actor")
        q.add_argument("--error", help="final error contains this text (case-insensitive)")
        q.add_argument("--older-than", type=duration, help="died at least this long ago (90s, 15m, 2h, 7d)")
        q.add_argument("--newer-than", type=duration, help="died at most this long ago")
        q.add_argument("--limit", type=int, help="at most this many (newest first)")
        q.add_argument("--json", action="store_true", help="machine-readable output")

    q = dlq.add_parser("list", help="dead letters, newest first")
    filters(q, ids=False)
    q = dlq.add_parser("show", help="one dead letter: the whole message and its failure history")
    q.add_argument("id", help="message id")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = dlq.add_parser("replay", help="put dead letters back on their queue (retries reset)")
    filters(q, ids=True)
    q.add_argument("--all", action="store_true", help="every dead letter (when no id or filter is given)")
    q.add_argument("--dry-run", action="store_true", help="say what would be replayed, change nothing")
    q.add_argument("--rate", type=positive_float, help="messages per second (default: as fast as possible)")
    q = dlq.add_parser("purge", help="delete dead letters for good")
    filters(q, ids=True)
    q.add_argument("--all", action="store_true", help="every dead letter (when no id or filter is given)")
    q.add_argument("--dry-run", action="store_true", help="say what would be purged, change nothing")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    from workers.dlq.base import DeadLetterFilter

    return DeadLetterFilter(
        ids=tuple(getattr(args, "ids", ()) or ()),
        queue=args.queue,
        actor=args.actor,
        error=args.error,
        older_than_s=args.older_than,
        newer_than_s=args.newer_than,
    )


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from workers.dlq import open_store

    store = open_store(settings)
    try:
        if args.dlq_command == "list":
            return _print_list(store.find(_filter(args), limit=args.limit), args.json)
        if args.dlq_command == "show":
            letter = store.show(args.id)
            if letter is None:
                print(f"catfleet dlq show: no dead letter with message id {args.id!r}", file=sys.stderr)
                return 1
            return _print_one(letter, args.json)
        flt = _filter(args)
        if flt.is_empty and not args.all:
            raise SystemExit(f"catfleet dlq {args.dlq_command}: give message ids, a filter, or --all")
        if args.dlq_command == "replay":
            report = store.replay(flt, dry_run=args.dry_run, limit=args.limit, rate=args.rate)
        else:
            if not (args.yes or args.dry_run or _confirm(store.find(flt, limit=args.limit))):
                print("nothing purged")
                return 1
            report = store.purge(flt, dry_run=args.dry_run, limit=args.limit)
        return _print_report(report, args.json)
    finally:
        store.close()


def _confirm(letters: list[DeadLetter]) -> bool:
    if not letters:
        return True
    print(f"purge {len(letters)} dead letter(s)? [y/N] ", end="", flush=True)
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_list(letters: list[DeadLetter], as_json: bool) -> int:
    if as_json:
        rows = [msgspec.to_builtins(x) for x in letters]
        for row in rows:
            row.pop("payload", None)
            row.pop("history", None)
            row.pop("raw", None)
        print(json.dumps(rows))
        return 0
    print(f"{'message id':36}  {'queue':12}  {'actor':18}  {'ids':>5}  {'died (UTC)':19}  final error")
    for x in letters:
        ids = "-" if x.expense_ids is None else str(x.expense_ids)
        error = f"{x.error_type}: {x.error}".replace("\n", " ")[:100]
        print(
            f"{x.message_id:36}  {x.queue_name:12}  {x.actor_name:18}  {ids:>5}  {_when(x.died_at_ms)}  {error}"
        )
    print(f"{len(letters)} dead letter(s)")
    return 0


def _print_one(letter: DeadLetter, as_json: bool) -> int:
    if as_json:
        print(json.dumps(msgspec.to_builtins(letter)))
        return 0
    print(
        f"message id  {letter.message_id}\nqueue       {letter.queue_name}\nactor       {letter.actor_name}"
    )
    print(f"expense ids {letter.expense_ids}\ndied        {_when(letter.died_at_ms)} UTC")
    print(f"final error {letter.error_type}: {letter.error}\nfailure history:")
    for r in letter.history:
        mark = " (dead-lettered)" if r.dead else ""
        print(f"  {_when(r.at_ms)}  retries={r.retries}  {r.error_type}: {r.error}{mark}")
    if letter.unreplayable:
        print(f"unreplayable {letter.unreplayable}")
    if letter.payload is not None:
        print("message:")
        print(json.dumps(letter.payload, indent=2))
    elif letter.raw is not None:
        print("message (not a readable one; the stored bytes as they are):")
        print(letter.raw)
    else:
        print("message:\n  (no stored bytes)")
    return 0


def _print_report(report: ActionReport, as_json: bool) -> int:
    if as_json:
        print(json.dumps(msgspec.to_builtins(report)))
        return 0
    verb = {"replay": "replayed", "purge": "purged"}[report.action]
    if report.dry_run:
        print(f"dry run: would have {verb} {report.matched} dead letter(s)")
        for mid in report.message_ids:
            print(f"  {mid}")
        return 0
    print(f"{verb} {report.done} of {report.matched} dead letter(s)")
    for mid, why in report.skipped.items():
        print(f"  skipped {mid}: {why}")
    return 0
