"""The dead-letter store over several nodes (the broker URL's list, tried in turn) and with the
queue type the fleet declares: a replay declares the queue with the fleet's arguments
(``workers.backends.rabbitmq.queues``), so it works on quorum queues, where a classic declare is
refused (``PRECONDITION_FAILED``); a queue of the other type is ``QueueMismatch``, one line."""

from __future__ import annotations

from collections.abc import Sequence

import pika
import pika.exceptions

from workers.backends.rabbitmq.deadletters import RabbitmqDeadLetterStore, _RabbitmqSession
from workers.backends.rabbitmq.letterindex import RabbitmqLetterIndex
from workers.backends.rabbitmq.queues import QueueType, mismatch, queue_arguments
from workers.dlq.base import AuditLog, DeadLetter
from workers.failures import FailureLog


class ClusterDeadLetterStore(RabbitmqDeadLetterStore):
    def __init__(
        self,
        urls: Sequence[str],
        queues: Sequence[str],
        *,
        failures: FailureLog,
        audit: AuditLog,
        queue_type: QueueType,
        delivery_limit: int,
        index: RabbitmqLetterIndex | None = None,
    ):
        super().__init__(urls[0], queues, failures=failures, audit=audit, index=index)
        self.node_parameters = [pika.URLParameters(u) for u in urls]
        self.queue_type: QueueType = queue_type
        self.delivery_limit = delivery_limit

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.node_parameters)  # unacked dead letters go back on close


class _ClusterSession(_RabbitmqSession):
    store: ClusterDeadLetterStore

    def replay(self, letter: DeadLetter) -> bool:
        """Publish with confirms, then ack the dead letter (at worst one duplicate, never a loss)."""
        assert letter.payload is not None
        queue = letter.queue_name
        store = self.store
        arguments = queue_arguments(store.queue_type, queue, delivery_limit=store.delivery_limit)
        try:
            self.channel.queue_declare(queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            found = mismatch(exc.reply_text, store.queue_type) if exc.reply_code == 406 else None
            if found is None:
                raise
            raise found from None
        self._publish(letter)
        return True


ClusterDeadLetterStore.session_class = _ClusterSession

__all__ = ["ClusterDeadLetterStore"]
