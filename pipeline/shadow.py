"""A candidate ruleset in shadow (``catfleet rules diff``): the real Categorizer run twice over
the chosen expenses, with the current ruleset and with the candidate for every user, its
decisions kept in memory and compared. Nothing is written: the sink only records, the only cache
tier is a private L1 (no Redis back-fill), and the caller's connections are read-only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from pipeline.cache import LocalTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.matcher import Decision, Thresholds
from pipeline.overlay import Overlay, Rollout
from pipeline.resolver import PatternResolver
from pipeline.stores import (
    CandidateSource,
    CategorizationSink,
    ExpenseSource,
    ExpenseStore,
    LoadedBatch,
    PatternStore,
    WriteMeta,
)

DEFAULT_EXAMPLES = 3


class Side(msgspec.Struct, frozen=True):
    category: str | None
    band: str
    confidence: float
    pattern_id: int | None


class Example(msgspec.Struct, frozen=True):
    expense_id: int
    user_id: int
    merchant: str
    before: Side
    after: Side


class Move(msgspec.Struct, kw_only=True):
    """Expenses that would go from one (category, band) to another."""

    from_category: str | None
    from_band: str
    to_category: str | None
    to_band: str
    count: int = 0
    examples: list[Example] = msgspec.field(default_factory=list)


class DiffReport(msgspec.Struct, kw_only=True):
    candidate_id: int
    revision: int
    #: expenses compared (selected, live and not their user's own choice)
    expenses: int
    #: their category or band would change
    changed: int
    #: only the confidence would change
    confidence_only: int
    unchanged: int
    moves: list[Move]


class _Recorder(CategorizationSink):
    """Keeps the decisions; writes nothing."""

    def __init__(self) -> None:
        self.decisions: dict[int, Decision] = {}

    def upsert(self, decisions: Iterable[tuple[int, Decision]], meta: WriteMeta) -> set[int]:
        self.decisions.update(decisions)
        return set()


class _Expenses(ExpenseSource):
    """The real expense reads, with the rollout replaced: none, or the candidate for everyone."""

    def __init__(self, inner: ExpenseStore, rollout: Rollout | None):
        self.inner = inner
        self.rollout = rollout
        self.seen: dict[int, tuple[int, str]] = {}

    def load(self, ids: Sequence[int]) -> LoadedBatch:
        batch = self.inner.load(ids)
        for e in batch.expenses:
            self.seen[e.id] = (e.user_id, e.merchant_name)
        return LoadedBatch(batch.expenses, batch.ruleset_version, batch.user_owned, self.rollout)

    def uncategorized_ids(self, user_id: int | None = None) -> list[int]:
        return self.inner.uncategorized_ids(user_id)


class _Given(CandidateSource):
    def __init__(self, overlay: Overlay):
        self._overlay = overlay

    def overlay(self, rollout: Rollout) -> Overlay:
        return self._overlay


def shadow_diff(
    db: Database,
    overlay: Overlay,
    batches: Iterable[Sequence[int]],
    *,
    thresholds: Thresholds,
    categories: dict[int, str],
    examples: int = DEFAULT_EXAMPLES,
) -> DiffReport:
    """Compare the current ruleset's and the candidate's decisions over ``batches`` of ids."""
    resolver = PatternResolver(PatternStore(db), [LocalTier(max_entries=100_000, ttl_seconds=600)])
    store = ExpenseStore(db)
    everyone = Rollout(overlay.candidate_id, overlay.revision, 100)
    base_in, cand_in = _Expenses(store, None), _Expenses(store, everyone)
    base_out, cand_out = _Recorder(), _Recorder()
    base = Categorizer(expenses=base_in, resolver=resolver, writer=base_out, thresholds=thresholds)
    cand = Categorizer(
        expenses=cand_in,
        resolver=resolver,
        writer=cand_out,
        thresholds=thresholds,
        candidates=_Given(overlay),
    )
    moves: dict[tuple[str | None, str, str | None, str], Move] = {}
    counts: Counter[str] = Counter()
    for ids in batches:
        base.categorize(ids)
        cand.categorize(ids)
        for expense_id, old in base_out.decisions.items():
            new = cand_out.decisions.get(expense_id)
            if new is None:  # deleted or chosen by its user between the two reads
                continue
            counts["expenses"] += 1
            before, after = _side(old, categories), _side(new, categories)
            if (before.category, before.band) == (after.category, after.band):
                counts["confidence_only" if before != after else "unchanged"] += 1
                continue
            counts["changed"] += 1
            key = (before.category, before.band, after.category, after.band)
            move = moves.get(key)
            if move is None:
                move = moves[key] = Move(
                    from_category=key[0], from_band=key[1], to_category=key[2], to_band=key[3]
                )
            move.count += 1
            if len(move.examples) < examples:
                user_id, merchant = cand_in.seen[expense_id]
                move.examples.append(Example(expense_id, user_id, merchant, before, after))
        base_out.decisions.clear()
        cand_out.decisions.clear()
    return DiffReport(
        candidate_id=overlay.candidate_id,
        revision=overlay.revision,
        expenses=counts["expenses"],
        changed=counts["changed"],
        confidence_only=counts["confidence_only"],
        unchanged=counts["unchanged"],
        moves=sorted(moves.values(), key=lambda m: (-m.count, str(m.from_category), str(m.to_category))),
    )


def _side(d: Decision, categories: dict[int, str]) -> Side:
    category = None if d.category_id is None else categories.get(d.category_id, f"#{d.category_id}")
    return Side(category, d.band, d.confidence, d.pattern_id)
