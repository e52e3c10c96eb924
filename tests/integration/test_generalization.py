"""Learning beyond the exact merchant against the real PostgreSQL: tokens and fleet-wide patterns."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pipeline.cache import LocalTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.learning import Learner
from pipeline.tokens import FLEET_MIN_USERS, TOKEN_STRONG_MERCHANTS
from tests.support import cache, data
from tests.support.learning import fix


def correct(
    conn: psycopg.Connection[Any], learner: Learner, merchants: list[str], key: str, *, user_id: int
) -> list[int]:
    ids = data.add_expenses(conn, merchants, user_id=user_id)
    for i in ids:
        learner.learn(fix(i, key))
    return ids


def categorize_new(
    conn: psycopg.Connection[Any], categorizer: Categorizer, merchant: str, *, user_id: int
) -> tuple[Any, ...]:
    [e] = data.add_expenses(conn, [merchant], user_id=user_id)
    categorizer.categorize([e])
    return conn.execute(  # type: ignore[return-value]
        "SELECT category_id, pattern_id, round(confidence::numeric, 4)::float8, band, method, explanation"
        " FROM categorizations WHERE expense_id = %s",
        (e,),
    ).fetchone()


def token_votes(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT user_id, token, category_id, merchants FROM learned_token_votes WHERE merchants > 0"
        " ORDER BY user_id, token, category_id"
    ).fetchall()


def global_learned(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT category_id, value, round(weight::numeric, 4)::float8, usage_count, success_count, active"
        " FROM categorization_patterns WHERE user_id IS NULL AND source = 'learned' ORDER BY id"
    ).fetchall()


def version(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]


def test_token_of_two_merchants_applies_to_an_unseen_third(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    correct(conn, learner, ["ACME STATIONERS", "BOBS STATIONERS"], "groceries", user_id=7)
    category, pattern_id, confidence, band, method, explanation = categorize_new(
        conn, categorizer, "CITY STATIONERS", user_id=7
    )
    assert (category, pattern_id, confidence, band, method) == (
        cats["groceries"],
        None,
        0.8,
        "suggest",
        "token",
    )
    assert explanation["decided_by"] == "user_token"
    assert explanation["tokens"] == [{"token": "stationers", "merchants": 2, "of": 2}]
    line = explanation["fired"][0]
    assert (line["tier"], line["token"], line["merchants"], line["of"], line["scope"]) == (
        "token", "stationers", 2, 2, "user"
    )  # fmt: skip
    # the user's own knowledge: another user has none of it
    other = categorize_new(conn, categorizer, "CITY STATIONERS", user_id=8)
    assert (other[0], other[3], other[5]["reason"]) == (None, "none", "no pattern fired")


def test_a_token_applies_automatically_only_with_strong_evidence(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    assert TOKEN_STRONG_MERCHANTS == 3
    correct(conn, learner, ["ACME STATIONERS", "BOBS STATIONERS", "CARLS STATIONERS"], "groceries", user_id=7)
    row = categorize_new(conn, categorizer, "CITY STATIONERS", user_id=7)
    assert (row[0], row[2], row[3]) == (cats["groceries"], 0.8571, "auto")  # 3 / (3 + 0.5)
    # one merchant voting otherwise: 3 of 4, below the suggest threshold
    correct(conn, learner, ["DEES STATIONERS"], "dining", user_id=7)
    row = categorize_new(conn, categorizer, "TOWN STATIONERS", user_id=7)
    assert (row[0], row[3], row[5]["fired"][0]["token"]) == (None, "none", "stationers")
    correct(conn, learner, ["EDS STATIONERS", "FAYS STATIONERS"], "groceries", user_id=7)
    row = categorize_new(conn, categorizer, "VILLAGE STATIONERS", user_id=7)
    assert (row[0], row[2], row[3], row[5]["tokens"]) == (
        cats["groceries"], 0.7692, "suggest", [{"token": "stationers", "merchants": 5, "of": 6}]
    )  # fmt: skip


def test_weak_token_evidence_is_capped_but_an_agreeing_rule_lifts_it(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """The seed keyword 'fuel' (0.88) agrees with a token of two merchants (0.8): together auto."""
    correct(conn, learner, ["ACME FUEL", "BOBS FUEL"], "fuel", user_id=7)
    row = categorize_new(conn, categorizer, "CITY FUEL", user_id=7)
    assert (row[0], row[3], row[5]["decided_by"]) == (cats["fuel"], "auto", "user_token")
    # with no agreeing rule, the same weak token only suggests
    correct(conn, learner, ["ACME GRILL", "BOBS GRILL"], "dining", user_id=7)
    row = categorize_new(conn, categorizer, "CITY GRILL", user_id=7)
    assert (row[0], row[2], row[3]) == (cats["dining"], 0.8, "suggest")


def test_one_merchant_corrected_a_hundred_times_is_one_vote(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    correct(conn, learner, ["ACME STATIONERS"] * 100, "groceries", user_id=7)
    assert ("stationers", 1) in {(t, n) for _, t, _, n in token_votes(conn)}
    row = categorize_new(conn, categorizer, "CITY STATIONERS", user_id=7)
    assert (row[0], row[3], row[5]["reason"]) == (None, "none", "no pattern fired")


def test_repeats_change_nothing_and_a_new_category_moves_the_vote(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [a, _] = correct(conn, learner, ["ACME STATIONERS", "BOBS STATIONERS"], "groceries", user_id=7)
    votes, before = token_votes(conn), version(conn)
    assert learner.learn(fix(a, "groceries")).duplicate  # the same correction again
    learner.learn(fix(a, "groceries", "another key"))  # the same category again, a new key
    assert token_votes(conn) == votes
    learner.learn(fix(a, "dining", "changed my mind"))  # the expense's category changes
    moved = {(t, c): n for _, t, c, n in token_votes(conn)}
    assert moved[("stationers", cats["groceries"])] == 1 and moved[("stationers", cats["dining"])] == 1
    assert ("acme", cats["groceries"]) not in moved and moved[("acme", cats["dining"])] == 1
    assert version(conn) > before
    row = categorize_new(conn, categorizer, "CITY STATIONERS", user_id=7)
    assert row[3] == "none"  # 1 of 2 merchants each: below TOKEN_MIN_MERCHANTS agreeing


def test_a_single_user_cannot_create_a_global_pattern(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    correct(conn, learner, ["ZED GARAGE"] * 20, "fuel", user_id=1)
    assert global_learned(conn) == []
    row = categorize_new(conn, categorizer, "ZED GARAGE", user_id=99)
    assert (row[0], row[3]) == (None, "none")


def test_three_users_create_a_global_pattern_a_new_user_gets_it(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    assert FLEET_MIN_USERS == 3
    for user in (1, 2):
        correct(conn, learner, ["ZED GARAGE"], "fuel", user_id=user)
    assert global_learned(conn) == []
    correct(conn, learner, ["ZED GARAGE #12"], "fuel", user_id=3)
    assert global_learned(conn) == [(cats["fuel"], "zed garage", 0.8571, 3, 3, True)]  # 3 / (3 + 0.5)
    category, pattern_id, confidence, band, method, explanation = categorize_new(
        conn, categorizer, "ZED GARAGE", user_id=99
    )
    assert (category, confidence, band, method) == (cats["fuel"], 0.8571, "auto", "merchant")
    assert explanation["decided_by"] == "fleet_merchant"
    assert explanation["users"] == {"agreeing": 3, "of": 3}
    assert (explanation["fired"][0]["tier"], explanation["fired"][0]["pattern_id"]) == ("fleet", pattern_id)
    # a fourth user disagrees: weaker; two more disagree: the pattern is gone
    correct(conn, learner, ["ZED GARAGE"], "dining", user_id=4)
    assert global_learned(conn) == [(cats["fuel"], "zed garage", 0.6667, 4, 3, True)]
    for user in (5, 6):
        correct(conn, learner, ["ZED GARAGE"], "dining", user_id=user)
    assert global_learned(conn) == []


def test_fleet_tokens_come_from_fleet_votes(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    for user in (1, 2, 3):
        correct(conn, learner, ["ACME PETROL", "BOBS PETROL"], "fuel", user_id=user)
    row = categorize_new(conn, categorizer, "CITY PETROL", user_id=99)
    assert (row[0], row[2], row[3], row[5]["decided_by"]) == (cats["fuel"], 0.8, "suggest", "fleet_token")
    assert row[5]["tokens"] == [{"token": "petrol", "merchants": 2, "of": 2}]


def test_the_users_own_pattern_beats_fleet_and_token_tiers(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    for user in (1, 2, 3):
        correct(conn, learner, ["ZED GARAGE"], "fuel", user_id=user)
    correct(conn, learner, ["ACME STATIONERS", "BOBS STATIONERS"], "fuel", user_id=4)
    correct(conn, learner, ["ZED GARAGE", "CITY STATIONERS"], "dining", user_id=4)
    for merchant in ("ZED GARAGE", "CITY STATIONERS"):
        row = categorize_new(conn, categorizer, merchant, user_id=4)
        assert (row[0], row[3], row[5]["decided_by"]) == (cats["dining"], "suggest", "user_merchant")
    # exact merchant patterns beat tokens: a global seed pattern for a merchant with a learned token
    data.add_pattern(conn, cats["coffee"], "merchant", "TOWN STATIONERS")
    row = categorize_new(conn, categorizer, "TOWN STATIONERS", user_id=4)
    assert (row[0], row[5]["decided_by"]) == (cats["coffee"], "global_merchant")


def test_tokens_cost_no_extra_query_and_many_votes_are_looked_up_per_token(
    learner: Learner,
    db: Database,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    correct(conn, learner, ["ACME STATIONERS", "BOBS STATIONERS"], "groceries", user_id=7)
    correct(conn, learner, ["ACME PETROL", "BOBS PETROL"], "fuel", user_id=7)
    ids = data.add_expenses(conn, ["CITY STATIONERS", "TOWN PETROL", "STARBUCKS"], user_id=7)

    def run(entry_max: int) -> tuple[int, list[tuple[Any, ...]]]:
        monkeypatch.setattr("pipeline.categorize.TOKEN_ENTRY_MAX", entry_max)
        store = cache.CountingPatternStore(db)
        cache.categorizer(db, [LocalTier(max_entries=1000, ttl_seconds=60)], store).categorize(ids)
        rows = conn.execute(
            "SELECT expense_id, category_id, band, explanation::text FROM categorizations"
            " WHERE expense_id = ANY(%s) ORDER BY expense_id",
            (ids,),
        ).fetchall()
        conn.execute("DELETE FROM categorizations WHERE expense_id = ANY(%s)", (ids,))
        return store.merchant_calls, rows

    calls, rows = run(1_000)
    assert calls == 1  # merchants, the user's token entry and the fleet's tokens: one query
    assert [r[1:3] for r in rows] == [
        (cats["groceries"], "suggest"),
        (cats["fuel"], "suggest"),
        (cats["coffee"], "auto"),
    ]
    assert run(1) == (2, rows)  # more votes than an entry holds: a second query, the same answers
