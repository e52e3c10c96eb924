"""Every failed attempt (and whether it dead-lettered the message): recorded in the failure log
and logged as one structured line, with the correlation id and the retry count (logger
``catfleet.failure``)."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware

from pipeline.settings import redact
from workers.failures import ATTEMPT_ATTR, FailureLog, attempt_of, failure_record

failure_logger = logging.getLogger("catfleet.failure")
MAX_LOGGED_ERROR_CHARS = 500


def correlation_id_of(message: Any) -> str:
    """The producer's correlation id from the payload, or the message id."""
    args = message.args
    if len(args) == 1 and isinstance(args[0], dict):
        cid = args[0].get("correlation_id")
        if isinstance(cid, str) and cid:
            return cid[:200]
    return str(message.message_id)


class RecordFailures(Middleware):
    """Must be added *before* the retries middleware: Dramatiq runs after_* hooks in reverse order,
    so it then sees the message after the retry decision (``message.failed``)."""

    def __init__(self, log: FailureLog):
        self.log = log
        self.logger = dramatiq.logging.get_logger(__name__, type(self))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Mark the attempt before anything runs: the retries middleware adds a retry to the
        count only when it retries (not when it gives up), so the count afterwards is not it."""
        setattr(message, ATTEMPT_ATTR, int(message.options.get("retries", 0)) + 1)

    def before_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        """A message for an unknown actor is dead-lettered by Dramatiq's consumer thread before
        any worker thread (and so ``after_process_message``) sees it: record it here."""
        exception = getattr(message, "_exception", None)
        if isinstance(exception, ActorNotFound):
            self._record(message, exception)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None:
            self._record(message, exception)

    def _record(self, message: Any, exception: BaseException) -> None:
        try:
            self.log.record(failure_record(message, type(exception).__name__, str(exception)))
        except Exception:  # the log is best effort; the message itself is never at stake here
            self.logger.exception("Could not record the failure of message %r", message.message_id)
        failure_logger.warning(
            "message failed",
            extra={
                "event": "failure",
                "actor": message.actor_name,
                "queue": message.queue_name,
                "message_id": message.message_id,
                "correlation_id": correlation_id_of(message),
                "retries": int(message.options.get("retries", 0)),
                "attempt": attempt_of(message),
                "dead": bool(message.failed),
                "error_type": type(exception).__name__,
                "error": redact(str(exception))[:MAX_LOGGED_ERROR_CHARS],
            },
        )
