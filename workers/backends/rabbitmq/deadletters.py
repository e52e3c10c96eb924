"""Dead letters of Dramatiq's RabbitMQ broker: the queue ``<queue>.XQ``.

A queue cannot be browsed, only consumed: a session takes every dead letter without acking it
(``basic_get``), and closing the connection returns the ones left alone. A replay publishes the
rewritten payload to the queue with publisher confirms and only then acks the dead letter: a
crash in between leaves one duplicate (the idempotent write absorbs it), never a loss.

Pages, ``show`` and the counts are answered from the dead-letter index
(``workers.backends.rabbitmq.letterindex``: rows the workers write when they dead-letter,
reconciled with each XQ's message count before every query); replay, purge and ``find`` read the
XQ itself, so what they move is exactly what is there."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, ClassVar

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from workers.backends.rabbitmq.letterindex import SECOND_LOOK_S, RabbitmqLetterIndex, Row, letter_id
from workers.dlq.base import (
    AuditLog,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    Page,
    Session,
    cursor_of,
    decode_payload,
    now_ms,
    parse_cursor,
    replay_payload,
)
from workers.failures import FailureLog

#: The filters a page answers without counting index rows (the XQs' message counts are the total).
_COUNTED_FIELDS = (
    "ids", "actor", "error", "error_type", "expense_id", "correlation_id", "older_than_s", "newer_than_s",
)  # fmt: skip
#: Seconds a queue's rows are trusted to agree with its unchanged message count before they
#: are counted again.
AGREED_S = 30.0
_AMQP_ERRORS = (pika.exceptions.AMQPError, pika.exceptions.ConnectionWrongStateError)


class RabbitmqDeadLetterStore(DeadLetterStore):
    broker = "rabbitmq"
    session_class: ClassVar[type[_RabbitmqSession]]

    def __init__(
        self,
        url: str,
        queues: Sequence[str],
        *,
        failures: FailureLog,
        audit: AuditLog,
        index: RabbitmqLetterIndex | None = None,
        dead_message_ttl_ms: int = DEAD_MESSAGE_TTL,
    ):
        """``index``: where pages are answered from (without one, every call reads the XQs whole)."""
        super().__init__(failures=failures, audit=audit)
        self.parameters = pika.URLParameters(url)
        self.queue_names = list(queues)
        self.index = index
        self.dead_message_ttl_ms = dead_message_ttl_ms
        #: The connection the message counts are asked on (kept; one at a time).
        self._counting: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._counting_lock = threading.Lock()
        self.closers.append(self._drop_counting)
        #: Whole reads of an XQ done to rebuild its index rows (for tests and the bench).
        self.rebuilds = 0
        #: Per queue: the message count its rows last agreed with (they are not counted again
        #: while it stays). Forgotten after this store moves letters.
        self._agreed: dict[str, tuple[int, float]] = {}

    def queues(self) -> list[str]:
        """The queues it was made for (AMQP cannot list queues)."""
        return list(self.queue_names)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.parameters)

    @contextmanager
    def session(self, queues: Sequence[str] | None = None) -> Iterator[Session]:
        with self._reading():
            connection = self.connect()
            try:
                yield self.session_class(self, connection, queues or self.queue_names)
            finally:
                if connection.is_open:
                    connection.close()  # unacked dead letters go back to their XQ

    def _reading(self) -> AbstractContextManager[bool]:
        return self.index.reading() if self.index is not None else nullcontext(True)

    # --- pages from the index ---

    def page(
        self, filter: DeadLetterFilter, *, offset: int = 0, limit: int = 50, after: str | None = None
    ) -> Page:
        """From the index, after a cursor: (time of death, message id) below it. With no filter but
        a queue, the total is the XQs' message counts."""
        if self.index is None:
            return super().page(filter, offset=offset, limit=limit, after=after)
        offset, limit = max(offset, 0), max(limit, 0)
        cursor = parse_cursor(after) if after is not None else None
        queues = self._queues_of(filter)
        if not queues:
            return Page(letters=[], total=0, offset=offset, limit=limit, after=after)
        counts = self.sync(queues)
        lo, hi = filter.died_between(now_ms())
        plain = not any(getattr(filter, name) for name in _COUNTED_FIELDS)
        rows, total = self.index.rows(
            filter, queues, lo=lo, hi=hi, offset=offset, limit=limit + 1, after=cursor, count=not plain
        )
        if plain:
            total = sum(counts.values())
        more, rows = len(rows) > limit, rows[:limit]
        last = rows[-1] if more and rows else None
        return Page(
            letters=self.load(rows),
            total=int(total or 0),
            offset=offset,
            limit=limit,
            after=after,
            next_cursor=cursor_of(last[2], last[1]) if last else None,
        )

    def facets(self) -> dict[str, dict[str, int]]:
        """Per queue: the XQs' message counts. Per actor and final error type: index rows."""
        if self.index is None:
            return super().facets()
        counts = self.sync(self.queue_names)
        out: dict[str, dict[str, int]] = {"queue": {q: n for q, n in counts.items() if n}, "actor": {}}
        out["error_type"] = {}
        for facet, value, n in self.index.facets(self.queue_names):
            out[facet][value] = n
        return out

    def show(self, message_id: str) -> DeadLetter | None:
        if self.index is None:
            return super().show(message_id)
        self.sync(self.queue_names)
        row = self.index.by_message(message_id, self.queue_names)
        if row is None:
            return None
        [letter] = self.load([row])
        letter.actions = self.audit.of_message(letter.message_id)
        return letter

    def load(self, rows: list[Row]) -> list[DeadLetter]:
        """The letters of index rows, in order, each with its failure history."""
        payloads = [decode_payload(body) if body is not None else None for _, _, _, body in rows]
        ids = [str(p["message_id"]) if p else rid for (_, rid, _, _), p in zip(rows, payloads, strict=True)]
        histories = self.failures.histories(ids) if ids else {}
        return [
            self.describe(mid, queue, payload, died, histories.get(mid, []), body)
            for (queue, _, died, body), payload, mid in zip(rows, payloads, ids, strict=True)
        ]

    def _queues_of(self, filter: DeadLetterFilter) -> list[str]:
        if filter.queue is not None:
            return [filter.queue] if filter.queue in self.queue_names else []
        return list(self.queue_names)

    # --- the index against the XQs ---

    def sync(self, queues: Sequence[str]) -> dict[str, int]:
        """Each XQ's message count, after the index was reconciled with it: rows completed from
        the failure log and expired with the XQ's TTL; a queue whose row count differs from its
        message count (twice, ``SECOND_LOOK_S`` apart) is read whole and its rows rebuilt."""
        assert self.index is not None
        self.index.complete(queues, expire_before=now_ms() - self.dead_message_ttl_ms)
        counts = self.xq_counts(queues)
        # rows are counted only for a queue whose message count moved since they last agreed (or
        # that agreed more than AGREED_S ago)
        now = time.monotonic()
        moved = [
            q for q in queues
            if q not in self._agreed or self._agreed[q][0] != counts[q] or now - self._agreed[q][1] > AGREED_S
        ]  # fmt: skip
        rows = {q: self._agreed[q][0] for q in queues if q not in moved}
        rows.update(self.index.counts(moved) if moved else {})
        off = [q for q in queues if counts[q] != rows.get(q, 0)]
        if off:
            time.sleep(SECOND_LOOK_S)  # a worker's row lands just after its nack
            counts.update(self.xq_counts(off))
            rows = self.index.counts(off)
            off = [q for q in off if counts[q] != rows.get(q, 0)]
        if off and not self.rebuild(off):
            # a replay or purge holds the letters (unacked: not counted): the index answers
            counts.update({q: rows.get(q, 0) for q in off})
        at = time.monotonic()
        for q in queues:
            if q in off:
                self._agreed.pop(q, None)  # counted again next time
            elif q in moved:
                self._agreed[q] = (counts[q], at)
        return counts

    def rebuild(self, queues: Sequence[str]) -> bool:
        """Read these XQs whole and write their rows again; False if another session holds their
        letters (a replay or purge in progress: its moves keep the rows)."""
        assert self.index is not None
        with self.index.reading(exclusive=True) as mine:
            if not mine:
                return False
            started = now_ms() - 1
            connection = self.connect()
            try:
                session = self.session_class(self, connection, queues)
                for q in queues:
                    found = [
                        (x, session.rids[id(x)], session.bodies[id(x)])
                        for x in session.letters
                        if x.queue_name == q
                    ]
                    self.index.replace(q, found, read_since_ms=started)
            finally:
                if connection.is_open:
                    connection.close()
        self.rebuilds += 1
        return True

    def xq_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Each XQ's message count (a passive declare; 0 for one never declared), on a kept
        connection (made again once if it was lost)."""
        with self._counting_lock:
            try:
                return {q: self._count(q) for q in queues}
            except _AMQP_ERRORS:
                self._drop_counting()
                return {q: self._count(q) for q in queues}

    def _count(self, queue: str) -> int:
        if self._counting is None or not self._counting.is_open:
            self._counting = self.connect()
            self._channel = None
        if self._channel is None or not self._channel.is_open:
            self._channel = self._counting.channel()
        try:
            return int(self._channel.queue_declare(f"{queue}.XQ", passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._channel = None
            if exc.reply_code == 404:  # never declared: no dead letters
                return 0
            raise

    def _drop_counting(self) -> None:
        connection, self._counting, self._channel = self._counting, None, None
        if connection is not None and connection.is_open:
            with suppress(*_AMQP_ERRORS):
                connection.close()


class _RabbitmqSession(Session):
    def __init__(
        self, store: RabbitmqDeadLetterStore, connection: pika.BlockingConnection, queues: Sequence[str]
    ):
        self.store = store
        self.connection = connection
        self.channel = connection.channel()
        self.channel.confirm_delivery()
        self.tags: dict[int, int] = {}  # id(letter) -> delivery tag
        #: id(letter) -> its id in the index (its message id; ``#2``... for a second copy) and bytes
        self.rids: dict[int, str] = {}
        self.bodies: dict[int, bytes] = {}
        found: list[tuple[str, int, bytes, int]] = []
        for queue in self._existing(queues):
            while True:
                method, props, body = self.channel.basic_get(f"{queue}.XQ", auto_ack=False)
                if method is None:
                    break
                found.append((queue, method.delivery_tag, body, _died_at_ms(props)))
        payloads = [decode_payload(body) for _, _, body, _ in found]
        ids = [letter_id(body, p) for (_, _, body, _), p in zip(found, payloads, strict=True)]
        histories = store.failures.histories(ids) if ids else {}
        self.letters = []
        seen: dict[tuple[str, str], int] = {}
        for (queue, tag, body, died), payload, mid in zip(found, payloads, ids, strict=True):
            n = seen[(queue, mid)] = seen.get((queue, mid), 0) + 1
            rid = mid if n == 1 else f"{mid}#{n}"
            shown = mid if payload is not None else rid  # an unreadable one is listed by its rid
            letter = store.describe(shown, queue, payload, died, histories.get(mid, []), body)
            self.tags[id(letter)] = tag
            self.rids[id(letter)] = rid
            self.bodies[id(letter)] = body
            self.letters.append(letter)

    def _existing(self, queues: Sequence[str]) -> list[str]:
        present = []
        for queue in queues:
            probe = self.connection.channel()
            try:
                probe.queue_declare(f"{queue}.XQ", passive=True)
                present.append(queue)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # never declared: no dead letters
            if probe.is_open:
                probe.close()
        return present

    def replay(self, letter: DeadLetter) -> bool:
        assert letter.payload is not None
        queue = letter.queue_name
        self.channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.XQ"},
        )
        self._publish(letter)
        return True

    def _publish(self, letter: DeadLetter) -> None:
        """Publish the rewritten payload with confirms, then ack the dead letter."""
        assert letter.payload is not None
        options: dict[str, Any] = letter.payload.get("options") or {}
        self.channel.basic_publish(
            exchange="",
            routing_key=letter.queue_name,
            body=replay_payload(letter.payload),
            properties=pika.BasicProperties(delivery_mode=2, priority=options.get("broker_priority")),
            mandatory=True,
        )  # with confirms: returns once the broker has it, raises otherwise
        self.channel.basic_ack(self.tags[id(letter)])

    def purge(self, letter: DeadLetter) -> bool:
        self.channel.basic_ack(self.tags[id(letter)])
        return True

    def gone(self, letters: list[DeadLetter]) -> None:
        if self.store.index is not None:
            self.store.index.forget([(x.queue_name, self.rids[id(x)]) for x in letters])


RabbitmqDeadLetterStore.session_class = _RabbitmqSession


def _died_at_ms(props: pika.BasicProperties) -> int:
    deaths = (props.headers or {}).get("x-death") or []
    when = deaths[0].get("time") if deaths else None
    if when is not None and hasattr(when, "timestamp"):
        return int(when.timestamp() * 1000)
    return int(props.timestamp or 0) * 1000


__all__ = ["RabbitmqDeadLetterStore"]
