"""Dead letters of Dramatiq's Redis broker: ``<ns>:<queue>.XQ`` (rid -> time of death) and
``<ns>:<queue>.XQ.msgs`` (rid -> payload).

Paging without reading everything: with no filter, or only a queue and an age, a page is read
from the XQ sorted sets themselves (``ZCOUNT``, ``ZREVRANGEBYSCORE ... LIMIT``, then ``HMGET``
of the page's rids). The other filters (actor, final error type or text, expense id,
correlation id, message id) go through the **dead-letter index**, table ``dead_letter_index`` in
the PostgreSQL of the audit log: one row per letter with what those filters look at (the batch's
expense ids under a GIN index: in Redis, one sorted-set member per expense id and letter would
cost more memory than the letters themselves). The store keeps it: before a query that needs
it, the letters that died since the last look (``ZRANGEBYSCORE`` from the queue's mark, less
``INDEX_OVERLAP_MS`` for clocks that disagree) are indexed, so every way a message reaches the
XQ is covered (the workers, the consumer's own dead-lettering, a letter from before the index
existed) without a hook on each. The XQ stays the truth: a row whose rid is not in its XQ under
the same time of death is stale, skipped and deleted when a query meets it; rows past
Dramatiq's dead-message TTL are deleted as the XQ's are; a replay or purge deletes the rows of
what it moved."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import redis
from dramatiq.brokers.redis import DEFAULT_DEAD_MESSAGE_TTL

from pipeline import queries
from pipeline.errors import DatabaseError
from workers.backends.base import FLEET_QUEUES
from workers.backends.redis.keys import RedisKeys
from workers.dlq.base import (
    Action,
    AuditLog,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    Page,
    PostgresAuditLog,
    Session,
    cursor_of,
    decode_payload,
    iter_chunks,
    now_ms,
    parse_cursor,
    replay_payload,
    select,
)
from workers.dlq.index import index_row, page_params
from workers.failures import FailureLog, LazyDatabase

logger = logging.getLogger(__name__)

PAST_TENSE = {"replay": "replayed", "purge": "purged"}

#: One script per message, every key declared. Moves the payload only if the rid is still in the
#: XQ with exactly the payload the replay read (compare-and-set), writing the rewritten payload
#: first. A crash before it: nothing happened; after it: the move is complete. Never both, never
#: neither.
REPLAY_LUA = """
local old = redis.call('hget', KEYS[2], ARGV[1])
if (not old) or (not redis.call('zscore', KEYS[1], ARGV[1])) then return 0 end
if old ~= ARGV[2] then return -1 end
redis.call('hset', KEYS[4], ARGV[1], ARGV[3])
redis.call('rpush', KEYS[3], ARGV[1])
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('del', KEYS[5])
return 1
"""

PURGE_LUA = """
if not redis.call('zscore', KEYS[1], ARGV[1]) then return 0 end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
return 1
"""

CHUNK = 500
#: Letters indexed per round trip when the index catches up.
INDEX_CHUNK = 2_000
#: A letter is indexed if it died after its queue's mark less this: a worker whose clock is up to
#: this far behind still has its letters indexed (keep the fleet's clocks in NTP sync).
INDEX_OVERLAP_MS = 30_000
#: How long the list of queues with a dead-letter queue (one SCAN of the namespace) is reused.
QUEUES_TTL_S = 10.0
#: Times a query is run again when the page it read had stale index rows.
STALE_RETRIES = 3
#: Letters of one queue that died in the same millisecond as a page's cursor looked at for the
#: next page (more in one millisecond than this: the next page may skip some of them).
MAX_TIES = 1_000

#: The filters only the index answers (a queue and an age the XQ sorted sets answer).
INDEXED_FIELDS = ("ids", "actor", "error", "error_type", "expense_id", "correlation_id")

Row = tuple[str, str, int]  # queue, rid, time of death (ms)
Cursor = tuple[int, str]  # time of death (ms), rid: a page starts below it


class RedisDeadLetterStore(DeadLetterStore):
    broker = "redis"

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        *,
        failures: FailureLog,
        audit: AuditLog,
        database: LazyDatabase | None = None,
        dead_message_ttl_ms: int = DEFAULT_DEAD_MESSAGE_TTL,
    ):
        """``database``: where the dead-letter index is kept (default: the audit log's database;
        without one, filtered queries read every letter)."""
        super().__init__(failures=failures, audit=audit)
        self.client = client
        self.keys = keys
        self.database = database or (audit.database if isinstance(audit, PostgresAuditLog) else None)
        self.dead_message_ttl_ms = dead_message_ttl_ms
        self._replay = client.register_script(REPLAY_LUA)
        self._purge = client.register_script(PURGE_LUA)
        self._queues: tuple[float, list[str]] | None = None

    @property
    def space(self) -> str:
        """The index rows of this namespace."""
        return self.keys.namespace

    def lists_from_database(self, filter: DeadLetterFilter) -> bool:
        """Only the filters the XQ sorted sets cannot answer go through the index."""
        return self.database is not None and any(getattr(filter, name) for name in INDEXED_FIELDS)

    def count(self, action: Action, queue_name: str) -> None:
        """Counted in the broker's Redis (any host): exported as ``catfleet_dead_letter_replays_total``
        / ``_purges_total`` by every host's collector."""
        self.client.hincrby(self.keys.dead_letter_actions, f"{queue_name}:{PAST_TENSE[action]}", 1)

    def queues(self) -> list[str]:
        """Every queue of the namespace that has a dead-letter queue (one SCAN, reused for
        ``QUEUES_TTL_S``), and the fleet's queues always: a long-lived store (the console's)
        sees a fleet queue's first dead letter at once, not after the reuse."""
        if self._queues is not None and time.monotonic() - self._queues[0] < QUEUES_TTL_S:
            return self._queues[1]
        found = {
            self.keys.queue_of_dead(key.decode())
            for key in self.client.scan_iter(self.keys.dead_queue_pattern(), count=1000)
        }
        queues = sorted({q for q in found if q} | set(FLEET_QUEUES))
        self._queues = (time.monotonic(), queues)
        return queues

    @contextmanager
    def session(self) -> Iterator[Session]:
        yield _RedisSession(self)

    # --- queries ---

    def page(
        self, filter: DeadLetterFilter, *, offset: int = 0, limit: int = 50, after: str | None = None
    ) -> Page:
        """After a cursor (``after``): the XQ sorted sets from below its score, or the index by
        (time of death, rid) below it; either way a deep page costs what the first does."""
        offset, limit = max(offset, 0), max(limit, 0)
        if self.database is None:
            return super().page(filter, offset=offset, limit=limit, after=after)
        cursor = parse_cursor(after) if after is not None else None
        rows, total = self.rows(filter, offset=offset, limit=limit + 1, after=cursor)
        more, rows = len(rows) > limit, rows[:limit]
        letters, _ = self.load(rows)
        last = rows[-1] if more and rows else None
        return Page(
            letters=letters,
            total=total,
            offset=offset,
            limit=limit,
            after=after,
            next_cursor=cursor_of(last[2], last[1]) if last else None,
        )

    def facets(self) -> dict[str, dict[str, int]]:
        """Per queue: the XQ's size (exact). Per actor and final error type: from the index (rows
        of letters removed behind the fleet's back count until a query meets them)."""
        if self.database is None:
            return super().facets()
        queues = self.queues()
        with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.zcard(self.keys.dead(q))
            sizes = pipe.execute()
        out: dict[str, dict[str, int]] = {"queue": {}, "actor": {}, "error_type": {}}
        out["queue"] = {q: int(n) for q, n in zip(queues, sizes, strict=True) if n}
        self.catch_up(queues)
        db = self.database.db
        rows = db.run(
            lambda conn: conn.execute(queries.DEAD_LETTER_INDEX_FACETS, {"space": self.space}).fetchall(),
            read=True,
        )
        for facet, value, n in rows:
            out[facet][value] = int(n)
        return out

    def rows(
        self,
        filter: DeadLetterFilter,
        *,
        offset: int = 0,
        limit: int | None = None,
        after: Cursor | None = None,
    ) -> tuple[list[Row], int]:
        """The (queue, rid, time of death) of one page of what ``filter`` matches, newest first
        (below the cursor ``after``, if given), and how many match."""
        queues = self._queues_of(filter)
        if not queues:
            return [], 0
        lo, hi = filter.died_between(now_ms())
        if not any(getattr(filter, name) for name in INDEXED_FIELDS):
            return self._xq_rows(queues, lo, hi, offset, limit, after)
        self.catch_up(queues)
        for _ in range(STALE_RETRIES):
            rows, total = self._index_rows(filter, lo, hi, offset, limit, after)
            stale = self._stale(rows)
            if not stale:
                return rows, total
            self._forget(stale)
        rows, total = self._index_rows(filter, lo, hi, offset, limit, after)
        left = set(self._stale(rows))
        return [r for r in rows if r not in left], total

    def _queues_of(self, filter: DeadLetterFilter) -> list[str]:
        if filter.queue is not None:
            return [filter.queue] if filter.queue in self.queues() or self._has_dead(filter.queue) else []
        return self.queues()

    def _has_dead(self, queue: str) -> bool:
        return bool(self.client.exists(self.keys.dead(queue)))

    def _xq_rows(
        self,
        queues: list[str],
        lo: int | None,
        hi: int | None,
        offset: int,
        limit: int | None,
        after: Cursor | None = None,
    ) -> tuple[list[Row], int]:
        """From the XQ sorted sets: per queue its count and its newest ``offset + limit`` below the
        cursor (``ZREVRANGEBYSCORE (ms low LIMIT``, and the cursor's own millisecond for its ties),
        merged by (time of death, rid)."""
        low, high = "-inf" if lo is None else lo, "+inf" if hi is None else hi
        want = None if limit is None else offset + limit
        ties = after is not None and (hi is None or after[0] <= hi) and (lo is None or after[0] >= lo)
        if after is not None and (hi is None or after[0] <= hi):
            high = f"({after[0]}"
        with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.zcount(self.keys.dead(q), low, "+inf" if hi is None else hi)
                if want is None:
                    pipe.zrevrangebyscore(self.keys.dead(q), high, low, withscores=True)
                else:
                    pipe.zrevrangebyscore(self.keys.dead(q), high, low, start=0, num=want, withscores=True)
            if ties:
                assert after is not None
                for q in queues:
                    num = (want or 0) + MAX_TIES
                    pipe.zrevrangebyscore(
                        self.keys.dead(q), after[0], after[0], start=0, num=num, withscores=True
                    )
            replies = pipe.execute()
        n = len(queues)
        total = sum(int(x) for x in replies[0 : 2 * n : 2])
        merged = [
            (q, rid.decode(), int(score))
            for q, entries in zip(queues, replies[1 : 2 * n : 2], strict=True)
            for rid, score in entries
        ]
        if ties:
            assert after is not None
            merged += [
                (q, rid.decode(), int(score))
                for q, entries in zip(queues, replies[2 * n :], strict=True)
                for rid, score in entries
                if rid.decode() < after[1]
            ]
        merged.sort(key=lambda r: (r[2], r[1]), reverse=True)
        return merged[offset : None if want is None else want], total

    def _index_rows(
        self,
        filter: DeadLetterFilter,
        lo: int | None,
        hi: int | None,
        offset: int,
        limit: int | None,
        after: Cursor | None = None,
    ) -> tuple[list[Row], int]:
        assert self.database is not None
        params = page_params(self.space, filter, lo=lo, hi=hi, after=after, limit=limit, offset=offset)

        def query(conn: Any) -> tuple[list[Row], int]:
            # unprepared: planned with the values, so the absent filters fold away
            found = conn.execute(queries.PAGE_DEAD_LETTER_INDEX, params, prepare=False).fetchall()
            if after is None and offset == 0 and (limit is None or len(found) < limit):
                total = len(found)
            else:
                total = conn.execute(queries.COUNT_DEAD_LETTER_INDEX, params, prepare=False).fetchone()[0]
            return [(q, rid, int(died)) for q, rid, died in found], int(total)

        return self.database.db.run(query, read=True)

    def _stale(self, rows: list[Row]) -> list[Row]:
        """Rows whose rid is no longer in its XQ under the same time of death."""
        if not rows:
            return []
        by_queue: dict[str, list[Row]] = {}
        for row in rows:
            by_queue.setdefault(row[0], []).append(row)
        with self.client.pipeline(transaction=False) as pipe:
            for q, group in by_queue.items():
                pipe.zmscore(self.keys.dead(q), [rid for _, rid, _ in group])
            replies = pipe.execute()
        return [
            row
            for group, scores in zip(by_queue.values(), replies, strict=True)
            for row, score in zip(group, scores, strict=True)
            if score is None or int(score) != row[2]
        ]

    def _forget(self, rows: Sequence[tuple[str, str] | Row]) -> None:
        if self.database is None or not rows:
            return
        params = {"space": self.space, "pairs": json.dumps([[r[0], r[1]] for r in rows])}
        self.database.db.run(lambda conn: conn.execute(queries.DELETE_DEAD_LETTER_INDEX, params))

    def load(self, rows: list[Row]) -> tuple[list[DeadLetter], dict[int, tuple[str, str, bytes]]]:
        """The letters of these rows, in order, with their failure history (rows whose payload is
        gone are left out), and for each letter (by ``id()``) its queue, rid and stored bytes."""
        found: list[tuple[str, str, int, bytes]] = []
        for chunk in iter_chunks(rows, CHUNK):
            by_queue: dict[str, list[Row]] = {}
            for row in chunk:
                by_queue.setdefault(row[0], []).append(row)
            with self.client.pipeline(transaction=False) as pipe:  # one HMGET per queue
                for q, group in by_queue.items():
                    pipe.hmget(self.keys.dead_messages(q), [rid for _, rid, _ in group])
                replies = pipe.execute()
            stored = {
                (q, rid): raw
                for (q, group), raws in zip(by_queue.items(), replies, strict=True)
                for (_, rid, _), raw in zip(group, raws, strict=True)
            }
            found += [
                (q, rid, died, raw) for q, rid, died in chunk if isinstance(raw := stored[(q, rid)], bytes)
            ]
        payloads = [decode_payload(raw) for *_, raw in found]
        ids = [str(p["message_id"]) if p else rid for (_, rid, _, _), p in zip(found, payloads, strict=True)]
        # the consumer records what it dead-letters before decoding (too large) under the Redis id
        rids = [rid for (_, rid, _, _), mid in zip(found, ids, strict=True) if rid != mid]
        histories = self.failures.histories([*ids, *rids]) if ids else {}
        letters, where = [], {}
        for (queue, rid, died, raw), payload, mid in zip(found, payloads, ids, strict=True):
            history = histories.get(mid, [])
            if rid != mid and histories.get(rid):
                history = sorted([*history, *histories[rid]], key=lambda r: r.at_ms)
            letter = self.describe(mid, queue, payload, died, history, raw)
            where[id(letter)] = (queue, rid, raw)
            letters.append(letter)
        return letters, where

    # --- the index ---

    def catch_up(self, queues: Sequence[str]) -> int:
        """Index the letters of ``queues`` that died since each queue's mark (all of them the
        first time); how many rows were written."""
        if self.database is None or not queues:
            return 0
        db = self.database.db
        space = self.space
        expire = {"space": space, "before": now_ms() - self.dead_message_ttl_ms}
        marks = dict(
            db.run(
                lambda conn: (
                    conn.execute(queries.EXPIRE_DEAD_LETTER_INDEX, expire),
                    conn.execute(queries.DEAD_LETTER_INDEX_MARKS, {"space": space, "queues": list(queues)}),
                )[1].fetchall()
            )
        )
        written = 0
        for queue in queues:
            # never older than the TTL: Dramatiq's maintenance is about to drop those
            low = max(marks.get(queue, 0) - INDEX_OVERLAP_MS, expire["before"])
            start = 0
            while True:
                entries = cast(
                    "list[tuple[bytes, float]]",
                    self.client.zrangebyscore(
                        self.keys.dead(queue), low, "+inf", start=start, num=INDEX_CHUNK, withscores=True
                    ),
                )
                if not entries:
                    break
                indexed = [(rid.decode(), int(score)) for rid, score in entries]
                written += self._index(queue, indexed, marks.get(queue))
                if len(entries) < INDEX_CHUNK:
                    break
                start += INDEX_CHUNK
        return written

    def _index(self, queue: str, entries: list[tuple[str, int]], mark: int | None) -> int:
        """Index these XQ entries; those that died after ``mark`` are new, the others (the
        overlap) may be indexed already."""
        assert self.database is not None
        db, space = self.database.db, self.space
        overlap = [rid for rid, died in entries if mark is not None and died <= mark]
        params = {"space": space, "queue": queue, "rids": overlap}
        known = {
            rid: (died, error_type)
            for rid, died, error_type in (
                db.run(lambda conn: conn.execute(queries.KNOWN_DEAD_LETTERS, params).fetchall(), read=True)
                if overlap
                else []
            )
        }
        # indexed under the same death, with a final error (the consumer records its reason just
        # after the move): nothing to do
        fresh = [
            (queue, rid, died)
            for rid, died in entries
            if rid not in known or known[rid][0] != died or not known[rid][1]
        ]
        letters, where = self.load(fresh) if fresh else ([], {})
        died_of = {rid: died for _, rid, died in fresh}
        rows = [
            row
            for x in letters
            if (row := index_row(x, queue, (rid := where[id(x)][1]), died_of[rid])) is not None
        ]  # the XQ's time of death (the failure log's may differ by milliseconds)
        latest = {"space": space, "queue": queue, "indexed_ms": max(died for _, died in entries)}

        def write(conn: Any) -> None:
            if rows:
                conn.execute(queries.UPSERT_DEAD_LETTER_INDEX, {"space": space, "rows": json.dumps(rows)})
            conn.execute(queries.SET_DEAD_LETTER_INDEX_MARK, latest)

        try:
            db.run(write)
        except DatabaseError:  # one row PostgreSQL refuses must not stop the others: one by one
            for row in rows:
                one = {"space": space, "rows": json.dumps([row])}
                try:
                    db.run(partial(_upsert, params=one))
                except DatabaseError:
                    logger.warning("Dead letter %s of queue %r not indexed", row["rid"], queue, exc_info=True)
            db.run(lambda conn: conn.execute(queries.SET_DEAD_LETTER_INDEX_MARK, latest))
        return len(rows)


def _upsert(conn: Any, *, params: dict[str, Any]) -> None:
    conn.execute(queries.UPSERT_DEAD_LETTER_INDEX, params)


class _RedisSession(Session):
    def __init__(self, store: RedisDeadLetterStore):
        self.store = store
        self.where: dict[int, tuple[str, str, bytes]] = {}  # id(letter) -> (queue, rid, payload as read)
        self._letters: list[DeadLetter] | None = None

    @property
    def letters(self) -> list[DeadLetter]:  # type: ignore[override]
        """Every dead letter, oldest first (read only when asked for)."""
        if self._letters is None:
            rows, _ = self.store._xq_rows(self.store.queues(), None, None, 0, None)
            self._letters, where = self.store.load(rows[::-1])
            self.where.update(where)
        return self._letters

    def choose(self, filter: DeadLetterFilter, limit: int | None) -> list[DeadLetter]:
        if self.store.database is None:
            return select(self.letters, filter, limit)
        rows, _ = self.store.rows(filter, limit=limit)
        letters, where = self.store.load(rows)
        self.where.update(where)
        return letters

    def replay(self, letter: DeadLetter) -> bool:
        assert letter.payload is not None
        queue, rid, raw = self.where[id(letter)]
        store = self.store
        new = replay_payload(letter.payload, redis_message_id=rid)
        k = store.keys
        keys = [k.dead(queue), k.dead_messages(queue), k.queue(queue), k.messages(queue)]
        keys.append(k.deliveries(letter.message_id))
        return int(store._replay(keys=keys, args=[rid, raw, new])) == 1

    def purge(self, letter: DeadLetter) -> bool:
        queue, rid, _ = self.where[id(letter)]
        keys = [self.store.keys.dead(queue), self.store.keys.dead_messages(queue)]
        return int(self.store._purge(keys=keys, args=[rid])) == 1

    def gone(self, letters: list[DeadLetter]) -> None:
        self.store._forget([self.where[id(x)][:2] for x in letters])


__all__ = ["RedisDeadLetterStore"]
