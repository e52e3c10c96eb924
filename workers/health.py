"""Readiness: can this host's workers do their job? Broker and PostgreSQL must answer; the L2
cache breaker is reported, and an open breaker only degrades (lookups go to PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import dramatiq
import msgspec
import psycopg
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from pipeline.settings import redact
from workers.settings import Settings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Seconds a readiness check may take per dependency.
CHECK_TIMEOUT_S = 2


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: str | None = None


class Readiness(msgspec.Struct, kw_only=True):
    status: str  # ready | degraded | unready
    broker: Check
    database: Check
    cache_breaker: dict[str, int]  # state -> worker processes in it; empty: no L2 breaker reported

    @property
    def ready(self) -> bool:
        return self.status != "unready"


def check_broker(broker: dramatiq.Broker) -> Check:
    try:
        if isinstance(broker, RedisBroker):
            broker.client.ping()
        elif isinstance(broker, RabbitmqBroker):
            import pika

            params = broker.parameters
            pika.BlockingConnection(params[0] if isinstance(params, list) else params).close()
    except Exception as exc:
        return Check(ok=False, error=redact(f"{type(exc).__name__}: {exc}")[:300])
    return Check(ok=True)


def check_database(settings: Settings) -> Check:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=CHECK_TIMEOUT_S, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return Check(ok=False, error=redact(f"{type(exc).__name__}: {exc}")[:300])
    return Check(ok=True)


def breaker_states(metrics: Iterable[Metric]) -> dict[str, int]:
    """Processes per breaker state, from the collected ``catfleet_cache_breaker_state`` gauge."""
    states: dict[str, int] = {}
    for metric in metrics:
        if metric.name == "catfleet_cache_breaker_state":
            for sample in metric.samples:
                states[sample.labels["state"]] = states.get(sample.labels["state"], 0) + int(sample.value)
    return states


def readiness(settings: Settings, broker: dramatiq.Broker, metrics: Iterable[Metric]) -> Readiness:
    b, d = check_broker(broker), check_database(settings)
    breaker = breaker_states(metrics)
    if not (b.ok and d.ok):
        status = "unready"
    elif breaker.get("open", 0) or breaker.get("half_open", 0):
        status = "degraded"
    else:
        status = "ready"
    return Readiness(status=status, broker=b, database=d, cache_breaker=breaker)
