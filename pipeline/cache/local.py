"""L1: a bounded, thread-safe LRU with TTL inside each worker process.

cachetools caches are not thread-safe, and a TTLCache mutates on reads too (a get moves the key
to the recent end, ``len()`` first drops expired entries), so every access takes one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

import cachetools

from pipeline.cache.base import Entry, PatternTier
from pipeline.matcher import MerchantKey


class LocalTier(PatternTier):
    name = "l1"

    def __init__(self, *, max_entries: int, ttl_seconds: float):
        self._cache: cachetools.TTLCache[tuple[int, int, str], Entry] = cachetools.TTLCache(
            maxsize=max_entries, ttl=ttl_seconds
        )
        self._rules: cachetools.TTLCache[int, Entry] = cachetools.TTLCache(maxsize=4, ttl=ttl_seconds)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:  # TTLCache.__len__ expires entries first: it mutates the cache
            return len(self._cache)

    def get_merchants(self, version: int, keys: Collection[MerchantKey]) -> dict[MerchantKey, Entry]:
        found = {}
        with self._lock:
            for key in keys:
                entry = self._cache.get((version, *key))
                if entry is not None:
                    found[key] = entry
        return found

    def put_merchants(self, version: int, entries: Mapping[MerchantKey, Entry]) -> None:
        with self._lock:
            for (scope, value), entry in entries.items():
                self._cache[(version, scope, value)] = entry

    def get_rules(self, version: int) -> Entry | None:
        with self._lock:
            return self._rules.get(version)

    def put_rules(self, version: int, patterns: Entry) -> None:
        with self._lock:
            self._rules[version] = patterns
