"""Dramatiq's Retries, minus its two ways of losing a message.

1. If the retry's re-enqueue fails (a broker blip), Dramatiq acks the original anyway and the
   message is gone (upstream PR #545). Here the message is failed instead: it goes to the
   dead-letter queue, or, if the broker is still away, stays unacked and is redelivered.
2. A message for an actor this worker does not know raises in the middleware itself and is
   then acked as if done. Here it is dead-lettered with that reason.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Retries


class SafeRetries(Retries):
    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.broker.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        if isinstance(exception, ActorNotFound):
            self.logger.error("Dead-lettering message %r: %s", message.message_id, exception)
            message.fail()
            return
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except Exception:
            self.logger.exception(
                "Re-enqueue for retry of %r failed; dead-lettering it instead.", message.message_id
            )
            message.fail()
