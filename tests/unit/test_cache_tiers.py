"""Pure units of the cache tiers: the L1 bound and the L2 entry encoding."""

from __future__ import annotations

from pipeline.cache import LocalTier
from pipeline.cache.shared import decode_entry, encode_entry
from schemas import Pattern, PatternKind

P = Pattern(id=7, user_id=12, category_id=3, kind=PatternKind.MERCHANT, value="STARBUCKS", weight=0.95)


def test_l1_stays_bounded_under_a_million_distinct_merchants() -> None:
    bound = 50_000
    tier = LocalTier(max_entries=bound, ttl_seconds=300)
    negative: tuple[Pattern, ...] = ()
    for start in range(0, 1_000_000, 10_000):
        tier.put_merchants(1, {(0, f"merchant {i}"): negative for i in range(start, start + 10_000)})
        assert len(tier) <= bound
    assert len(tier) == bound
    # the most recent ones are there, the oldest were evicted
    assert tier.get_merchants(1, [(0, "merchant 999999"), (0, "merchant 0")]) == {(0, "merchant 999999"): ()}


def test_entries_encode_compactly_and_round_trip() -> None:
    assert encode_entry(()) == b"\x90"
    assert decode_entry(encode_entry((P, P))) == (P, P)
    assert len(encode_entry((P,))) < 40
