"""Learning from corrections against the real PostgreSQL, without a broker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from pipeline.categorize import Categorizer
from pipeline.errors import ConflictingCorrection, PermanentError, UnknownCategory, UnknownExpense
from pipeline.learning import DEACTIVATE_BELOW, WEAKEN_FACTOR, Learner
from tests.support import data
from tests.support.learning import fix


def version(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]


def patterns(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, user_id, category_id, kind, value, round(weight::numeric, 4)::float8, source, active,"
        " usage_count, success_count FROM categorization_patterns ORDER BY id"
    ).fetchall()


def row_of(conn: psycopg.Connection[Any], expense_id: int) -> tuple[Any, ...]:
    return conn.execute(
        "SELECT category_id, pattern_id, confidence, band, method, source, explanation"
        " FROM categorizations WHERE expense_id = %s",
        (expense_id,),
    ).fetchone()  # type: ignore[return-value]


def test_correction_writes_user_row_learns_pattern_and_bumps_version(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [e1, e2] = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "SQ *STARBUCKS"], user_id=5)
    categorizer.categorize([e1])
    assert row_of(conn, e1)[0] == cats["coffee"]
    before = version(conn)
    report = learner.learn(fix(e1, "dining"), message_id="m-1")
    assert not report.duplicate and report.user_id == 5
    assert report.previous_category_id == cats["coffee"]
    assert report.ruleset_version == version(conn) > before
    category, pattern_id, confidence, band, method, source, explanation = row_of(conn, e1)
    assert (category, pattern_id, confidence, band, method, source) == (
        cats["dining"],
        report.pattern_id,
        1.0,
        "auto",
        "user",
        "user",
    )
    assert explanation["decided_by"] == "user" and explanation["correction_id"] == report.correction_id
    learned = [p for p in patterns(conn) if p[6] == "learned"]
    assert learned == [
        (report.pattern_id, 5, cats["dining"], "merchant", "starbucks", 0.75, "learned", True, 1, 1)
    ]
    # the user's learned pattern now outranks the global one for this user (one correction: suggest)
    categorizer.categorize([e2])
    assert row_of(conn, e2)[:4] == (cats["dining"], report.pattern_id, 0.75, "suggest")
    assert row_of(conn, e2)[6]["decided_by"] == "user_merchant"
    # ... and a second and third agreeing correction make it automatic
    for e in data.add_expenses(conn, ["STARBUCKS", "STARBUCKS #12"], user_id=5):
        learner.learn(fix(e, "dining"))
    [e3] = data.add_expenses(conn, ["STARBUCKS COFFEE"], user_id=5)  # prefix 'starbucks', discounted
    [e4] = data.add_expenses(conn, ["STARBUCKS"], user_id=5)
    categorizer.categorize([e3, e4])
    assert row_of(conn, e4)[:4] == (cats["dining"], report.pattern_id, 0.875, "auto")
    assert row_of(conn, e3)[0] == cats["dining"]
    # another user still gets the global pattern
    [other] = data.add_expenses(conn, ["STARBUCKS"], user_id=6)
    categorizer.categorize([other])
    assert row_of(conn, other)[0] == cats["coffee"]


def test_replay_of_a_correction_changes_nothing(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [e] = data.add_expenses(conn, ["UBER *EATS"])
    categorizer.categorize([e])
    first = learner.learn(fix(e, "dining", "k-1"))
    snapshot = (patterns(conn), row_of(conn, e), version(conn), conn.execute("TABLE corrections").fetchall())
    again = learner.learn(fix(e, "dining", "k-1"))
    assert again.duplicate and again.correction_id == first.correction_id
    assert (
        patterns(conn),
        row_of(conn, e),
        version(conn),
        conn.execute("TABLE corrections").fetchall(),
    ) == snapshot
    # the same key for a different correction is refused, and changes nothing either
    with pytest.raises(ConflictingCorrection, match="k-1"):
        learner.learn(fix(e, "fuel", "k-1"))
    assert patterns(conn) == snapshot[0] and version(conn) == snapshot[2]


def test_user_row_survives_later_auto_runs(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [e] = data.add_expenses(conn, ["WALMART"])
    learner.learn(fix(e, "fuel"))
    kept = row_of(conn, e)
    for _ in range(2):
        report = categorizer.categorize([e])
        assert report.outcomes == {"user_kept": 1} and report.written == 0
    conn.execute(
        "UPDATE categorization_patterns SET weight = 0.99 WHERE value = 'walmart' AND user_id IS NULL"
    )
    categorizer.categorize([e])  # a new ruleset version does not take it back either
    assert row_of(conn, e) == kept and kept[0] == cats["fuel"] and kept[5] == "user"


def test_conflicting_corrections_lower_the_learned_confidence(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["AMAZON.COM*2K4"] * 5, user_id=9)
    for e in ids[:3]:
        learner.learn(fix(e, "groceries"))
    [probe1] = data.add_expenses(conn, ["AMAZON"], user_id=9)
    categorizer.categorize([probe1])
    alone = row_of(conn, probe1)
    assert alone[0] == cats["groceries"] and alone[3] == "auto"
    for e in ids[3:]:
        learner.learn(fix(e, "coffee"))
    weights = {p[2]: p[5] for p in patterns(conn) if p[6] == "learned"}
    assert weights == {
        cats["groceries"]: pytest.approx(3.5 / 6, abs=1e-4),
        cats["coffee"]: pytest.approx(2.5 / 6, abs=1e-4),
    }
    [probe2] = data.add_expenses(conn, ["AMAZON"], user_id=9)
    categorizer.categorize([probe2])
    mixed = row_of(conn, probe2)
    assert mixed[2] < alone[2] and mixed[3] == "none" and mixed[0] is None


def test_pattern_behind_a_wrong_answer_is_weakened_then_switched_off(
    learner: Learner, categorizer: Categorizer, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    pid = data.add_pattern(conn, cats["dining"], "keyword", "pizza", weight=0.95, user_id=3)
    ids = data.add_expenses(conn, [f"PIZZA PLACE {name}" for name in "ABCD"], user_id=3)
    categorizer.categorize(ids)
    assert {row_of(conn, e)[1] for e in ids} == {pid}
    expected = 0.95
    for e in ids:
        report = learner.learn(fix(e, "groceries"))
        assert pid in report.weakened
        expected *= WEAKEN_FACTOR
        [(weight, active)] = conn.execute(
            "SELECT weight, active FROM categorization_patterns WHERE id = %s", (pid,)
        ).fetchall()
        assert weight == pytest.approx(max(expected, 0.05), rel=1e-5)
        assert active == (expected >= DEACTIVATE_BELOW)
    assert not active  # 0.95 x 0.7^4 = 0.228: below the floor
    # a global pattern is not weakened by one user's correction, only its miss is counted
    [s] = data.add_expenses(conn, ["STARBUCKS"], user_id=3)
    categorizer.categorize([s])
    glob = row_of(conn, s)[1]
    before = conn.execute(
        "SELECT weight, active, usage_count FROM categorization_patterns WHERE id = %s", (glob,)
    )
    b = before.fetchone()
    report = learner.learn(fix(s, "dining"))
    assert glob not in report.weakened
    after = conn.execute(
        "SELECT weight, active, usage_count FROM categorization_patterns WHERE id = %s", (glob,)
    ).fetchone()
    assert after == (b[0], b[1], b[2] + 1)  # type: ignore[index]


def test_bad_corrections_are_permanent_errors(
    learner: Learner, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [e] = data.add_expenses(conn, ["STARBUCKS"])
    with pytest.raises(UnknownCategory, match="'no-such-category'"):
        learner.learn(fix(e, "no-such-category"))
    with pytest.raises(UnknownExpense, match="unknown expense 999999"):
        learner.learn(fix(999_999, "coffee"))
    conn.execute("UPDATE expenses SET deleted_at = now() WHERE id = %s", (e,))
    with pytest.raises(PermanentError):
        learner.learn(fix(e, "coffee"))
    assert conn.execute("SELECT count(*) FROM corrections").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM categorizations").fetchone() == (0,)


def test_expense_without_a_merchant_gets_the_user_row_and_no_pattern(
    learner: Learner, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [e] = data.add_expenses(conn, ["#1234 ***"])
    report = learner.learn(fix(e, "fuel"))
    assert report.pattern_id is None and row_of(conn, e)[0] == cats["fuel"]
    assert [p for p in patterns(conn) if p[6] == "learned"] == []


def test_concurrent_conflicting_corrections_keep_consistent_counters(
    learner: Learner, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    ids = data.add_expenses(conn, ["AMAZON MKTPLACE"] * 24, user_id=2)
    keys = ["groceries", "coffee", "dining"]
    with ThreadPoolExecutor(max_workers=3) as pool:
        reports = list(pool.map(lambda i: learner.learn(fix(ids[i], keys[i % 3])), range(len(ids))))
    assert not any(r.duplicate for r in reports)
    rows = conn.execute(
        "SELECT category_id, usage_count, success_count, weight FROM categorization_patterns"
        " WHERE source = 'learned' ORDER BY category_id"
    ).fetchall()
    assert [r[2] for r in rows] == [8, 8, 8]
    assert max(r[1] for r in rows) == 24  # the oldest pattern saw every correction of the merchant
    assert all(r[3] == pytest.approx((r[2] + 0.5) / (r[1] + 1), abs=1e-6) for r in rows)
