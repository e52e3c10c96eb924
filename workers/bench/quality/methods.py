"""What the benchmark compares: a method answers rows and learns from corrections.

The baselines are lookups: the majority label per key (the exact merchant string, or the
merchant as ``pipeline.normalize.normalize_merchant`` gives it), learned from the same
corrections catfleet gets. Their confidence is the rule catfleet's learned merchant patterns get
their weight by (``pipeline.learning``): the smoothed success ratio
``(count of the label + PRIOR_SUCCESS) / (corrections of the key + PRIOR_TOTAL)``, rounded to 4
places like the matcher's confidence, and banded at the same thresholds: one correction gives
0.75 (suggest), three alike 0.875 (auto at 0.85). Ties go to the label first in sort order
(catfleet's categories are created in that order and a tie goes to the lowest id). What the
lookups do not have: catfleet's conflict penalty, prefix fallback and weakening.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from pipeline.learning import PRIOR_SUCCESS, PRIOR_TOTAL
from pipeline.matcher import Thresholds
from pipeline.normalize import normalize_merchant
from workers.bench.quality.data import LabelledRow


class Answer(msgspec.Struct, frozen=True):
    label: str | None  # None when the band is 'none'
    band: str  # auto | suggest | none


NO_ANSWER = Answer(None, "none")


class Method(Protocol):
    name: str

    def answer(self, idx: Sequence[int]) -> list[Answer]:
        """Categorize the rows ``idx`` (indices into the data set's rows)."""
        ...

    def learn(self, idx: Sequence[int]) -> None:
        """The user corrects the rows ``idx`` to their labels."""
        ...


def band(confidence: float, thresholds: Thresholds) -> str:
    return (
        "auto" if confidence >= thresholds.auto else "suggest" if confidence >= thresholds.suggest else "none"
    )


class LookupBaseline:
    """The majority label per key with the smoothed-ratio band (see the module docstring)."""

    def __init__(
        self, name: str, key: Callable[[str], str], rows: Sequence[LabelledRow], thresholds: Thresholds
    ):
        self.name = name
        self.key = key
        self.rows = rows
        self.thresholds = thresholds
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def confidence(self, merchant: str) -> tuple[str | None, float]:
        """The majority label of the merchant's key and its smoothed ratio."""
        seen = self.counts.get(self.key(merchant))
        if not seen:
            return None, 0.0
        label, n = min(seen.items(), key=lambda kv: (-kv[1], kv[0]))
        return label, round((n + PRIOR_SUCCESS) / (seen.total() + PRIOR_TOTAL), 4)

    def answer(self, idx: Sequence[int]) -> list[Answer]:
        out = []
        for i in idx:
            label, confidence = self.confidence(self.rows[i].merchant)
            b = band(confidence, self.thresholds)
            out.append(Answer(label, b) if b != "none" else NO_ANSWER)
        return out

    def learn(self, idx: Sequence[int]) -> None:
        for i in idx:
            key = self.key(self.rows[i].merchant)
            if key:  # like catfleet: no pattern for a merchant that normalizes to nothing
                self.counts[key][self.rows[i].label] += 1


def exact_merchant(raw: str) -> str:
    return raw


def baselines(rows: Sequence[LabelledRow], thresholds: Thresholds) -> list[LookupBaseline]:
    return [
        LookupBaseline("exact_merchant", exact_merchant, rows, thresholds),
        LookupBaseline("normalized_merchant", normalize_merchant, rows, thresholds),
    ]
