"""Deliveries of a message that have not (yet) had an outcome, counted per message id.

A delivery is counted before the actor runs and forgotten once the worker has an outcome
(success, failure, retry). A count that keeps growing means the message keeps killing the
process that runs it (kill -9, OOM); Dramatiq would redeliver it forever (upstream #213)."""

from __future__ import annotations

import abc

import redis

from pipeline import queries
from workers.failures import LazyDatabase

#: A counter outlives any sane redelivery cycle, then disappears by itself.
DELIVERY_TTL_SECONDS = 86_400


class DeliveryCounter(abc.ABC):
    @abc.abstractmethod
    def count(self, message_id: str) -> int:
        """Count one more delivery and return the total so far."""

    @abc.abstractmethod
    def clear(self, message_id: str) -> None: ...


class RedisDeliveryCounter(DeliveryCounter):
    """INCR on ``<namespace>:catfleet.deliveries:<message id>`` in the broker's Redis, with a TTL."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace

    def key(self, message_id: str) -> str:
        return f"{self.namespace}:catfleet.deliveries:{message_id}"

    def count(self, message_id: str) -> int:
        key = self.key(message_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, DELIVERY_TTL_SECONDS)
            total, _ = pipe.execute()
        return int(total)

    def clear(self, message_id: str) -> None:
        self.client.delete(self.key(message_id))


class PostgresDeliveryCounter(DeliveryCounter):
    """For the RabbitMQ broker: table ``message_deliveries``."""

    def __init__(self, database: LazyDatabase):
        self.database = database

    def count(self, message_id: str) -> int:
        row = self.database.db.run(
            lambda conn: conn.execute(queries.COUNT_DELIVERY, {"message_id": message_id}).fetchone()
        )
        return int(row[0]) if row else 1

    def clear(self, message_id: str) -> None:
        self.database.db.run(lambda conn: conn.execute(queries.CLEAR_DELIVERIES, {"message_id": message_id}))
