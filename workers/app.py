"""The fleet's wiring: settings -> broker -> middleware -> actors. Built once at the edge."""

from __future__ import annotations

from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from workers.actors import declare_actors
from workers.broker import build_broker
from workers.deliveries import DeliveryCounter, PostgresDeliveryCounter, RedisDeliveryCounter
from workers.failures import FailureLog, LazyDatabase, PostgresFailureLog, RedisFailureLog
from workers.middleware.deliveries import DeliveryLimit
from workers.middleware.failures import RecordFailures
from workers.middleware.retries import SafeRetries
from workers.redis_broker import SafeRedisBroker
from workers.runtime import RuntimeHolder
from workers.settings import Settings


class App(msgspec.Struct, kw_only=True):
    settings: Settings
    broker: dramatiq.Broker
    runtime: RuntimeHolder
    failures: FailureLog | None
    actors: dict[str, dramatiq.Actor[Any, Any]]


def build_app(settings: Settings) -> App:
    holder = RuntimeHolder(settings)
    broker = build_broker(settings, extra_middleware=[holder])
    failures: FailureLog
    deliveries: DeliveryCounter
    if isinstance(broker, RedisBroker):
        client: redis.Redis = broker.client
        failures = RedisFailureLog(client, settings.broker_namespace)
        deliveries = RedisDeliveryCounter(client, settings.broker_namespace)
        if isinstance(broker, SafeRedisBroker):
            broker.failure_log = failures
    else:  # RabbitMQ: the failure log and delivery counts live in PostgreSQL
        database = LazyDatabase(settings.database_url)
        failures = PostgresFailureLog(database)
        deliveries = PostgresDeliveryCounter(database)
    # after_* hooks run in reverse order: placed before the retries, it runs after them.
    broker.add_middleware(RecordFailures(failures), before=SafeRetries)
    broker.add_middleware(DeliveryLimit(deliveries, failures, max_deliveries=settings.max_deliveries))
    actors = declare_actors(broker, holder)
    return App(settings=settings, broker=broker, runtime=holder, failures=failures, actors=actors)
