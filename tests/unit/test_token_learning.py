"""Token and fleet tiers without a server: tokens, precedence, caps, explanations, the cache format."""

from __future__ import annotations

import msgspec
import pytest

from pipeline.cache.shared import decode_entry, encode_entry
from pipeline.errors import InvalidPattern
from pipeline.matcher import Thresholds, decide, token_hits
from pipeline.memory import MemoryDatabase, MemoryPatternStore
from pipeline.rules import Hit, canonical_value
from pipeline.tokens import merchant_tokens, token_key, token_weight
from schemas import Pattern, PatternKind

T = Thresholds(auto=0.85, suggest=0.70)


def token(pid: int, cat: int, value: str, support: int, seen: int, user: int | None = 7) -> Pattern:
    return Pattern(
        id=-pid,
        user_id=user,
        category_id=cat,
        kind=PatternKind.TOKEN,
        value=value,
        weight=token_weight(support, seen),
        support=support,
        seen=seen,
    )


def merchant(pid: int, cat: int, weight: float, user: int | None = None, seen: int = 0) -> Pattern:
    return Pattern(
        id=pid,
        user_id=user,
        category_id=cat,
        kind=PatternKind.MERCHANT,
        value="zed garage",
        weight=weight,
        support=seen,
        seen=seen,
    )


def hit(p: Pattern) -> Hit:
    return Hit(p, p.weight, f"{p.kind.value} {p.value}")


def test_tokens_are_words_and_adjacent_pairs_once() -> None:
    assert merchant_tokens("shell petrol station") == (
        "shell", "petrol", "station", "shell petrol", "petrol station"
    )  # fmt: skip
    assert merchant_tokens("the co op") == ("the co", "co op")  # short words and stopwords only in pairs
    assert merchant_tokens("") == ()
    assert token_weight(2, 2) == 0.8 and token_weight(5, 5) == 0.9091


def test_token_hits_come_from_the_users_then_the_fleets_entries() -> None:
    mine, fleet = token(1, 3, "petrol", 2, 2), token(2, 3, "petrol", 4, 4, user=None)
    found = {(7, token_key("petrol")): (mine,), (0, token_key("petrol")): (fleet,)}
    hits = token_hits(7, "shell petrol", found)
    assert [h.pattern for h in hits] == [mine, fleet]
    assert hits[0].detail == "token 'petrol': 2 of 2 merchants"


def test_a_weak_token_is_capped_below_auto_and_tokens_do_not_add_up() -> None:
    low = Thresholds(auto=0.75, suggest=0.70)  # 2 of 2 merchants (0.8) would be auto here
    hits = [hit(token(2, 3, "petrol", 2, 2)), hit(token(1, 3, "petrol station", 2, 2))]
    d = decide(hits, low)
    assert (d.category_id, d.band, d.confidence, d.pattern_id, d.method) == (
        3,
        "suggest",
        0.749,
        None,
        "token",
    )
    assert d.explanation["decided_by"] == "user_token"
    assert d.explanation["tokens"] == [
        {"token": "petrol", "merchants": 2, "of": 2},
        {"token": "petrol station", "merchants": 2, "of": 2},
    ]
    strong = decide([hit(token(1, 3, "petrol", 3, 3))], T)
    assert (strong.band, strong.confidence) == ("auto", 0.8571)


def test_precedence_user_merchant_global_merchant_fleet_tokens() -> None:
    user_own = merchant(1, 10, 0.75, user=7)
    seed = merchant(2, 20, 0.9)
    fleet = merchant(3, 30, 0.8571, seen=3)
    tok = token(4, 40, "garage", 9, 9)
    assert (
        decide([hit(tok), hit(fleet), hit(seed), hit(user_own)], T).explanation["decided_by"]
        == "user_merchant"
    )
    assert decide([hit(tok), hit(fleet), hit(seed)], T).explanation["decided_by"] == "global_merchant"
    d = decide([hit(tok), hit(fleet)], T)
    assert (d.category_id, d.explanation["decided_by"], d.explanation["users"]) == (
        30, "fleet_merchant", {"agreeing": 3, "of": 3}
    )  # fmt: skip
    assert d.explanation["fired"][0]["tier"] == "fleet"
    assert decide([hit(token(5, 40, "garage", 9, 9, user=None)), hit(tok)], T).explanation["decided_by"] == (
        "user_token"
    )


def test_token_patterns_cannot_be_saved() -> None:
    with pytest.raises(InvalidPattern, match="learned"):
        canonical_value(PatternKind.TOKEN, "petrol")


def test_cached_entries_keep_the_evidence_and_old_entries_still_decode() -> None:
    p = token(1, 3, "petrol", 2, 2)
    assert decode_entry(encode_entry((p,))) == (p,)
    old = msgspec.msgpack.encode([[7, None, 3, "merchant", "starbucks", 0.95]])  # before 0007
    assert decode_entry(old) == (
        Pattern(id=7, user_id=None, category_id=3, kind=PatternKind.MERCHANT, value="starbucks", weight=0.95),
    )


def test_memory_store_has_no_token_learning_and_answers_token_keys_empty() -> None:
    db = MemoryDatabase()
    db.add_pattern(category_id=1, kind="merchant", value="PETROL")
    store = MemoryPatternStore(db)
    found = store.load_merchants({(7, token_key("petrol")), (0, token_key("petrol")), (0, "petrol")})
    assert found[(7, token_key("petrol"))] == () and found[(0, token_key("petrol"))] == ()
    assert [p.value for p in found[(0, "petrol")]] == ["petrol"]
