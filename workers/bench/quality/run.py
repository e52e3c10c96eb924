"""``run_quality_bench``: catfleet and the lookup baselines through the same months, scored alike."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from pipeline.matcher import Thresholds
from pipeline.normalize import normalize_merchant
from workers.bench.quality.catfleet import Catfleet, throwaway_database
from workers.bench.quality.data import Columns, default_split, phases, read_data
from workers.bench.quality.methods import baselines
from workers.bench.quality.score import BandScore, MethodScore, MonthScore, compare, method_score, replay
from workers.settings import Settings

#: The DESIGN target.
TARGET_AUTO_RATE = 0.75
TARGET_PRECISION = 0.95
BASELINE_RULE = (
    "majority label per key, confidence (n_label + 0.5) / (n_key + 1) as for learned patterns,"
    " banded at the same thresholds"
)


class QualityReport(msgspec.Struct, kw_only=True):
    data: str
    mode: str  # holdout | gap | online
    columns: dict[str, str]
    skipped: dict[str, int]
    split_month: str | None  # first test month (holdout and gap)
    train_rows: int
    train_months: list[str]
    gap_months: list[str]
    test_rows: int  # the rows scored: the test months, or every row online
    test_months: list[str]
    categories: int
    corrections: int  # catfleet's
    learned_patterns: int
    auto_threshold: float
    suggest_threshold: float
    # catfleet on the scored rows (also under methods["catfleet"])
    bands: dict[str, BandScore]
    auto_rate: float
    auto_precision: float | None
    correction_rate: float | None
    meets_target: bool
    months: list[MonthScore]
    top_auto_errors: list[dict[str, Any]]
    #: catfleet, exact_merchant, normalized_merchant
    methods: dict[str, MethodScore]
    #: baseline -> overall | seen | unseen -> figure -> {minus, over}: catfleet minus / over it
    versus: dict[str, dict[str, dict[str, dict[str, float | None]]]]
    baseline_rule: str = BASELINE_RULE
    seconds: dict[str, float]
    path: str = "in-process: Learner.learn + Categorizer.categorize (no broker)"


def run_quality_bench(
    settings: Settings,
    data: Path,
    *,
    mode: str = "holdout",
    split_month: str | None = None,
    train_months: int | None = None,
    gap_months: int = 0,
    columns: Columns | None = None,
    currency: str = "GBP",
) -> QualityReport:
    if split_month is not None and mode != "holdout":
        raise ValueError("--split-month is for --mode holdout")
    dataset = read_data(data, columns)
    rows = dataset.rows
    if not rows:
        raise ValueError(f"{data}: no labelled rows (columns {', '.join(dataset.columns.values())})")
    if mode == "holdout":
        split_month = split_month or default_split(rows)
    phase_of = phases(rows, mode, split_month=split_month, train_months=train_months, gap_months=gap_months)
    thresholds = Thresholds(auto=settings.auto_threshold, suggest=settings.suggest_threshold)
    kept = [r for r in rows if phase_of[r.month] != "gap"]
    with throwaway_database(settings) as bench, psycopg.connect(bench.database_url, autocommit=True) as conn:
        from workers.runtime import Runtime

        runtime = Runtime(bench, wait=True)
        try:
            subject = Catfleet(conn, runtime, kept, currency=currency)
            lookups = baselines(kept, thresholds)
            trace = replay(kept, phase_of, [subject, *lookups])
            learned = subject.learned_patterns()
        finally:
            runtime.close()
    seconds = dict(subject.seconds)
    t0 = time.perf_counter()
    scores = {m: method_score(kept, trace, m) for m in trace.answers}
    seconds["score"] = time.perf_counter() - t0
    cf = scores["catfleet"]
    scored = [i for i in sorted(trace.answers["catfleet"]) if phase_of[kept[i].month] != "train"]
    errors: Counter[tuple[str, str, str]] = Counter()
    for i in scored:
        a = trace.answers["catfleet"][i]
        if a.band == "auto" and a.label != kept[i].label:
            errors[(normalize_merchant(kept[i].merchant), kept[i].label, a.label or "-")] += 1
    auto = cf.overall.bands["auto"]
    months = sorted(phase_of)
    return QualityReport(
        data=str(data),
        mode=mode,
        columns=dataset.columns,
        skipped=dataset.skipped,
        split_month=next((m for m in months if phase_of[m] == "test"), None),
        train_rows=sum(1 for r in kept if phase_of[r.month] == "train"),
        train_months=[m for m in months if phase_of[m] == "train"],
        gap_months=[m for m in months if phase_of[m] == "gap"],
        test_rows=cf.overall.rows,
        test_months=[m for m in months if phase_of[m] in ("test", "online")],
        categories=len(subject.cat_ids),
        corrections=cf.corrections,
        learned_patterns=learned,
        auto_threshold=settings.auto_threshold,
        suggest_threshold=settings.suggest_threshold,
        bands=cf.overall.bands,
        auto_rate=auto.share,
        auto_precision=auto.precision,
        correction_rate=cf.overall.correction_rate,
        meets_target=auto.share >= TARGET_AUTO_RATE and (auto.precision or 0) >= TARGET_PRECISION,
        months=cf.months,
        top_auto_errors=[
            {"merchant": m, "label": label, "chosen": chosen, "rows": n}
            for (m, label, chosen), n in errors.most_common(8)
        ],
        methods=scores,
        versus={b.name: compare(cf, scores[b.name]) for b in lookups},
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )
