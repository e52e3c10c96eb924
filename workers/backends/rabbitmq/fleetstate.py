"""The fleet's state for the RabbitMQ broker, in PostgreSQL (migrations 0009 and 0010): AMQP has
nowhere to keep a record, and PostgreSQL is already required. One short statement per call, each
within the broker's virtual host: fleets sharing a database on other vhosts are other fleets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import psycopg

from pipeline import queries
from workers.failures import LazyDatabase
from workers.fleet.state import (
    BUCKET_S,
    BUCKETS,
    FleetState,
    PauseEntry,
    ProcessRecord,
    QueueAction,
    bucket_of,
    bucket_starts,
    now_ms,
)

_record = msgspec.json.Decoder(ProcessRecord)


class PostgresFleetState(FleetState):
    def __init__(self, database: LazyDatabase, *, vhost: str, ttl_ms: int):
        super().__init__(ttl_ms=ttl_ms)
        self.database = database
        self.vhost = vhost

    def publish(self, record: ProcessRecord) -> None:
        record_json = msgspec.json.encode(record).decode()
        params = {"id": record.id, "vhost": self.vhost, "record": record_json, "beat_ms": record.beat_ms}
        self.database.db.run(lambda conn: conn.execute(queries.PUBLISH_PROCESS, params))

    def remove(self, record_id: str) -> None:
        self.database.db.run(lambda conn: conn.execute(queries.REMOVE_PROCESS, {"id": record_id}))

    def processes(self) -> list[ProcessRecord]:
        params = {"vhost": self.vhost, "fresh_after": now_ms() - self.ttl_ms}

        def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            conn.execute(queries.PRUNE_PROCESSES, params)
            return conn.execute(queries.LIVE_PROCESSES, params).fetchall()

        records = [_record.decode(row[0]) for row in self.database.db.run(read)]
        return sorted(records, key=lambda r: (r.host, r.pid))

    def paused(self) -> dict[str, PauseEntry]:
        params = {"vhost": self.vhost}
        rows = self.database.db.run(lambda conn: conn.execute(queries.PAUSED_QUEUES, params).fetchall())
        return {q: PauseEntry(queue=q, operator=op, at_ms=int(at)) for q, op, at in rows}

    def _set_pause(self, entry: PauseEntry, *, paused: bool) -> bool:
        sql = queries.PAUSE_QUEUE if paused else queries.RESUME_QUEUE
        params = {"vhost": self.vhost, **msgspec.structs.asdict(entry)}
        row = self.database.db.run(lambda conn: conn.execute(sql, params).fetchone())
        return row is not None

    def actions(self, *, limit: int = 50) -> list[QueueAction]:
        rows = self.database.db.run(
            lambda conn: conn.execute(queries.QUEUE_ACTIONS, {"vhost": self.vhost, "limit": limit}).fetchall()
        )
        return [QueueAction(at_ms=int(at), operator=op, action=a, queue=q) for at, op, a, q in rows]

    def add_processed(self, counts: Mapping[str, int], at_ms: int) -> None:
        rows = [
            {"vhost": self.vhost, "queue": q, "bucket": bucket_of(at_ms), "n": n}
            for q, n in counts.items()
            if n
        ]
        if not rows:
            return
        oldest = {"vhost": self.vhost, "oldest": bucket_of(at_ms) - BUCKET_S * (BUCKETS + 6)}

        def write(conn: psycopg.Connection[Any]) -> None:
            cur = conn.cursor()
            cur.executemany(queries.ADD_PROCESSED, rows)
            cur.execute(queries.PRUNE_THROUGHPUT, oldest)

        self.database.db.run(write)

    def throughput(self, queues: Sequence[str], now: int | None = None) -> dict[str, list[int]]:
        starts = bucket_starts(now or now_ms())
        params = {"vhost": self.vhost, "queues": list(queues), "oldest": starts[0]}
        rows = self.database.db.run(lambda conn: conn.execute(queries.THROUGHPUT, params).fetchall())
        found = {(q, int(b)): int(n) for q, b, n in rows}
        return {q: [found.get((q, s), 0) for s in starts] for q in queues}
