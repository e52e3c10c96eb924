"""``catfleet queue list|pause|resume|history``: stop the fleet taking messages from a queue and
let it go on again (``workers.fleet.service``); messages keep arriving and wait."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from workers.display import format_time
from workers.settings import Settings


def cmd_queue(settings: Settings, args: argparse.Namespace) -> int:
    from workers.backends import backend_for
    from workers.dlq.base import operator_name
    from workers.fleet import service

    backend = backend_for(settings)
    try:
        if args.queue_command in ("pause", "resume"):
            act = service.pause if args.queue_command == "pause" else service.resume
            changed = act(backend, args.queue, args.operator or operator_name())
            past = "paused" if args.queue_command == "pause" else "resumed"
            if args.json:
                print(
                    msgspec.json.encode(
                        {"queue": args.queue, "action": args.queue_command, "changed": changed}
                    ).decode()
                )
            elif changed:
                print(f"{past} {args.queue}: every worker process sees it within CATFLEET_FLEET_BEAT_MS")
            else:
                print(f"{args.queue} was already {past}: nothing done")
            return 0
        if args.queue_command == "history":
            actions = service.queue_actions(backend, limit=args.limit)
            if args.json:
                print(msgspec.json.encode(actions).decode())
            for a in [] if args.json else actions:
                print(f"{format_time(a.at_ms)} UTC  {a.action:<7} {a.queue:<12} by {a.operator}")
            return 0
        states = service.queue_states(backend)
        if args.json:
            print(msgspec.json.encode(states).decode())
            return 0
        for s in states:
            state = (
                f"paused since {format_time(s.paused.at_ms)} UTC by {s.paused.operator}"
                if s.paused
                else "running"
            )
            print(f"{s.queue:<12} {state}")
        return 0
    finally:
        backend.close()


def register(sub: Any) -> None:
    p = sub.add_parser("queue", help="pause and resume the fleet's queues")
    p.set_defaults(func=cmd_queue)
    q = p.add_subparsers(dest="queue_command", required=True)
    for name, text in (
        ("pause", "stop every worker taking new messages from QUEUE"),
        ("resume", "take them again"),
    ):
        c = q.add_parser(name, help=text)
        c.add_argument("queue", help="categorize or learn")
        c.add_argument("--operator", help="who, for the audit trail (default: user@host)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
    c = q.add_parser("list", help="each queue: running, or paused since when and by whom")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = q.add_parser("history", help="pauses and resumes, newest first")
    c.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
