"""The fleet's state in the broker's Redis: a bounded number of commands per call (no SCAN, no
KEYS): process records as expiring strings indexed by a sorted set of last beats, pauses in one
hash, the audit of pauses in a capped list, throughput as one expiring counter per queue and
10-second bucket (the last hour is one MGET)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import redis

from workers.backends.redis.keys import RedisKeys
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

#: Pauses and resumes kept in the audit list.
ACTIONS_KEPT = 1_000

_record = msgspec.json.Decoder(ProcessRecord)
_pause = msgspec.json.Decoder(PauseEntry)
_action = msgspec.json.Decoder(QueueAction)


class RedisFleetState(FleetState):
    def __init__(self, client: redis.Redis, keys: RedisKeys, *, ttl_ms: int):
        super().__init__(ttl_ms=ttl_ms)
        self.client = client
        self.keys = keys

    def publish(self, record: ProcessRecord) -> None:
        k = self.keys
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(k.process(record.id), msgspec.json.encode(record), px=self.ttl_ms)
            pipe.zadd(k.processes, {record.id: record.beat_ms})
            pipe.execute()

    def remove(self, record_id: str) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.process(record_id))
            pipe.zrem(self.keys.processes, record_id)
            pipe.execute()

    def processes(self) -> list[ProcessRecord]:
        """One pipeline to prune the index and read it, one MGET of the records."""
        k = self.keys
        fresh_after = now_ms() - self.ttl_ms
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(k.processes, "-inf", fresh_after)
            pipe.zrange(k.processes, 0, -1)
            _, ids = pipe.execute()
        if not ids:
            return []
        raw = self.client.mget([k.process(i.decode()) for i in ids])
        records = [_record.decode(r) for r in raw if r]
        return sorted((r for r in records if r.beat_ms > fresh_after), key=lambda r: (r.host, r.pid))

    def paused(self) -> dict[str, PauseEntry]:
        found: dict[bytes, bytes] = self.client.hgetall(self.keys.paused)  # type: ignore[assignment]
        return {q.decode(): _pause.decode(v) for q, v in found.items()}

    def _set_pause(self, entry: PauseEntry, *, paused: bool) -> bool:
        k = self.keys
        if paused:
            changed = bool(self.client.hsetnx(k.paused, entry.queue, msgspec.json.encode(entry)))
        else:
            changed = bool(self.client.hdel(k.paused, entry.queue))
        if changed:
            action = QueueAction(
                at_ms=entry.at_ms,
                operator=entry.operator,
                action="pause" if paused else "resume",
                queue=entry.queue,
            )
            with self.client.pipeline(transaction=False) as pipe:
                pipe.lpush(k.queue_actions, msgspec.json.encode(action))
                pipe.ltrim(k.queue_actions, 0, ACTIONS_KEPT - 1)
                pipe.execute()
        return changed

    def actions(self, *, limit: int = 50) -> list[QueueAction]:
        return [_action.decode(r) for r in self.client.lrange(self.keys.queue_actions, 0, limit - 1)]

    def add_processed(self, counts: Mapping[str, int], at_ms: int) -> None:
        if not any(counts.values()):
            return
        bucket = bucket_of(at_ms)
        with self.client.pipeline(transaction=False) as pipe:
            for queue, n in counts.items():
                if n:
                    key = self.keys.processed(queue, bucket)
                    pipe.incrby(key, n)
                    pipe.expire(key, BUCKET_S * (BUCKETS + 6))
            pipe.execute()

    def throughput(self, queues: Sequence[str], now: int | None = None) -> dict[str, list[int]]:
        if not queues:
            return {}
        starts = bucket_starts(now or now_ms())
        keys = [self.keys.processed(q, s) for q in queues for s in starts]
        values = self.client.mget(keys)
        n = len(starts)
        return {q: [int(v or 0) for v in values[i * n : (i + 1) * n]] for i, q in enumerate(queues)}
