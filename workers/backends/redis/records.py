"""The Redis backend's failure log and delivery counter, in the broker's Redis under its namespace."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import redis

from workers.backends.redis.keys import RedisKeys
from workers.deliveries import DELIVERY_TTL_SECONDS, DeliveryCounter
from workers.failures import FAILURE_TTL_SECONDS, FailureLog, FailureRecord


class RedisFailureLog(FailureLog):
    """A list per message id."""

    def __init__(self, client: redis.Redis, keys: RedisKeys):
        self.client = client
        self.keys = keys
        self._decoder = msgspec.json.Decoder(FailureRecord)

    def record(self, record: FailureRecord) -> None:
        key = self.keys.failures(record.message_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, msgspec.json.encode(record))
            pipe.expire(key, FAILURE_TTL_SECONDS)
            pipe.execute()

    def history(self, message_id: str) -> list[FailureRecord]:
        return [
            self._decoder.decode(raw) for raw in self.client.lrange(self.keys.failures(message_id), 0, -1)
        ]

    def histories(self, message_ids: Iterable[str]) -> dict[str, list[FailureRecord]]:
        ids = list(message_ids)
        with self.client.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.lrange(self.keys.failures(mid), 0, -1)
            results = pipe.execute()
        return {
            mid: [self._decoder.decode(raw) for raw in raws] for mid, raws in zip(ids, results, strict=True)
        }


class RedisDeliveryCounter(DeliveryCounter):
    """INCR on the message's deliveries key, with a TTL."""

    def __init__(self, client: redis.Redis, keys: RedisKeys):
        self.client = client
        self.keys = keys

    def count(self, message_id: str) -> int:
        key = self.keys.deliveries(message_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, DELIVERY_TTL_SECONDS)
            total, _ = pipe.execute()
        return int(total)

    def clear(self, message_id: str) -> None:
        self.client.delete(self.keys.deliveries(message_id))
