"""Dramatiq's RabbitMQ broker with the fleet's batched enqueue: every message is published with
publisher confirms, one by one (AMQP confirms each publish; there is no multi-message round trip
to share as on Redis)."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker


class FleetRabbitmqBroker(RabbitmqBroker):
    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self.enqueue(message)
