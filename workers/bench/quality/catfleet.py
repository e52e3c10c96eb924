"""catfleet as a benchmark method: the real pipeline in-process, in a throwaway database.

``Categorizer.categorize`` (what ``categorize_batch`` calls) answers, ``Learner.learn`` (what
``learn_from_correction`` calls) takes the corrections, both from a worker ``Runtime``. Every
row belongs to one user (id 1).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import msgspec
import psycopg

from schemas import Correction
from workers.bench.quality.data import LabelledRow
from workers.bench.quality.methods import NO_ANSWER, Answer
from workers.harness.databases import create_database, dbname, drop_database
from workers.runtime import Runtime
from workers.settings import Settings

#: Every row of the data set belongs to this user (one organisation, or one account holder).
BENCH_USER = 1


def category_key(label: str) -> str:
    """'Transport:Fuel' -> 'transport-fuel'."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "label"


@contextmanager
def throwaway_database(settings: Settings) -> Iterator[Settings]:
    """A new migrated database next to the configured one and a private cache prefix; the
    database is dropped afterwards."""
    suffix = uuid4().hex[:10]
    name = f"{dbname(settings.database_url) or 'catfleet'}_qbench_{suffix}"[:63]
    url = create_database(settings.database_url, name)
    try:
        yield msgspec.structs.replace(
            settings, database_url=url, database_read_url="", cache_prefix=f"qbench-{suffix}"
        )
    finally:
        drop_database(settings.database_url, name)


class Catfleet:
    name = "catfleet"

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        runtime: Runtime,
        rows: Sequence[LabelledRow],
        *,
        currency: str = "GBP",
    ):
        self.conn = conn
        self.runtime = runtime
        self.rows = rows
        self.batch_size = runtime.settings.batch_size
        self.seconds = {"load": 0.0, "categorize": 0.0, "learn": 0.0}
        t0 = time.perf_counter()
        self.cat_ids = self._load(currency)
        self.labels = {v: k for k, v in self.cat_ids.items()}
        self.seconds["load"] = time.perf_counter() - t0

    def _load(self, currency: str) -> dict[str, int]:
        """One category per label (in label order), and every row as an expense, in row order."""
        cat_ids = {}
        for label in sorted({r.label for r in self.rows}):
            row = self.conn.execute(
                "INSERT INTO categories (key, name) VALUES (%s, %s) RETURNING id",
                (category_key(label), label),
            ).fetchone()
            assert row is not None
            cat_ids[label] = row[0]
        with self.conn.cursor() as cur:
            with cur.copy(
                "COPY expenses (user_id, merchant_name, description, amount, currency, transaction_date)"
                " FROM STDIN"
            ) as copy:
                for r in self.rows:
                    copy.write_row((BENCH_USER, r.merchant, r.description, r.amount, currency, r.date))
            self.ids = [i for (i,) in cur.execute("SELECT id FROM expenses ORDER BY id").fetchall()]
        return cat_ids

    def answer(self, idx: Sequence[int]) -> list[Answer]:
        ids = [self.ids[i] for i in idx]
        t0 = time.perf_counter()
        for start in range(0, len(ids), self.batch_size):
            self.runtime.categorizer.categorize(ids[start : start + self.batch_size])
        self.seconds["categorize"] += time.perf_counter() - t0
        got = {
            eid: Answer(self.labels.get(cat) if cat is not None else None, band)
            for eid, cat, band in self.conn.execute(
                "SELECT expense_id, category_id, band FROM categorizations WHERE expense_id = ANY(%s)", (ids,)
            ).fetchall()
        }
        return [got.get(eid, NO_ANSWER) for eid in ids]

    def learn(self, idx: Sequence[int]) -> None:
        t0 = time.perf_counter()
        for i in idx:
            eid = self.ids[i]
            self.runtime.learner.learn(
                Correction(
                    expense_id=eid,
                    category_key=category_key(self.rows[i].label),
                    idempotency_key=f"bench:{eid}",
                )
            )
        self.seconds["learn"] += time.perf_counter() - t0

    def learned_patterns(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM categorization_patterns WHERE source = 'learned'"
        ).fetchone()
        return row[0] if row else 0
