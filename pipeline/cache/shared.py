"""L2: the pattern cache every worker shares, on a Redis Cluster (or a single Redis).

Keys carry the ruleset version, so a rule change makes every entry stale at once; they also
expire after a TTL. Entries are msgpack arrays of array-like Patterns; the empty array is a
negative entry ("no pattern for this merchant"). A batch is one pipelined round trip per node.
Every call goes through the circuit breaker, and redis-py errors become CacheUnavailable here.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import msgspec
import redis

from pipeline.cache.base import Entry, PatternTier
from pipeline.cache.breaker import CacheBreaker
from pipeline.cache.client import (
    DEFAULT_KEEPALIVE_S,
    DEFAULT_USER_TIMEOUT_MS,
    Client,
    open_client,
    pipeline,
)
from pipeline.errors import CacheUnavailable
from pipeline.matcher import MerchantKey
from schemas import Pattern

log = logging.getLogger("catfleet.cache")
T = TypeVar("T")

#: Merchant keys are spread over this many hash-tagged buckets (slots) per ruleset version.
BUCKETS = 64

#: Errors of the Redis client that mean "the cache is unavailable".
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[Pattern, ...])


def encode_entry(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(raw: bytes) -> Entry:
    return _decoder.decode(raw)


class SharedTier(PatternTier):
    name = "l2"

    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        ttl_seconds: int,
        timeout_s: float,
        breaker: CacheBreaker,
        connect: Callable[[str, float], Client] | None = None,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        user_timeout_ms: int = DEFAULT_USER_TIMEOUT_MS,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._connect = connect or (
            lambda u, t: open_client(u, timeout_s=t, keepalive_s=keepalive_s, user_timeout_ms=user_timeout_ms)
        )
        self._client: Client | None = None
        self._client_lock = threading.Lock()

    # keys ------------------------------------------------------------------------------------

    def merchant_key(self, version: int, key: MerchantKey) -> str:
        """``<prefix>:{v<version>:<bucket>}:m:<user or 0>:<merchant>``. The hash tag puts a
        bucket's keys in one slot, so a batch reads each bucket with one MGET."""
        scope, value = key
        bucket = zlib.crc32(f"{scope}:{value}".encode()) % BUCKETS
        return f"{self.prefix}:{{v{version}:{bucket}}}:m:{scope}:{value}"

    def rules_key(self, version: int) -> str:
        return f"{self.prefix}:v{version}:rules"

    # the tier --------------------------------------------------------------------------------

    def get_merchants(self, version: int, keys: Collection[MerchantKey]) -> dict[MerchantKey, Entry]:
        wanted = list(keys)
        if not wanted:
            return {}
        names = [self.merchant_key(version, k) for k in wanted]
        raws = self._run(lambda c: _mget_by_tag(c, names))
        found: dict[MerchantKey, Entry] = {}
        for key, raw in zip(wanted, raws, strict=True):
            entry = _decoded(raw)
            if entry is not None:
                found[key] = entry
        return found

    def put_merchants(self, version: int, entries: Mapping[MerchantKey, Entry]) -> None:
        if not entries:
            return
        items = [(self.merchant_key(version, k), encode_entry(e)) for k, e in entries.items()]
        self._run(lambda c: _set_many(c, items, self.ttl_seconds))

    def get_rules(self, version: int) -> Entry | None:
        raws = self._run(lambda c: _get_many(c, [self.rules_key(version)]))
        return _decoded(raws[0])

    def put_rules(self, version: int, patterns: Entry) -> None:
        item = (self.rules_key(version), encode_entry(patterns))
        self._run(lambda c: _set_many(c, [item], self.ttl_seconds))

    def clear(self) -> int:
        """Delete every key under this tier's prefix (all versions); returns how many."""

        def delete_all(client: Client) -> int:
            deleted, batch = 0, []
            for key in client.scan_iter(f"{self.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:  # one UNLINK per 1000 keys (split by slot on a cluster)
                    deleted += int(client.unlink(*batch))
                    batch = []
            return deleted + (int(client.unlink(*batch)) if batch else 0)

        return self._run(delete_all)

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # the boundary ----------------------------------------------------------------------------

    def _run(self, op: Callable[[Client], T]) -> T:
        """``op`` through the breaker; redis errors become CacheUnavailable (cause kept).

        The client is kept across failures: both clients reconnect by themselves, and the
        cluster client keeps the topology it learned (its seed node may be the one down)."""
        try:
            return self.breaker.call(lambda: op(self._connected()))
        except REDIS_ERRORS as exc:
            raise CacheUnavailable(f"{self.name} cache failed: {exc}") from exc

    def _connected(self) -> Client:
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect(self.url, self.timeout_s)
                client = self._client
        return client


def _get_many(client: Client, names: list[str]) -> list[Any]:
    pipe = pipeline(client)
    for name in names:
        pipe.get(name)
    return list(pipe.execute())


def _mget_by_tag(client: Client, names: list[str]) -> list[Any]:
    """One MGET per hash tag (= one slot), all in one pipeline: one round trip per node."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name[name.index("{") : name.index("}")], []).append(i)
    pipe = pipeline(client)
    for positions in groups.values():
        pipe.execute_command("MGET", *(names[i] for i in positions))
    out: list[Any] = [None] * len(names)
    for positions, values in zip(groups.values(), pipe.execute(), strict=True):
        for i, value in zip(positions, values, strict=True):
            out[i] = value
    return out


def _set_many(client: Client, items: list[tuple[str, bytes]], ttl: int) -> None:
    pipe = pipeline(client)
    for name, value in items:
        pipe.set(name, value, ex=ttl)
    pipe.execute()


def _decoded(raw: bytes | None) -> Entry | None:
    if raw is None:
        return None
    try:
        return decode_entry(raw)
    except msgspec.DecodeError:  # not ours or from an older format: a miss, overwritten on back-fill
        return None
