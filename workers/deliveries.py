"""Deliveries of a message that have not (yet) had an outcome, counted per message id.

A delivery is counted before the actor runs and forgotten once the worker has an outcome
(success, failure, retry). A count that keeps growing means the message keeps killing the
process that runs it (kill -9, OOM); Dramatiq would redeliver it forever (upstream #213)."""

from __future__ import annotations

import abc

#: A counter outlives any sane redelivery cycle, then disappears by itself.
DELIVERY_TTL_SECONDS = 86_400


class DeliveryCounter(abc.ABC):
    @abc.abstractmethod
    def count(self, message_id: str) -> int:
        """Count one more delivery and return the total so far."""

    @abc.abstractmethod
    def clear(self, message_id: str) -> None: ...
