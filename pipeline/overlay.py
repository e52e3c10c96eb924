"""A candidate ruleset as the workers apply it: an overlay on the current patterns.

A candidate touches a few patterns (migration 0012). Its overlay is, for each of them, the
pattern as the candidate has it (or nothing: deleted or disabled). A worker keeps the current
ruleset as it is (the same cache entries, the same compiled rules) and, for the users the rollout
chose, takes the touched patterns out of what it found and puts the candidate's versions in.

Which users: ``rollout_bucket(candidate, user)`` is the first 7 bytes of
``sha256("<candidate id>:<user id>")`` as an integer, mod 100; a user is chosen while the bucket
is below the rollout percent. The same on every run, process and host (not Python's ``hash``),
different per candidate, and a user chosen at 10 % stays chosen at 20 %.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from pipeline.matcher import MerchantKey
from schemas import Pattern, PatternKind


class Rollout(msgspec.Struct, frozen=True):
    """The rollout a batch saw with the ruleset version: candidate, its revision, the percent."""

    candidate_id: int
    revision: int
    percent: int


def rollout_bucket(candidate_id: int, user_id: int) -> int:
    """The user's bucket (0..99) for this candidate: stable everywhere, independent per candidate."""
    digest = hashlib.sha256(f"{candidate_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:7], "big") % 100


def in_rollout(candidate_id: int, user_id: int, percent: int) -> bool:
    return rollout_bucket(candidate_id, user_id) < percent


class Overlay(msgspec.Struct, frozen=True):
    """The candidate's version of every pattern it touches that the workers may apply."""

    candidate_id: int
    revision: int
    #: every pattern id the candidate touches (taken out of what the current ruleset found)
    touched: frozenset[int]
    #: the touched patterns as the candidate has them, active ones only (put back in)
    patterns: tuple[Pattern, ...]

    def merchants(
        self, found: Mapping[MerchantKey, Sequence[Pattern]]
    ) -> dict[MerchantKey, tuple[Pattern, ...]]:
        """``found`` (merchant entries by (user or 0, value)) as the candidate has them."""
        out: dict[MerchantKey, tuple[Pattern, ...]] = dict(found)  # type: ignore[arg-type]
        keys = {(p.user_id or 0, p.value) for p in self.patterns if p.kind is PatternKind.MERCHANT}
        for key, entry in found.items():
            if any(p.id in self.touched for p in entry):
                keys.add(key)
        for key in keys:
            kept = [p for p in out.get(key, ()) if p.id not in self.touched]
            kept.extend(
                p
                for p in self.patterns
                if p.kind is PatternKind.MERCHANT and (p.user_id or 0, p.value) == key
            )
            out[key] = tuple(sorted(kept, key=lambda p: p.id))
        return out

    def rules(self, patterns: Iterable[Pattern]) -> tuple[Pattern, ...]:
        """The non-merchant rule patterns as the candidate has them, in id order."""
        kept = [p for p in patterns if p.id not in self.touched]
        kept.extend(p for p in self.patterns if p.kind is not PatternKind.MERCHANT)
        return tuple(sorted(kept, key=lambda p: p.id))


class StagedChange(msgspec.Struct, frozen=True, kw_only=True):
    """One staged change (``ruleset_candidate_changes``) with the pattern's current row, if any.

    ``created``: a pattern the candidate adds (its fields are the staged ones). Otherwise only
    what the change sets is staged (``weight`` for ``edit``/``add``, ``active`` for
    ``enable``/``disable``/``add``), and ``current`` is the pattern's row now (None: gone)."""

    id: int
    op: str
    pattern_id: int
    created: bool
    staged: Pattern | None  # the added pattern (created), else None
    weight: float | None
    active: bool | None
    current: Pattern | None
    current_active: bool = True


class PatternState(msgspec.Struct, kw_only=True):
    """A touched pattern after every staged change: what promotion writes, what workers apply."""

    pattern: Pattern
    active: bool
    deleted: bool = False
    created: bool = False
    #: the pattern existed when staged but is gone now (promotion refuses; workers ignore it)
    vanished: bool = False


def fold(changes: Iterable[StagedChange]) -> dict[int, PatternState]:
    """The state of every touched pattern after the changes, applied in staging order."""
    states: dict[int, PatternState] = {}
    for ch in sorted(changes, key=lambda c: c.id):
        state = states.get(ch.pattern_id)
        if state is None:
            if ch.created and ch.staged is not None:
                state = PatternState(pattern=ch.staged, active=True, created=True)
            elif ch.current is not None:
                state = PatternState(pattern=ch.current, active=ch.current_active)
            else:
                placeholder = Pattern(
                    id=ch.pattern_id,
                    user_id=None,
                    category_id=0,
                    kind=PatternKind.MERCHANT,
                    value="?",
                    weight=1.0,
                )
                state = PatternState(pattern=placeholder, active=False, vanished=True)
            states[ch.pattern_id] = state
        if ch.op == "delete":
            state.deleted = True
            continue
        if ch.weight is not None:
            state.pattern = msgspec.structs.replace(state.pattern, weight=ch.weight)
        if ch.active is not None:
            state.active = ch.active
    return states


def overlay_of(candidate_id: int, revision: int, states: Mapping[int, PatternState]) -> Overlay:
    """What the workers apply of the folded states (a vanished pattern: nothing)."""
    live = {pid: s for pid, s in states.items() if not s.vanished}
    return Overlay(
        candidate_id=candidate_id,
        revision=revision,
        touched=frozenset(live),
        patterns=tuple(s.pattern for _, s in sorted(live.items()) if s.active and not s.deleted),
    )
