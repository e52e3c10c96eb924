"""Dead-letters a message that keeps killing the worker that runs it."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from workers.deliveries import DeliveryCounter
from workers.failures import FailureLog, failure_record


class DeliveryLimit(Middleware):
    """Counts each delivery before the actor runs and forgets the count once the worker has an
    outcome. The delivery past ``max_deliveries`` is failed (dead-lettered) without running the
    actor, and the reason is recorded in the failure log. Counting is best effort: if the counter
    is unreachable the message runs anyway."""

    def __init__(self, counter: DeliveryCounter, failures: FailureLog | None, *, max_deliveries: int):
        self.counter = counter
        self.failures = failures
        self.max_deliveries = max_deliveries
        self.logger = dramatiq.logging.get_logger(__name__, type(self))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        try:
            deliveries = self.counter.count(message.message_id)
        except Exception:
            self.logger.warning("Could not count the delivery of %r", message.message_id, exc_info=True)
            return
        if deliveries <= self.max_deliveries:
            return
        reason = (
            f"delivered {deliveries} times without an outcome (max_deliveries={self.max_deliveries}): "
            "it keeps killing its worker"
        )
        self.logger.error("Dead-lettering message %r: %s", message.message_id, reason)
        message.fail()
        if self.failures is not None:
            try:
                self.failures.record(failure_record(message, "DeliveryLimitExceeded", reason))
            except Exception:
                self.logger.exception("Could not record the failure of message %r", message.message_id)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._forget(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._forget(message)

    def _forget(self, message: Any) -> None:
        try:
            self.counter.clear(message.message_id)
        except Exception:
            self.logger.warning("Could not clear the delivery count of %r", message.message_id, exc_info=True)
