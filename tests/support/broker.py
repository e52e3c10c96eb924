"""Reading the Redis broker's keys directly: queued and dead-lettered messages, queue state."""

from __future__ import annotations

import json
from typing import Any

import redis

from schemas import CATEGORIZE_QUEUE
from workers.backends.redis.keys import RedisKeys
from workers.settings import Settings


def queued_messages(settings: Settings, queue: str = CATEGORIZE_QUEUE) -> list[dict[str, Any]]:
    """Every message still in the queue's hash (enqueued, not yet acked)."""
    client = redis.Redis.from_url(settings.broker_url)
    try:
        return [json.loads(v) for v in client.hvals(RedisKeys(settings.broker_namespace).messages(queue))]
    finally:
        client.close()


def dead_messages(settings: Settings, queue: str = CATEGORIZE_QUEUE) -> list[dict[str, Any]]:
    """The queue's dead letters, oldest first."""
    client = redis.Redis.from_url(settings.broker_url)
    keys = RedisKeys(settings.broker_namespace)
    try:
        rids = client.zrange(keys.dead(queue), 0, -1)
        payloads = client.hmget(keys.dead_messages(queue), rids) if rids else []
    finally:
        client.close()
    return [json.loads(p) for p in payloads if p]


def queue_state(settings: Settings, queue: str = CATEGORIZE_QUEUE) -> dict[str, int]:
    """Everything the Redis broker holds for a queue: live, delayed, unacked, dead."""
    client = redis.Redis.from_url(settings.broker_url)
    keys = RedisKeys(settings.broker_namespace)
    try:
        acks = sum(client.scard(k) for k in client.scan_iter(keys.acks_pattern(), count=1000))
        return {
            "queued": client.llen(keys.queue(queue)),
            "messages": client.hlen(keys.messages(queue)),
            "delayed": client.hlen(keys.delayed_messages(queue)),
            "unacked": acks,
            "dead": client.zcard(keys.dead(queue)),
        }
    finally:
        client.close()


EMPTY = {"queued": 0, "messages": 0, "delayed": 0, "unacked": 0, "dead": 0}
