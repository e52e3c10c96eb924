"""Corrections reach the rest: after a correction is learned, the user's other expenses from
that merchant (normalized) that are not the user's own choice are re-categorized on the bulk
lane, at most ``CATFLEET_CORRECTION_REACH_LIMIT`` per correction. Real workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import psycopg

from schemas import CATEGORIZE_BULK_ACTOR
from tests.support import data
from tests.support.services import WorkerProcess, log_events, run_catfleet, wait_for
from workers.settings import Settings

#: Forms of one merchant as card networks write it: all normalize to "corner boutique".
FORMS = ("CORNER BOUTIQUE", "SQ *CORNER BOUTIQUE", "TST* CORNER BOUTIQUE 4521")


def boutique(conn: psycopg.Connection[Any], user_id: int, n: int = 81) -> list[int]:
    return data.add_expenses(conn, [FORMS[i % len(FORMS)] for i in range(n)], user_id=user_id)


def categories(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT expense_id, category_id, source, correlation_id FROM categorizations WHERE expense_id = ANY(%s)",
        (ids,),
    )
    return {r[0]: r[1:] for r in rows}


def clothing(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("INSERT INTO categories (key, name) VALUES ('clothing', 'Clothing') RETURNING id").fetchone()[0])  # type: ignore[index]  # fmt: skip


def test_three_corrections_fix_the_users_other_78(
    worker: WorkerProcess, settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    target = clothing(conn)
    mine, theirs = boutique(conn, 7), boutique(conn, 8)
    [coffee] = data.add_expenses(conn, ["STARBUCKS"], user_id=7)  # another merchant of the same user
    assert run_catfleet(settings, "enqueue", *map(str, [*mine, *theirs, coffee])).returncode == 0
    wait_for(lambda: len(categories(conn, [*mine, *theirs])) == 162, what="first pass")
    before = categories(conn, [*theirs, coffee])
    assert {c for c, _, _ in categories(conn, mine).values()} == {None}  # nothing knew the merchant

    corrected = mine[:3]
    for expense in corrected:
        out = run_catfleet(settings, "correct", str(expense), "clothing")
        assert out.returncode == 0, out.stderr
    rest = mine[3:]
    wait_for(
        lambda: {c for c, _, _ in categories(conn, rest).values()} == {target},
        timeout=60,
        what="the other 78 re-categorized",
    )
    got = categories(conn, mine)
    assert all(got[e][:2] == (target, "user") for e in corrected)
    assert all(got[e][1] == "auto" and got[e][2].startswith("reach:") for e in rest)
    # another user's expenses from the same merchant, and the user's other merchants: untouched
    assert categories(conn, [*theirs, coffee]) == before
    reaches = log_events(worker, "correction_reach")
    assert len(reaches) == 3 and all(78 <= r["recategorize"] <= 80 for r in reaches)  # not the corrected
    bulk = [e for e in log_events(worker, "batch") if e["actor"] == CATEGORIZE_BULK_ACTOR]
    assert bulk and all(e["correlation_id"].startswith("reach:") for e in bulk)


def test_the_reach_is_bounded_by_the_setting(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int], tmp_path: Path
) -> None:
    target = clothing(conn)
    mine = boutique(conn, 7, n=30)
    for limit, expense in ((10, mine[0]), (0, mine[1])):
        bounded = msgspec.structs.replace(settings, correction_reach_limit=limit)
        worker = WorkerProcess(bounded, tmp_path / f"worker-{limit}.log")
        try:
            worker.wait_ready()
            assert run_catfleet(bounded, "correct", str(expense), "clothing").returncode == 0
            wait_for(
                lambda e=expense: categories(conn, [e]).get(e, (None, None))[1] == "user", what="learned"
            )
            if limit:
                wait_for(lambda w=worker: len(log_events(w, "correction_reach")) == 1, what="the reach")
                newest = sorted(mine[1:], reverse=True)[:10]  # the newest 10 others
                wait_for(
                    lambda n=newest: (
                        {c for c, _, _ in categories(conn, n).values()} == {target}
                        and len(categories(conn, n)) == 10
                    ),
                    what="10 re-categorized",
                )
        finally:
            worker.stop()
        if not limit:
            assert log_events(worker, "correction_reach") == []
    rows = categories(conn, mine)
    assert sorted(e for e, (_, source, _) in rows.items() if source == "auto") == sorted(mine[1:])[-10:]
