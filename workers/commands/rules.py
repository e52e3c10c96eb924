"""``catfleet rules show|diff|rollout|promote|rollback|discard``: the candidate ruleset staged with
``catfleet patterns ... --stage``, tried in shadow, rolled out to a share of users, promoted or
rolled back (README *Rule rollouts*)."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from workers.settings import Settings

if TYPE_CHECKING:
    import psycopg

    from pipeline.candidates import Candidate
    from pipeline.shadow import DiffReport

#: Exit code when there is nothing to act on (nothing staged, nothing to roll back).
EXIT_NOTHING = 1
DEFAULT_SAMPLE = 1_000


def _fail(message: str) -> int:
    print(f"catfleet rules: {message}", file=sys.stderr)
    return EXIT_NOTHING


def _admin(settings: Settings) -> Any:
    from workers.commands.patterns import _candidates

    return _candidates(settings)


def _doc(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _describe(c: Candidate) -> str:
    share = f"rolled out to {c.percent}% of users" if c.percent else "in shadow (not rolled out)"
    made = f", {c.rows} row(s) made by it" if c.rows else ""
    return f"candidate {c.id} ({c.state}, by {c.operator}, {c.created_at:%Y-%m-%d %H:%M:%S}): {share}{made}"


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    with _admin(settings) as admin:
        cand = admin.open_candidate()
        recent = [c for c in admin.recent() if c.state != "open"]
    if args.json:
        print(json.dumps({"candidate": _doc(cand), "recent": _doc(recent)}))
        return 0
    if cand is None:
        print("no candidate ruleset: stage changes with catfleet patterns ... --stage")
    else:
        print(_describe(cand))
        for ch in cand.changes:
            scope = "global" if ch.user_id is None else f"user {ch.user_id}"
            detail = {"edit": f"weight {ch.weight}", "add": f"weight {ch.weight}"}.get(ch.op, "")
            gone = "  GONE: the pattern no longer exists" if ch.vanished else ""
            print(
                f"  {ch.id:>5}  {ch.op:<7}  pattern {ch.pattern_id}{' (new)' if ch.created else ''}"
                f"  {ch.kind} {ch.value!r} -> {ch.category}  {scope}  {detail}{gone}".rstrip()
            )
        print(f"{len(cand.changes)} change(s)")
    for c in recent:
        versions = f": promoted v{c.base_version} -> v{c.promoted_version}" if c.promoted_version else ""
        back = f", rolled back at v{c.rolled_back_version}" if c.rolled_back_version else ""
        print(f"earlier: candidate {c.id} ({c.state}){versions}{back}")
    return 0


def _read_only(settings: Settings) -> Any:
    """A pool whose every transaction is read-only: the diff cannot write, whatever it calls."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from pipeline.db import Database, translate_errors
    from workers.commands.patterns import CONNECT_TIMEOUT_S

    options = conninfo_to_dict(settings.database_url).get("options") or ""
    dsn = make_conninfo(
        settings.database_url, options=f"{options} -c default_transaction_read_only=on".strip()
    )
    with translate_errors():
        psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S).close()
    return Database.connect(dsn, size=2, wait=True)


def _selected(conn: psycopg.Connection[Any], args: argparse.Namespace, batch: int) -> Iterator[Sequence[int]]:
    """The ids to compare, in batches: the selection (backfill's selectors), or a random
    ``--sample`` of it (reservoir: uniform over any selection, in one streamed pass)."""
    from pipeline.backfill import Selector, iter_selected
    from workers.commands.backfill import _selector

    version = None
    if args.stale_ruleset is not None:
        row = conn.execute("SELECT version FROM ruleset").fetchone()
        version = args.stale_ruleset or (int(row[0]) if row else None)
    selector = _selector(args, version, conn)
    if args.ids_from is not None:
        from workers.commands.backfill import _read_ids

        if selector != Selector(ids_from=True):
            raise SystemExit("catfleet rules: --ids-from takes no other selector here")
        ids = sorted(set(_read_ids(args.ids_from)))
        stream: Iterator[list[int]] = iter([ids[i : i + batch] for i in range(0, len(ids), batch)])
    else:
        if selector.is_empty():
            selector = Selector(all=True)
            args.sample = args.sample or DEFAULT_SAMPLE
        stream = iter_selected(conn, selector, "rules-diff", chunk=batch)
    if not args.sample:
        yield from stream
        return
    rng = random.Random(args.seed)
    reservoir: list[int] = []
    seen = 0
    for chunk in stream:
        for expense_id in chunk:
            seen += 1
            if len(reservoir) < args.sample:
                reservoir.append(expense_id)
            elif (j := rng.randrange(seen)) < args.sample:
                reservoir[j] = expense_id
    reservoir.sort()
    for i in range(0, len(reservoir), batch):
        yield reservoir[i : i + batch]


def cmd_diff(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.candidates import CandidateAdmin
    from pipeline.errors import CandidateError
    from pipeline.matcher import Thresholds
    from pipeline.shadow import shadow_diff

    db = _read_only(settings)
    try:
        try:
            overlay = CandidateAdmin(db, operator="").overlay()
        except CandidateError as exc:
            return _fail(str(exc))
        with db.connection() as conn:
            categories = dict(conn.execute("SELECT id, key FROM categories").fetchall())
            with conn.transaction():  # the selection's server-side cursor
                report = shadow_diff(
                    db,
                    overlay,
                    _selected(conn, args, settings.batch_size),
                    thresholds=Thresholds(auto=settings.auto_threshold, suggest=settings.suggest_threshold),
                    categories=categories,
                    examples=args.examples,
                )
    finally:
        db.close()
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        _print_diff(report)
    return 0


def _print_diff(r: DiffReport) -> None:
    def label(category: str | None, band: str) -> str:
        return "(uncategorized)" if category is None else f"{category} ({band})"

    print(
        f"candidate {r.candidate_id}: {r.changed} of {r.expenses} expense(s) would change category or band"
        f" ({r.confidence_only} only their confidence or deciding pattern, {r.unchanged} nothing)"
    )
    for m in r.moves:
        print(f"  {m.count:>7}  {label(m.from_category, m.from_band)} -> {label(m.to_category, m.to_band)}")
        for e in m.examples:
            print(
                f"           e.g. expense {e.expense_id} (user {e.user_id}) {e.merchant!r}:"
                f" {e.before.confidence:.2f} -> {e.after.confidence:.2f}"
            )
    print("nothing was written (shadow run)")


def _act(settings: Settings, args: argparse.Namespace, act: Any, describe: Any) -> int:
    """Run ``act(admin)``; a ``CandidateError`` is one line and exit 2, else the result as JSON
    (``--json``) or ``describe(result)``."""
    from pipeline.errors import CandidateError

    with _admin(settings) as admin:
        try:
            done = act(admin)
        except CandidateError as exc:
            return _fail(str(exc))
    print(msgspec.json.encode(done).decode() if args.json else describe(done))
    return 0


def cmd_rollout(settings: Settings, args: argparse.Namespace) -> int:
    return _act(
        settings,
        args,
        lambda admin: admin.set_rollout(args.percent),
        lambda done: (
            f"candidate {done.candidate_id} rolled out to {done.percent}% of users"
            f" ({done.users_chosen} of {done.users} with expenses now); ruleset version {done.version}"
        ),
    )


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    return _act(
        settings,
        args,
        lambda admin: admin.promote(),
        lambda done: (
            f"candidate {done.candidate_id} promoted: {done.added} added, {done.changed} changed,"
            f" {done.deleted} deleted; ruleset version {done.base_version} -> {done.version}"
            " (catfleet rules rollback undoes it)"
        ),
    )


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    return _act(
        settings,
        args,
        lambda admin: admin.rollback(),
        lambda done: (
            f"candidate {done.candidate_id} rolled back: {done.restored} pattern(s) restored,"
            f" {done.removed} removed; ruleset version {done.version}; re-do the rows it made:"
            f" catfleet backfill --candidate {done.candidate_id} (or --stale-ruleset)"
        ),
    )


def cmd_discard(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.errors import CandidateError

    with _admin(settings) as admin:
        try:
            candidate_id = admin.discard()
        except CandidateError as exc:
            return _fail(str(exc))
    print(f"candidate {candidate_id} discarded (nothing applied)")
    return 0


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 0..100: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def register(sub: Any) -> None:
    from workers.commands.backfill import add_selectors

    p = sub.add_parser(
        "rules", help="the candidate ruleset: show, diff in shadow, roll out, promote, roll back, discard"
    )
    rsub = p.add_subparsers(dest="rules_command", required=True)
    q = rsub.add_parser("show", help="the staged candidate and its changes, and the latest promotions")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_show)

    q = rsub.add_parser("diff", help="run the candidate in shadow: what would change (writes nothing)")
    add_selectors(q)
    q.add_argument(
        "--sample",
        type=_count,
        help=f"a random N of the selection (without a selector: of all, default {DEFAULT_SAMPLE})",
    )
    q.add_argument("--seed", type=int, help="the sample's random seed (the same sample again)")
    q.add_argument("--examples", type=_count, default=3, help="examples per move (3)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_diff)

    q = rsub.add_parser("rollout", help="apply the candidate to a stable hash-chosen share of users")
    q.add_argument("--percent", type=_percent, required=True, help="0..100 (0: no user, shadow only)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_rollout)

    for name, func, text in (
        (
            "promote",
            cmd_promote,
            "make the candidate the ruleset (one transaction; the replaced rows are kept)",
        ),
        ("rollback", cmd_rollback, "undo the latest promotion: the exact previous pattern rows"),
    ):
        q = rsub.add_parser(name, help=text)
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=func)
    q = rsub.add_parser("discard", help="drop the candidate unapplied (its rollout ends)")
    q.set_defaults(func=cmd_discard)
