"""The Redis backend: Dramatiq's Redis broker (crash-safe consumer, wake-up, pipelined enqueue),
its failure log, delivery counter and dead letters in the same Redis, queue statistics read
from Dramatiq's keys, and the maintenance thread that bounds crash recovery."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq.middleware import Middleware
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from pipeline.cache.client import fail_fast_options
from pipeline.errors import CatfleetError
from workers.backends.base import FLEET_QUEUES, Backend, Check, QueueStats
from workers.backends.redis.broker import SafeRedisBroker
from workers.backends.redis.deadletters import RedisDeadLetterStore
from workers.backends.redis.fleetstate import RedisFleetState
from workers.backends.redis.keys import RedisKeys
from workers.backends.redis.maintenance import BrokerMaintenance
from workers.backends.redis.records import RedisDeliveryCounter, RedisFailureLog
from workers.backends.redis_urls import SentinelURL, is_sentinel_url, parse_sentinel_url
from workers.dlq.base import AuditLog
from workers.settings import Settings

#: Seconds the health check and the statistics wait for Redis.
CHECK_TIMEOUT_S = 2


class _Timestamp(msgspec.Struct):
    message_timestamp: int


_ts_decoder = msgspec.json.Decoder(_Timestamp)


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.keys = RedisKeys(settings.broker_namespace)
        #: With a ``redis+sentinel://`` URL, what it names and the Sentinels every pool asks.
        self.sentinel: SentinelURL | None = None
        self._sentinels: Sentinel | None = None
        if is_sentinel_url(settings.broker_url):
            self.sentinel = parse_sentinel_url(settings.broker_url)
            self._sentinels = _sentinels(self.sentinel, self._tcp())
        if self.sentinel is None:
            self.client = redis.Redis.from_url(
                settings.broker_url,
                socket_connect_timeout=CHECK_TIMEOUT_S,
                socket_timeout=CHECK_TIMEOUT_S * 5,
                **fail_fast_options(
                    keepalive_s=settings.tcp_keepalive_s, user_timeout_ms=settings.tcp_user_timeout_ms
                ),
            )
        else:
            self.client = redis.Redis(
                connection_pool=self.connection_pool(
                    socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S * 5
                )
            )
        self._spare: SafeRedisBroker | None = None
        self._failures = RedisFailureLog(self.client, self.keys)
        self._deliveries = RedisDeliveryCounter(self.client, self.keys)

    @property
    def failures(self) -> RedisFailureLog:
        return self._failures

    @property
    def deliveries(self) -> RedisDeliveryCounter:
        return self._deliveries

    def _tcp(self) -> dict[str, Any]:
        s = self.settings
        return fail_fast_options(keepalive_s=s.tcp_keepalive_s, user_timeout_ms=s.tcp_user_timeout_ms)

    def connection_pool(self, **options: Any) -> redis.ConnectionPool:
        """A pool of connections to the broker's Redis with the TCP options (and ``options``): the
        URL's server, or with a Sentinel URL the primary its Sentinels name, asked again on every
        new connection (a connection that meets a demoted primary's ``READONLY`` is dropped)."""
        if self.sentinel is None:
            return redis.ConnectionPool.from_url(self.settings.broker_url, **self._tcp(), **options)
        assert self._sentinels is not None
        return SentinelConnectionPool(
            self.sentinel.service,
            self._sentinels,
            db=self.sentinel.db,
            username=self.sentinel.username,
            password=self.sentinel.password,
            **self._tcp(),
            **options,
        )

    def _make_broker(self, middleware: list[Middleware]) -> dramatiq.Broker:
        s = self.settings
        # Dramatiq's RedisBroker builds its pool from ``url`` alone (other keywords go to a
        # ``Redis`` that then ignores them): the pool is built here, with the TCP options (the
        # wake subscriber's pub/sub connection comes from it too).
        return SafeRedisBroker(
            connection_pool=self.connection_pool(),
            namespace=s.broker_namespace,
            heartbeat_timeout=s.broker_heartbeat_timeout_ms,
            maintenance_chance=s.broker_maintenance_chance,
            middleware=middleware,
            wakeup=s.worker_wakeup,
            failure_log=self._failures,
            max_message_bytes=s.max_message_bytes,
            min_replicas=s.broker_min_replicas,
            replica_timeout_ms=s.broker_replica_timeout_ms,
        )

    def middleware(self) -> list[Middleware]:
        return [BrokerMaintenance.from_settings(self.settings)]

    def dead_letters(self, audit: AuditLog, *, queues: Sequence[str] = FLEET_QUEUES) -> RedisDeadLetterStore:
        """Every queue of the namespace that has dead letters is looked at (``queues`` unused)."""
        return RedisDeadLetterStore(self.client, self.keys, failures=self._failures, audit=audit)

    def fleet_state(self) -> RedisFleetState:
        return RedisFleetState(self.client, self.keys, ttl_ms=self.settings.broker_heartbeat_timeout_ms)

    def queue_stats(self, queues: Sequence[str] = FLEET_QUEUES) -> list[QueueStats]:
        """Two round trips (three when a queue has a head message): sizes, the live broker ids'
        unacked sets, then each queue's head payload for its age."""
        k = self.keys
        now_ms = int(time.time() * 1000)
        with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(k.queue(q))
                pipe.llen(k.delayed(q))
                pipe.zcard(k.dead(q))
                pipe.lindex(k.queue(q), 0)
            pipe.hgetall(k.dead_letter_actions)
            pipe.zrange(k.heartbeats, 0, -1)
            *replies, actions, broker_ids = pipe.execute()
        heads = {q: replies[4 * i + 3] for i, q in enumerate(queues)}
        with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                for bid in broker_ids:
                    pipe.scard(k.acks(bid.decode(), q))
            for q, rid in heads.items():
                if rid is not None:
                    pipe.hget(k.messages(q), rid)
            out = pipe.execute()
        n = len(broker_ids)
        in_flight = {q: sum(out[i * n : (i + 1) * n]) for i, q in enumerate(queues)}
        payloads = dict(
            zip([q for q, rid in heads.items() if rid is not None], out[len(queues) * n :], strict=True)
        )
        counts = {key.decode(): int(v) for key, v in actions.items()}
        stats = []
        for i, q in enumerate(queues):
            ready, delayed, dead = replies[4 * i : 4 * i + 3]
            stats.append(
                QueueStats(
                    queue=q,
                    ready=ready,
                    delayed=delayed,
                    in_flight=in_flight[q],
                    dead=dead,
                    oldest_age_s=_age(payloads.get(q), now_ms),
                    replayed=counts.get(f"{q}:replayed", 0),
                    purged=counts.get(f"{q}:purged", 0),
                )
            )
        return stats

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        return (*super().connection_errors(), redis.RedisError)

    @contextmanager
    def scratch(self, name: str) -> Iterator[Settings]:
        """The namespace ``name``, refused unless empty; every key of it deleted afterwards."""
        own = msgspec.structs.replace(self.settings, broker_namespace=name)
        backend = RedisBackend(own)
        try:
            if next(iter(backend.client.scan_iter(backend.keys.all_keys(), count=1000)), None) is not None:
                raise CatfleetError(f"Redis namespace {name} is not empty: not made for this run")
            try:
                yield own
            finally:
                backend.flush()
        finally:
            backend.close()

    def stray_queues(self) -> list[QueueStats]:
        """Queues of the namespace beyond the fleet's that hold messages: one SCAN of the
        namespace (catfleet's own and Dramatiq's internal keys skipped by name), one pipeline of
        TYPE for the rest (a queue's list or its ``.msgs`` hash counts), then ``queue_stats``."""
        k = self.keys
        fleet = set(FLEET_QUEUES)
        keys = [
            key.decode()
            for key in self.client.scan_iter(k.all_keys(), count=1000)
            if not k.is_catfleet_or_internal(key.decode())
        ]
        candidates = [(key, q) for key in keys if (q := k.queue_of_key(key)) is not None and q not in fleet]
        if not candidates:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for key, _ in candidates:
                pipe.type(key)
            types = pipe.execute()
        names = {
            q
            for (key, q), kind in zip(candidates, types, strict=True)
            if kind in (b"list", b"zset") or (kind == b"hash" and key.endswith(".msgs"))
        }
        return self.queue_stats(sorted(names))

    def release(self, consumer_id: str) -> int:
        """Dramatiq's maintenance re-queues the unacked messages of broker ids whose heartbeat is
        older than the timeout: the dead process's id is dated back to 0 and maintenance runs
        now, for every queue it held messages of (acked ones are skipped: their payload is gone)."""
        held = {
            key.decode().rpartition(f"{consumer_id}.")[2]: int(self.client.scard(key))
            for key in self.client.scan_iter(self.keys.acks_pattern(consumer_id), count=1000)
        }
        if not held:
            return 0
        self.client.zadd(self.keys.heartbeats, {consumer_id: 0})
        broker = self._broker if isinstance(self._broker, SafeRedisBroker) else self._maintenance_broker()
        broker.run_dispatch([("qsize", q) for q in sorted(held)], maintenance=True)
        return sum(held.values())

    def _maintenance_broker(self) -> SafeRedisBroker:
        """A broker without middleware or consumers, for maintenance calls (made on first use)."""
        if self._spare is None:
            s = self.settings
            self._spare = SafeRedisBroker(
                connection_pool=self.connection_pool(),
                namespace=s.broker_namespace,
                heartbeat_timeout=s.broker_heartbeat_timeout_ms,
                middleware=[],
                wakeup=False,
            )
        return self._spare

    def workers_seen(self) -> int:
        """Broker clients whose heartbeat is fresher than the heartbeat timeout. Dramatiq beats on
        every broker call, so a producer counts too while it enqueues."""
        since = int(time.time() * 1000) - self.settings.broker_heartbeat_timeout_ms
        return int(self.client.zcount(self.keys.heartbeats, since, "+inf"))

    def check(self) -> Check:
        try:
            self.client.ping()
        except Exception as exc:
            return Check.failed(exc)
        return Check(ok=True)

    def flush(self, queues: Sequence[str] = FLEET_QUEUES) -> None:
        """Every key of the namespace."""
        for key in self.client.scan_iter(self.keys.all_keys(), count=1000):
            self.client.delete(key)

    def close(self) -> None:
        super().close()
        if self._spare is not None:
            self._spare.close()
        self.client.close()
        if self._sentinels is not None:  # a pool handed to ``Redis`` is not closed with it
            self.client.connection_pool.disconnect()
            self._sentinels.close()


class _Sentinels(Sentinel):
    """redis-py's Sentinel client, whose "no master" error names the Sentinels in one short line
    (redis-py's has the repr of every Sentinel client in it, passwords masked but hundreds of
    characters long)."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            address: tuple[str, int] = super().discover_master(service_name)
        except MasterNotFoundError:
            hosts = ", ".join(
                "{host}:{port}".format_map(s.connection_pool.connection_kwargs) for s in self.sentinels
            )
            raise MasterNotFoundError(
                f"no Sentinel ({hosts}) names a primary for {service_name!r} that is up"
                " (unreachable Sentinels, an unknown service, or a failover in progress)"
            ) from None
        return address


def _sentinels(url: SentinelURL, tcp: dict[str, Any]) -> Sentinel:
    """The Sentinels of ``url``: short timeouts and no retries (redis-py's default client retries
    a refused connection 3 times with backoff: seconds lost on a dead Sentinel before the next is
    asked), the TCP options, their own password if any."""
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": CHECK_TIMEOUT_S / 4,
        "socket_timeout": CHECK_TIMEOUT_S,
        **tcp,
    }
    if url.sentinel_password:
        options["password"] = url.sentinel_password
    return _Sentinels(url.sentinels, sentinel_kwargs=options)


def _age(payload: bytes | None, now_ms: int) -> float | None:
    if not payload:
        return None
    try:
        ts = _ts_decoder.decode(payload).message_timestamp
    except msgspec.DecodeError:
        return None
    return max(now_ms - ts, 0) / 1000


__all__ = ["RedisBackend", "RedisDeadLetterStore", "RedisFailureLog", "RedisKeys", "SafeRedisBroker"]
