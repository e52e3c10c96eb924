"""``catfleet bench quality --data PATH``: categorization quality on real labelled transactions.

The labelled rows of a CSV (``trans_date, merchant_name, amount_gbp, consumer_category``; the
Birmingham purchase-card format) are split by month, never by random row: the earlier months
train, the later months test. In a throwaway database (created, migrated and dropped here) with
its own cache prefix, month by month through the training months, the month's expenses are
categorized and then every labelled row is fed through the learning path as a user correction
(a learning curve). Then the test months are categorized, with nothing learned from them, and
each band is scored against the labels.

It runs the real pipeline in-process, without a broker: ``Learner.learn`` (what the
``learn_from_correction`` actor calls) and ``Categorizer.categorize`` (what ``categorize_batch``
calls), both from a worker ``Runtime`` built from the settings. The data set is one
organisation, so every row belongs to one user (id 1): learned per-user merchant patterns then
generalize across the organisation's card holders. Only ``merchant_name``, the amount and the date
reach the pipeline: ``expense_desc`` is what the labels were derived from, so it is left out.
Rows without a label, with a zero amount or without a date are skipped; refunds count by their
absolute amount.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import psycopg

from schemas import Correction
from workers.harness.databases import create_database, dbname, drop_database
from workers.settings import Settings

#: Every row of the data set belongs to this user (one organisation).
BENCH_USER = 1
#: Without --split-month, the test months are the latest ones holding about this share of rows.
DEFAULT_TEST_SHARE = 0.25
#: The DESIGN target.
TARGET_AUTO_RATE = 0.75
TARGET_PRECISION = 0.95


class LabelledRow(msgspec.Struct, frozen=True):
    date: dt.date
    merchant: str
    amount: float
    label: str

    @property
    def month(self) -> str:
        return self.date.strftime("%Y-%m")


class BandScore(msgspec.Struct, kw_only=True):
    rows: int
    share: float
    correct: int
    precision: float | None  # None for the band 'none' (nothing was chosen)


class MonthScore(msgspec.Struct, kw_only=True):
    month: str
    phase: str  # train | test
    rows: int
    auto_rate: float
    auto_precision: float | None


class QualityReport(msgspec.Struct, kw_only=True):
    data: str
    split_month: str
    train_rows: int
    train_months: list[str]
    test_rows: int
    test_months: list[str]
    categories: int
    corrections: int
    learned_patterns: int
    auto_threshold: float
    suggest_threshold: float
    bands: dict[str, BandScore]
    auto_rate: float
    auto_precision: float | None
    meets_target: bool
    months: list[MonthScore]
    top_auto_errors: list[dict[str, Any]]
    seconds: dict[str, float]
    path: str = "in-process: Learner.learn + Categorizer.categorize (no broker)"


def read_rows(path: Path) -> list[LabelledRow]:
    """The labelled rows, oldest first."""
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            label = (raw.get("consumer_category") or "").strip()
            try:
                date = dt.date.fromisoformat((raw.get("trans_date") or "")[:10])
                amount = abs(float(raw.get("amount_gbp") or 0))
            except ValueError:
                continue
            if label and amount > 0:
                out.append(LabelledRow(date, (raw.get("merchant_name") or "").strip(), amount, label))
    out.sort(key=lambda r: r.date)
    return out


def default_split(rows: Sequence[LabelledRow], test_share: float = DEFAULT_TEST_SHARE) -> str:
    """The first test month: the latest months hold about ``test_share`` of the rows."""
    per_month = Counter(r.month for r in rows)
    months = sorted(per_month)
    if len(months) < 2:
        raise ValueError("the data must span at least two months to split train and test by month")
    seen = 0
    for month in reversed(months[1:]):
        seen += per_month[month]
        if seen >= test_share * len(rows):
            return month
    return months[1]


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


def _load(conn: psycopg.Connection[Any], rows: Sequence[LabelledRow]) -> tuple[dict[str, int], list[int]]:
    """Categories (one per label) and expenses, in row order; returns (label -> id, expense ids)."""
    labels = sorted({r.label for r in rows})
    cat_ids = {}
    for label in labels:
        row = conn.execute(
            "INSERT INTO categories (key, name) VALUES (%s, %s) RETURNING id", (category_key(label), label)
        ).fetchone()
        assert row is not None
        cat_ids[label] = row[0]
    with conn.cursor() as cur:
        with cur.copy(
            "COPY expenses (user_id, merchant_name, amount, currency, transaction_date) FROM STDIN"
        ) as copy:
            for r in rows:
                copy.write_row((BENCH_USER, r.merchant, r.amount, "GBP", r.date))
        ids = [i for (i,) in cur.execute("SELECT id FROM expenses ORDER BY id").fetchall()]
    return cat_ids, ids


def _results(conn: psycopg.Connection[Any], ids: Sequence[int]) -> dict[int, tuple[int | None, str]]:
    rows = conn.execute(
        "SELECT expense_id, category_id, band FROM categorizations WHERE expense_id = ANY(%s)", (list(ids),)
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _score(
    rows: Sequence[LabelledRow],
    ids: Sequence[int],
    results: dict[int, tuple[int | None, str]],
    cat_ids: dict[str, int],
) -> tuple[dict[str, BandScore], list[tuple[LabelledRow, int | None]]]:
    counts: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    wrong_auto = []
    for row, eid in zip(rows, ids, strict=True):
        category, band = results.get(eid, (None, "none"))
        counts[band] += 1
        if category is not None and category == cat_ids[row.label]:
            correct[band] += 1
        elif band == "auto":
            wrong_auto.append((row, category))
    total = max(len(rows), 1)
    bands = {
        band: BandScore(
            rows=counts[band],
            share=round(counts[band] / total, 4),
            correct=correct[band],
            precision=None if band == "none" or not counts[band] else round(correct[band] / counts[band], 4),
        )
        for band in ("auto", "suggest", "none")
    }
    return bands, wrong_auto


def run_quality_bench(settings: Settings, data: Path, *, split_month: str | None = None) -> QualityReport:
    from pipeline.normalize import normalize_merchant
    from workers.runtime import Runtime

    rows = read_rows(data)
    if not rows:
        raise ValueError(
            f"{data}: no labelled rows (columns trans_date, merchant_name, amount_gbp, consumer_category)"
        )
    split = split_month or default_split(rows)
    if not any(r.month >= split for r in rows) or not any(r.month < split for r in rows):
        raise ValueError(f"split month {split} leaves no training or no test rows")
    seconds: dict[str, float] = {}
    with throwaway_database(settings) as bench, psycopg.connect(bench.database_url, autocommit=True) as conn:
        started = time.perf_counter()
        cat_ids, ids = _load(conn, rows)
        names = {v: k for k, v in cat_ids.items()}
        seconds["load"] = time.perf_counter() - started
        by_month: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_month[row.month].append(i)
        runtime = Runtime(bench, wait=True)
        months: list[MonthScore] = []
        corrections = 0
        try:
            timer = {"categorize": 0.0, "learn": 0.0}
            for month in sorted(by_month):
                phase = "train" if month < split else "test"
                idx = by_month[month]
                month_ids = [ids[i] for i in idx]
                t0 = time.perf_counter()
                for start in range(0, len(month_ids), bench.batch_size):
                    runtime.categorizer.categorize(month_ids[start : start + bench.batch_size])
                timer["categorize"] += time.perf_counter() - t0
                month_bands, _ = _score([rows[i] for i in idx], month_ids, _results(conn, month_ids), cat_ids)
                auto = month_bands["auto"]
                months.append(
                    MonthScore(
                        month=month,
                        phase=phase,
                        rows=len(idx),
                        auto_rate=auto.share,
                        auto_precision=auto.precision,
                    )
                )
                if phase == "train":
                    t0 = time.perf_counter()
                    for i in idx:
                        runtime.learner.learn(
                            Correction(
                                expense_id=ids[i],
                                category_key=category_key(rows[i].label),
                                idempotency_key=f"bench:{ids[i]}",
                            )
                        )
                        corrections += 1
                    timer["learn"] += time.perf_counter() - t0
            seconds.update(timer)
        finally:
            runtime.close()
        test_idx = [i for i, r in enumerate(rows) if r.month >= split]
        test_ids = [ids[i] for i in test_idx]
        bands, wrong = _score([rows[i] for i in test_idx], test_ids, _results(conn, test_ids), cat_ids)
        learned = conn.execute(
            "SELECT count(*) FROM categorization_patterns WHERE source = 'learned'"
        ).fetchone()
    errors: Counter[tuple[str, str, str]] = Counter(
        (normalize_merchant(r.merchant), r.label, names.get(c, "?") if c is not None else "-")
        for r, c in wrong
    )
    auto = bands["auto"]
    return QualityReport(
        data=str(data),
        split_month=split,
        train_rows=len(rows) - len(test_idx),
        train_months=sorted(m for m in by_month if m < split),
        test_rows=len(test_idx),
        test_months=sorted(m for m in by_month if m >= split),
        categories=len(cat_ids),
        corrections=corrections,
        learned_patterns=learned[0] if learned else 0,
        auto_threshold=settings.auto_threshold,
        suggest_threshold=settings.suggest_threshold,
        bands=bands,
        auto_rate=auto.share,
        auto_precision=auto.precision,
        meets_target=auto.share >= TARGET_AUTO_RATE and (auto.precision or 0) >= TARGET_PRECISION,
        months=months,
        top_auto_errors=[
            {"merchant": m, "label": label, "chosen": chosen, "rows": n}
            for (m, label, chosen), n in errors.most_common(8)
        ],
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )


def format_report(r: QualityReport) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    lines = [
        f"quality bench: {r.data}",
        f"  path: {r.path}; one user for every row",
        f"  train: {r.train_rows} labelled rows, {r.train_months[0]}..{r.train_months[-1]}"
        f" -> {r.corrections} corrections, {r.learned_patterns} learned patterns",
        f"  test:  {r.test_rows} labelled rows, {r.test_months[0]}..{r.test_months[-1]}"
        f" (split month {r.split_month}; nothing learned from them)",
        f"  thresholds: auto >= {r.auto_threshold}, suggest >= {r.suggest_threshold}; {r.categories} categories",
        "",
        "  band      rows   share    precision",
    ]
    for band, s in r.bands.items():
        lines.append(f"  {band:<8} {s.rows:>5}  {pct(s.share):>7}  {pct(s.precision):>9}")
    verdict = "meets" if r.meets_target else "MISSES"
    lines += [
        "",
        f"  auto-categorized {pct(r.auto_rate)} at {pct(r.auto_precision)} precision"
        f" ({verdict} the target: >= {TARGET_AUTO_RATE:.0%} at >= {TARGET_PRECISION:.0%})",
        "",
        "  month    phase  rows  auto     precision",
    ]
    for m in r.months:
        lines.append(
            f"  {m.month}  {m.phase:<5} {m.rows:>5}  {pct(m.auto_rate):>7}  {pct(m.auto_precision):>9}"
        )
    if r.top_auto_errors:
        lines += ["", "  most frequent wrong auto answers (merchant: label -> chosen):"]
        lines += [
            f"    {e['merchant']!r}: {e['label']} -> {e['chosen']} ({e['rows']})" for e in r.top_auto_errors
        ]
    lines += ["", "  seconds: " + ", ".join(f"{k} {v}" for k, v in r.seconds.items())]
    return "\n".join(lines)
