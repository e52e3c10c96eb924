"""The RabbitMQ backend's failure log and delivery counter, in PostgreSQL.

A dead-lettered AMQP message cannot be given new headers (RabbitMQ moves the body it has), and
the fleet has no Redis of its own next to RabbitMQ; PostgreSQL is already required, durable and
queryable by operators."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from pipeline import queries
from workers.deliveries import DeliveryCounter
from workers.failures import FailureLog, FailureRecord, LazyDatabase

_FIELDS = [f.name for f in msgspec.structs.fields(FailureRecord)]


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


class PostgresDeliveryCounter(DeliveryCounter):
    """For the RabbitMQ broker: table ``message_deliveries``."""

    def __init__(self, database: LazyDatabase):
        self.database = database

    def count(self, message_id: str) -> int:
        row = self.database.db.run(
            lambda conn: conn.execute(queries.COUNT_DELIVERY, {"message_id": message_id}).fetchone()
        )
        return int(row[0]) if row else 1

    def clear(self, message_id: str) -> None:
        self.database.db.run(lambda conn: conn.execute(queries.CLEAR_DELIVERIES, {"message_id": message_id}))
