"""``catfleet dlq list|show|replay|purge|audit``: the dead-letter queue, for either broker
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
    from workers.dlq.base import ActionReport, AuditEntry, DeadLetter, DeadLetterFilter, DeadLetterStore, Page

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_S = 5
#: Letters ``dlq list`` prints without ``--limit`` or ``--all``.
DEFAULT_LIST_LIMIT = 50
#: Audit entries ``dlq audit`` prints without ``--limit``.
DEFAULT_AUDIT_LIMIT = 20
#: Expense IDs ``dlq show`` prints (``--json`` has them all).
SHOWN_EXPENSE_IDS = 20
#: Message ids an audit line prints (``--json`` has them all).
SHOWN_AUDIT_IDS = 5
#: Exit code of a replay or purge given message ids that are not dead letters (the others are done).
EXIT_UNKNOWN_IDS = 1
#: Exit code of a ``--queue`` that is neither a fleet queue nor has a dead-letter queue.
EXIT_UNKNOWN_QUEUE = 2


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def cursor(text: str) -> str:
    from workers.dlq.base import parse_cursor

    try:
        parse_cursor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
        q.add_argument("--error-type", help="final error is of exactly this type (e.g. InvalidMessage)")
        q.add_argument("--expense-id", type=int, help="the batch holds this expense id")
        q.add_argument("--correlation-id", help="the message carries this correlation id")
        q.add_argument("--older-than", type=duration, help="died at least this long ago (90s, 15m, 2h, 7d)")
        q.add_argument("--newer-than", type=duration, help="died at most this long ago")
        q.add_argument("--json", action="store_true", help="machine-readable output")

    q = dlq.add_parser("list", help="dead letters, newest first")
    filters(q, ids=False)
    q.add_argument(
        "--limit", type=positive_int, help=f"at most this many (newest first; default {DEFAULT_LIST_LIMIT})"
    )
    q.add_argument("--all", action="store_true", help="every matching letter, however many")
    q.add_argument(
        "--after",
        type=cursor,
        metavar="CURSOR",
        help="the page after this cursor (the next_cursor of --json, or the one printed on stderr)",
    )
    q = dlq.add_parser("show", help="one dead letter: the whole message and its failure history")
    q.add_argument("id", help="message id")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = dlq.add_parser("replay", help="put dead letters back on their queue (retries reset)")
    filters(q, ids=True)
    q.add_argument("--limit", type=positive_int, help="at most this many (newest first)")
    q.add_argument("--all", action="store_true", help="every dead letter (when no id or filter is given)")
    q.add_argument("--dry-run", action="store_true", help="say what would be replayed, change nothing")
    q.add_argument("--rate", type=positive_float, help="messages per second (default: as fast as possible)")
    q = dlq.add_parser("purge", help="delete dead letters for good")
    filters(q, ids=True)
    q.add_argument("--limit", type=positive_int, help="at most this many (newest first)")
    q.add_argument("--all", action="store_true", help="every dead letter (when no id or filter is given)")
    q.add_argument("--dry-run", action="store_true", help="say what would be purged, change nothing")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    q = dlq.add_parser("audit", help="the replays and purges done, newest first")
    q.add_argument("--limit", type=positive_int, default=DEFAULT_AUDIT_LIMIT, help="at most this many")
    q.add_argument("--json", action="store_true", help="machine-readable output")


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    from workers.dlq.base import DeadLetterFilter

    return DeadLetterFilter(
        ids=tuple(getattr(args, "ids", ()) or ()),
        queue=args.queue,
        actor=args.actor,
        error=args.error,
        older_than_s=args.older_than,
        newer_than_s=args.newer_than,
        error_type=args.error_type,
        expense_id=args.expense_id,
        correlation_id=args.correlation_id,
    )


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from workers.dlq import open_store

    store = open_store(settings)
    try:
        if args.dlq_command != "list" or store.lists_from_database(_filter(args)):
            _check_database(settings)  # the audit trail, the dead-letter index
        return _run(store, args)
    finally:
        store.close()


def _check_database(settings: Settings) -> None:
    """A PostgreSQL that does not answer is one ``DatabaseUnavailable`` (one line, exit 2) within
    ``CONNECT_TIMEOUT_S``, not the pool's 30 s of retries and warnings."""
    import psycopg

    from pipeline.db import translate_errors

    with translate_errors():
        psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S).close()


def _run(store: DeadLetterStore, args: argparse.Namespace) -> int:
    command = args.dlq_command
    if command == "audit":
        return _print_audit(store.audit.trail(limit=args.limit), args.json)
    if command == "show":
        letter = store.show(args.id)
        if letter is None:
            print(
                f"catfleet dlq show: no dead letter with message id {args.id!r}{_moved(store, args.id)}",
                file=sys.stderr,
            )
            return 1
        return _print_one(letter, args.json)
    flt = _filter(args)
    if flt.queue is not None and not _known_queue(store, flt.queue):
        print(f"catfleet dlq {command}: {_unknown_queue(store, flt.queue)}", file=sys.stderr)
        return EXIT_UNKNOWN_QUEUE
    if command == "list":
        if args.all:
            letters = store.find(flt)
            page = _page(letters, len(letters))
        else:
            page = store.page(flt, limit=args.limit or DEFAULT_LIST_LIMIT, after=args.after)
        return _print_list(page, args.json)
    if flt.is_empty and not args.all:
        raise SystemExit(f"catfleet dlq {command}: give message ids, a filter, or --all")
    if command == "replay":
        report = store.replay(flt, dry_run=args.dry_run, limit=args.limit, rate=args.rate)
    else:
        if not (args.yes or args.dry_run or _confirm(store.find(flt, limit=args.limit))):
            print("nothing purged")
            return 1
        report = store.purge(flt, dry_run=args.dry_run, limit=args.limit)
    _print_report(report, args.json)
    if report.unknown:
        print(
            f"catfleet dlq {command}: no dead letter with message id {_some(report.unknown, 10)}",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN_IDS
    return 0


def _known_queue(store: DeadLetterStore, queue: str) -> bool:
    from workers.backends.base import FLEET_QUEUES

    return queue in FLEET_QUEUES or queue in store.queues()


def _unknown_queue(store: DeadLetterStore, queue: str) -> str:
    from workers.backends.base import FLEET_QUEUES

    others = [q for q in store.queues() if q not in FLEET_QUEUES]
    also = f"; others with dead letters: {_some(others, 10)}" if others else ""
    return f"no queue {queue!r} with dead letters: the fleet's are {', '.join(FLEET_QUEUES)}{also}"


def _moved(store: DeadLetterStore, message_id: str) -> str:
    """What the audit trail says happened to a message that is not a dead letter now."""
    entries = store.audit.of_message(message_id)
    if not entries:
        return ""
    last = entries[-1]
    return f" ({_PAST[last.action]} at {_when(last.at_ms)} UTC by {last.operator}, audit entry {last.id})"


_PAST = {"replay": "replayed", "purge": "purged"}


def _page(letters: list[DeadLetter], total: int) -> Page:
    from workers.dlq.base import Page

    return Page(letters=letters, total=total, offset=0, limit=len(letters))


def _confirm(letters: list[DeadLetter]) -> bool:
    if not letters:
        return True
    print(f"purge {len(letters)} dead letter(s)? [y/N] ", end="", flush=True)
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _some(items: list[Any], shown: int) -> str:
    """The first ``shown`` items, then how many more."""
    text = ", ".join(str(x) for x in items[:shown])
    return text if len(items) <= shown else f"{text}, ... ({len(items) - shown} more)"


def _print_list(page: Page, as_json: bool) -> int:
    if as_json:
        rows = [msgspec.to_builtins(x) for x in page.letters]
        for row in rows:
            for field in ("payload", "history", "raw", "actions"):
                row.pop(field, None)
        doc = {"letters": rows, "total": page.total, "offset": page.offset, "limit": page.limit}
        print(json.dumps({**doc, "after": page.after, "next_cursor": page.next_cursor}))
        return 0
    print(f"{'message id':36}  {'queue':12}  {'actor':18}  {'ids':>5}  {'died (UTC)':19}  final error")
    for x in page.letters:
        ids = "-" if x.expense_count is None else str(x.expense_count)
        error = f"{x.error_type}: {x.error}".replace("\n", " ")[:100]
        print(
            f"{x.message_id:36}  {x.queue_name:12}  {x.actor_name:18}  {ids:>5}  {_when(x.died_at_ms)}  {error}"
        )
    shown = len(page.letters)
    if page.after is not None:
        print(f"{shown} of {page.total} dead letter(s), older than the cursor")
    elif shown >= page.total:
        print(f"{page.total} dead letter(s)")
    else:
        more = page.total - shown
        print(
            f"{shown} of {page.total} dead letter(s), newest first; {more} more: --limit {page.total} or --all"
        )
    if page.next_cursor is not None:  # a hint, beside the listing
        print(f"next page: --after {page.next_cursor}", file=sys.stderr)
    return 0


def _print_one(letter: DeadLetter, as_json: bool) -> int:
    if as_json:
        print(json.dumps(msgspec.to_builtins(letter)))
        return 0
    print(
        f"message id  {letter.message_id}\nqueue       {letter.queue_name}\nactor       {letter.actor_name}"
    )
    if letter.expense_ids is not None:
        ids = _some(letter.expense_ids, SHOWN_EXPENSE_IDS)
        print(f"expense ids {len(letter.expense_ids)}: {ids}")
    if letter.correlation_id:
        print(f"correlation {letter.correlation_id}")
    print(f"died        {_when(letter.died_at_ms)} UTC")
    print(f"final error {letter.error_type}: {letter.error}\nhistory:")
    events: list[tuple[int, str]] = []
    for r in letter.history:
        mark = " (dead-lettered)" if r.dead else ""
        attempt = f"attempt {r.attempt}" if r.attempt else "attempt ?"
        events.append((r.at_ms, f"{attempt}  {r.error_type}: {r.error}{mark}"))
    for e in letter.actions:
        events.append((e.at_ms, f"{_PAST[e.action]} by {e.operator} (audit entry {e.id})"))
    for at_ms, text in sorted(events, key=lambda x: x[0]):
        print(f"  {_when(at_ms)}  {text}")
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


def _print_report(report: ActionReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(msgspec.to_builtins(report)))
        return
    verb = _PAST[report.action]
    if report.dry_run:
        print(f"dry run: would have {verb} {len(report.message_ids)} of {report.matched} dead letter(s)")
        for mid in report.message_ids:
            print(f"  {mid}")
        for mid, why in report.skipped.items():
            print(f"  would skip {mid}: {why}")
        return
    print(f"{verb} {report.done} of {report.matched} dead letter(s)")
    for mid, why in report.skipped.items():
        print(f"  skipped {mid}: {why}")


def _print_audit(entries: list[AuditEntry], as_json: bool) -> int:
    if as_json:
        print(json.dumps([msgspec.to_builtins(e) for e in entries]))
        return 0
    print(
        f"{'id':>6}  {'at (UTC)':19}  {'operator':24}  {'action':6}  {'count':>6}  {'limit':>6}  {'rate':>6}  filter / ids"
    )
    for e in entries:
        flt = json.dumps(e.filter, separators=(",", ":")) if e.filter else "--all"
        limit = "-" if e.limit is None else str(e.limit)
        rate = "-" if e.rate is None else f"{e.rate:g}"
        print(
            f"{e.id:>6}  {_when(e.at_ms)}  {e.operator[:24]:24}  {e.action:6}  {e.count:>6}  {limit:>6}  {rate:>6}"
            f"  {flt}  ids: {_some(e.message_ids, SHOWN_AUDIT_IDS) or '-'}"
        )
    print(f"{len(entries)} audit entr{'y' if len(entries) == 1 else 'ies'}")
    return 0
