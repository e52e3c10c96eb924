"""The fleet at a glance, from the broker, PostgreSQL and this host's health endpoint
(``catfleet status`` shows it: ``workers.commands.status``)."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from pipeline.queries import RULESET_STATE
from pipeline.settings import redact
from workers.health import CHECK_TIMEOUT_S
from workers.settings import Settings

if TYPE_CHECKING:
    from pipeline.db import Database
    from workers.backends.base import Backend


class Status(msgspec.Struct, kw_only=True):
    broker: str
    namespace: str
    broker_error: str | None
    queues: list[dict[str, Any]]
    #: queues beyond the fleet's holding messages no worker consumes; None: the broker cannot
    #: list its queues (RabbitMQ)
    stray_queues: list[dict[str, Any]] | None
    workers_seen: int | None  # fresh broker heartbeats (Redis broker); None: unknown
    #: the live worker processes' own records (workers.fleet.state.ProcessRecord)
    processes: list[dict[str, Any]]
    #: paused queue -> who paused it and when
    paused: dict[str, dict[str, Any]]
    #: where the fleet's state could not be read (the records live in PostgreSQL for RabbitMQ)
    fleet_error: str | None
    ruleset_version: int | None
    #: the candidate ruleset rolled out to a share of users (``catfleet rules rollout``), or None
    rollout: dict[str, int] | None
    database_error: str | None
    readiness: dict[str, Any] | None  # this host's /readyz answer (breaker state among it)
    readiness_url: str


def _error(exc: BaseException) -> str:
    return " ".join(redact(f"{type(exc).__name__}: {exc}").split())[:300]


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


def collect_status(
    settings: Settings,
    readiness_url: str | None,
    *,
    backend: Backend | None = None,
    database: Database | None = None,
) -> Status:
    """``readiness_url``: a worker host's ``/readyz`` to ask (None: none, as in the console);
    ``backend``/``database``: long-lived ones to use (the console's), else opened and closed here."""
    from workers.backends import backend_for

    own = backend is None
    backend = backend or backend_for(settings)
    queues: list[dict[str, Any]] = []
    strays: list[dict[str, Any]] | None = []
    seen = broker_error = fleet_error = None
    processes: list[dict[str, Any]] = []
    paused: dict[str, dict[str, Any]] = {}
    try:
        queues = [msgspec.structs.asdict(q) for q in backend.queue_stats()]
        found = backend.stray_queues()
        strays = None if found is None else [msgspec.structs.asdict(q) for q in found]
        seen = backend.workers_seen()
    except Exception as exc:
        broker_error = _error(exc)
    try:
        state = backend.fleet_state()
        processes = [msgspec.to_builtins(r) for r in state.processes()]
        paused = {q: msgspec.to_builtins(p) for q, p in state.paused().items()}
    except Exception as exc:
        fleet_error = _error(exc)
    finally:
        if own:
            backend.close()
    version = database_error = None
    rollout: dict[str, int] | None = None
    try:
        if database is not None:
            row = database.run(lambda conn: conn.execute(RULESET_STATE).fetchone(), read=True)
        else:
            with psycopg.connect(
                settings.database_url, connect_timeout=CHECK_TIMEOUT_S, autocommit=True
            ) as conn:
                row = conn.execute(RULESET_STATE).fetchone()
        version = int(row[0]) if row else None
        if row and row[1] is not None:
            rollout = {"candidate": int(row[1]), "percent": int(row[2])}
    except Exception as exc:
        database_error = _error(exc)
    return Status(
        broker=redact(settings.broker_url),
        namespace=settings.broker_namespace,
        broker_error=broker_error,
        queues=queues,
        stray_queues=strays,
        workers_seen=seen,
        processes=processes,
        paused=paused,
        fleet_error=fleet_error,
        ruleset_version=version,
        rollout=rollout,
        database_error=database_error,
        readiness=_readiness(readiness_url) if readiness_url else None,
        readiness_url=readiness_url or "",
    )
