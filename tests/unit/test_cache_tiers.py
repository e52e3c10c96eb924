"""Pure units of the cache tiers: the L1 bound and thread safety, and the L2 entry encoding."""

from __future__ import annotations

import random
import sys
import threading

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


def _entry(version: int, key: tuple[int, str]) -> tuple[Pattern, ...]:
    """The one entry a key may ever hold under a version: any mix-up shows in its value."""
    scope, merchant = key
    value = f"{version}|{scope}|{merchant}"
    return (
        Pattern(
            id=version,
            user_id=scope or None,
            category_id=1,
            kind=PatternKind.MERCHANT,
            value=value,
            weight=0.9,
        ),
    )


def test_l1_under_concurrent_gets_and_puts_stays_bounded_and_never_mixes_entries() -> None:
    """Worker threads share one L1. Small bound, short TTL (entries expire and are evicted all
    the time), overlapping keys and versions, and a thread switch every microsecond."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    bound, threads, rounds = 64, 8, 400
    tier = LocalTier(max_entries=bound, ttl_seconds=0.02)
    errors: list[BaseException] = []
    seen_sizes: list[int] = []
    start = threading.Barrier(threads)

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(rounds):
                version = rng.randint(1, 3)
                keys = [
                    (rng.choice((0, 7, 8)), f"merchant {rng.randrange(200)}")
                    for _ in range(rng.randint(1, 20))
                ]
                if rng.random() < 0.5:
                    tier.put_merchants(version, {k: _entry(version, k) for k in keys})
                for key, entry in tier.get_merchants(version, keys).items():
                    assert key in keys and entry == _entry(version, key), (version, key, entry)
                if rng.random() < 0.1:
                    tier.put_rules(version, _entry(version, (0, "rules")))
                rules = tier.get_rules(version)
                assert rules is None or rules == _entry(version, (0, "rules"))
                seen_sizes.append(len(tier))
        except BaseException as exc:
            errors.append(exc)

    done = threading.Event()

    def measure() -> None:  # len() expires entries too: it must take the lock like the rest
        largest = 0
        try:
            while not done.is_set():
                largest = max(largest, len(tier))
        except BaseException as exc:
            errors.append(exc)
        seen_sizes.append(largest)

    sizer = threading.Thread(target=measure)
    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    sizer.start()
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
    finally:
        done.set()
        sizer.join(timeout=10)
        sys.setswitchinterval(previous)
    assert not any(w.is_alive() for w in [*workers, sizer])
    assert errors == []
    assert len(seen_sizes) > threads * rounds and max(seen_sizes) <= bound
    assert len(tier) <= bound
