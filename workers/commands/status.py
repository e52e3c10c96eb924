"""``catfleet status``: the fleet at a glance (``workers.status.collect_status``), readable in a
terminal; ``--json`` for scripts."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from workers.display import format_age
from workers.settings import Settings

if TYPE_CHECKING:  # workers.status imports psycopg
    from workers.status import Status


def _queue_line(q: dict[str, Any], paused: dict[str, Any] | None = None) -> str:
    held = "-" if q["in_flight"] is None else str(q["in_flight"])
    line = (
        f"{q['queue']:<16}{q['ready']:>10}{q['delayed']:>10}{held:>10}"
        f"{format_age(q['oldest_age_s']):>10}{q['dead']:>10}{q['replayed']:>10}{q['purged']:>10}"
    )
    if paused:
        line += f"  PAUSED by {paused['operator']}"
    return line


def _process_lines(status: Status) -> list[str]:
    if status.fleet_error:
        return [f"processes  unknown: {status.fleet_error}"]
    lines = [f"processes  {len(status.processes)} worker process(es) with a fresh record"]
    for p in status.processes:
        busy = ", ".join(
            f"{b['actor']} {b['message_id'][:8]} ({b['expense_ids'] if b['expense_ids'] is not None else '-'} ids)"
            for b in p["busy"]
        )
        lines.append(
            f"  {p['host']}:{p['pid']:<8} queues {','.join(p['queues'])}  busy {len(p['busy'])}/{p['threads']}"
            f"  ruleset {p['ruleset_version'] if p['ruleset_version'] is not None else '-'}"
            f"  breaker {p['breaker'] or '-'}  processed {p['processed']}"
            + (f"  paused {','.join(p['paused'])}" if p["paused"] else "")
            + (f"  running {busy}" if busy else "")
        )
    return lines


def _readiness_line(r: dict[str, Any]) -> str:
    breaker = r.get("cache_breaker") or {}
    states = ", ".join(f"{k} {v}" for k, v in sorted(breaker.items()) if v) or "no L2 breaker reported"
    reasons = [
        f"{name}: {check.get('error') or 'failing'}"
        for name in ("broker", "database")
        if isinstance(check := r.get(name), dict) and not check.get("ok", True)
    ]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return f"this host  {r.get('status')}{why}; cache breaker: {states}"


def _stray_lines(strays: list[dict[str, Any]] | None) -> list[str]:
    if strays is None:
        return ["other      queues beyond the fleet's unknown (this broker cannot list its queues)"]
    if not strays:
        return []
    names = ", ".join(f"{q['queue']} ({q['ready']} ready)" for q in strays)
    return [
        f"WARNING    {len(strays)} queue(s) that are not the fleet's hold messages no worker consumes: {names}",
        *(_queue_line(q) for q in strays),
    ]


def render(status: Status) -> str:
    lines = [f"broker     {status.broker}  namespace {status.namespace}"]
    if status.broker_error:
        lines.append(f"           UNREACHABLE: {status.broker_error}")
    else:
        lines.append(
            f"{'queue':<16}{'ready':>10}{'delayed':>10}{'in flight':>10}{'oldest':>10}{'dead':>10}"
            f"{'replayed':>10}{'purged':>10}"
        )
        lines += [_queue_line(q, status.paused.get(q["queue"])) for q in status.queues]
        lines += _stray_lines(status.stray_queues)
    lines += _process_lines(status)
    if status.database_error:
        lines.append(f"ruleset    unknown: PostgreSQL: {status.database_error}")
    else:
        rollout = status.rollout
        share = (
            f", candidate {rollout['candidate']} rolled out to {rollout['percent']}% of users"
            if rollout
            else ""
        )
        lines.append(f"ruleset    version {status.ruleset_version}{share}")
    r = status.readiness
    if r is None:
        lines.append(f"this host  no answer from {status.readiness_url} (no worker here?)")
    else:
        lines.append(_readiness_line(r))
    return "\n".join(lines)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import msgspec

    from workers.status import collect_status, default_readiness_url

    status = collect_status(settings, args.readiness_url or default_readiness_url(settings))
    if args.json:
        print(msgspec.json.encode(status).decode())
    else:
        print(render(status))
    if status.broker_error:
        print(f"catfleet status: broker unreachable: {status.broker_error}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="queues, depths, dead letters, workers, ruleset, cache breaker")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--readiness-url", help="a worker host's /readyz (default: this host's metrics server)")
    p.set_defaults(func=cmd_status)
