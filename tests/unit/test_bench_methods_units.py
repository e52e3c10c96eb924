"""The bench's bookkeeping, without servers: the throughput plan alternates the floor with the
fleet, the cache's ceiling is set by first sightings, percentiles are nearest-rank."""

from __future__ import annotations

from collections import Counter

import pytest

from workers.bench.cache import Sightings, ceilings
from workers.bench.env import Written, percentile
from workers.bench.scenarios import after_commit_latencies_ms, throughput_plan


def test_the_throughput_plan_alternates_floor_and_fleet_and_both_log_levels() -> None:
    plan = throughput_plan(3, "INFO")
    kinds = [kind for kind, _ in plan]
    assert kinds == ["floor", "fleet", "fleet", "naive"] * 3  # floor, fleet, ..., floor, fleet: no blocks
    fleets = [level for kind, level in plan if kind == "fleet"]
    assert fleets == ["INFO", "WARNING", "WARNING", "INFO", "INFO", "WARNING"]  # who goes first alternates
    assert {level for kind, level in plan if kind == "naive"} == {"INFO"}
    assert [lv for k, lv in throughput_plan(1, "WARNING") if k == "fleet"] == ["WARNING", "INFO"]


def test_the_ceiling_counts_first_sightings_per_process_and_per_fleet() -> None:
    s = Sightings()
    a, b = s.process(), s.process()
    s.counting = True
    v = 7
    # process a sees x, y first (fleet firsts: L3), then x again (L1 hit)
    s.l1(a, v, [(0, "x"), (0, "y")], found=[])
    s.l2([(0, "x"), (0, "y")], found=[])
    s.l1(a, v, [(0, "x")], found=[(0, "x")])
    # process b: x is new to it but not to the fleet (L2 answers); z is new everywhere
    s.l1(b, v, [(0, "x"), (0, "z")], found=[])
    s.l2([(0, "x"), (0, "z")], found=[(0, "x")])
    # process a: y was seen here before but L1 lost it, and L2 did not have it either
    s.l1(a, v, [(0, "y")], found=[])
    s.l2([(0, "y")], found=[])
    counts: Counter[str] = s.counts
    assert (counts["lookups"], counts["fleet_first"], counts["process_first"]) == (6, 3, 4)
    got = ceilings(counts)
    assert got["l1"] == {"hit_rate": round(1 / 6, 4), "ceiling": round(1 - 4 / 6, 4), "of_ceiling": 0.5}
    assert got["cache"] == {"hit_rate": round(2 / 6, 4), "ceiling": 0.5, "of_ceiling": round(2 / 3, 4)}
    assert got["l2_of_l1_misses"] == {"hit_rate": 0.2, "ceiling": 0.4, "of_ceiling": 0.5}
    assert got["cache_misses_by_cause"] == {"first_sighting": 0.5, "seen_in_this_process": round(1 / 6, 4)}
    assert got["l1_misses_by_cause"] == {
        "first_in_this_process": round(1 / 6, 4),
        "first_sighting": 0.5,
        "seen_in_this_process": round(1 / 6, 4),
    }


def test_nothing_is_counted_during_the_warm_up() -> None:
    s = Sightings()
    a = s.process()
    s.l1(a, 1, [(0, "x")], found=[])
    s.l2([(0, "x")], found=[])
    s.counting = True
    s.l1(a, 1, [(0, "x")], found=[(0, "x")])
    assert s.counts == Counter({"lookups": 1, "l1_hit": 1})  # x was first seen in the warm-up


def test_latency_samples_are_receipt_minus_send_of_single_expense_writes() -> None:
    got = after_commit_latencies_ms(
        [Written(at=2.5, rows=1, lo=9, hi=9), Written(1.1, 1, 8, 8)], {8: 1.0, 9: 2.0}
    )
    assert got == pytest.approx([100.0, 500.0])
    with pytest.raises(RuntimeError, match="single-expense"):
        after_commit_latencies_ms([Written(at=2.0, rows=2, lo=1, hi=2)], {1: 1.0})


def test_percentiles_are_nearest_rank() -> None:
    values = [float(i) for i in range(1, 2001)]
    assert percentile(values, 0.999) == 1998.0  # p99.9 of 2,000 samples: two above it
    assert percentile(values, 0.5) == 1000.0 and percentile(values, 1.0) == 2000.0
    assert percentile([3.0], 0.99) == 3.0
