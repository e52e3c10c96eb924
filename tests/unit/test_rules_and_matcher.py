import datetime as dt
import logging

import pytest

from pipeline.errors import InvalidPattern
from pipeline.matcher import Thresholds, decide, merchant_hits
from pipeline.rules import Hit, Ruleset, SkippedPattern, canonical_value
from schemas import Expense, Pattern, PatternKind

T = Thresholds(auto=0.85, suggest=0.70)


def pat(pid: int, cat: int, kind: str, value: str, weight: float = 0.95, user: int | None = None) -> Pattern:
    return Pattern(
        id=pid,
        user_id=user,
        category_id=cat,
        kind=PatternKind(kind),
        value=canonical_value(kind, value),
        weight=weight,
    )


def exp(merchant: str, description: str = "", amount: float = 10.0, hour: int = 12) -> Expense:
    return Expense(
        id=1,
        user_id=7,
        merchant_name=merchant,
        description=description,
        amount=amount,
        currency="USD",
        transaction_date=dt.date(2026, 3, 14),  # a Saturday
        transaction_time=dt.time(hour, 0),
    )


@pytest.mark.parametrize("regex", ["(a+)+\\1", "(?=lookahead)", "(?<=behind)x", "x" * 301])
def test_regexes_re2_rejects_are_refused_at_save_time(regex: str) -> None:
    with pytest.raises(InvalidPattern):
        canonical_value("regex", regex)


def test_catastrophic_regex_runs_in_linear_time() -> None:
    rules = Ruleset(1, [pat(1, 1, "regex", "(a+)+$")])
    # each field is cut (256 / 768 characters) before matching: keep the "!" inside the cut
    assert rules.match(exp("a" * 250 + "!", "a" * 760 + "!"), "x") == []  # at once under RE2


@pytest.mark.parametrize("value", ["5..", "..10", "lots", "10..5", ""])
def test_amount_range_values(value: str) -> None:
    if value in ("5..", "..10"):
        assert canonical_value("amount_range", value) == value.replace("5", "5.0").replace("10", "10.0")
    else:
        with pytest.raises(InvalidPattern):
            canonical_value("amount_range", value)


def test_rules_fire_by_kind() -> None:
    rules = Ruleset(
        3,
        [
            pat(1, 10, "keyword", "pizza", 0.8),
            pat(2, 11, "description", "team lunch", 0.75),
            pat(3, 12, "regex", r"^uber\s*\*?\s*eats", 0.97),
            pat(4, 13, "amount_range", "..5", 0.3),
            pat(5, 14, "time", "days=sat,sun;hours=6-11", 0.3),
        ],
    )
    hits = rules.match(exp("UBER EATS PIZZA", "Team lunch", amount=4.5, hour=9), "uber eats pizza")
    assert sorted(h.pattern.id for h in hits) == [1, 2, 3, 4, 5]
    # a description pattern never fires on the merchant name
    assert [h.pattern.id for h in rules.match(exp("TEAM LUNCH CO"), "team lunch")] == []


def test_user_merchant_beats_global_and_conflicts_lower_confidence() -> None:
    found = {
        (7, "starbucks"): (pat(1, 20, "merchant", "starbucks", 0.9, user=7),),
        (0, "starbucks"): (pat(2, 21, "merchant", "starbucks"),),
    }
    d = decide(merchant_hits(7, ["starbucks"], found), T)
    assert (d.category_id, d.band, d.explanation["decided_by"]) == (20, "auto", "user_merchant")


def test_prefix_match_is_discounted_and_weak_guesses_stay_uncategorized() -> None:
    found = {(0, "uber"): (pat(1, 30, "merchant", "uber", 0.95),)}
    d = decide(merchant_hits(7, ["uber trip", "uber"], found), T)
    assert d.category_id == 30 and d.confidence == pytest.approx(0.95 * 0.92, abs=1e-4)
    weak = decide([Hit(pat(2, 31, "keyword", "market", 0.6), 0.6, "kw")], T)
    assert (weak.category_id, weak.band, weak.confidence) == (None, "none", 0.6)


def test_competing_categories_in_one_tier_are_ambiguous() -> None:
    hits = [
        Hit(pat(1, 40, "keyword", "pizza", 0.8), 0.8, "a"),
        Hit(pat(2, 41, "keyword", "fuel", 0.88), 0.88, "b"),
    ]
    d = decide(hits, T)
    assert d.band == "none"  # 0.88 * (1 - 0.5 * 0.8) = 0.528


def test_ties_are_broken_deterministically() -> None:
    a = Hit(pat(1, 51, "keyword", "alpha", 0.9), 0.9, "a")
    b = Hit(pat(2, 50, "keyword", "beta", 0.9), 0.9, "b")
    assert (
        decide([a, b], Thresholds(0.4, 0.3)).category_id
        == decide([b, a], Thresholds(0.4, 0.3)).category_id
        == 50
    )


def test_agreeing_rules_from_other_tiers_raise_confidence() -> None:
    found = {(0, "joes"): (pat(1, 60, "merchant", "joes", 0.8),)}
    hits = [*merchant_hits(7, ["joes"], found), Hit(pat(2, 60, "keyword", "pizza", 0.8), 0.8, "kw")]
    d = decide(hits, T)
    assert d.band == "auto" and d.confidence == pytest.approx(1 - 0.2 * 0.6)


def test_an_unsure_user_history_lowers_a_global_answer() -> None:
    """The user's learned patterns for a merchant disagree (too unsure to decide): a global
    pattern may still answer, but not with the confidence it would have alone."""
    glob = pat(3, 70, "merchant", "amazon", 0.95)
    alone = decide(merchant_hits(7, ["amazon"], {(0, "amazon"): (glob,)}), T)
    assert (alone.category_id, alone.band, alone.confidence) == (70, "auto", 0.95)
    found = {
        (7, "amazon"): (
            pat(1, 71, "merchant", "amazon", 0.58, user=7),
            pat(2, 72, "merchant", "amazon", 0.42, user=7),
        ),
        (0, "amazon"): (glob,),
    }
    d = decide(merchant_hits(7, ["amazon"], found), T)
    assert (d.category_id, d.band) == (None, "none")  # alone it would have been auto
    assert d.confidence == pytest.approx(0.95 * (1 - 0.5 * 0.58), abs=1e-4)
    sure = {(7, "amazon"): (pat(1, 71, "merchant", "amazon", 0.2, user=7),), (0, "amazon"): (glob,)}
    d = decide(merchant_hits(7, ["amazon"], sure), T)
    assert (d.category_id, d.confidence, d.explanation["decided_by"]) == (70, 0.855, "global_merchant")


# Rows written by plain SQL skip the save-time check: the rule set skips what it cannot compile.

BAD_ROWS = [
    pytest.param("regex", r"(\w+)\s+\1", "invalid escape sequence", id="regex-backreference"),
    pytest.param("regex", "(?=pizza)pizza", "invalid perl operator", id="regex-lookahead"),
    pytest.param("regex", "[unclosed", "missing ]", id="regex-syntax"),
    pytest.param("amount_range", "lots", "amount_range must look like", id="amount-range"),
    pytest.param("time", "after lunch", "time pattern must be", id="time"),
]


def raw(pid: int, cat: int, kind: str, value: str) -> Pattern:
    """A pattern as loaded from a row that was written without canonical_value."""
    return Pattern(id=pid, user_id=None, category_id=cat, kind=PatternKind(kind), value=value, weight=0.9)


@pytest.mark.parametrize(("kind", "value", "reason"), BAD_ROWS)
def test_a_value_that_does_not_compile_is_skipped_not_raised(
    kind: str, value: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InvalidPattern):  # what the save-time check would have said
        canonical_value(kind, value)
    good = [pat(1, 10, "keyword", "pizza", 0.8), pat(2, 12, "regex", r"^uber\s*\*?\s*eats", 0.97)]
    with caplog.at_level(logging.ERROR, logger="pipeline.rules"):
        rules = Ruleset(42, [*good, raw(99, 11, kind, value)])
    assert [(s.pattern.id, reason in s.reason) for s in rules.skipped] == [(99, True)]
    hits = rules.match(exp("UBER EATS PIZZA", "team lunch", amount=12.0, hour=13), "uber eats pizza")
    assert sorted(h.pattern.id for h in hits) == [1, 2]  # the good rules still fire
    [record] = [r for r in caplog.records if r.__dict__.get("event") == "patterns_skipped"]
    assert record.__dict__["ruleset_version"] == 42 and record.__dict__["count"] == 1
    assert record.__dict__["skipped"][0]["pattern_id"] == 99 and "99" in record.getMessage()


def test_skips_are_logged_once_per_compile_and_reported_to_hooks(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import rules as rules_module

    monkeypatch.setattr(rules_module, "_skip_hooks", [])
    seen: list[tuple[int, str, int]] = []
    rules_module.on_skipped_pattern(
        lambda s, version: seen.append((s.pattern.id, s.pattern.kind.value, version))
    )

    def broken(skip: SkippedPattern, version: int) -> None:
        raise RuntimeError("metrics exporter down")

    rules_module.on_skipped_pattern(broken)  # a broken hook changes nothing
    bad = [raw(10 + i, 1, "regex", f"(a{i})\\1") for i in range(30)] + [raw(50, 1, "time", "never")]
    with caplog.at_level(logging.ERROR, logger="pipeline.rules"):
        rules = Ruleset(7, [pat(1, 2, "keyword", "fuel"), *bad])
    assert len(rules.skipped) == 31
    assert seen == [(p.id, p.kind.value, 7) for p in bad]
    lines = [r for r in caplog.records if r.__dict__.get("event") == "patterns_skipped"]
    assert len(lines) == 1 and lines[0].__dict__["count"] == 31
    assert len(lines[0].__dict__["skipped"]) == 20  # bounded
    assert [h.pattern.id for h in rules.match(exp("SHELL", "fuel"), "shell")] == [1]


def test_a_clean_ruleset_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="pipeline.rules"):
        rules = Ruleset(1, [pat(1, 2, "regex", "^shell"), pat(2, 3, "time", "hours=6-9")])
    assert rules.skipped == () and caplog.records == []


def test_regexes_too_many_for_one_re2_set_are_split_and_all_still_match() -> None:
    """Each is valid alone; together they pass RE2's memory budget for one set. Nothing raises,
    nothing is skipped, and every regex still fires (in stored order)."""
    regexes = [
        pat(i, 1, "regex", f"(merchant|vendor)[a-z ]{{1,20}}code{i:04d}[a-z]{{0,9}}(x|y)")
        for i in range(2000)
    ]
    rules = Ruleset(3, regexes)
    assert rules.skipped == ()
    assert len(rules._regex_sets) > 1
    subject = "vendor acme code0007x merchant acme code0799y"
    assert [h.pattern.id for h in rules.match(exp(subject), "vendor acme")] == [7, 799]


@pytest.mark.parametrize(
    ("regex", "merchant", "description", "fires"),
    [
        ("boutique$", "BLUE BOUTIQUE", "", True),  # the merchant line's end (an empty description)
        ("boutique$", "BLUE BOUTIQUE  ", "card purchase", True),  # stripped; a description after it
        ("boutique$", "BOUTIQUE BLUE", "", False),
        ("^blue", "BLUE BOUTIQUE", "", True),
        ("^blue", "THE BLUE", "", False),
        ("^refund", "SHOP", "Refund for order 12", True),  # the description line's start
        ("order \\d+$", "SHOP", "refund for order 12", True),
        ("^shop refund", "SHOP", "refund", False),  # the two fields are separate lines
    ],
)
def test_regex_anchors_work_on_the_merchant_and_the_description(
    regex: str, merchant: str, description: str, fires: bool
) -> None:
    rules = Ruleset(1, [pat(1, 2, "regex", regex)])
    hits = rules.match(exp(merchant, description), "")
    assert [h.pattern.id for h in hits] == ([1] if fires else [])
