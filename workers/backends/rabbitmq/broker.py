"""Dramatiq's RabbitMQ broker with the fleet's batched enqueue: every message is published with
publisher confirms, one by one (AMQP confirms each publish; there is no multi-message round trip
to share as on Redis). Its consumer dead-letters a body over ``max_message_bytes`` before
Dramatiq decodes it (``MessageTooLarge``, recorded in the failure log when there is one).

It declares classic or quorum queues (``workers.backends.rabbitmq.queues``); a queue that exists
with other arguments raises ``QueueMismatch`` (one line, how to migrate), and a worker process
that meets one exits (``EXIT_QUEUE_MISMATCH``) instead of retrying a declare that cannot succeed."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika.exceptions
from dramatiq.broker import Consumer
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed

from workers.backends.rabbitmq.letterindex import RabbitmqLetterIndex
from workers.backends.rabbitmq.queues import (
    QueueMismatch,
    QueueType,
    dead_letter_arguments,
    mismatch,
    other,
    queue_arguments,
)
from workers.dlq.base import canonical_queue
from workers.failures import FailureLog, FailureRecord
from workers.fleet.gate import PauseGate
from workers.limits import Admission
from workers.settings import DEFAULT_MAX_MESSAGE_BYTES

#: Where the message id sits in an encoded envelope: near its end, so only the tail is searched
#: (a body over the limit is never decoded). Without a match the record goes under the tag.
_MESSAGE_ID = re.compile(rb'"message_id"\s*:\s*"([0-9A-Za-z_.:-]{1,200})"')
_TAIL_BYTES = 4096
#: Exit code of a worker process whose queue exists with other arguments (a crash loop to its
#: supervisor: the fleet cannot run until an operator migrates the queue).
EXIT_QUEUE_MISMATCH = 2


class FleetRabbitmqBroker(RabbitmqBroker):
    def __init__(
        self,
        *,
        failure_log: FailureLog | None = None,
        dead_letter_index: RabbitmqLetterIndex | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        queue_type: QueueType = "classic",
        delivery_limit: int | None = None,
        **kwargs: Any,
    ):
        """``queue_type`` and ``delivery_limit`` (quorum queues' ``x-delivery-limit``): see
        ``workers.backends.rabbitmq.queues``; the rest is Dramatiq's ``RabbitmqBroker``'s."""
        super().__init__(**kwargs)
        self.failure_log = failure_log
        #: Where the consumer writes the row of each letter it dead-letters (None: nowhere).
        self.dead_letter_index = dead_letter_index
        self.max_message_bytes = max_message_bytes
        self.queue_type: QueueType = queue_type
        self.delivery_limit = delivery_limit
        #: Queues an operator paused (refreshed by the presence middleware in worker processes).
        self.pause_gate = PauseGate()
        #: Fleet-wide rate limits on what consumers hand out (set by the worker: workers.limits).
        self.admission: Admission = Admission()

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _BoundedRabbitmqConsumer

    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self.enqueue(message)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """Dramatiq's, except that a queue of the wrong type or arguments ends the process with
        one line: Dramatiq's consumer thread would retry the declare every few seconds forever."""
        try:
            return super().consume(queue_name, prefetch, timeout)
        except QueueMismatch as exc:
            self.logger.critical("%s", exc)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(EXIT_QUEUE_MISMATCH)

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare(queue_name, self._arguments(queue_name, self.queue_type))

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare(dq_name(queue_name), self._arguments(dq_name(queue_name), self.queue_type))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self._declare(xq_name(queue_name), self._arguments(xq_name(queue_name), self.queue_type))

    def _arguments(self, name: str, queue_type: QueueType) -> dict[str, Any]:
        """What the fleet declares ``name`` (a queue, ``.DQ`` or ``.XQ``) with, for ``queue_type``."""
        if name.endswith(".XQ"):
            return dead_letter_arguments(queue_type)
        limit = None if name.endswith(".DQ") else self.delivery_limit
        return queue_arguments(queue_type, name, delivery_limit=limit)

    def _declare(self, name: str, arguments: dict[str, Any]) -> Any:
        """A durable queue with these arguments; ``QueueMismatch`` if it exists with others."""
        try:
            return self.channel.queue_declare(queue=name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406 or mismatch(exc.reply_text, self.queue_type) is None:
                raise
            del self.channel  # closed by the broker: the next call opens a new one
            found = mismatch(exc.reply_text, self.queue_type, existing=self._existing_type(name))
            assert found is not None
            raise found from None

    def _existing_type(self, name: str) -> QueueType | None:
        """``name``'s type if it is the other type's queue as the fleet declares it: a declare with
        exactly its arguments changes nothing. None otherwise (or if that cannot be asked)."""
        kind = other(self.queue_type)
        try:
            self.channel.queue_declare(queue=name, durable=True, arguments=self._arguments(name, kind))
            return kind
        except (pika.exceptions.AMQPChannelError, pika.exceptions.AMQPConnectionError):
            del self.channel
            return None


class _BoundedRabbitmqConsumer(_RabbitmqConsumer):
    broker: FleetRabbitmqBroker

    def __init__(self, broker: FleetRabbitmqBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.iterator = self._bounded(self.iterator)
        self.timeout_s = timeout / 1000
        self.consuming = True
        #: A delivered message held back for a rate limit (handed out first, paused or not).
        self.held: Any = None
        #: The delivered bytes of each message handed out, by delivery tag, until its ack or nack.
        self.bodies: dict[int, bytes] = {}
        self._last: tuple[int, bytes] | None = None

    def __next__(self) -> Any:
        """While the queue is paused, the channel's consumer is cancelled (RabbitMQ takes back the
        deliveries not handed out yet and sends no more) and the connection is still served: acks
        of what the process holds go out and heartbeats are answered. On resume it consumes again.
        A message over the fleet's rate limit is held while the connection is served likewise."""
        if self.held is not None:
            return self._rate_limited(self.held)
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
        got = super().__next__()
        last, self._last = self._last, None
        if last is not None:
            if got is None:  # Dramatiq's consumer nacked bytes it cannot decode: a dead letter
                self._indexed(last[1])
            else:
                self.bodies[last[0]] = last[1]
        return None if got is None else self._rate_limited(got)

    def _rate_limited(self, message: Any) -> Any:
        wait = self.broker.admission.wait_s(self.queue_name, message)
        if not wait:
            self.held = None
            return message
        self.held = message
        try:
            self.connection.process_data_events(time_limit=wait)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None
        return None

    def ack(self, message: Any) -> None:
        self.bodies.pop(message._tag, None)
        super().ack(message)

    def nack(self, message: Any) -> None:
        """Dead-letter the message, then write its row in the dead-letter index (the failure log
        has its final error already: the failures middleware records it before the nack)."""
        body = self.bodies.pop(message._tag, None)
        super().nack(message)
        if body is not None:
            self._indexed(body)

    def _indexed(self, body: bytes) -> None:
        index = self.broker.dead_letter_index
        if index is None:
            return
        try:
            index.add(canonical_queue(self.queue_name), body)
        except Exception:  # best effort: the store rebuilds a queue whose rows miss a letter
            self.logger.warning("Could not index a dead letter of queue %r", self.queue_name, exc_info=True)

    def _bounded(self, deliveries: Iterator[Any]) -> Iterator[Any]:
        """The channel's deliveries, minus the bodies over the limit: those are rejected without
        requeue (to the dead-letter queue) and yielded as an empty poll."""
        for method, properties, body in deliveries:
            if method is not None and len(body) > self.broker.max_message_bytes:
                self._reject_too_large(method.delivery_tag, body)
                yield None, None, None
                continue
            self._last = None if method is None else (method.delivery_tag, body)
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
            self._indexed(body)
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
        self._indexed(body)
