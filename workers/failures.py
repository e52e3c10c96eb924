"""Every failed attempt of a message, recorded by message id, so the dead-letter tooling can show
the *final* error (the payload Dramatiq keeps carries the previous attempt's traceback)."""

from __future__ import annotations

import abc
import time
from typing import Any

import msgspec
import redis

#: Failure records outlive the dead letters they explain (Dramatiq keeps those 7 days).
FAILURE_TTL_SECONDS = 8 * 86_400
MAX_ERROR_CHARS = 2_000


class FailureRecord(msgspec.Struct, kw_only=True):
    message_id: str
    queue_name: str
    actor_name: str
    retries: int  # Dramatiq's retry count after this attempt
    error_type: str
    error: str
    dead: bool  # True: this attempt sent the message to the dead-letter queue
    at_ms: int


class FailureLog(abc.ABC):
    @abc.abstractmethod
    def record(self, record: FailureRecord) -> None: ...

    @abc.abstractmethod
    def history(self, message_id: str) -> list[FailureRecord]: ...


class RedisFailureLog(FailureLog):
    """A list per message id in the broker's Redis, under the broker's namespace."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace
        self._decoder = msgspec.json.Decoder(FailureRecord)

    def key(self, message_id: str) -> str:
        return f"{self.namespace}:catfleet.failures:{message_id}"

    def record(self, record: FailureRecord) -> None:
        key = self.key(record.message_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, msgspec.json.encode(record))
            pipe.expire(key, FAILURE_TTL_SECONDS)
            pipe.execute()

    def history(self, message_id: str) -> list[FailureRecord]:
        return [self._decoder.decode(raw) for raw in self.client.lrange(self.key(message_id), 0, -1)]


def failure_record(message: Any, exception: BaseException) -> FailureRecord:
    return FailureRecord(
        message_id=message.message_id,
        queue_name=message.queue_name,
        actor_name=message.actor_name,
        retries=int(message.options.get("retries", 0)),
        error_type=type(exception).__name__,
        error=str(exception)[:MAX_ERROR_CHARS],
        dead=bool(message.failed),
        at_ms=int(time.time() * 1000),
    )
