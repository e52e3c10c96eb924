"""Dead letters of Dramatiq's Redis broker: ``<ns>:<queue>.XQ`` (rid -> time of death) and
``<ns>:<queue>.XQ.msgs`` (rid -> payload)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workers.backends.redis.keys import RedisKeys
from workers.dlq.base import (
    Action,
    AuditLog,
    DeadLetter,
    DeadLetterStore,
    Session,
    decode_payload,
    iter_chunks,
    replay_payload,
)
from workers.failures import FailureLog

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


class RedisDeadLetterStore(DeadLetterStore):
    broker = "redis"

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, failures: FailureLog, audit: AuditLog):
        super().__init__(failures=failures, audit=audit)
        self.client = client
        self.keys = keys
        self._replay = client.register_script(REPLAY_LUA)
        self._purge = client.register_script(PURGE_LUA)

    def count(self, action: Action, queue_name: str) -> None:
        """Counted in the broker's Redis (any host): exported as ``catfleet_dead_letter_replays_total``
        / ``_purges_total`` by every host's collector."""
        self.client.hincrby(self.keys.dead_letter_actions, f"{queue_name}:{PAST_TENSE[action]}", 1)

    def queues(self) -> list[str]:
        """Every queue of the namespace that has a dead-letter queue."""
        found = {
            self.keys.queue_of_dead(key.decode())
            for key in self.client.scan_iter(self.keys.dead_queue_pattern(), count=1000)
        }
        return sorted(q for q in found if q)

    @contextmanager
    def session(self) -> Iterator[Session]:
        yield _RedisSession(self)


class _RedisSession(Session):
    def __init__(self, store: RedisDeadLetterStore):
        self.store = store
        self.raw: dict[tuple[str, str], bytes] = {}  # (queue, rid) -> payload as read
        self.where: dict[int, tuple[str, str]] = {}  # id(letter) -> (queue, rid)
        found: list[tuple[str, str, float, bytes]] = []
        client = store.client
        for queue in store.queues():
            entries = client.zrange(store.keys.dead(queue), 0, -1, withscores=True)
            for chunk in iter_chunks(entries, CHUNK):
                rids = [rid for rid, _ in chunk]
                stored = client.hmget(store.keys.dead_messages(queue), rids)
                for (rid, score), raw in zip(chunk, stored, strict=True):
                    if isinstance(raw, bytes):
                        found.append((queue, rid.decode(), float(score), raw))
        payloads = [decode_payload(found_raw) for *_, found_raw in found]
        ids = [str(p["message_id"]) if p else rid for (_, rid, _, _), p in zip(found, payloads, strict=True)]
        # the consumer records what it dead-letters before decoding (too large) under the Redis id
        rids = [rid for (_, rid, _, _), mid in zip(found, ids, strict=True) if rid != mid]
        histories = store.failures.histories([*ids, *rids]) if ids else {}
        self.letters = []
        for (queue, rid, score, raw), payload, mid in zip(found, payloads, ids, strict=True):
            history = histories.get(mid, [])
            if rid != mid and histories.get(rid):
                history = sorted([*history, *histories[rid]], key=lambda r: r.at_ms)
            letter = store.describe(mid, queue, payload, int(score), history, raw)
            self.raw[(queue, rid)] = raw
            self.where[id(letter)] = (queue, rid)
            self.letters.append(letter)

    def replay(self, letter: DeadLetter) -> bool:
        assert letter.payload is not None
        queue, rid = self.where[id(letter)]
        store = self.store
        new = replay_payload(letter.payload, redis_message_id=rid)
        k = store.keys
        keys = [k.dead(queue), k.dead_messages(queue), k.queue(queue), k.messages(queue)]
        keys.append(k.deliveries(letter.message_id))
        return int(store._replay(keys=keys, args=[rid, self.raw[(queue, rid)], new])) == 1

    def purge(self, letter: DeadLetter) -> bool:
        queue, rid = self.where[id(letter)]
        keys = [self.store.keys.dead(queue), self.store.keys.dead_messages(queue)]
        return int(self.store._purge(keys=keys, args=[rid])) == 1
