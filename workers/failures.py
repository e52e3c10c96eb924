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
    #: Which run of the actor this was: 1 the first, 2 the first retry, ... (0: not known, a
    #: record from before attempts were counted, or a payload dead-lettered before any run).
    attempt: int = 0


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


#: Attribute a worker's ``RecordFailures`` middleware sets on a message before it runs: its attempt.
ATTEMPT_ATTR = "_catfleet_attempt"


def attempt_of(message: Any) -> int:
    """The attempt a message is on: 1 + the retries it had when the worker took it (set before it
    runs, so Dramatiq's retry decision, which counts a retry only when it retries, cannot shift
    it); without that mark, from the retry count as it stands."""
    marked = message.__dict__.get(ATTEMPT_ATTR) if hasattr(message, "__dict__") else None
    if isinstance(marked, int):
        return marked
    return int(message.options.get("retries", 0)) + 1


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
        attempt=attempt_of(message),
    )
