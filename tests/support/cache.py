"""Helpers for the pattern-cache tests: an L2 tier on a test server, a categorizer over it,
a mixed expense set, and a snapshot of the stored decisions."""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Collection
from typing import Any

import msgspec
import psycopg

from pipeline.cache import LocalTier, PatternTier, SharedTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.matcher import MerchantKey, Thresholds
from pipeline.resolver import PatternResolver
from pipeline.stores import CategorizationStore, ExpenseStore, PatternStore
from schemas import Pattern
from tests.support import data
from workers.runtime import shared_tier
from workers.settings import Settings

KNOWN = ["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "UBER *TRIP HELP.UBER.COM", "SQ *JOE COFFEE"]


def l2(settings: Settings, url: str, **overrides: Any) -> SharedTier:
    """The worker's L2 tier (workers.runtime.shared_tier) on ``url``; fast breaker by default."""
    fields: dict[str, Any] = {"breaker_fail_max": 2, "breaker_reset_seconds": 1.0, "cache_timeout_ms": 200}
    fields.update(overrides)
    return shared_tier(msgspec.structs.replace(settings, cache_url=url, **fields))


class CountingPatternStore(PatternStore):
    """The real L3 store, counting the merchant keys it is asked for."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.merchant_calls = 0
        self.merchant_keys: Counter[MerchantKey] = Counter()

    def load_merchants(self, keys: Collection[MerchantKey]) -> dict[MerchantKey, tuple[Pattern, ...]]:
        self.merchant_calls += 1
        self.merchant_keys.update(keys)
        return super().load_merchants(keys)


def categorizer(db: Database, tiers: list[PatternTier], store: PatternStore | None = None) -> Categorizer:
    return Categorizer(
        expenses=ExpenseStore(db),
        resolver=PatternResolver(store or PatternStore(db), tiers),
        writer=CategorizationStore(db),
        thresholds=Thresholds(auto=0.85, suggest=0.70),
    )


def tiny_l1() -> LocalTier:
    """An L1 that holds (almost) nothing, so every batch really asks L2."""
    return LocalTier(max_entries=1, ttl_seconds=60)


def seed_mixed(conn: psycopg.Connection[Any], cats: dict[str, int], n: int = 300) -> list[int]:
    """``n`` expenses over 3 users: known merchants, user patterns, keywords, unknown merchants."""
    data.add_pattern(conn, cats["dining"], "merchant", "JOE COFFEE", user_id=2)
    data.add_pattern(conn, cats["coffee"], "merchant", "JOE COFFEE")
    rng = random.Random(7)

    def word() -> str:
        return "".join(rng.choices(string.ascii_uppercase, k=7))

    def merchant(i: int) -> str:
        if i % 3:
            return rng.choice(KNOWN)
        if i % 2:
            return f"{word()} PIZZA"  # a keyword fires, the merchant is unknown
        return f"{word()} {word()} LLC"  # nothing fires

    ids: list[int] = []
    for user in (1, 2, 3):
        ids += data.add_expenses(conn, [merchant(i) for i in range(n // 3)], user_id=user)
    return ids


def snapshot(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The decisions stored (everything but timestamps and message ids)."""
    return conn.execute(
        "SELECT expense_id, category_id, pattern_id, confidence, band, method, explanation"
        " FROM categorizations ORDER BY expense_id"
    ).fetchall()


def batches(ids: list[int], size: int = 50) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]
