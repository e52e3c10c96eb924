"""The ``catfleet`` command line. Reads the settings from the environment once, here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from pipeline.errors import CatfleetError
from workers import relay_cli, schema_cli
from workers.dlq.cli import register as register_dlq
from workers.settings import Settings


def _read_ids(stream: TextIO) -> Iterator[int]:
    for lineno, line in enumerate(stream, 1):
        for token in line.replace(",", " ").split():
            try:
                yield int(token)
            except ValueError:
                raise SystemExit(
                    f"catfleet enqueue: line {lineno}: not an integer expense id: {token[:40]!r}"
                ) from None


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from pipeline.migrate import migrate

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        applied = migrate(conn)
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version:04d}_{m.name}" for m in applied))
    return 0


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from workers.app import build_app
    from workers.producer import Producer

    if args.all_uncategorized:
        if args.ids or args.file:
            raise SystemExit("catfleet enqueue: --all-uncategorized takes no ids")
        from pipeline.db import Database
        from pipeline.stores import ExpenseStore

        db = Database.connect(settings.database_url, size=1, wait=True)
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
    app = build_app(settings)
    try:
        report = Producer(app.broker, batch_size=args.batch_size or settings.batch_size).enqueue(
            ids, correlation_id=args.correlation_id
        )
    except ValueError as exc:
        raise SystemExit(f"catfleet enqueue: {exc}") from None
    finally:
        app.broker.close()
    if args.json:
        print(json.dumps({"messages": report.messages, "ids": report.ids}))
    else:
        print(f"enqueued {report.ids} expense id(s) in {report.messages} message(s)")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.middleware.prometheus import metrics_env

    prefetch = settings.worker_prefetch or 2 * settings.worker_threads
    env = dict(
        os.environ,
        dramatiq_queue_prefetch=str(prefetch),
        dramatiq_worker_timeout=str(settings.worker_idle_poll_ms),
    )
    if settings.metrics_port:
        env.update(metrics_env(settings))  # before Dramatiq or prometheus_client is imported
    argv = [
        sys.executable, "-m", "dramatiq", args.boot,
        "--processes", str(args.processes or settings.worker_processes),
        "--threads", str(args.threads or settings.worker_threads),
        "--worker-shutdown-timeout", str(settings.worker_shutdown_timeout_ms),
        "--skip-logging",
    ]  # fmt: skip
    if args.queues:
        argv += ["--queues", *args.queues]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 0  # pragma: no cover


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(settings, expenses=args.expenses, users=args.users, processes=args.processes)


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply pending database migrations (safe to run concurrently)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run the Dramatiq worker processes")
    p.add_argument("--processes", type=int, help="default: CATFLEET_WORKER_PROCESSES")
    p.add_argument("--threads", type=int, help="default: CATFLEET_WORKER_THREADS")
    p.add_argument("--queues", nargs="*", help="consume only these queues")
    p.add_argument("--boot", default="workers.boot:broker", help="broker module (benchmarks use their own)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="enqueue expense IDs for categorization, in batches")
    p.add_argument("ids", nargs="*", type=int, help="expense IDs")
    p.add_argument("--file", help="read IDs from a file ('-': stdin), whitespace or comma separated")
    p.add_argument("--all-uncategorized", action="store_true", help="every expense without a categorization")
    p.add_argument("--user", type=int, help="with --all-uncategorized: only this user's expenses")
    p.add_argument("--batch-size", type=int, help="IDs per message (default: CATFLEET_BATCH_SIZE)")
    p.add_argument("--correlation-id", help="carried into the logs and the stored rows")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("demo", help="set up demo data, run workers, categorize everything, print a summary")
    p.add_argument("--expenses", type=int, default=50_000)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--processes", type=int, help="worker processes (default: CATFLEET_WORKER_PROCESSES)")
    p.set_defaults(func=cmd_demo)

    from workers.status import add_parser as add_status_parser

    add_status_parser(sub)
    from workers.exposition import add_parser as add_exporter_parser

    add_exporter_parser(sub)
    register_dlq(sub)

    p = sub.add_parser("settings", help="print the effective settings (passwords redacted)")
    p.set_defaults(func=cmd_settings)

    from workers.bench.cli import register as register_bench

    register_bench(sub)
    relay_cli.add_parser(sub)
    schema_cli.add_parser(sub)
    from workers.commands import correct, patterns

    correct.register(sub)
    patterns.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from workers.config import settings_from_env
    from workers.logs import setup_logging

    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_env()
        setup_logging(settings)
        return int(args.func(settings, args))
    except CatfleetError as exc:
        print(f"catfleet {args.command}: {exc}", file=sys.stderr)
        return 2
