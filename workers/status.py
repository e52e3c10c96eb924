"""``catfleet status``: the fleet at a glance, from the broker, PostgreSQL and this host's
health endpoint. Readable in a terminal; ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
import urllib.request
from typing import Any

import msgspec
import psycopg

from pipeline.queries import RULESET_VERSION
from pipeline.settings import redact
from workers.health import CHECK_TIMEOUT_S
from workers.settings import Settings


class Status(msgspec.Struct, kw_only=True):
    broker: str
    namespace: str
    broker_error: str | None
    queues: list[dict[str, Any]]
    workers_seen: int | None  # fresh broker heartbeats (Redis broker); None: unknown
    ruleset_version: int | None
    database_error: str | None
    readiness: dict[str, Any] | None  # this host's /readyz answer (breaker state among it)
    readiness_url: str


def _error(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:300]


def default_readiness_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::", "") else settings.metrics_host
    return f"http://{host}:{settings.metrics_port}/readyz"


def _readiness(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_S * 3) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:  # 503: unready, with the reasons in the body
        return dict(json.loads(exc.read()))
    except (OSError, ValueError):
        return None


def collect_status(settings: Settings, readiness_url: str) -> Status:
    from workers.app import build_app
    from workers.queues import queue_stats, workers_seen

    app = build_app(settings)
    queues: list[dict[str, Any]] = []
    seen = broker_error = None
    try:
        queues = [msgspec.structs.asdict(q) for q in queue_stats(app.broker)]
        seen = workers_seen(app.broker)
    except Exception as exc:
        broker_error = _error(exc)
    finally:
        app.broker.close()
    version = database_error = None
    try:
        with psycopg.connect(settings.database_url, connect_timeout=CHECK_TIMEOUT_S, autocommit=True) as conn:
            row = conn.execute(RULESET_VERSION).fetchone()
            version = int(row[0]) if row else None
    except Exception as exc:
        database_error = _error(exc)
    return Status(
        broker=redact(settings.broker_url),
        namespace=settings.broker_namespace,
        broker_error=broker_error,
        queues=queues,
        workers_seen=seen,
        ruleset_version=version,
        database_error=database_error,
        readiness=_readiness(readiness_url),
        readiness_url=readiness_url,
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(status: Status) -> str:
    lines = [f"broker     {status.broker}  namespace {status.namespace}"]
    if status.broker_error:
        lines.append(f"           UNREACHABLE: {status.broker_error}")
    else:
        lines.append(f"{'queue':<16}{'ready':>10}{'delayed':>10}{'oldest':>10}{'dead':>10}")
        for q in status.queues:
            lines.append(
                f"{q['queue']:<16}{q['ready']:>10}{q['delayed']:>10}{_age(q['oldest_age_s']):>10}{q['dead']:>10}"
            )
    if status.workers_seen is None:
        lines.append("workers    unknown (heartbeats are kept by the Redis broker only)")
    else:
        lines.append(
            f"workers    {status.workers_seen} broker client(s) seen within the heartbeat timeout"
            " (worker processes; a producer too while it enqueues)"
        )
    if status.database_error:
        lines.append(f"ruleset    unknown: PostgreSQL: {status.database_error}")
    else:
        lines.append(f"ruleset    version {status.ruleset_version}")
    r = status.readiness
    if r is None:
        lines.append(f"this host  no answer from {status.readiness_url} (no worker here?)")
    else:
        breaker = r.get("cache_breaker") or {}
        states = ", ".join(f"{k} {v}" for k, v in sorted(breaker.items()) if v) or "no L2 breaker reported"
        lines.append(f"this host  {r.get('status')}; cache breaker: {states}")
    return "\n".join(lines)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status = collect_status(settings, args.readiness_url or default_readiness_url(settings))
    if args.json:
        print(msgspec.json.encode(status).decode())
    else:
        print(render(status))
    return 1 if status.broker_error else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="queues, depths, dead letters, workers, ruleset, cache breaker")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--readiness-url", help="a worker host's /readyz (default: this host's metrics server)")
    p.set_defaults(func=cmd_status)
