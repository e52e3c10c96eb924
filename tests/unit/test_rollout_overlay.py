"""The candidate overlay (pipeline.overlay): the rollout's user buckets, staged changes folded,
and the overlay applied to merchant entries and rule patterns."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from pipeline.overlay import Overlay, StagedChange, fold, in_rollout, overlay_of, rollout_bucket
from schemas import Pattern, PatternKind

ROOT = Path(__file__).resolve().parents[2]


def pattern(
    pid: int, value: str, *, kind: PatternKind = PatternKind.MERCHANT, user: int | None = None
) -> Pattern:
    return Pattern(id=pid, user_id=user, category_id=pid * 10, kind=kind, value=value, weight=0.9)


def test_buckets_are_sha256_based_and_the_same_in_another_interpreter() -> None:
    digest = hashlib.sha256(b"7:12345").digest()
    assert rollout_bucket(7, 12345) == int.from_bytes(digest[:7], "big") % 100
    # another process with another PYTHONHASHSEED: Python's hash() would differ, this does not
    code = "from pipeline.overlay import rollout_bucket; print([rollout_bucket(3, u) for u in range(50)])"
    other = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == str([rollout_bucket(3, u) for u in range(50)])


def test_a_share_chooses_about_that_share_and_grows_monotonically() -> None:
    buckets = Counter(rollout_bucket(1, u) // 10 for u in range(20_000))
    assert all(1_700 < n < 2_300 for n in buckets.values()) and len(buckets) == 10
    at10 = {u for u in range(2_000) if in_rollout(1, u, 10)}
    at30 = {u for u in range(2_000) if in_rollout(1, u, 30)}
    assert at10 < at30 and 120 < len(at10) < 280
    assert {u for u in range(2_000) if in_rollout(2, u, 10)} != at10  # independent per candidate
    assert not any(in_rollout(1, u, 0) for u in range(500)) and all(in_rollout(1, u, 100) for u in range(500))


def change(cid: int, op: str, pid: int, **kw: object) -> StagedChange:
    fields: dict[str, object] = {
        "created": False,
        "staged": None,
        "weight": None,
        "active": None,
        "current": None,
    }
    fields.update(kw)
    return StagedChange(id=cid, op=op, pattern_id=pid, **fields)  # type: ignore[arg-type]


def test_fold_applies_changes_in_order() -> None:
    starbucks, walmart, pizza = (
        pattern(1, "starbucks"),
        pattern(2, "walmart"),
        pattern(3, "pizza", kind=PatternKind.KEYWORD),
    )
    new = pattern(9, "corner boutique")
    states = fold(
        [
            change(4, "delete", 2, current=walmart),
            change(1, "edit", 1, weight=0.5, current=starbucks),
            change(2, "add", 9, created=True, staged=new, weight=0.9, active=True),
            change(3, "disable", 3, active=False, current=pizza),
            change(5, "edit", 9, weight=0.7),  # an edit of the pattern it adds
            change(6, "enable", 3, active=True, current=pizza),
            change(7, "edit", 77, weight=0.3),  # a pattern gone since it was staged
        ]
    )
    assert states[1].pattern.weight == 0.5 and states[1].active and not states[1].deleted
    assert states[2].deleted
    assert states[3].active  # disabled, then enabled again
    assert states[9].created and states[9].pattern.weight == 0.7
    assert states[77].vanished
    overlay = overlay_of(5, 2, states)
    assert overlay.touched == {1, 2, 3, 9}
    assert [(p.id, p.weight) for p in overlay.patterns] == [(1, 0.5), (3, 0.9), (9, 0.7)]


def test_overlay_swaps_the_touched_patterns_in_entries_and_rules() -> None:
    starbucks, walmart, user_walmart = (
        pattern(1, "starbucks"),
        pattern(2, "walmart"),
        pattern(4, "walmart", user=8),
    )
    keyword = pattern(3, "pizza", kind=PatternKind.KEYWORD)
    overlay = Overlay(
        candidate_id=1,
        revision=1,
        touched=frozenset({1, 2, 3, 9}),
        patterns=(
            Pattern(
                id=1, user_id=None, category_id=10, kind=PatternKind.MERCHANT, value="starbucks", weight=0.5
            ),
            pattern(9, "walmart"),
        ),
    )
    found = {
        (0, "starbucks"): (starbucks,),
        (0, "walmart"): (walmart,),
        (8, "walmart"): (user_walmart,),
        (0, "x"): (),
    }
    out = overlay.merchants(found)
    assert out[(0, "starbucks")][0].weight == 0.5
    assert [p.id for p in out[(0, "walmart")]] == [9]  # 2 deleted, 9 added under the same name
    assert out[(8, "walmart")] == (user_walmart,) and out[(0, "x")] == ()
    assert found[(0, "walmart")] == (walmart,)  # the current ruleset's entries are left as they were
    assert overlay.rules([keyword, pattern(5, "fuel", kind=PatternKind.KEYWORD)]) == (
        pattern(5, "fuel", kind=PatternKind.KEYWORD),
    )
