"""Dramatiq's Redis broker, minus its consumer crash loop on an undecodable message.

A raw payload that is not JSON, or whose envelope has fields ``Message`` does not take, makes
``Message.decode`` raise inside Dramatiq's Redis consumer: the consumer restarts, the payload
stays in the process's unacked set and nothing else moves until the process dies. Here the
consumer finds the offending Redis message id among its own unacked ids (a set bounded by the
prefetch), moves it to the dead-letter queue and records why."""

from __future__ import annotations

import time
from typing import Any

from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import DecodeError

from workers.failures import MAX_ERROR_CHARS, FailureLog, FailureRecord


class SafeRedisBroker(RedisBroker):
    #: Where undecodable messages' reasons go (set by the app once its failure log exists).
    failure_log: FailureLog | None = None

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _SafeRedisConsumer

    def dead_letter_undecodable(self, queue_name: str, data: bytes, error: DecodeError) -> str | None:
        """Move the unacked message of this process whose payload is ``data`` to the dead-letter
        queue; returns its Redis message id (None if it was not found)."""
        acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
        rids = sorted(self.client.smembers(acks))
        if not rids:
            return None
        payloads = self.client.hmget(f"{self.namespace}:{queue_name}.msgs", rids)
        for raw_rid, payload in zip(rids, payloads, strict=True):
            if payload == data:
                rid = raw_rid.decode()
                self.do_nack(queue_name, rid)
                self._record(queue_name, rid, error)
                return rid
        return None

    def _record(self, queue_name: str, rid: str, error: DecodeError) -> None:
        if self.failure_log is None:
            return
        try:
            self.failure_log.record(
                FailureRecord(
                    message_id=rid,  # the payload has no readable message id: use the Redis one
                    queue_name=queue_name.removesuffix(".DQ"),
                    actor_name="",
                    retries=0,
                    error_type="DecodeError",
                    error=f"undecodable message: {error.error}"[:MAX_ERROR_CHARS],
                    dead=True,
                    at_ms=int(time.time() * 1000),
                )
            )
        except Exception:
            self.logger.exception("Could not record why message %r was dead-lettered", rid)


class _SafeRedisConsumer(_RedisConsumer):
    broker: SafeRedisBroker

    def __next__(self) -> Any:
        while True:
            try:
                return super().__next__()
            except DecodeError as exc:
                data = exc.data if isinstance(exc.data, bytes) else str(exc.data).encode()
                rid = self.broker.dead_letter_undecodable(self.queue_name, data, exc)
                self.logger.error(
                    "Dead-lettered undecodable message %s on queue %r: %s", rid, self.queue_name, exc.error
                )
