"""Dramatiq's RabbitMQ broker with the fleet's batched enqueue: every message is published with
publisher confirms, one by one (AMQP confirms each publish; there is no multi-message round trip
to share as on Redis). Its consumer dead-letters a body over ``max_message_bytes`` before
Dramatiq decodes it (``MessageTooLarge``, recorded in the failure log when there is one)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.errors import ConnectionClosed

from workers.dlq.base import canonical_queue
from workers.failures import FailureLog, FailureRecord
from workers.fleet.gate import PauseGate
from workers.settings import DEFAULT_MAX_MESSAGE_BYTES

#: Where the message id sits in an encoded envelope: near its end, so only the tail is searched
#: (a body over the limit is never decoded). Without a match the record goes under the tag.
_MESSAGE_ID = re.compile(rb'"message_id"\s*:\s*"([0-9A-Za-z_.:-]{1,200})"')
_TAIL_BYTES = 4096


class FleetRabbitmqBroker(RabbitmqBroker):
    def __init__(
        self,
        *,
        failure_log: FailureLog | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.failure_log = failure_log
        self.max_message_bytes = max_message_bytes
        #: Queues an operator paused (refreshed by the presence middleware in worker processes).
        self.pause_gate = PauseGate()

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _BoundedRabbitmqConsumer

    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self.enqueue(message)


class _BoundedRabbitmqConsumer(_RabbitmqConsumer):
    broker: FleetRabbitmqBroker

    def __init__(self, broker: FleetRabbitmqBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.iterator = self._bounded(self.iterator)
        self.timeout_s = timeout / 1000
        self.consuming = True

    def __next__(self) -> Any:
        """While the queue is paused, the channel's consumer is cancelled (RabbitMQ takes back the
        deliveries not handed out yet and sends no more) and the connection is still served: acks
        of what the process holds go out and heartbeats are answered. On resume it consumes again."""
        if self.broker.pause_gate.is_paused(self.queue_name):
            try:
                if self.consuming:
                    self.channel.cancel()
                    self.consuming = False
                self.connection.process_data_events(time_limit=self.timeout_s)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                raise ConnectionClosed(e) from None
            return None
        if not self.consuming:
            consumer = self.channel.consume(self.queue_name, inactivity_timeout=self.timeout_s)
            self.iterator = self._bounded(consumer)
            self.consuming = True
        return super().__next__()

    def _bounded(self, deliveries: Iterator[Any]) -> Iterator[Any]:
        """The channel's deliveries, minus the bodies over the limit: those are rejected without
        requeue (to the dead-letter queue) and yielded as an empty poll."""
        for method, properties, body in deliveries:
            if method is not None and len(body) > self.broker.max_message_bytes:
                self._reject_too_large(method.delivery_tag, body)
                yield None, None, None
                continue
            yield method, properties, body

    def _reject_too_large(self, tag: int, body: bytes) -> None:
        self._nack(tag)
        found = _MESSAGE_ID.search(body[-_TAIL_BYTES:])
        message_id = found.group(1).decode() if found else f"amqp-oversized-{int(time.time() * 1000)}-{tag}"
        error = (
            f"message of {len(body)} bytes is over the limit of {self.broker.max_message_bytes}"
            " (CATFLEET_MAX_MESSAGE_BYTES); not decoded"
        )
        self.logger.error(
            "Dead-lettered message %s on queue %r: MessageTooLarge: %s", message_id, self.queue_name, error
        )
        if self.broker.failure_log is None:
            return
        try:
            self.broker.failure_log.record(
                FailureRecord(
                    message_id=message_id,
                    queue_name=canonical_queue(self.queue_name),
                    actor_name="",
                    retries=0,
                    error_type="MessageTooLarge",
                    error=error,
                    dead=True,
                    at_ms=int(time.time() * 1000),
                )
            )
        except Exception:
            self.logger.exception("Could not record why message %r was dead-lettered", message_id)
