"""One batch, end to end: load -> resolve -> match -> write, in a constant number of round trips."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import msgspec

from pipeline.cache.base import Entry
from pipeline.matcher import (
    USER_ENTRY,
    USER_ENTRY_MAX,
    Decision,
    MerchantKey,
    Thresholds,
    decide,
    merchant_hits,
    token_hits,
)
from pipeline.normalize import merchant_keys, normalize_merchant
from pipeline.overlay import Overlay, Rollout, in_rollout
from pipeline.resolver import PatternResolver
from pipeline.rules import Hit, Ruleset
from pipeline.stores import CandidateSource, CategorizationSink, ExpenseSource, WriteMeta
from pipeline.tokens import TOKEN_ENTRY, TOKEN_ENTRY_MAX, token_key, token_keys
from schemas import Expense, Outcome, Pattern

#: Decisions memoized per worker process (see ``Categorizer._decide``); cleared when full
#: (about 1.3 kB each with their explanation: ~5 MB at most; `bench memory` keeps it small).
DECISION_MEMO_MAX = 4_096


class BatchReport(msgspec.Struct, kw_only=True):
    """What one batch did: every requested ID is in exactly one outcome."""

    requested: int
    outcomes: dict[str, int]
    written: int
    unchanged: int
    ruleset_version: int | None
    cache: dict[str, int]
    categories: dict[int, int]
    duration_ms: float
    #: the rolled-out candidate ruleset and how many expenses it decided (their users are in
    #: its share); None when it decided none
    candidate: dict[str, int] | None = None


class Categorizer:
    def __init__(
        self,
        *,
        expenses: ExpenseSource,
        resolver: PatternResolver,
        writer: CategorizationSink,
        thresholds: Thresholds,
        candidates: CandidateSource | None = None,
    ):
        """``candidates``: where a rolled-out candidate ruleset is read (None: rollouts are not
        applied, every user gets the current ruleset)."""
        self.expenses = expenses
        self.resolver = resolver
        self.writer = writer
        self.thresholds = thresholds
        self.candidates = candidates
        self._overlay: Overlay | None = None  # the last rollout's, kept per (candidate, revision)
        self._overlay_lock = threading.Lock()
        # shared by the worker's threads: single dict operations are atomic, Decisions frozen
        self._decisions: dict[tuple[object, ...], Decision] = {}

    def categorize(
        self,
        expense_ids: Sequence[int],
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        enqueued_at: dt.datetime | None = None,
    ) -> BatchReport:
        started = time.perf_counter()
        ids = list(dict.fromkeys(expense_ids))  # duplicates in one message count once
        loaded = self.expenses.load(ids)
        outcomes: Counter[str] = Counter()
        cache: Counter[str] = Counter()
        categories: Counter[int] = Counter()
        outcomes[Outcome.MISSING] = len(ids) - len(loaded.expenses)
        outcomes[Outcome.USER_KEPT] = len(loaded.user_owned)
        todo = [e for e in loaded.expenses if e.id not in loaded.user_owned]
        written: set[int] = set()
        candidate_rows = None
        if todo and loaded.ruleset_version is not None:
            version = loaded.ruleset_version
            keys_of = {e.id: merchant_keys(normalize_merchant(e.merchant_name)) for e in todo}
            found = self._merchant_patterns(version, todo, keys_of, cache)
            rules = self.resolver.rules(version)
            # a rolled-out candidate: its users get the same entries with its patterns swapped in
            overlay = self._overlay_of(loaded.rollout)
            chosen: set[int] = set()
            if overlay is not None and loaded.rollout is not None:
                percent = loaded.rollout.percent
                users = {e.user_id for e in todo}
                chosen = {u for u in users if in_rollout(overlay.candidate_id, u, percent)}
            decisions: list[tuple[int, Decision]] = []
            by_name: dict[tuple[int, str], list[Hit]] = {}  # merchant and token hits, per batch
            tally = (decisions, outcomes, categories)
            if chosen and overlay is not None:
                mine = [e for e in todo if e.user_id in chosen]
                rest = [e for e in todo if e.user_id not in chosen]
                self._match(rest, keys_of, found, rules, version, by_name, tally)
                candidate_rules = self.resolver.candidate_rules(version, overlay)
                self._match(
                    mine, keys_of, overlay.merchants(found), candidate_rules, version, by_name, tally, overlay
                )
                candidate_rows = {"id": overlay.candidate_id, "expenses": len(mine)}
            else:  # the hot path: no candidate, nothing more per expense
                self._match(todo, keys_of, found, rules, version, by_name, tally)
            meta = WriteMeta(
                ruleset_version=version,
                message_id=message_id,
                correlation_id=correlation_id,
                enqueued_at=enqueued_at,
            )
            written = self.writer.upsert(decisions, meta)
        return BatchReport(
            requested=len(expense_ids),
            outcomes={str(k): v for k, v in outcomes.items() if v},
            written=len(written),
            unchanged=len(todo) - len(written),
            ruleset_version=loaded.ruleset_version,
            cache=dict(cache),
            categories=dict(categories),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            candidate=candidate_rows,
        )

    def _match(
        self,
        todo: Sequence[Expense],
        keys_of: dict[int, list[str]],
        found: Mapping[MerchantKey, Sequence[Pattern]],
        rules: Ruleset,
        version: int,
        by_name: dict[tuple[int, str], list[Hit]],
        tally: tuple[list[tuple[int, Decision]], Counter[str], Counter[int]],
        overlay: Overlay | None = None,
    ) -> None:
        """Decide each expense on these entries and rules (a candidate's when ``overlay``),
        adding to the batch's decisions, outcomes and categories."""
        decisions, outcomes, categories = tally
        for e in todo:
            keys = keys_of[e.id]
            name = (e.user_id, keys[0] if keys else "")
            named = by_name.get(name)  # keyed by user: a user is on one side of a rollout
            if named is None:
                named = merchant_hits(e.user_id, keys, found) + token_hits(e.user_id, name[1], found)
                by_name[name] = named
            hits = list(named)
            hits.extend(
                h
                for h in rules.match(e, keys[0] if keys else "")
                if h.pattern.user_id is None or h.pattern.user_id == e.user_id
            )
            d = (
                self._decide(version, hits)
                if overlay is None
                else self._decide_candidate(version, overlay, hits)
            )
            decisions.append((e.id, d))
            outcomes[_outcome(d)] += 1
            if d.category_id is not None:
                categories[d.category_id] += 1

    def _overlay_of(self, rollout: Rollout | None) -> Overlay | None:
        """The rolled-out candidate's overlay, read once per process and revision."""
        if rollout is None or self.candidates is None:
            return None
        wanted = (rollout.candidate_id, rollout.revision)
        overlay = self._overlay
        if overlay is not None and (overlay.candidate_id, overlay.revision) == wanted:
            return overlay
        with self._overlay_lock:
            overlay = self._overlay
            if overlay is None or (overlay.candidate_id, overlay.revision) != wanted:
                overlay = self._overlay = self.candidates.overlay(rollout)
            return overlay

    def _decide_candidate(self, version: int, overlay: Overlay, hits: list[Hit]) -> Decision:
        """``_decide`` for a rollout user: memoized apart, and marked with the candidate."""
        key = (
            version,
            overlay.candidate_id,
            overlay.revision,
            *[(h.pattern.id, h.score, h.detail) for h in hits],
        )
        d = self._decisions.get(key)
        if d is None:
            d = msgspec.structs.replace(decide(hits, self.thresholds), candidate_id=overlay.candidate_id)
            if len(self._decisions) >= DECISION_MEMO_MAX:
                self._decisions.clear()
            self._decisions[key] = d
        return d

    def _decide(self, version: int, hits: list[Hit]) -> Decision:
        """``decide`` memoized on the hits (pattern ids, scores and details) within a ruleset
        version: a pattern's content is fixed by (version, id), so equal hits decide alike. Zipf
        traffic repeats merchants, and deciding costs more than building the key."""
        key = (version, *[(h.pattern.id, h.score, h.detail) for h in hits])
        d = self._decisions.get(key)
        if d is None:
            d = decide(hits, self.thresholds)
            if len(self._decisions) >= DECISION_MEMO_MAX:
                self._decisions.clear()  # bounded; cheaper than LRU bookkeeping per lookup
            self._decisions[key] = d
        return d

    def _merchant_patterns(
        self,
        version: int,
        todo: Sequence[Expense],
        keys_of: dict[int, list[str]],
        cache: Counter[str],
    ) -> dict[MerchantKey, Entry]:
        """Global entries for every merchant key plus one entry per user with all of the user's own
        merchant patterns; only a user with more than USER_ENTRY_MAX of them is looked up per name.
        Learned token votes come in the same lookup (the same tiers, the same one PostgreSQL query
        for what the caches missed): the fleet's per token, the user's as one entry per user
        (per token only for a user with more than TOKEN_ENTRY_MAX of them)."""
        users = {e.user_id for e in todo}
        wanted: set[MerchantKey] = {(user, entry) for user in users for entry in (USER_ENTRY, TOKEN_ENTRY)}
        wanted.update((0, key) for e in todo for key in keys_of[e.id])
        names = {(e.user_id, keys_of[e.id][0]) for e in todo if keys_of[e.id]}
        wanted.update((0, key) for _, name in names for key in token_keys(name))
        found = self.resolver.merchants(version, wanted, cache)
        many: set[int] = set()
        many_tokens: set[int] = set()
        for user in users:
            own = found[(user, USER_ENTRY)]
            if len(own) > USER_ENTRY_MAX:
                many.add(user)
            else:
                for p in own:
                    found[(user, p.value)] = (*found.get((user, p.value), ()), p)
            votes = found[(user, TOKEN_ENTRY)]
            if len(votes) > TOKEN_ENTRY_MAX:
                many_tokens.add(user)
            else:
                for p in votes:
                    key = (user, token_key(p.value))
                    found[key] = (*found.get(key, ()), p)
        if many or many_tokens:
            keys = {(e.user_id, key) for e in todo if e.user_id in many for key in keys_of[e.id]}
            keys.update((u, key) for u, name in names if u in many_tokens for key in token_keys(name))
            found.update(self.resolver.merchants(version, keys, cache))
        return found


def _outcome(d: Decision) -> Outcome:
    if d.band == "auto":
        return Outcome.CATEGORIZED
    if d.band == "suggest":
        return Outcome.SUGGESTED
    return Outcome.UNCATEGORIZED
