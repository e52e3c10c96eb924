"""One structured log line per failed attempt, with the correlation id, the retry count and
whether the message was dead-lettered (logger ``catfleet.failure``)."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from pipeline.settings import redact

log = logging.getLogger("catfleet.failure")
MAX_ERROR_CHARS = 500


def correlation_id_of(message: Any) -> str:
    """The producer's correlation id from the payload, or the message id."""
    args = message.args
    if len(args) == 1 and isinstance(args[0], dict):
        cid = args[0].get("correlation_id")
        if isinstance(cid, str) and cid:
            return cid[:200]
    return str(message.message_id)


class LogFailures(Middleware):
    """Add it *before* the retries middleware: after_* hooks run in reverse order, so it sees
    the retry decision (``message.failed``)."""

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
        log.warning(
            "message failed",
            extra={
                "event": "failure",
                "actor": message.actor_name,
                "queue": message.queue_name,
                "message_id": message.message_id,
                "correlation_id": correlation_id_of(message),
                "retries": int(message.options.get("retries", 0)),
                "dead": bool(message.failed),
                "error_type": type(exception).__name__,
                "error": redact(str(exception))[:MAX_ERROR_CHARS],
            },
        )
