"""Dead-letter tooling: list, show, replay and purge, for the Redis and the RabbitMQ broker."""

from __future__ import annotations

from redis import Redis

from schemas import CATEGORIZE_QUEUE, LEARN_QUEUE
from workers.dlq.base import ActionReport, DeadLetter, DeadLetterFilter, DeadLetterStore, PostgresAuditLog
from workers.failures import LazyDatabase, PostgresFailureLog, RedisFailureLog
from workers.settings import Settings

#: Queues whose dead letters the RabbitMQ store looks at (a queue cannot be listed over AMQP).
KNOWN_QUEUES = (CATEGORIZE_QUEUE, LEARN_QUEUE)


def open_store(settings: Settings) -> DeadLetterStore:
    """The store for the configured broker. Replays and purges are audited in PostgreSQL."""
    database = LazyDatabase(settings.database_url, size=1)
    audit = PostgresAuditLog(database)
    if settings.broker_url.startswith(("amqp://", "amqps://")):
        from workers.dlq.rabbitmq import RabbitmqDeadLetterStore

        store: DeadLetterStore = RabbitmqDeadLetterStore(
            settings.broker_url, KNOWN_QUEUES, failures=PostgresFailureLog(database), audit=audit
        )
        store.closers.append(database.close)
        return store
    from workers.dlq.redis import RedisDeadLetterStore

    client = Redis.from_url(settings.broker_url)
    store = RedisDeadLetterStore(
        client,
        settings.broker_namespace,
        failures=RedisFailureLog(client, settings.broker_namespace),
        audit=audit,
    )
    store.closers += [database.close, client.close]
    return store


__all__ = ["ActionReport", "DeadLetter", "DeadLetterFilter", "DeadLetterStore", "open_store"]
