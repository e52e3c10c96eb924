"""The RabbitMQ broker's dead-letter index: rows of table ``dead_letter_index`` under the space
``amqp:<vhost>``, one per letter of a ``<queue>.XQ``, with its stored bytes.

AMQP cannot browse a queue, so a page cannot be read from the XQ without taking every letter.
The index is written where a letter is made: the worker's consumer, when it dead-letters a
message (``nack``), writes the letter's row with the bytes it was delivered (its final error from
the failure log, recorded just before; a row written before its record is completed from the log
by the next query). The XQ stays the truth: before a query, each queue's row count is compared
with the XQ's message count (one passive declare); when they disagree after a short second look
(a row lands a few milliseconds after its nack), the queue is read whole once and its rows
rebuilt — letters that reached the XQ another way (the broker's own quorum delivery limit, an
undecodable body, a publish by hand) are indexed by that. A rebuild never runs while another
session holds the XQ's letters (a replay or purge in progress: they are unacked and not counted):
every session holds a shared advisory lock, a rebuild an exclusive one, tried, not waited for."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg

from pipeline import queries
from workers.dlq.base import DeadLetter, DeadLetterFilter, correlation_id_of, decode_payload, expense_ids_of
from workers.dlq.index import INDEX_ERROR_CHARS, INDEX_KEY_CHARS, index_row, page_params, text
from workers.failures import LazyDatabase

logger = logging.getLogger(__name__)

#: Seconds between the two looks at the counts before a queue is rebuilt.
SECOND_LOOK_S = 0.05
#: Rows written per statement when a queue is rebuilt.
REBUILD_CHUNK = 2_000
#: Rows a rebuild writes from which it analyzes the table.
ANALYZE_AFTER = 10_000

Row = tuple[str, str, int, bytes | None]  # queue, rid (the message id), time of death, stored bytes


class RabbitmqLetterIndex:
    def __init__(self, database: LazyDatabase, vhost: str):
        self.database = database
        self.vhost = vhost

    @property
    def space(self) -> str:
        return f"amqp:{self.vhost}"

    @property
    def lock_key(self) -> int:
        """The advisory lock of this vhost's dead-letter queues."""
        return zlib.crc32(self.space.encode()) - 2**31

    # --- written by the workers ---

    def add(self, queue: str, body: bytes, *, died_at_ms: int | None = None) -> None:
        """The row of a letter a worker has just dead-lettered from ``queue`` (its canonical name)."""
        payload = decode_payload(body)
        mid = letter_id(body, payload)
        if len(mid) > INDEX_KEY_CHARS or len(queue) > INDEX_KEY_CHARS:
            return
        ids = expense_ids_of(payload) or []
        params = {
            "space": self.space,
            "queue_name": queue,
            "rid": mid,
            "message_id": mid,
            "actor_name": text(str((payload or {}).get("actor_name", "")), INDEX_KEY_CHARS) or "",
            "correlation_id": text(correlation_id_of(payload), INDEX_KEY_CHARS),
            "expense_ids": [i for i in ids if -(2**63) <= i < 2**63],
            "died_at_ms": died_at_ms or int(time.time() * 1000),
            "body": body,
            "error_chars": INDEX_ERROR_CHARS,
        }
        self.database.db.run(lambda conn: conn.execute(queries.INSERT_DEAD_LETTER, params))

    # --- kept by the store ---

    def counts(self, queues: Sequence[str]) -> dict[str, int]:
        params = {"space": self.space, "queues": list(queues)}
        rows = self.database.db.run(
            lambda conn: conn.execute(queries.DEAD_LETTER_INDEX_COUNTS, params).fetchall(), read=True
        )
        return {q: int(n) for q, n in rows}

    def complete(self, queues: Sequence[str], *, expire_before: int) -> None:
        """Rows without a final error get it from the failure log; rows past the XQ's message TTL go."""
        params = {"space": self.space, "queues": list(queues), "error_chars": INDEX_ERROR_CHARS}
        expire = {"space": self.space, "before": expire_before}

        def run(conn: Any) -> None:
            conn.execute(queries.COMPLETE_DEAD_LETTER_INDEX, params)
            conn.execute(queries.EXPIRE_DEAD_LETTER_INDEX, expire)

        self.database.db.run(run)

    def rows(
        self,
        filter: DeadLetterFilter,
        queues: Sequence[str],
        *,
        lo: int | None,
        hi: int | None,
        offset: int,
        limit: int | None,
        after: tuple[int, str] | None,
        count: bool,
    ) -> tuple[list[Row], int | None]:
        """One page of rows, newest first, below ``after``; and how many match (if ``count``)."""
        params = page_params(
            self.space, filter, lo=lo, hi=hi, after=after, limit=limit, offset=offset, queues=queues
        )

        def query(conn: Any) -> tuple[list[Row], int | None]:
            # unprepared: planned with the values, so the absent filters fold away. One query per
            # queue (each walks its queue's keyset index), merged: PostgreSQL sorts every row of
            # ``queue_name = ANY(...)`` to order them.
            want = None if limit is None else offset + limit
            found: list[Any] = []
            for q in [filter.queue] if filter.queue is not None else queues:
                one = {**params, "queue": q, "queues": None, "limit": want, "offset": 0}
                found += conn.execute(queries.PAGE_DEAD_LETTER_BODIES, one, prepare=False).fetchall()
            found.sort(key=lambda r: (r[2], r[1]), reverse=True)
            found = found[offset : None if want is None else want]
            total = None
            if count and after is None and offset == 0 and (limit is None or len(found) < limit):
                total = len(found)
            elif count:
                total = conn.execute(queries.COUNT_DEAD_LETTER_INDEX, params, prepare=False).fetchone()[0]
            rows = [
                (q, rid, int(died), None if body is None else bytes(body)) for q, rid, died, body in found
            ]
            return rows, None if total is None else int(total)

        return self.database.db.run(query, read=True)

    def by_message(self, message_id: str, queues: Sequence[str]) -> Row | None:
        params = {"space": self.space, "message_id": message_id, "queues": list(queues)}
        row = self.database.db.run(
            lambda conn: conn.execute(queries.DEAD_LETTER_BY_MESSAGE, params).fetchone(), read=True
        )
        if row is None:
            return None
        q, rid, died, body = row
        return q, rid, int(died), None if body is None else bytes(body)

    def facets(self, queues: Sequence[str]) -> list[tuple[str, str, int]]:
        params = {"space": self.space, "queues": list(queues)}
        rows = self.database.db.run(
            lambda conn: conn.execute(queries.DEAD_LETTER_INDEX_QUEUE_FACETS, params).fetchall(), read=True
        )
        return [(facet, value, int(n)) for facet, value, n in rows]

    def forget(self, pairs: Sequence[tuple[str, str]]) -> None:
        if not pairs:
            return
        params = {"space": self.space, "pairs": json.dumps([[q, rid] for q, rid in pairs])}
        self.database.db.run(lambda conn: conn.execute(queries.DELETE_DEAD_LETTER_INDEX, params))

    def replace(
        self, queue: str, letters: Sequence[tuple[DeadLetter, str, bytes]], *, read_since_ms: int
    ) -> int:
        """The rows of ``queue`` after its XQ was read whole (from ``read_since_ms``): one per
        letter (a DeadLetter, its id there, its stored bytes), the others deleted; how many were
        written."""
        rows = []
        for letter, rid, body in letters:
            # no time of death on it (no x-death, no timestamp: published by hand): when it was read
            row = index_row(letter, queue, rid, letter.died_at_ms or read_since_ms)
            if row is not None:
                rows.append({**row, "body": body.hex()})
        for i in range(0, len(rows), REBUILD_CHUNK):
            chunk = {"space": self.space, "rows": json.dumps(rows[i : i + REBUILD_CHUNK])}
            self.database.db.run(partial(_execute, queries.UPSERT_DEAD_LETTER_BODIES, chunk))
        keep = {
            "space": self.space,
            "queue": queue,
            "before": read_since_ms,
            "rids": [r["rid"] for r in rows],
        }
        self.database.db.run(lambda conn: conn.execute(queries.DELETE_DEAD_LETTERS_NOT_IN, keep))
        if len(rows) >= ANALYZE_AFTER:  # the planner's figures, before autovacuum gets to them
            self.database.db.run(lambda conn: conn.execute(queries.ANALYZE_DEAD_LETTER_INDEX))
        return len(rows)

    # --- who may read an XQ whole ---

    @contextmanager
    def reading(self, *, exclusive: bool = False) -> Iterator[bool]:
        """Hold the vhost's dead-letter lock for a session that takes the XQs' letters: shared
        (waits for a rebuild to finish), or exclusive (a rebuild: tried; yields False if another
        session holds it, and then nothing may be read)."""
        conn = psycopg.connect(self.database.dsn, autocommit=True, connect_timeout=5)
        try:
            if exclusive:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,)).fetchone()
                yield bool(row and row[0])
            else:
                conn.execute("SELECT pg_advisory_lock_shared(%s)", (self.lock_key,))
                yield True
        finally:
            conn.close()  # the session's locks go with it


def _execute(query: Any, params: dict[str, Any], conn: Any) -> None:
    conn.execute(query, params)


def letter_id(body: bytes, payload: dict[str, Any] | None) -> str:
    """A letter's id: its message id, or for bytes that are not a readable message a name made
    from them (``amqp-`` and a checksum: the same on every read)."""
    if payload is not None:
        return str(payload["message_id"])
    return f"amqp-{zlib.crc32(body):08x}-{len(body)}"


__all__ = ["RabbitmqLetterIndex", "letter_id"]
