"""Choosing a category: precedence, confidence, band and the explanation stored with it.

Precedence, highest first: the user's own merchant preference, the user's other patterns,
global merchant patterns, global rules. Within a tier the category with the highest combined
score wins (ties: lowest category id); a competing category in the same tier, or in a stronger
tier that was too unsure to decide, lowers the confidence; agreeing hits from other tiers raise it. Below the suggest threshold the
expense stays uncategorized.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from pipeline.rules import Hit
from schemas import Pattern, PatternKind

#: A merchant pattern found by a shorter prefix of the name counts for less per dropped level.
PREFIX_DISCOUNT = 0.92
#: How much of the runner-up's score is taken off the winner's confidence.
CONFLICT_PENALTY = 0.5
#: How much an agreeing hit from another tier adds (as a fraction of its score).
SUPPORT_BONUS = 0.5
MAX_EXPLAINED_HITS = 8

TIERS = ("user_merchant", "user_rule", "global_merchant", "global_rule")
MerchantKey = tuple[int, str]  # (user id, or 0 for global; normalized merchant)
#: The key ``(user, USER_ENTRY)`` holds all of a user's own merchant patterns, up to
#: ``USER_ENTRY_MAX`` (a longer entry means "too many: look them up per merchant name"), so a
#: batch needs one cache entry per user, not one per user and merchant.
USER_ENTRY = ""
USER_ENTRY_MAX = 500


class Thresholds(msgspec.Struct, frozen=True):
    auto: float
    suggest: float


class Decision(msgspec.Struct, frozen=True):
    category_id: int | None
    pattern_id: int | None
    confidence: float
    band: str  # auto | suggest | none
    method: str  # kind of the deciding pattern, or "none"
    explanation: dict[str, object]


def merchant_hits(
    user_id: int, keys: Sequence[str], found: Mapping[MerchantKey, Sequence[Pattern]]
) -> list[Hit]:
    """Hits of the most specific key that has patterns, per scope (the user's, then global)."""
    hits: list[Hit] = []
    for scope in (user_id, 0):
        for level, key in enumerate(keys):
            patterns = found.get((scope, key), ())
            if patterns:
                factor = PREFIX_DISCOUNT**level
                why = f"merchant {key!r}" + (" (prefix)" if level else "")
                hits.extend(Hit(p, p.weight * factor, why) for p in patterns)
                break
    return hits


def _tier(hit: Hit) -> int:
    p = hit.pattern
    return (0 if p.user_id is not None else 2) + (0 if p.kind is PatternKind.MERCHANT else 1)


def _combine(scores: Sequence[float]) -> float:
    miss = 1.0
    for s in scores:
        miss *= 1.0 - s
    return 1.0 - miss


def decide(hits: Sequence[Hit], thresholds: Thresholds) -> Decision:
    if not hits:
        return _NO_HIT
    # One pass: each hit's tier, the hits in precedence order, and the scores per (tier, category).
    ordered = sorted((_tier(h), -h.score, h.pattern.id, i, h) for i, h in enumerate(hits))
    groups: dict[tuple[int, int], list[float]] = {}
    for tier, _, _, _, h in ordered:
        groups.setdefault((tier, h.pattern.category_id), []).append(h.score)
    combined = {key: _combine(scores) for key, scores in groups.items()}
    fired = [_explain(h) for *_, h in ordered[:MAX_EXPLAINED_HITS]]
    best_weak = 0.0
    for tier in sorted({t for t, _ in combined}):
        ranked = sorted(((score, -c) for (t, c), score in combined.items() if t == tier), reverse=True)
        score, neg_category = ranked[0]
        category = -neg_category
        runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
        # A weaker tier decides only what the stronger ones left open: their disagreeing hits
        # (the user's own, ambiguous history of a merchant) count against it like a runner-up.
        overruled = max((v for (t, c), v in combined.items() if t < tier and c != category), default=0.0)
        confidence = score * (1.0 - CONFLICT_PENALTY * max(runner_up, overruled))
        for t, _, _, _, h in ordered:
            if t != tier and h.pattern.category_id == category:
                confidence = 1.0 - (1.0 - confidence) * (1.0 - SUPPORT_BONUS * h.score)
        confidence = round(min(confidence, 1.0), 4)
        if confidence >= thresholds.suggest:
            lead = next(h for t, _, _, _, h in ordered if t == tier and h.pattern.category_id == category)
            band = "auto" if confidence >= thresholds.auto else "suggest"
            explanation = {"decided_by": TIERS[tier], "runner_up_score": round(runner_up, 4), "fired": fired}
            return Decision(category, lead.pattern.id, confidence, band, lead.pattern.kind.value, explanation)
        best_weak = max(best_weak, confidence)
    reason = "every candidate scored below the suggest threshold"
    explanation = {"decided_by": None, "reason": reason, "fired": fired}
    return Decision(None, None, round(best_weak, 4), "none", "none", explanation)


_NO_HIT = Decision(
    None, None, 0.0, "none", "none", {"decided_by": None, "reason": "no pattern fired", "fired": []}
)


def _explain(hit: Hit) -> dict[str, object]:
    p = hit.pattern
    return {
        "pattern_id": p.id,
        "kind": p.kind.value,
        "scope": "global" if p.user_id is None else "user",
        "category_id": p.category_id,
        "score": round(hit.score, 4),
        "why": hit.detail,
    }
