"""Dead letters of Dramatiq's RabbitMQ broker: the queue ``<queue>.XQ``.

A queue cannot be browsed, only consumed: a session takes every dead letter without acking it
(``basic_get``), and closing the connection returns the ones left alone. A replay publishes the
rewritten payload to the queue with publisher confirms and only then acks the dead letter: a
crash in between leaves one duplicate (the idempotent write absorbs it), never a loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions

from workers.dlq.base import AuditLog, DeadLetter, DeadLetterStore, Session, decode_payload, replay_payload
from workers.failures import FailureLog


class RabbitmqDeadLetterStore(DeadLetterStore):
    broker = "rabbitmq"

    def __init__(self, url: str, queues: Sequence[str], *, failures: FailureLog, audit: AuditLog):
        super().__init__(failures=failures, audit=audit)
        self.parameters = pika.URLParameters(url)
        self.queue_names = list(queues)

    def queues(self) -> list[str]:
        """The queues it was made for (AMQP cannot list queues)."""
        return list(self.queue_names)

    @contextmanager
    def session(self) -> Iterator[Session]:
        connection = pika.BlockingConnection(self.parameters)
        try:
            yield _RabbitmqSession(self, connection)
        finally:
            if connection.is_open:
                connection.close()  # unacked dead letters go back to their XQ


class _RabbitmqSession(Session):
    def __init__(self, store: RabbitmqDeadLetterStore, connection: pika.BlockingConnection):
        self.store = store
        self.connection = connection
        self.channel = connection.channel()
        self.channel.confirm_delivery()
        self.tags: dict[int, int] = {}  # id(letter) -> delivery tag
        found: list[tuple[str, int, bytes, int]] = []
        for queue in self._existing(store.queue_names):
            while True:
                method, props, body = self.channel.basic_get(f"{queue}.XQ", auto_ack=False)
                if method is None:
                    break
                found.append((queue, method.delivery_tag, body, _died_at_ms(props)))
        payloads = [decode_payload(body) for _, _, body, _ in found]
        ids = [
            str(p["message_id"]) if p else f"amqp-{tag}"
            for (_, tag, _, _), p in zip(found, payloads, strict=True)
        ]
        histories = store.failures.histories(ids) if ids else {}
        self.letters = []
        for (queue, tag, body, died), payload, mid in zip(found, payloads, ids, strict=True):
            letter = store.describe(mid, queue, payload, died, histories.get(mid, []), body)
            self.tags[id(letter)] = tag
            self.letters.append(letter)

    def _existing(self, queues: Sequence[str]) -> list[str]:
        present = []
        for queue in queues:
            probe = self.connection.channel()
            try:
                probe.queue_declare(f"{queue}.XQ", passive=True)
                present.append(queue)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # never declared: no dead letters
            if probe.is_open:
                probe.close()
        return present

    def replay(self, letter: DeadLetter) -> bool:
        assert letter.payload is not None
        queue = letter.queue_name
        self.channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.XQ"},
        )
        options: dict[str, Any] = letter.payload.get("options") or {}
        self.channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=replay_payload(letter.payload),
            properties=pika.BasicProperties(delivery_mode=2, priority=options.get("broker_priority")),
            mandatory=True,
        )  # with confirms: returns once the broker has it, raises otherwise
        self.channel.basic_ack(self.tags[id(letter)])
        return True

    def purge(self, letter: DeadLetter) -> bool:
        self.channel.basic_ack(self.tags[id(letter)])
        return True


def _died_at_ms(props: pika.BasicProperties) -> int:
    deaths = (props.headers or {}).get("x-death") or []
    when = deaths[0].get("time") if deaths else None
    if when is not None and hasattr(when, "timestamp"):
        return int(when.timestamp() * 1000)
    return int(props.timestamp or 0) * 1000
