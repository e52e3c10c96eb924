"""Choosing a category: precedence, confidence, band and the explanation stored with it.

Precedence, highest first: the user's own merchant preference, the user's other patterns,
global merchant patterns (seed and person-saved), fleet-learned merchant patterns (merchants
enough different users corrected alike), the user's learned tokens, the fleet's learned tokens,
global rules. Within a tier the category with the highest combined score wins (ties: lowest
category id); a competing category in the same tier, or in a stronger tier that was too unsure
to decide, lowers the confidence; agreeing hits from other tiers raise it. Below the suggest
threshold the expense stays uncategorized.

Tokens of one merchant say the same thing more than once ('petrol', 'petrol station'), so a
token tier scores a category by its best token, not by combining them; and a token's score with
fewer than ``TOKEN_STRONG_MERCHANTS`` agreeing merchants is capped just under the auto threshold
(alone it is a suggestion; agreeing hits of other tiers may still lift it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from pipeline.rules import Hit
from pipeline.tokens import TOKEN_STRONG_MERCHANTS, token_keys
from schemas import Pattern, PatternKind

#: A merchant pattern found by a shorter prefix of the name counts for less per dropped level.
PREFIX_DISCOUNT = 0.92
#: How much of the runner-up's score is taken off the winner's confidence.
CONFLICT_PENALTY = 0.5
#: How much an agreeing hit from another tier adds (as a fraction of its score).
SUPPORT_BONUS = 0.5
MAX_EXPLAINED_HITS = 8

TIERS = (
    "user_merchant",
    "user_rule",
    "global_merchant",
    "fleet_merchant",
    "user_token",
    "fleet_token",
    "global_rule",
)
TOKEN_TIERS = frozenset({4, 5})
#: Token decisions below TOKEN_STRONG_MERCHANTS stay this far under the auto threshold.
TOKEN_CAP_MARGIN = 0.001
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
    #: the candidate ruleset that made it (a rollout user's; None: the ruleset alone)
    candidate_id: int | None = None


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


def token_hits(user_id: int, merchant: str, found: Mapping[MerchantKey, Sequence[Pattern]]) -> list[Hit]:
    """Hits of the learned token votes of the normalized merchant's tokens: the user's, then the
    fleet's."""
    hits: list[Hit] = []
    for scope in (user_id, 0):
        for key in token_keys(merchant):
            for p in found.get((scope, key), ()):
                why = f"token {p.value!r}: {p.support} of {p.seen} merchants"
                hits.append(Hit(p, p.weight, why))
    return hits


def _tier(hit: Hit) -> int:
    p = hit.pattern
    """The index of the hit's tier in ``TIERS`` (lower: stronger)."""
    p = hit.pattern
    if p.kind is PatternKind.TOKEN:
        return 4 if p.user_id is not None else 5
    if p.user_id is not None:
        return 0 if p.kind is PatternKind.MERCHANT else 1
    if p.kind is PatternKind.MERCHANT:
        return 3 if p.seen else 2  # seen > 0: learned from different users' corrections
    return 6


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
    combined = {k: max(scores) if k[0] in TOKEN_TIERS else _combine(scores) for k, scores in groups.items()}
    fired = [_explain(h) for *_, h in ordered[:MAX_EXPLAINED_HITS]]
    best_weak = 0.0
    for tier in sorted({t for t, _ in combined}):
        ranked = sorted(((score, -c) for (t, c), score in combined.items() if t == tier), reverse=True)
        score, neg_category = ranked[0]
        category = -neg_category
        runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
        lead = next(h for t, _, _, _, h in ordered if t == tier and h.pattern.category_id == category)
        if tier in TOKEN_TIERS and lead.pattern.support < TOKEN_STRONG_MERCHANTS:
            # weak token evidence alone is at most a suggestion; agreeing other tiers may lift it
            score = min(score, thresholds.auto - TOKEN_CAP_MARGIN)
        # A weaker tier decides only what the stronger ones left open: their disagreeing hits
        # (the user's own, ambiguous history of a merchant) count against it like a runner-up.
        overruled = max((v for (t, c), v in combined.items() if t < tier and c != category), default=0.0)
        confidence = score * (1.0 - CONFLICT_PENALTY * max(runner_up, overruled))
        for t, _, _, _, h in ordered:
            if t != tier and h.pattern.category_id == category:
                confidence = 1.0 - (1.0 - confidence) * (1.0 - SUPPORT_BONUS * h.score)
        confidence = round(min(confidence, 1.0), 4)
        if confidence >= thresholds.suggest:
            band = "auto" if confidence >= thresholds.auto else "suggest"
            explanation: dict[str, object] = {
                "decided_by": TIERS[tier],
                "runner_up_score": round(runner_up, 4),
                "fired": fired,
            }
            pattern_id: int | None = lead.pattern.id
            if tier in TOKEN_TIERS:
                pattern_id = None  # a token vote is no categorization_patterns row
                explanation["tokens"] = [
                    {"token": h.pattern.value, "merchants": h.pattern.support, "of": h.pattern.seen}
                    for t, _, _, _, h in ordered
                    if t == tier and h.pattern.category_id == category
                ]
            elif tier == 3:
                explanation["users"] = {"agreeing": lead.pattern.support, "of": lead.pattern.seen}
            return Decision(category, pattern_id, confidence, band, lead.pattern.kind.value, explanation)
        best_weak = max(best_weak, confidence)
    reason = "every candidate scored below the suggest threshold"
    explanation = {"decided_by": None, "reason": reason, "fired": fired}
    return Decision(None, None, round(best_weak, 4), "none", "none", explanation)


_NO_HIT = Decision(
    None, None, 0.0, "none", "none", {"decided_by": None, "reason": "no pattern fired", "fired": []}
)


def _explain(hit: Hit) -> dict[str, object]:
    p = hit.pattern
    line: dict[str, object] = {
        "pattern_id": None if p.kind is PatternKind.TOKEN else p.id,
        "kind": p.kind.value,
        "scope": "global" if p.user_id is None else "user",
        "category_id": p.category_id,
        "score": round(hit.score, 4),
        "why": hit.detail,
    }
    tier = _tier(hit)
    if tier in TOKEN_TIERS:
        line.update(tier="token", token=p.value, merchants=p.support, of=p.seen)
    elif tier == 3:
        line.update(tier="fleet", users=p.support, of=p.seen)
    return line
