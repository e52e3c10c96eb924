"""Backfills: which expenses a run selects, and its record in PostgreSQL (migration 0011).

A run selects live expenses that are not their user's own choice (``categorizations.source``
``'user'`` rows are never rewritten, so never selected), in id order, through a server-side
cursor: memory stays flat however many rows match. Its checkpoint is the last id enqueued, so a
resumed run selects ``id > last_id`` with the same selector, resolved once at its start (the
ruleset version of ``--stale-ruleset``, the normalized ``--merchant``, the ids of ``--ids-from``
kept in ``backfill_ids``). Its id is the correlation id of its messages and so of the rows they
write: progress is the count of those rows (``BACKFILL_PROGRESS``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any
from uuid import uuid4

import msgspec
import psycopg
from psycopg import sql

from pipeline import queries
from pipeline.normalize import normalize_merchant

BANDS = ("none", "suggest", "auto")
#: Rows a server-side cursor fetches per round trip.
CURSOR_ITERSIZE = 5_000


class Selector(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What a run selects. ``uncategorized`` and ``bands`` name the expenses' state (any of
    them); the others narrow it. ``all``: every selectable expense."""

    all: bool = False
    uncategorized: bool = False
    bands: list[str] = msgspec.field(default_factory=list)
    #: rows made by a ruleset older than this version
    stale_before: int | None = None
    #: the normalized merchant name
    merchant: str | None = None
    user_id: int | None = None
    since: dt.date | None = None  # transaction dates, inclusive
    until: dt.date | None = None
    #: the run's ids in ``backfill_ids`` (``--ids-from``)
    ids_from: bool = False
    #: rows a candidate ruleset made (``--candidate``, migration 0012): by its rollout
    #: (``candidate_id``), or, once promoted, by the ruleset from its promoted version on, up to
    #: its rollback's (``made_before``; None: no end)
    candidate: int | None = None
    made_since: int | None = None
    made_before: int | None = None

    def is_empty(self) -> bool:
        return self == Selector()


class Run(msgspec.Struct, kw_only=True):
    id: str
    selector: Selector
    lane: str
    batch_size: int
    rate: float | None
    total: int
    enqueued: int
    last_id: int
    state: str
    created_at: dt.datetime
    updated_at: dt.datetime
    enqueued_at: dt.datetime | None
    finished_at: dt.datetime | None
    written: int | None
    outcomes: dict[str, int] | None


def new_run_id() -> str:
    return f"backfill:{uuid4().hex[:12]}"


def _made_by(sel: Selector, params: dict[str, Any]) -> sql.Composable:
    """Rows the candidate made: by its rollout, or by its promotion's versions."""
    made: list[sql.Composable] = [sql.SQL("c.candidate_id = %(candidate)s")]
    params["candidate"] = sel.candidate
    if sel.made_since is not None:
        made.append(sql.SQL("c.ruleset_version >= %(made_since)s"))
        params["made_since"] = sel.made_since
        if sel.made_before is not None:
            made[-1] = sql.SQL("c.ruleset_version BETWEEN %(made_since)s AND %(made_before)s - 1")
            params["made_before"] = sel.made_before
    return sql.SQL("({})").format(sql.SQL(" OR ").join(made))


def _query(sel: Selector, run_id: str, *, after: int | None) -> tuple[sql.Composed, dict[str, Any]]:
    clauses: list[sql.Composable] = []
    params: dict[str, Any] = {"run_id": run_id}
    state: list[sql.Composable] = []
    if sel.uncategorized:
        state.append(sql.SQL("c.expense_id IS NULL"))
    if sel.bands:
        state.append(sql.SQL("c.band = ANY(%(bands)s)"))
        params["bands"] = list(sel.bands)
    if state:
        clauses.append(sql.SQL("({})").format(sql.SQL(" OR ").join(state)))
    if sel.stale_before is not None:
        clauses.append(sql.SQL("c.ruleset_version < %(stale_before)s"))
        params["stale_before"] = sel.stale_before
    if sel.candidate is not None:
        clauses.append(_made_by(sel, params))
    if sel.user_id is not None:
        clauses.append(sql.SQL("e.user_id = %(user_id)s"))
        params["user_id"] = sel.user_id
    if sel.since is not None:
        clauses.append(sql.SQL("e.transaction_date >= %(since)s"))
        params["since"] = sel.since
    if sel.until is not None:
        clauses.append(sql.SQL("e.transaction_date <= %(until)s"))
        params["until"] = sel.until
    if sel.ids_from:
        clauses.append(sql.SQL("e.id IN (SELECT expense_id FROM backfill_ids WHERE run_id = %(run_id)s)"))
    if after is not None:
        clauses.append(sql.SQL("e.id > %(after)s"))
        params["after"] = after
    where = sql.SQL("").join(sql.SQL(" AND ") + c for c in clauses)
    return sql.SQL(queries.BACKFILL_SELECT) + where, params


def iter_selected(
    conn: psycopg.Connection[Any], sel: Selector, run_id: str, *, after: int = 0, chunk: int
) -> Iterator[list[int]]:
    """The selected ids after ``after``, in id order, ``chunk`` at a time, from a server-side
    cursor (``conn`` is in a transaction for as long as this runs)."""
    query, params = _query(sel, run_id, after=after)
    query = query + sql.SQL(" ORDER BY e.id")
    with conn.cursor(name=f"catfleet_backfill_{uuid4().hex[:8]}") as cur:
        cur.itersize = CURSOR_ITERSIZE
        cur.execute(query, params)
        out: list[int] = []
        for expense_id, merchant_name in cur:
            if sel.merchant is not None and normalize_merchant(merchant_name) != sel.merchant:
                continue
            out.append(expense_id)
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out


def count_selected(conn: psycopg.Connection[Any], sel: Selector, run_id: str) -> int:
    """How many the selector selects now (a merchant's: one streamed pass, the normalizer is Python's)."""
    if sel.merchant is not None:
        with conn.transaction():
            return sum(len(c) for c in iter_selected(conn, sel, run_id, chunk=CURSOR_ITERSIZE))
    query, params = _query(sel, run_id, after=None)
    row = conn.execute(sql.SQL("SELECT count(*) FROM ({}) q").format(query), params).fetchone()
    return int(row[0]) if row else 0


def resolve_merchant(raw: str) -> str:
    """The normalized form a ``--merchant`` matches (ValueError when nothing is left of it)."""
    value = normalize_merchant(raw)
    if not value:
        raise ValueError(f"merchant {raw!r} normalizes to nothing")
    return value


def create_run(
    conn: psycopg.Connection[Any],
    sel: Selector,
    *,
    lane: str,
    batch_size: int,
    rate: float | None,
    ids: Iterable[int] | None = None,
) -> Run:
    """The run's row (and its ids, for ``--ids-from``, COPYed in one transaction) with the number
    selected now as its total."""
    run_id = new_run_id()
    with conn.transaction():
        conn.execute(
            queries.BACKFILL_INSERT_RUN,
            {
                "id": run_id,
                "selector": msgspec.json.encode(sel).decode(),
                "lane": lane,
                "batch_size": batch_size,
                "rate": rate,
            },
        )
        if ids is not None:
            conn.execute(queries.BACKFILL_STAGE_IDS)
            with conn.cursor().copy(queries.BACKFILL_COPY_IDS) as copy:
                for expense_id in ids:
                    copy.write_row((expense_id,))
            conn.execute(queries.BACKFILL_KEEP_IDS, {"id": run_id})
    total = count_selected(conn, sel, run_id)
    conn.execute(queries.BACKFILL_SET_TOTAL, {"id": run_id, "total": total})
    run = get_run(conn, run_id)
    assert run is not None
    return run


def _run(row: tuple[Any, ...]) -> Run:
    names = [n.strip() for n in queries.BACKFILL_RUN_COLUMNS.replace("\n", " ").split(",")]
    raw = dict(zip(names, row, strict=True))
    raw["selector"] = msgspec.convert(raw["selector"], Selector)
    return Run(**raw)


def get_run(conn: psycopg.Connection[Any], run_id: str) -> Run | None:
    row = conn.execute(queries.BACKFILL_GET_RUN, {"id": run_id}).fetchone()
    return _run(row) if row else None


def list_runs(conn: psycopg.Connection[Any], *, limit: int = 50) -> list[Run]:
    return [_run(r) for r in conn.execute(queries.BACKFILL_LIST_RUNS, {"limit": limit})]


def checkpoint(conn: psycopg.Connection[Any], run_id: str, *, last_id: int, n: int) -> None:
    conn.execute(queries.BACKFILL_CHECKPOINT, {"id": run_id, "last_id": last_id, "n": n})


def mark_enqueued(conn: psycopg.Connection[Any], run_id: str) -> None:
    conn.execute(queries.BACKFILL_ENQUEUED, {"id": run_id})


def finish(conn: psycopg.Connection[Any], run_id: str, *, state: str, outcomes: dict[str, int]) -> None:
    conn.execute(
        queries.BACKFILL_FINISH,
        {
            "id": run_id,
            "state": state,
            "written": sum(outcomes.values()),
            "outcomes": msgspec.json.encode(outcomes).decode(),
        },
    )


def progress(conn: psycopg.Connection[Any], run_id: str) -> dict[str, int]:
    """The rows carrying the run's id, per band (every band present, 0 when none)."""
    counts = dict.fromkeys(BANDS, 0)
    for band, n in conn.execute(queries.BACKFILL_PROGRESS, {"id": run_id}):
        counts[band] = int(n)
    return counts
