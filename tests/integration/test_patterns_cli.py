"""``catfleet patterns``: list, disable, enable, add (real CLI processes, real PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg
import pytest

from pipeline.db import Database
from pipeline.learning import Learner
from schemas import Correction
from tests.support import data
from tests.support.services import run_catfleet
from workers.settings import Settings


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_catfleet(settings, "patterns", *args)


def version(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]


def test_list_disable_enable_a_learned_pattern(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    [e] = data.add_expenses(conn, ["SQ *BLUE BOTTLE COFFEE"], user_id=4)
    db = Database.connect(settings.database_url, size=1, wait=True)
    try:
        learned = Learner(db).learn(Correction(expense_id=e, category_key="coffee", idempotency_key="k"))
    finally:
        db.close()

    out = cli(settings, "list", "--source", "learned", "--json")
    assert out.returncode == 0, out.stderr
    [p] = json.loads(out.stdout)
    assert (p["id"], p["user_id"], p["kind"], p["value"], p["category"], p["source"], p["active"]) == (
        learned.pattern_id,
        4,
        "merchant",
        "blue bottle coffee",
        "coffee",
        "learned",
        True,
    )
    assert (p["weight"], p["usage_count"], p["success_count"]) == (0.75, 1, 1)
    assert json.loads(cli(settings, "list", "--user", "5", "--json").stdout) == []
    assert len(json.loads(cli(settings, "list", "--kind", "keyword", "--json").stdout)) == 2  # the seeds

    text = cli(settings, "list", "--user", "4").stdout.splitlines()
    assert text[0].split() == [
        "id",
        "user",
        "kind",
        "value",
        "category",
        "weight",
        "source",
        "active",
        "used",
        "ok",
        "problem",
    ]
    assert "blue bottle coffee" in text[1] and text[-1] == "1 pattern(s)"

    before = version(conn)
    out = cli(settings, "disable", str(learned.pattern_id))
    assert (out.returncode, out.stdout.strip()) == (0, f"pattern {learned.pattern_id} disabled")
    assert version(conn) > before  # every worker sees it on its next batch
    assert json.loads(cli(settings, "list", "--source", "learned", "--json").stdout)[0]["active"] is False
    assert cli(settings, "enable", str(learned.pattern_id)).returncode == 0
    assert json.loads(cli(settings, "list", "--source", "learned", "--json").stdout)[0]["active"] is True

    missing = cli(settings, "disable", "987654")
    assert missing.returncode == 2 and "unknown pattern 987654" in missing.stderr


def test_add_normalizes_and_validates(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    out = cli(
        settings, "add", "--kind", "merchant", "--value", "TST* Joe's Pizza #12",
        "--category", "dining", "--user", "7", "--weight", "0.8", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)
    assert added["created"] is True
    stored = conn.execute(
        "SELECT user_id, kind, value, weight::float8, source, active FROM categorization_patterns WHERE id = %s",
        (added["id"],),
    ).fetchone()
    assert stored == (7, "merchant", "joes pizza", pytest.approx(0.8), "user", True)

    again = cli(
        settings, "add", "--kind", "merchant", "--value", "JOES PIZZA", "--category", "dining", "--user", "7"
    )
    assert again.returncode == 0 and again.stdout.strip() == f"pattern {added['id']} updated and enabled"

    unknown = cli(settings, "add", "--kind", "keyword", "--value", "latte", "--category", "nope")
    assert unknown.returncode == 2 and "unknown category 'nope'" in unknown.stderr
    heavy = cli(
        settings, "add", "--kind", "keyword", "--value", "latte", "--category", "coffee", "--weight", "1.5"
    )
    assert heavy.returncode == 2 and "weight must be in (0, 1]" in heavy.stderr


@pytest.mark.parametrize("regex", [r"^(a|aa)+\1$", r"^(?=(a+))+b", r"(x+x+)+y(?<=z)"])
def test_add_refuses_a_redos_regex_at_save_time(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], regex: str
) -> None:
    before = conn.execute("SELECT count(*) FROM categorization_patterns").fetchone()
    out = cli(settings, "add", "--kind", "regex", f"--value={regex}", "--category", "coffee")
    assert out.returncode == 2
    assert "regex rejected by RE2 (only linear-time syntax is allowed)" in out.stderr
    assert conn.execute("SELECT count(*) FROM categorization_patterns").fetchone() == before
    ok = cli(settings, "add", "--kind", "regex", "--value=^uber\\s*eats", "--category", "dining")
    assert ok.returncode == 0, ok.stderr


def test_list_flags_what_the_workers_skip_and_filters_by_state_category_and_text(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """Rows written by plain SQL skip the save-time checks: the list says which ones the workers
    skip and why, as the compile does; filters narrow by active state, category and value text."""
    broken = {
        "regex": "(?<=lookbehind)x",  # RE2 rejects lookbehind
        "amount_range": "ten..twenty",
        "time": "25:99-26:00",
    }
    ids = {}
    for kind, value in broken.items():
        row = conn.execute(
            "INSERT INTO categorization_patterns (category_id, kind, value, weight, source)"
            " VALUES (%s, %s, %s, 0.8, 'seed') RETURNING id",
            (cats["coffee"], kind, value),
        ).fetchone()
        ids[kind] = row[0]  # type: ignore[index]
    conn.execute("UPDATE categorization_patterns SET active = false WHERE id = %s", (ids["time"],))

    listed = {p["id"]: p for p in json.loads(cli(settings, "list", "--json").stdout)}
    for kind, pid in ids.items():
        assert listed[pid]["problem"], (kind, listed[pid])
    assert "RE2" in listed[ids["regex"]]["problem"]
    assert sum(1 for p in listed.values() if p["problem"]) == 3  # the seeds compile
    text = cli(settings, "list").stdout
    assert "SKIPPED: regex rejected by RE2" in text and "3 skipped by the workers" in text.splitlines()[-1]

    inactive = json.loads(cli(settings, "list", "--inactive", "--json").stdout)
    assert [p["id"] for p in inactive] == [ids["time"]]
    active = json.loads(cli(settings, "list", "--active", "--category", "coffee", "--json").stdout)
    assert {p["id"] for p in active} >= {ids["regex"], ids["amount_range"]} and ids["time"] not in {
        p["id"] for p in active
    }
    assert all(p["category"] == "coffee" for p in active)
    found = json.loads(cli(settings, "list", "--search", "LOOKBEHIND", "--json").stdout)
    assert [p["id"] for p in found] == [ids["regex"]]
    both = cli(settings, "list", "--active", "--inactive")
    assert both.returncode == 2 and "not allowed with" in both.stderr
