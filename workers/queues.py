"""What the broker holds, read on demand: queue depths, oldest message age, dead letters, the
worker processes seen recently, and the dead-letter replay/purge counts. Used by the metrics
collector at scrape time and by ``catfleet status``."""

from __future__ import annotations

import time

import dramatiq
import msgspec
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

#: Hash in the broker's Redis with the dead-letter tool's counts: field ``<queue>:<action>``.
DEAD_LETTER_ACTIONS_KEY = "catfleet.deadletter.actions"
DEAD_LETTER_ACTIONS = ("replayed", "purged")


class QueueStats(msgspec.Struct, kw_only=True):
    queue: str
    ready: int  # waiting in the queue
    delayed: int  # waiting in the delay queue (retries with backoff, eta messages)
    dead: int  # in the dead-letter queue
    oldest_age_s: float | None  # age of the next message to run; None: empty or unknown (RabbitMQ)
    replayed: int = 0  # dead letters replayed by the dead-letter tool, ever
    purged: int = 0  # dead letters purged by the dead-letter tool, ever


class _Timestamp(msgspec.Struct):
    message_timestamp: int


_ts_decoder = msgspec.json.Decoder(_Timestamp)


def queue_names(broker: dramatiq.Broker) -> list[str]:
    """The declared canonical queues (no ``.DQ`` / ``.XQ``): a bounded label set."""
    return sorted(q for q in broker.get_declared_queues() if not q.endswith((".DQ", ".XQ")))


def _redis_stats(broker: RedisBroker, queues: list[str], now_ms: int) -> list[QueueStats]:
    ns = broker.namespace
    with broker.client.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.llen(f"{ns}:{q}")
            pipe.llen(f"{ns}:{q}.DQ")
            pipe.zcard(f"{ns}:{q}.XQ")
            pipe.lindex(f"{ns}:{q}", 0)
        pipe.hgetall(f"{ns}:{DEAD_LETTER_ACTIONS_KEY}")
        *replies, actions = pipe.execute()
    heads = {q: replies[4 * i + 3] for i, q in enumerate(queues)}
    payloads: dict[str, bytes | None] = {}
    rids = [(q, rid) for q, rid in heads.items() if rid is not None]
    if rids:
        with broker.client.pipeline(transaction=False) as pipe:
            for q, rid in rids:
                pipe.hget(f"{ns}:{q}.msgs", rid)
            payloads = dict(zip([q for q, _ in rids], pipe.execute(), strict=True))
    counts = {k.decode(): int(v) for k, v in actions.items()}
    out = []
    for i, q in enumerate(queues):
        ready, delayed, dead = replies[4 * i : 4 * i + 3]
        out.append(
            QueueStats(
                queue=q,
                ready=ready,
                delayed=delayed,
                dead=dead,
                oldest_age_s=_age(payloads.get(q), now_ms),
                replayed=counts.get(f"{q}:replayed", 0),
                purged=counts.get(f"{q}:purged", 0),
            )
        )
    return out


def _age(payload: bytes | None, now_ms: int) -> float | None:
    if not payload:
        return None
    try:
        ts = _ts_decoder.decode(payload).message_timestamp
    except msgspec.DecodeError:
        return None
    return max(now_ms - ts, 0) / 1000


def queue_stats(broker: dramatiq.Broker) -> list[QueueStats]:
    """One entry per declared queue; raises the driver's error when the broker is unreachable."""
    queues = queue_names(broker)
    if isinstance(broker, RedisBroker):
        return _redis_stats(broker, queues, int(time.time() * 1000))
    if isinstance(broker, RabbitmqBroker):
        out = []
        for q in queues:
            ready, delayed, dead = broker.get_queue_message_counts(q)
            out.append(QueueStats(queue=q, ready=ready, delayed=delayed, dead=dead, oldest_age_s=None))
        return out
    raise TypeError(f"no queue statistics for {type(broker).__name__}")


def workers_seen(broker: dramatiq.Broker) -> int | None:
    """Broker clients whose heartbeat is fresher than the heartbeat timeout (Redis broker only).
    Dramatiq beats on every broker call, so a producer counts too while it enqueues."""
    if not isinstance(broker, RedisBroker):
        return None
    since = int(time.time() * 1000) - int(broker.heartbeat_timeout)
    return int(broker.client.zcount(f"{broker.namespace}:__heartbeats__", since, "+inf"))


def record_dead_letter_action(
    client: redis.Redis, namespace: str, queue: str, action: str, n: int = 1
) -> None:
    """Count dead letters replayed or purged by the tooling (any host) in the broker's Redis: the
    collector exports them as ``catfleet_dead_letter_replays_total`` / ``_purges_total``.
    With RabbitMQ the counts are not kept here (no shared Redis): the audit table has them."""
    if action not in DEAD_LETTER_ACTIONS:
        raise ValueError(f"unknown dead-letter action {action!r}")
    if n:
        client.hincrby(f"{namespace}:{DEAD_LETTER_ACTIONS_KEY}", f"{queue}:{action}", n)
