"""The plug point of the pattern cache: one tier of merchant entries and rule sets."""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping

from pipeline.matcher import MerchantKey
from schemas import Pattern

#: An entry is the tuple of patterns for a key; the empty tuple caches "no pattern".
Entry = tuple[Pattern, ...]


class PatternTier(abc.ABC):
    """A cache tier. Keys are versioned by the ruleset version, so a new version misses everywhere."""

    name: str

    @abc.abstractmethod
    def get_merchants(self, version: int, keys: Collection[MerchantKey]) -> dict[MerchantKey, Entry]:
        """The entries this tier holds for ``keys``; absent keys are misses."""

    @abc.abstractmethod
    def put_merchants(self, version: int, entries: Mapping[MerchantKey, Entry]) -> None:
        """Store entries (including empty ones: negative caching)."""

    @abc.abstractmethod
    def get_rules(self, version: int) -> Entry | None:
        """The non-merchant patterns of ``version``, or None on a miss."""

    @abc.abstractmethod
    def put_rules(self, version: int, patterns: Entry) -> None: ...
