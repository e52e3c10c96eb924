"""``catfleet backfill``: selectors, the bulk lane, following a run to completion, list/show, one
line for bad input, and a run SIGKILLed mid-way then resumed (real workers, PostgreSQL, Redis)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from schemas import CATEGORIZE_BULK_ACTOR, CATEGORIZE_BULK_QUEUE
from tests.support import data
from tests.support.broker import queue_state, queued_messages
from tests.support.services import WorkerProcess, flush_namespace, log_events, run_catfleet, wait_for
from workers.harness.processes import start_catfleet
from workers.settings import Settings


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def queued_ids(settings: Settings) -> list[int]:
    return sorted(
        i for m in queued_messages(settings, CATEGORIZE_BULK_QUEUE) for i in m["args"][0]["expense_ids"]
    )


def test_backfill_uncategorized_is_followed_to_done(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    done = data.add_expenses(conn, ["STARBUCKS"])
    run_catfleet(settings, "enqueue", str(done[0]))
    wait_for(lambda: data.count_rows(conn) == 1, what="the first row")
    fresh = data.add_expenses(conn, ["SQ *STARBUCKS", "WALMART", "NOWHERE SHOP 77"] * 40)
    out = run_catfleet(
        settings, "backfill", "--uncategorized", "--batch-size", "25", "--poll", "0.2", "--json"
    )
    assert out.returncode == 0, out.stderr
    docs = lines(out.stdout)
    assert docs[0]["event"] == "run" and docs[0]["total"] == 120
    run_id = docs[0]["run"]
    final = docs[-1]
    assert final["event"] == "finished" and final["phase"] == "done"
    assert (final["done"], final["total"], final["enqueued"]) == (120, 120, 120)
    assert final["outcomes"] == {"none": 40, "suggest": 0, "auto": 80}
    assert all(d["event"] == "progress" for d in docs[1:-1])
    rows = dict(conn.execute("SELECT expense_id, correlation_id FROM categorizations").fetchall())
    assert {rows[i] for i in fresh} == {run_id} and rows[done[0]] != run_id
    batches = [e for e in log_events(worker, "batch") if e["correlation_id"] == run_id]
    assert {e["actor"] for e in batches} == {CATEGORIZE_BULK_ACTOR} and sum(e["size"] for e in batches) == 120

    listed = run_catfleet(settings, "backfill", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [run] = [r for r in json.loads(listed.stdout)["runs"] if r["id"] == run_id]
    assert (run["state"], run["total"], run["enqueued"], run["written"]) == ("done", 120, 120, 120)
    assert run["selector"] == {"uncategorized": True} and run["lane"] == "bulk"
    text_list = run_catfleet(settings, "backfill", "list")
    assert text_list.returncode == 0 and run_id in text_list.stdout and "done" in text_list.stdout
    shown = run_catfleet(settings, "backfill", "show", run_id, "--json")
    assert json.loads(shown.stdout)["done"] == 120 and json.loads(shown.stdout)["progress"]["auto"] == 80
    text = run_catfleet(settings, "backfill", "show", run_id)
    assert f"id: {run_id}" in text.stdout and "state: done" in text.stdout
    # a finished run resumed: nothing to do, it says so
    again = run_catfleet(settings, "backfill", "--resume", run_id, "--json")
    assert again.returncode == 0 and lines(again.stdout)[-1]["phase"] == "done"


def test_selectors(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    """No worker: what each selector enqueues is read from the bulk queue (``--no-follow``)."""
    [a, b, c, d, e] = data.add_expenses(
        conn, ["SQ *STARBUCKS #12", "STARBUCKS", "WALMART", "X", "Y"], user_id=5
    )
    [other] = data.add_expenses(conn, ["STARBUCKS SEATTLE WA"], user_id=6)
    conn.execute("UPDATE expenses SET transaction_date = DATE '2026-01-02' WHERE id = %s", (e,))
    version = conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]
    row = (
        "INSERT INTO categorizations (expense_id, category_id, confidence, band, method, explanation,"
        " ruleset_version, source) VALUES (%s, %s, 0.5, %s, 'm', '{}', %s, %s)"
    )
    conn.execute(row, (b, cats["coffee"], "suggest", version - 1 if version > 1 else 0, "auto"))
    conn.execute(row, (c, cats["groceries"], "auto", version, "auto"))
    conn.execute(row, (d, None, "none", version, "auto"))
    conn.execute(row, (a, cats["coffee"], "auto", version, "user"))  # the user's own: never selected
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{c}, {e}\n{c} 999999\n", encoding="utf-8")

    def selected(*argv: str) -> list[int]:
        flush_namespace(settings)  # each call starts from an empty queue
        out = run_catfleet(settings, "backfill", *argv, "--no-follow", "--json")
        assert out.returncode == 0, out.stderr
        return queued_ids(settings)

    assert selected("--uncategorized") == [e, other]
    assert selected("--band", "none", "--band", "suggest") == [b, d]
    assert selected("--uncategorized", "--band", "auto") == [c, e, other]
    assert selected("--stale-ruleset") == [b]
    assert selected("--merchant", "starbucks") == [b, other]  # normalized: city and state go
    assert selected("--merchant", "STARBUCKS", "--user", "6") == [other]
    assert selected("--all", "--since", "2026-03-01") == [b, c, d, other]
    assert selected("--all", "--until", "2026-01-31") == [e]
    assert selected("--ids-from", str(ids_file)) == [c, e]  # unknown ids select nothing
    assert selected("--ids-from", str(ids_file), "--band", "auto") == [c]


def test_bad_input_is_one_line(settings: Settings, cats: dict[str, int], tmp_path: Path) -> None:
    cases = {
        (): (1, "say what to select"),
        ("--resume", "backfill:nope"): (1, "no backfill run 'backfill:nope'"),
        ("--resume", "x", "--all"): (1, "takes no selector"),
        ("--ids-from", str(tmp_path / "missing")): (2, "missing: No such file or directory"),
        ("--merchant", "#123"): (1, "normalizes to nothing"),
        ("--all", "--rate", "0"): (2, "must be > 0"),
        ("--since", "2026-13-01", "--all"): (2, "not a date"),
        ("--since", "2026-03-02", "--until", "2026-03-01"): (1, "--since is after --until"),
    }
    for argv, (code, text) in cases.items():
        out = run_catfleet(settings, "backfill", *argv)
        assert (out.returncode, "Traceback" in out.stderr) == (code, False), (argv, out.stderr)
        assert text in out.stderr, (argv, out.stderr)
    bad = (tmp_path / "bad.txt").resolve()
    bad.write_text("12 x3\n", encoding="utf-8")
    out = run_catfleet(settings, "backfill", "--ids-from", str(bad))
    assert out.returncode == 1 and "not an integer expense id" in out.stderr
    show = run_catfleet(settings, "backfill", "show", "backfill:nope")
    assert (
        show.returncode == 1 and show.stderr.strip() == "catfleet backfill: no backfill run 'backfill:nope'"
    )
    gone = msgspec.structs.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/catfleet")
    for argv in (("--all",), ("list",)):
        out = run_catfleet(gone, "backfill", *argv)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_killed_mid_run_and_resumed_every_expense_done_once(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    """A rate-limited run SIGKILLed mid-way: the bulk queue holds what it enqueued up to its
    checkpoint and at most the one message it sent past it. ``--resume`` goes on from the
    checkpoint; with workers every selected expense gets one row with the run's id, and the
    ids sent over both processes are the selection plus at most that one message."""
    ids = data.bulk_expenses(conn, 3_000)
    log = open(tmp_path / "backfill.log", "ab")  # noqa: SIM115 - closed below
    proc = start_catfleet(
        ["backfill", "--all", "--batch-size", "100", "--rate", "1000", "--json", "--poll", "0.1"],
        settings,
        log=log,
    )
    try:
        enqueued = wait_for(
            lambda: (
                (
                    r := conn.execute(
                        "SELECT id, enqueued FROM backfill_runs WHERE state = 'enqueuing'"
                    ).fetchone()
                )
                and r[1] >= 1_000
                and r
            ),
            what="a third enqueued",
            interval=0.01,
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        log.close()
    run_id = enqueued[0]
    [[checkpoint, last_id, state]] = conn.execute(
        "SELECT enqueued, last_id, state FROM backfill_runs WHERE id = %s", (run_id,)
    )
    assert state == "enqueuing" and 1_000 <= checkpoint < 3_000
    sent = queued_ids(settings)
    assert sent[:checkpoint] == ids[:checkpoint] and last_id == ids[checkpoint - 1]
    assert len(sent) - checkpoint in (0, 100)  # at most the one message past the checkpoint
    worker = WorkerProcess(settings, tmp_path / "worker.log", threads=2)
    try:
        worker.wait_ready()
        out = run_catfleet(settings, "backfill", "--resume", run_id, "--json", "--poll", "0.2", timeout=120)
        assert out.returncode == 0, out.stderr
        final = lines(out.stdout)[-1]
        assert (final["phase"], final["done"], final["total"]) == ("done", 3_000, 3_000)
        wait_for(lambda: queue_state(settings, CATEGORIZE_BULK_QUEUE)["unacked"] == 0, what="all acked")
    finally:
        worker.stop()
    rows = conn.execute(
        "SELECT count(*), count(DISTINCT expense_id) FROM categorizations WHERE correlation_id = %s",
        (run_id,),
    ).fetchone()
    assert rows == (3_000, 3_000)
    batches = [e for e in log_events(worker, "batch") if e["correlation_id"] == run_id]
    assert 3_000 <= sum(e["size"] for e in batches) <= 3_100
    [[state, enqueued_total]] = conn.execute(
        "SELECT state, enqueued FROM backfill_runs WHERE id = %s", (run_id,)
    )
    assert state == "done" and enqueued_total == 3_000
