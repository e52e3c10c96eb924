"""``catfleet demo``: demo data, real workers, everything categorized, a summary."""

from __future__ import annotations

import argparse
from typing import Any

from workers.settings import Settings


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(settings, expenses=args.expenses, users=args.users, processes=args.processes)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="set up demo data, run workers, categorize everything, print a summary")
    p.add_argument("--expenses", type=int, default=50_000)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--processes", type=int, help="worker processes (default: CATFLEET_WORKER_PROCESSES)")
    p.set_defaults(func=cmd_demo)
