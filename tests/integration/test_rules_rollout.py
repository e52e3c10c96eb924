"""Rules rolled out, not flipped (``catfleet patterns ... --stage``, ``catfleet rules``): staging
changes nothing live, a shadow diff writes nothing, a rollout at a percent changes exactly the
hash-chosen users' rows (the same split on a second run, in other processes), promote applies the
candidate, rollback restores the exact previous pattern rows and, re-done with ``backfill
--stale-ruleset``, the exact previous results. Real CLI processes, workers, PostgreSQL, Redis."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from pipeline.cache.client import open_client
from pipeline.overlay import in_rollout
from tests.support import data
from tests.support.services import WorkerProcess, run_catfleet
from workers.settings import Settings

#: Every table a shadow run could touch, by a checksum of its rows.
TABLES = (
    "categorizations",
    "categorization_patterns",
    "ruleset",
    "ruleset_candidates",
    "ruleset_candidate_changes",
    "ruleset_candidate_backups",
    "backfill_runs",
    "corrections",
)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    out = run_catfleet(settings, *args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def checksums(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    sums: dict[str, Any] = {}
    for table in TABLES:
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        ).fetchone()
        sums[table] = row
    return sums


def cache_keys(settings: Settings) -> int:
    client = open_client(settings.cache_url, timeout_s=2.0)
    try:
        return sum(1 for _ in client.scan_iter(f"{settings.cache_prefix}:*", count=1000))
    finally:
        client.close()


def pattern_id(conn: psycopg.Connection[Any], value: str) -> int:
    row = conn.execute("SELECT id FROM categorization_patterns WHERE value = %s", (value,)).fetchone()
    assert row is not None
    return int(row[0])


def version(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT version FROM ruleset").fetchone()[0])  # type: ignore[index]


def stage_changes(settings: Settings, conn: psycopg.Connection[Any]) -> dict[str, int]:
    """A candidate with one of each change; the pattern ids it touches."""
    ids = {v: pattern_id(conn, v) for v in ("walmart", "uber", "pizza")}
    added = json.loads(
        cli(
            settings, "patterns", "add", "--kind", "merchant", "--value", "CORNER BOUTIQUE", "--category",
            "groceries", "--stage", "--json",
        ).stdout
    )  # fmt: skip
    assert added["created"] and added["op"] == "add"
    ids["corner boutique"] = added["pattern_id"]
    cli(settings, "patterns", "disable", str(ids["walmart"]), "--stage")
    cli(settings, "patterns", "delete", str(ids["uber"]), "--stage")
    edit = cli(settings, "patterns", "edit", str(ids["pizza"]), "--weight", "0.95", "--stage")
    assert f"staged edit of pattern {ids['pizza']} into candidate {added['candidate_id']}" in edit.stdout
    return ids


def test_staging_changes_nothing_live_and_a_diff_writes_nothing(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    merchants = ["STARBUCKS", "WALMART", "UBER *TRIP", "JOE'S PIZZA", "SQ *CORNER BOUTIQUE #12"]
    for user in (1, 2):
        data.add_expenses(conn, merchants, user_id=user)
    patterns_before = conn.execute("SELECT p::text FROM categorization_patterns p ORDER BY id").fetchall()
    v0 = version(conn)
    ids = stage_changes(settings, conn)
    assert version(conn) == v0  # staged, not applied: no worker sees a change
    assert (
        conn.execute("SELECT p::text FROM categorization_patterns p ORDER BY id").fetchall()
        == patterns_before
    )
    shown = json.loads(cli(settings, "rules", "show", "--json").stdout)["candidate"]
    assert [(c["op"], c["pattern_id"]) for c in shown["changes"]] == [
        ("add", ids["corner boutique"]),
        ("disable", ids["walmart"]),
        ("delete", ids["uber"]),
        ("edit", ids["pizza"]),
    ]
    assert shown["percent"] == 0 and shown["state"] == "open"
    assert "4 change(s)" in cli(settings, "rules", "show").stdout

    before, keys = checksums(conn), cache_keys(settings)
    out = cli(settings, "rules", "diff", "--all", "--json")
    report = json.loads(out.stdout)
    assert checksums(conn) == before and cache_keys(settings) == keys  # nothing written anywhere
    assert (report["expenses"], report["changed"], report["unchanged"]) == (10, 8, 2)
    moves = {(m["from_category"], m["from_band"], m["to_category"], m["to_band"]): m for m in report["moves"]}
    assert {k: m["count"] for k, m in moves.items()} == {
        (None, "none", "groceries", "auto"): 2,  # the added pattern
        ("groceries", "auto", None, "none"): 2,  # walmart disabled
        ("rideshare", "auto", None, "none"): 2,  # uber deleted
        ("dining", "suggest", "dining", "auto"): 2,  # pizza's weight raised
    }
    [example, _] = moves[(None, "none", "groceries", "auto")]["examples"]
    assert (
        example["merchant"] == "SQ *CORNER BOUTIQUE #12"
        and example["after"]["pattern_id"] == ids["corner boutique"]
    )
    sample = json.loads(cli(settings, "rules", "diff", "--sample", "4", "--seed", "1", "--json").stdout)
    assert sample["expenses"] == 4
    text = cli(settings, "rules", "diff", "--user", "2", "--examples", "1").stdout
    assert "4 of 5 expense(s) would change" in text and "nothing was written" in text
    assert checksums(conn) == before

    # what the workers apply moves the version on: a share, a change staged into a rolled-out
    # candidate, its discard; the discard leaves the patterns as they were
    cli(settings, "rules", "rollout", "--percent", "10")
    v1 = version(conn)
    cli(settings, "patterns", "enable", str(ids["walmart"]), "--stage")
    v2 = version(conn)
    assert v0 < v1 < v2
    assert "candidate 1 discarded" in cli(settings, "rules", "discard").stdout
    assert version(conn) > v2
    assert conn.execute("SELECT rollout_candidate, rollout_percent FROM ruleset").fetchone() == (None, 0)
    assert json.loads(cli(settings, "rules", "show", "--json").stdout)["candidate"] is None
    assert (
        conn.execute("SELECT p::text FROM categorization_patterns p ORDER BY id").fetchall()
        == patterns_before
    )


def rows(conn: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    """Each expense's result: category, pattern, confidence, band, method, explanation, candidate."""
    return {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT expense_id, category_id, pattern_id, confidence, band, method, explanation::text,"
            " candidate_id FROM categorizations"
        )
    }


def backfill(settings: Settings, *selector: str) -> None:
    out = run_catfleet(settings, "backfill", *selector, "--poll", "0.1", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["phase"] == "done"


def test_rollout_promote_rollback_with_real_workers(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    users = range(1, 41)
    owner: dict[int, int] = {}
    merchant_of: dict[int, str] = {}
    merchants = ["WALMART", "SQ *CORNER BOUTIQUE", "STARBUCKS"]
    for user in users:
        for e, merchant in zip(data.add_expenses(conn, merchants, user_id=user), merchants, strict=True):
            owner[e], merchant_of[e] = user, merchant
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        backfill(settings, "--all")
        base = rows(conn)
        assert len(base) == 120 and all(r[-1] is None for r in base.values())
        patterns_before = conn.execute("SELECT p::text FROM categorization_patterns p ORDER BY id").fetchall()

        ids = {"walmart": pattern_id(conn, "walmart")}
        staged = json.loads(
            cli(
                settings, "patterns", "add", "--kind", "merchant", "--value", "corner boutique", "--category",
                "groceries", "--stage", "--json",
            ).stdout
        )  # fmt: skip
        candidate = staged["candidate_id"]
        cli(settings, "patterns", "disable", str(ids["walmart"]), "--stage")
        v0 = version(conn)
        rolled = json.loads(cli(settings, "rules", "rollout", "--percent", "30", "--json").stdout)
        chosen = {u for u in users if in_rollout(candidate, u, 30)}
        assert (
            0 < len(chosen) < len(users) and rolled["users_chosen"] == len(chosen) and rolled["users"] == 40
        )
        assert rolled["version"] > v0  # what the workers apply changed: a new version

        backfill(settings, "--all")
        first = rows(conn)
        boutique, walmart = cats["groceries"], None  # the candidate's categories for them
        for e, row in first.items():
            merchant = merchant_of[e]
            if owner[e] in chosen:
                assert row[-1] == candidate, (e, row)  # the candidate made it, and the row says so
                if "BOUTIQUE" in merchant:
                    assert (row[0], row[1], row[3]) == (boutique, staged["pattern_id"], "auto")
                elif merchant == "WALMART":
                    assert (row[0], row[3]) == (walmart, "none")
                else:
                    assert row[:-1] == base[e][:-1]
            else:
                assert row == base[e], (e, row)  # not chosen: exactly as before
        made = conn.execute(
            "SELECT DISTINCT ruleset_version FROM categorizations WHERE candidate_id = %s", (candidate,)
        ).fetchall()
        assert made == [(rolled["version"],)]
        shown = json.loads(cli(settings, "rules", "show", "--json").stdout)["candidate"]
        assert (shown["percent"], shown["rows"]) == (30, 3 * len(chosen))
        status = run_catfleet(settings, "status", "--json")
        assert json.loads(status.stdout)["rollout"] == {"candidate": candidate, "percent": 30}, status.stderr
    finally:
        worker.stop()

    # a second run in other processes (two of them) splits the users the same way
    worker = WorkerProcess(settings, tmp_path / "worker2.log", processes=2)
    try:
        worker.wait_ready()
        backfill(settings, "--all")
        assert rows(conn) == first

        promoted = json.loads(cli(settings, "rules", "promote", "--json").stdout)
        assert (promoted["added"], promoted["changed"], promoted["deleted"]) == (1, 1, 0)
        backfill(settings, "--stale-ruleset")
        # everyone gets what the candidate gave its users, now made by the ruleset alone
        candidate_result = {merchant_of[e]: row[:-1] for e, row in first.items() if owner[e] in chosen}
        assert {e: row for e, row in rows(conn).items()} == {
            e: (*candidate_result[merchant_of[e]], None) for e in base
        }
        assert promoted["version"] > promoted["base_version"] >= rolled["version"]

        back = json.loads(cli(settings, "rules", "rollback", "--json").stdout)
        assert (back["restored"], back["removed"]) == (1, 1)
        assert (
            conn.execute("SELECT p::text FROM categorization_patterns p ORDER BY id").fetchall()
            == patterns_before
        )
        # exactly the rows the candidate's promotion made (the unchanged ones kept their version)
        out = run_catfleet(settings, "backfill", "--candidate", str(candidate), "--poll", "0.1", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[0])["total"] == 80 + len(chosen)
        assert rows(conn) == base  # the exact previous results
        backfill(settings, "--stale-ruleset")  # the broad way: every row made before the rollback
        assert rows(conn) == base
    finally:
        worker.stop()
    again = run_catfleet(settings, "rules", "rollback")
    assert (
        again.returncode == 1 and "nothing to roll back" in again.stderr and "Traceback" not in again.stderr
    )


def test_bad_input_is_one_line(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    walmart = str(pattern_id(conn, "walmart"))
    cases = {
        ("rules", "promote"): (1, "nothing staged"),
        ("rules", "rollout", "--percent", "10"): (1, "nothing staged"),
        ("rules", "diff"): (1, "nothing staged"),
        ("rules", "rollout", "--percent", "101"): (2, "must be 0..100"),
        ("patterns", "edit", walmart, "--weight", "1.5", "--stage"): (2, "weight must be in (0, 1]"),
        ("patterns", "edit", walmart, "--weight", "0"): (2, "weight must be in (0, 1]"),
        ("patterns", "delete", "987654", "--stage"): (2, "unknown pattern 987654"),
        ("patterns", "delete", "987654"): (2, "unknown pattern 987654"),
        ("patterns", "add", "--kind", "regex", "--value", "(a", "--category", "coffee", "--stage"): (
            2,
            "RE2",
        ),
        ("patterns", "add", "--kind", "merchant", "--value", "x", "--category", "nope", "--stage"): (
            2,
            "unknown category",
        ),
    }
    for argv, (code, text) in cases.items():
        out = run_catfleet(settings, *argv)
        assert (out.returncode, "Traceback" in out.stderr) == (code, False), (argv, out.stderr)
        last = out.stderr.strip().splitlines()[-1]  # argparse prints its usage line before
        assert text in last and last.startswith("catfleet "), (argv, out.stderr)
    # applied at once, without --stage
    cli(settings, "patterns", "edit", walmart, "--weight", "0.5")
    assert conn.execute(
        "SELECT weight FROM categorization_patterns WHERE id = %s", (walmart,)
    ).fetchone() == (0.5,)
    cli(settings, "patterns", "delete", walmart)
    assert conn.execute("SELECT 1 FROM categorization_patterns WHERE id = %s", (walmart,)).fetchone() is None
