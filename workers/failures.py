"""Every failed attempt of a message, recorded by message id, so the dead-letter tooling can show
the *final* error (the payload Dramatiq keeps carries the previous attempt's traceback)."""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import redis

from pipeline import queries
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


class RedisFailureLog(FailureLog):
    """A list per message id in the broker's Redis, under the broker's namespace."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace
        self._decoder = msgspec.json.Decoder(FailureRecord)

    def key(self, message_id: str) -> str:
        return f"{self.namespace}:catfleet.failures:{message_id}"

    def record(self, record: FailureRecord) -> None:
        key = self.key(record.message_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, msgspec.json.encode(record))
            pipe.expire(key, FAILURE_TTL_SECONDS)
            pipe.execute()

    def history(self, message_id: str) -> list[FailureRecord]:
        return [self._decoder.decode(raw) for raw in self.client.lrange(self.key(message_id), 0, -1)]

    def histories(self, message_ids: Iterable[str]) -> dict[str, list[FailureRecord]]:
        ids = list(message_ids)
        with self.client.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.lrange(self.key(mid), 0, -1)
            results = pipe.execute()
        return {
            mid: [self._decoder.decode(raw) for raw in raws] for mid, raws in zip(ids, results, strict=True)
        }


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


class PostgresFailureLog(FailureLog):
    """The failure log of the RabbitMQ broker, in PostgreSQL (table ``message_failures``).

    A dead-lettered AMQP message cannot be given new headers (RabbitMQ moves the body it has),
    and the fleet has no Redis of its own next to RabbitMQ; PostgreSQL is already required,
    durable and queryable by operators."""

    def __init__(self, database: LazyDatabase):
        self.database = database

    def record(self, record: FailureRecord) -> None:
        params = msgspec.structs.asdict(record)
        self.database.db.run(lambda conn: conn.execute(queries.INSERT_FAILURE, params))

    def history(self, message_id: str) -> list[FailureRecord]:
        return self.histories([message_id]).get(message_id, [])

    def histories(self, message_ids: Iterable[str]) -> dict[str, list[FailureRecord]]:
        ids = list(message_ids)
        rows = self.database.db.run(
            lambda conn: conn.execute(queries.FAILURE_HISTORY, {"ids": ids}).fetchall(), read=True
        )
        out: dict[str, list[FailureRecord]] = {mid: [] for mid in ids}
        for row in rows:
            out[row[0]].append(FailureRecord(**dict(zip(_FIELDS, row, strict=True))))
        return out


_FIELDS = [f.name for f in msgspec.structs.fields(FailureRecord)]


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
