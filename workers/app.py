"""The fleet's wiring: settings -> broker -> middleware -> actors. Built once at the edge."""

from __future__ import annotations

from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from pipeline.settings import Settings
from workers.actors import declare_actors
from workers.broker import build_broker
from workers.failures import FailureLog, RedisFailureLog
from workers.middleware.failures import RecordFailures
from workers.middleware.retries import SafeRetries
from workers.runtime import RuntimeHolder


class App(msgspec.Struct, kw_only=True):
    settings: Settings
    broker: dramatiq.Broker
    runtime: RuntimeHolder
    failures: FailureLog | None
    actors: dict[str, dramatiq.Actor[Any, Any]]


def build_app(settings: Settings) -> App:
    holder = RuntimeHolder(settings)
    broker = build_broker(settings, extra_middleware=[holder])
    failures: FailureLog | None = None
    if isinstance(broker, RedisBroker):
        client: redis.Redis = broker.client
        failures = RedisFailureLog(client, settings.broker_namespace)
        # after_* hooks run in reverse order: placed before the retries, it runs after them.
        broker.add_middleware(RecordFailures(failures), before=SafeRetries)
    actors = declare_actors(broker, holder)
    return App(settings=settings, broker=broker, runtime=holder, failures=failures, actors=actors)
