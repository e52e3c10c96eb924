"""``catfleet bench quality --data PATH``: the quality benchmark (workers/bench_quality.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec

from pipeline.settings import Settings


def cmd_bench_quality(settings: Settings, args: argparse.Namespace) -> int:
    from workers.bench_quality import format_report, run_quality_bench

    if not args.data.is_file():
        raise SystemExit(f"catfleet bench quality: no such file: {args.data}")
    try:
        report = run_quality_bench(settings, args.data, split_month=args.split_month)
    except ValueError as exc:
        raise SystemExit(f"catfleet bench quality: {exc}") from None
    print(msgspec.json.encode(report).decode() if args.json else format_report(report))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    q = bsub.add_parser(
        "quality",
        help="learn from the earlier months' labels, categorize the later months, score each band",
    )
    q.add_argument("--data", type=Path, required=True, help="labelled CSV (Birmingham p-card format)")
    q.add_argument(
        "--split-month",
        metavar="YYYY-MM",
        help="first test month (default: the latest months holding about 25 %% of the labelled rows)",
    )
    q.add_argument("--json", action="store_true", help="the report as one JSON object")
    q.set_defaults(func=cmd_bench_quality)
