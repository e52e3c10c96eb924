"""Replaying the months through every method alike, and scoring their answers.

Month by month, oldest first, each method categorizes the month's rows; then, in a ``train``
month, every row is sent as a correction; in an ``online`` month, every wrong or missing answer
(band none, or a wrong category in auto or suggest), and nothing else; in a ``test`` month,
nothing. ``gap`` months are skipped. A row is ``seen`` when its normalized merchant was in a
month learned from before its own (a train month, or an earlier online month).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import msgspec

from pipeline.normalize import normalize_merchant
from workers.bench.quality.data import LabelledRow
from workers.bench.quality.methods import NO_ANSWER, Answer, Method

BANDS = ("auto", "suggest", "none")
SCORED_PHASES = ("test", "online")
SLICES = ("seen", "unseen")


class Trace(msgspec.Struct, kw_only=True):
    phase_of: dict[str, str]
    answers: dict[str, dict[int, Answer]]  # method -> row index -> its answer
    corrections: dict[str, dict[str, int]]  # method -> month -> corrections sent
    seen: list[bool]


def replay(rows: Sequence[LabelledRow], phase_of: dict[str, str], methods: Sequence[Method]) -> Trace:
    by_month: defaultdict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_month[row.month].append(i)
    known: set[str] = set()
    seen = [False] * len(rows)
    answers: dict[str, dict[int, Answer]] = {m.name: {} for m in methods}
    corrections: dict[str, dict[str, int]] = {m.name: {} for m in methods}
    for month in sorted(by_month):
        phase = phase_of[month]
        if phase == "gap":
            continue
        idx = by_month[month]
        names = [normalize_merchant(rows[i].merchant) for i in idx]
        for i, name in zip(idx, names, strict=True):
            seen[i] = bool(name) and name in known
        for m in methods:
            got = m.answer(idx)
            answers[m.name].update(zip(idx, got, strict=True))
            if phase == "train":
                fix = list(idx)
            elif phase == "online":
                fix = [i for i, a in zip(idx, got, strict=True) if a.label != rows[i].label]
            else:
                fix = []
            if fix:
                m.learn(fix)
            corrections[m.name][month] = len(fix)
        if phase in ("train", "online"):
            known.update(names)
    return Trace(phase_of=phase_of, answers=answers, corrections=corrections, seen=seen)


class BandScore(msgspec.Struct, kw_only=True):
    rows: int
    share: float
    correct: int
    precision: float | None  # None for the band 'none' (nothing was chosen), or an empty band


class Score(msgspec.Struct, kw_only=True):
    rows: int
    bands: dict[str, BandScore]
    auto_rate: float
    auto_precision: float | None
    #: rows answered wrong or not at all: what the user has to correct, and its share
    wrong_or_missing: int
    correction_rate: float | None


class MonthScore(msgspec.Struct, kw_only=True):
    month: str
    phase: str  # train | test | online
    rows: int
    auto_rate: float
    auto_precision: float | None
    correction_rate: float | None
    corrections: int  # sent to the learning path after the month


class MethodScore(msgspec.Struct, kw_only=True):
    overall: Score  # every test (or online) row
    slices: dict[str, Score]  # seen | unseen
    months: list[MonthScore]  # every month categorized, train months too
    corrections: int  # sent in total


def score(rows: Sequence[LabelledRow], idx: Sequence[int], answers: dict[int, Answer]) -> Score:
    counts: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for i in idx:
        a = answers.get(i, NO_ANSWER)
        counts[a.band] += 1
        if a.label is not None and a.label == rows[i].label:
            correct[a.band] += 1
    total = len(idx)
    bands = {
        b: BandScore(
            rows=counts[b],
            share=round(counts[b] / max(total, 1), 4),
            correct=correct[b],
            precision=None if b == "none" or not counts[b] else round(correct[b] / counts[b], 4),
        )
        for b in BANDS
    }
    wrong = total - sum(correct.values())
    return Score(
        rows=total,
        bands=bands,
        auto_rate=bands["auto"].share,
        auto_precision=bands["auto"].precision,
        wrong_or_missing=wrong,
        correction_rate=round(wrong / total, 4) if total else None,
    )


def method_score(rows: Sequence[LabelledRow], trace: Trace, name: str) -> MethodScore:
    answers = trace.answers[name]
    scored = [i for i in sorted(answers) if trace.phase_of[rows[i].month] in SCORED_PHASES]
    by_month: defaultdict[str, list[int]] = defaultdict(list)
    for i in sorted(answers):
        by_month[rows[i].month].append(i)
    months = []
    for month, idx in sorted(by_month.items()):
        s = score(rows, idx, answers)
        months.append(
            MonthScore(
                month=month,
                phase=trace.phase_of[month],
                rows=s.rows,
                auto_rate=s.auto_rate,
                auto_precision=s.auto_precision,
                correction_rate=s.correction_rate,
                corrections=trace.corrections[name].get(month, 0),
            )
        )
    return MethodScore(
        overall=score(rows, scored, answers),
        slices={
            "seen": score(rows, [i for i in scored if trace.seen[i]], answers),
            "unseen": score(rows, [i for i in scored if not trace.seen[i]], answers),
        },
        months=months,
        corrections=sum(trace.corrections[name].values()),
    )


def _vs(a: float | None, b: float | None) -> dict[str, float | None]:
    return {
        "minus": None if a is None or b is None else round(a - b, 4),
        "over": None if a is None or b is None or b == 0 else round(a / b, 4),
    }


def compare(subject: MethodScore, baseline: MethodScore) -> dict[str, dict[str, dict[str, float | None]]]:
    """Subject minus and over the baseline: auto share, auto precision, correction rate; overall
    and per slice."""
    out = {}
    for part, (s, b) in {
        "overall": (subject.overall, baseline.overall),
        **{k: (subject.slices[k], baseline.slices[k]) for k in SLICES},
    }.items():
        out[part] = {
            "auto_rate": _vs(s.auto_rate if s.rows else None, b.auto_rate if b.rows else None),
            "auto_precision": _vs(s.auto_precision, b.auto_precision),
            "correction_rate": _vs(s.correction_rate, b.correction_rate),
        }
    return out
