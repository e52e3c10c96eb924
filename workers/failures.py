"""Every failed attempt of a message, recorded by message id, so the dead-letter tooling can show
the *final* error (the payload Dramatiq keeps carries the previous attempt's traceback). The
contract is here; each broker backend (``workers.backends``) keeps the log where it fits."""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from pipeline.db import Database

#: Failure records outlive the dead letters they explain (Dramatiq keeps those 7 days).
FAILURE_TTL_SECONDS = 8 * 86_400
MAX_ERROR_CHARS = 2_000


class FailureRecord(msgspec.Struct, kw_only=True):
    message_id: str
    queue_name: str
    actor_name: str
    retries: int  # Dramatiq's retry count after this attempt
    error_type: str
    error: str
    dead: bool  # True: this attempt sent the message to the dead-letter queue
    at_ms: int


class FailureLog(abc.ABC):
    @abc.abstractmethod
    def record(self, record: FailureRecord) -> None: ...

    @abc.abstractmethod
    def history(self, message_id: str) -> list[FailureRecord]: ...

    def histories(self, message_ids: Iterable[str]) -> dict[str, list[FailureRecord]]:
        """The history of each message id (oldest first); an override does it in one round trip."""
        return {mid: self.history(mid) for mid in message_ids}


class LazyDatabase:
    """A small pool opened on first use: worker processes fork after the app is built, and a
    pool must not cross a fork."""

    def __init__(self, dsn: str, *, size: int = 2):
        self.dsn = dsn
        self.size = size
        self._db: Database | None = None
        self._lock = threading.Lock()

    @property
    def db(self) -> Database:
        with self._lock:
            if self._db is None:
                self._db = Database.connect(self.dsn, size=self.size)
            return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def failure_record(message: Any, error_type: str, error: str) -> FailureRecord:
    """The record of this attempt of ``message``, as it stands after the retry decision."""
    return FailureRecord(
        message_id=message.message_id,
        queue_name=message.queue_name,
        actor_name=message.actor_name,
        retries=int(message.options.get("retries", 0)),
        error_type=error_type,
        error=error[:MAX_ERROR_CHARS],
        dead=bool(message.failed),
        at_ms=int(time.time() * 1000),
    )
