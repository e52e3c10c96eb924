"""``catfleet backfill``: re-categorize a selection of expenses on the bulk lane, followed to
completion (a progress bar on a terminal, JSON lines otherwise), resumable (``--resume RUN``),
listable (``backfill list``, ``backfill show RUN``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Any

from workers.settings import Settings

if TYPE_CHECKING:
    from pipeline.backfill import Run, Selector
    from workers.backfill import Backfill, Progress

#: Exit code of a run stopped by Ctrl-C (resumable).
EXIT_INTERRUPTED = 130


def _fail(message: str) -> SystemExit:
    return SystemExit(f"catfleet backfill: {message}")


def _selector(args: argparse.Namespace, version: int | None, conn: Any = None) -> Selector:
    """The selector as given; ``conn`` resolves ``--candidate`` (the versions its promotion made)."""
    from pipeline.backfill import Selector, resolve_merchant

    try:
        merchant = resolve_merchant(args.merchant) if args.merchant is not None else None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    made: tuple[int | None, int | None] = (None, None)
    if args.candidate is not None:
        from pipeline.candidates import made_versions
        from pipeline.errors import CandidateError

        try:
            made = made_versions(conn, args.candidate)
        except CandidateError as exc:
            raise _fail(str(exc)) from None
    return Selector(
        candidate=args.candidate,
        made_since=made[0],
        made_before=made[1],
        all=args.all,
        uncategorized=args.uncategorized,
        bands=sorted(set(args.band or [])),
        stale_before=version,
        merchant=merchant,
        user_id=args.user,
        since=args.since,
        until=args.until,
        ids_from=args.ids_from is not None,
    )


def _read_ids(path: str) -> list[int]:
    from workers.commands.enqueue import _read_ids as read
    from workers.producer import validate_ids

    with sys.stdin if path == "-" else open(path, encoding="utf-8") as stream:
        try:
            return validate_ids(read(stream))
        except ValueError as exc:
            raise _fail(f"{path}: {exc}") from None


def _stale_version(backfill: Backfill, asked: int | None) -> int | None:
    if asked is None:
        return None
    if asked > 0:
        return asked
    row = backfill.db.execute("SELECT version FROM ruleset").fetchone()
    return int(row[0]) if row else None


class Reporter:
    """A tqdm bar on a terminal; otherwise (or with --json) one JSON line per look."""

    def __init__(self, as_json: bool):
        self.as_json = as_json or not sys.stderr.isatty()
        self.bar: Any = None

    def __call__(self, p: Progress) -> None:
        if self.as_json:
            print(json.dumps({"event": "progress", **_builtins(p)}), flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="exp", desc=p.run, dynamic_ncols=True, file=sys.stderr)
        self.bar.n = p.done
        self.bar.set_postfix_str(
            f"{p.phase}, enqueued {p.enqueued}, " + ", ".join(f"{k} {v}" for k, v in p.outcomes.items()),
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)


def _summary(p: Progress) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in p.outcomes.items())
    rate = f" ({p.rate:,.0f}/s)" if p.rate else ""
    return (
        f"backfill {p.run}: {p.phase}, {p.done}/{p.total} expense(s) in {p.elapsed_s:.1f} s{rate}: {outcomes}"
    )


def _check_args(args: argparse.Namespace) -> None:
    selecting = any(
        (args.all, args.uncategorized, args.band, args.stale_ruleset is not None, args.merchant is not None)
    ) or any(x is not None for x in (args.user, args.since, args.until, args.ids_from, args.candidate))
    if args.resume and selecting:
        raise _fail("--resume RUN takes no selector: the run keeps its own")
    if not args.resume and not selecting:
        raise _fail(
            "say what to select: --uncategorized, --band, --stale-ruleset, --candidate, --merchant,"
            " --user, --since/--until, --ids-from FILE, or --all"
        )
    if args.since and args.until and args.since > args.until:
        raise _fail("--since is after --until")


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(settings, args)
    if args.action == "show":
        return _show(settings, args)
    from workers.backfill import Backfill

    _check_args(args)
    ids = _read_ids(args.ids_from) if args.ids_from is not None else None
    backfill = Backfill(settings, poll_s=args.poll, stall_s=args.stall_seconds)
    reporter = Reporter(args.json)
    run: Run | None = None
    try:
        if args.resume:
            run = backfill.get(args.resume)
            if run is None:
                raise _fail(f"no backfill run {args.resume!r} (catfleet backfill list)")
            if args.rate is not None:
                run.rate = args.rate
        else:
            selector = _selector(args, _stale_version(backfill, args.stale_ruleset), backfill.db)
            run = backfill.start(
                selector, batch_size=args.batch_size or settings.batch_size, rate=args.rate, ids=ids
            )
        if reporter.as_json:
            print(
                json.dumps({"event": "run", "run": run.id, "total": run.total, "resumed": bool(args.resume)})
            )
        run = backfill.enqueue(run, reporter)
        final = backfill.look(run, run.state) if args.no_follow else backfill.follow(run, reporter)
    except KeyboardInterrupt:
        reporter.close()
        where = f": resume with catfleet backfill --resume {run.id}" if run is not None else ""
        print(f"catfleet backfill: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        reporter.close()
        backfill.close()
    if reporter.as_json:
        print(json.dumps({"event": "finished", **_builtins(final)}))
    else:
        print(_summary(final))
    if final.phase == "incomplete":
        print(
            f"catfleet backfill: {final.total - final.done} selected expense(s) got no row from this run"
            f" (deleted or chosen by their user meanwhile, or dead-lettered: catfleet dlq list"
            f" --correlation-id {final.run})",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_doc(run: Run, done: dict[str, int] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = _builtins(run)
    doc["selector"] = _builtins(run.selector)
    if done is not None:
        doc["done"] = sum(done.values())
        doc["progress"] = done
    return doc


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.backfill import list_runs
    from workers.backfill import connect

    with connect(settings) as conn:
        runs = list_runs(conn, limit=args.limit)
    if args.json:
        print(json.dumps({"runs": [_run_doc(r) for r in runs]}))
        return 0
    for r in runs:
        print(
            f"{r.id}  {r.state:<10}  {r.enqueued}/{r.total} enqueued  written {r.written if r.written is not None else '-'}"
            f"  {r.created_at:%Y-%m-%d %H:%M:%S}  {json.dumps(_builtins(r.selector))}"
        )
    print(f"{len(runs)} run(s)")
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.backfill import get_run, progress
    from workers.backfill import connect

    with connect(settings) as conn:
        run = get_run(conn, args.run)
        if run is None:
            print(f"catfleet backfill: no backfill run {args.run!r}", file=sys.stderr)
            return 1
        done = progress(conn, run.id)
    doc = _run_doc(run, done)
    if args.json:
        print(json.dumps(doc))
        return 0
    for key, value in doc.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    return 0


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def _batch_size(text: str) -> int:
    from schemas import MAX_BATCH_IDS

    value = int(_positive(int)(text))
    if value > MAX_BATCH_IDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH_IDS}")
    return value


def add_selectors(p: argparse.ArgumentParser) -> None:
    """The selectors of ``backfill`` (``rules diff`` takes the same)."""
    p.add_argument("--all", action="store_true", help="every live expense that is not its user's own choice")
    p.add_argument("--uncategorized", action="store_true", help="expenses without a categorization row")
    p.add_argument(
        "--band", action="append", choices=["none", "suggest", "auto"], help="rows of this band (repeatable)"
    )
    p.add_argument(
        "--stale-ruleset",
        nargs="?",
        const=0,
        type=int,
        metavar="VERSION",
        help="rows made by a ruleset older than VERSION (default: the current one)",
    )
    p.add_argument(
        "--candidate",
        type=int,
        metavar="ID",
        help="rows the candidate ruleset ID made: by its rollout, or by its promotion until rolled back",
    )
    p.add_argument("--merchant", help="this merchant (matched normalized, as patterns are)")
    p.add_argument("--user", type=int, help="this user's expenses")
    p.add_argument("--since", type=_date, help="transaction date on or after (YYYY-MM-DD)")
    p.add_argument("--until", type=_date, help="transaction date on or before (YYYY-MM-DD)")
    p.add_argument(
        "--ids-from", metavar="FILE", help="these expense ids ('-': stdin), whitespace or comma separated"
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backfill",
        help="re-categorize a selection of expenses on the bulk lane, followed to completion, resumable",
    )
    add_selectors(p)
    p.add_argument("--resume", metavar="RUN", help="go on with this run from its checkpoint")
    p.add_argument("--rate", type=_positive(float), help="at most this many expenses enqueued per second")
    p.add_argument("--batch-size", type=_batch_size, help="IDs per message (default: CATFLEET_BATCH_SIZE)")
    p.add_argument("--poll", type=_positive(float), default=1.0, help="seconds between progress looks (1)")
    p.add_argument(
        "--stall-seconds",
        type=_positive(float),
        default=30.0,
        help="give up waiting (incomplete, exit 1) when no row came for this long and the queue is empty (30)",
    )
    p.add_argument("--no-follow", action="store_true", help="enqueue, then exit without waiting for the rows")
    p.add_argument("--json", action="store_true", help="JSON progress lines (also when not on a terminal)")
    p.set_defaults(func=cmd_backfill, action=None)
    actions = p.add_subparsers(dest="action")
    q = actions.add_parser("list", help="the runs, newest first")
    q.add_argument("--limit", type=_batch_size, default=50, help="at most this many (50)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = actions.add_parser("show", help="one run: selector, checkpoint, state, rows so far per band")
    q.add_argument("run", help="the run id (backfill:...)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
