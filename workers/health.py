"""Readiness: can this host's workers do their job? Broker and PostgreSQL must answer; the L2
cache breaker is reported, and an open breaker only degrades (lookups go to PostgreSQL).

``/readyz`` is unauthenticated, so its answer names the failing dependency and the error's
class only (``{"ok": false, "error": "OperationalError"}``): a driver's message carries the
server's host, port and database name. The whole message is logged (WARNING, redacted) by the
process that answered."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
import psycopg

from workers.backends.base import Backend, Check
from workers.settings import Settings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

#: Seconds a readiness check may take per dependency.
CHECK_TIMEOUT_S = 2


class Readiness(msgspec.Struct, kw_only=True):
    status: str  # ready | degraded | unready
    broker: Check
    database: Check
    cache_breaker: dict[str, int]  # state -> worker processes in it; empty: no L2 breaker reported
    failing: list[str] = []  # the dependencies that did not answer: "broker", "database"

    @property
    def ready(self) -> bool:
        return self.status != "unready"


def check_database(settings: Settings) -> Check:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=CHECK_TIMEOUT_S, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return Check.failed(exc)
    return Check(ok=True)


def public(name: str, check: Check) -> Check:
    """``check`` as the unauthenticated endpoint may show it: the error's class (the text before
    the first ``:`` of ``Check.failed``'s ``"<class>: <message>"``), the message logged here."""
    if check.ok:
        return check
    log.warning("readiness: %s check failed: %s", name, check.error)
    error_class = (check.error or "").split(":", 1)[0].strip()
    return Check(ok=False, error=error_class if error_class.isidentifier() else "Error")


def breaker_states(metrics: Iterable[Metric]) -> dict[str, int]:
    """Processes per breaker state, from the collected ``catfleet_cache_breaker_state`` gauge."""
    states: dict[str, int] = {}
    for metric in metrics:
        if metric.name == "catfleet_cache_breaker_state":
            for sample in metric.samples:
                states[sample.labels["state"]] = states.get(sample.labels["state"], 0) + int(sample.value)
    return states


def readiness(settings: Settings, backend: Backend, metrics: Iterable[Metric]) -> Readiness:
    b, d = public("broker", backend.check()), public("database", check_database(settings))
    breaker = breaker_states(metrics)
    failing = [name for name, check in (("broker", b), ("database", d)) if not check.ok]
    if failing:
        status = "unready"
    elif breaker.get("open", 0) or breaker.get("half_open", 0):
        status = "degraded"
    else:
        status = "ready"
    return Readiness(status=status, broker=b, database=d, cache_breaker=breaker, failing=failing)
