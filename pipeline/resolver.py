"""Pattern resolution through the tiers: L1 -> L2 -> L3, back-filling on the way out.

A tier that fails (its breaker open, a timeout) is treated as a miss and is not back-filled:
results are the same with or without it, only slower.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Collection, Sequence

from pipeline.cache.base import Entry, PatternTier
from pipeline.errors import CacheUnavailable
from pipeline.matcher import MerchantKey
from pipeline.overlay import Overlay
from pipeline.rules import Ruleset
from pipeline.stores import PatternSource

log = logging.getLogger(__name__)


class PatternResolver:
    def __init__(self, source: PatternSource, tiers: Sequence[PatternTier]):
        self.source = source
        self.tiers = list(tiers)
        self._compiled: Ruleset | None = None
        self._compile_lock = threading.Lock()
        #: the rule set of a rolled-out candidate, keyed (version, candidate, revision)
        self._candidate: tuple[tuple[int, int, int], Ruleset] | None = None

    def merchants(
        self, version: int, keys: Collection[MerchantKey], stats: Counter[str]
    ) -> dict[MerchantKey, Entry]:
        """An entry for every key; ``stats`` counts '<tier>_hit' / '<tier>_miss' / '<tier>_error'."""
        found: dict[MerchantKey, Entry] = {}
        missing = set(keys)
        passed: list[PatternTier] = []  # tiers that answered and missed: back-fill them
        for tier in self.tiers:
            if not missing:
                break
            try:
                got = tier.get_merchants(version, missing)
            except CacheUnavailable:
                stats[f"{tier.name}_error"] += len(missing)
                continue
            stats[f"{tier.name}_hit"] += len(got)
            stats[f"{tier.name}_miss"] += len(missing) - len(got)
            self._backfill(passed, version, got)
            found.update(got)
            missing.difference_update(got)
            passed.append(tier)
        if missing:
            loaded = self.source.load_merchants(missing)
            stats["l3_hit"] += sum(1 for entry in loaded.values() if entry)
            stats["l3_miss"] += sum(1 for entry in loaded.values() if not entry)
            self._backfill(passed, version, loaded)
            found.update(loaded)
        return found

    def _backfill(
        self, tiers: Sequence[PatternTier], version: int, entries: dict[MerchantKey, Entry]
    ) -> None:
        if not entries:
            return
        for tier in tiers:
            try:
                tier.put_merchants(version, entries)
            except CacheUnavailable:
                log.debug("back-fill of %s skipped: tier unavailable", tier.name)

    def rules(self, version: int) -> Ruleset:
        """The compiled rule set of ``version`` (compiled once per process and version)."""
        compiled = self._compiled
        if compiled is not None and compiled.version == version:
            return compiled
        with self._compile_lock:
            if self._compiled is not None and self._compiled.version == version:
                return self._compiled
            patterns = self._rule_patterns(version)
            self._compiled = Ruleset(version, patterns)
            return self._compiled

    def candidate_rules(self, version: int, overlay: Overlay) -> Ruleset:
        """The rule set of ``version`` as the candidate has it (compiled once per process, version
        and candidate revision, next to the current one)."""
        key = (version, overlay.candidate_id, overlay.revision)
        compiled = self._candidate
        if compiled is not None and compiled[0] == key:
            return compiled[1]
        with self._compile_lock:
            if self._candidate is not None and self._candidate[0] == key:
                return self._candidate[1]
            ruleset = Ruleset(version, overlay.rules(self._rule_patterns(version)))
            self._candidate = (key, ruleset)
            return ruleset

    def _rule_patterns(self, version: int) -> Entry:
        passed: list[PatternTier] = []
        for tier in self.tiers:
            try:
                cached = tier.get_rules(version)
            except CacheUnavailable:
                continue
            if cached is not None:
                for earlier in passed:
                    earlier.put_rules(version, cached)
                return cached
            passed.append(tier)
        loaded_version, patterns = self.source.load_rules()
        if loaded_version == version:  # a newer version is cached under its own key next time
            for tier in passed:
                with contextlib.suppress(CacheUnavailable):
                    tier.put_rules(version, patterns)
        return patterns
