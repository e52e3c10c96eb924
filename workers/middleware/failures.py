"""Records every failed attempt (and whether it dead-lettered the message) in the failure log."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from workers.failures import FailureLog, failure_record


class RecordFailures(Middleware):
    """Must be added *before* the retries middleware: Dramatiq runs after_* hooks in reverse order,
    so it then sees the message after the retry decision (``message.failed``)."""

    def __init__(self, log: FailureLog):
        self.log = log
        self.logger = dramatiq.logging.get_logger(__name__, type(self))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        try:
            self.log.record(failure_record(message, exception))
        except Exception:  # the log is best effort; the message itself is never at stake here
            self.logger.exception("Could not record the failure of message %r", message.message_id)
