"""Candidate rulesets (migration 0012): pattern changes staged instead of applied, rolled out to
a share of users, promoted in one transaction, rolled back to the exact previous rows.

Every operation that changes what the workers apply (a rollout's share, a change staged into
the candidate being rolled out, a promotion, a rollback, a discard of a rolled-out candidate)
moves the ruleset version on, so a row's ``ruleset_version`` (with its ``candidate_id``) names
the rules that made it and ``catfleet backfill --stale-ruleset`` finds the rows made before.
Each runs in one transaction holding the ``ruleset`` row's lock, so they are serialized.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import psycopg
import psycopg.errors
from psycopg.types.json import Jsonb

from pipeline import queries
from pipeline.db import Database
from pipeline.errors import CandidateError, UnknownCategory, UnknownPattern
from pipeline.overlay import Overlay, PatternState, StagedChange, fold, in_rollout, overlay_of
from pipeline.patterns import check_weight, validated_pattern
from schemas import Pattern, PatternKind

OPS = ("add", "edit", "enable", "disable", "delete")
#: What a staged change records, worked out in the staging transaction from (conn, candidate id).
_Change = Callable[[psycopg.Connection[Any], int], tuple[str, int, bool, dict[str, Any]]]


class Change(msgspec.Struct, kw_only=True):
    """A staged change as an operator sees it."""

    id: int
    op: str
    pattern_id: int
    created: bool  # a pattern the candidate adds
    user_id: int | None
    kind: str | None
    value: str | None
    category: str | None
    weight: float | None
    active: bool | None
    operator: str
    staged_at: dt.datetime
    #: the pattern it changes is gone (deleted since): promotion refuses until it is discarded
    vanished: bool = False


class Candidate(msgspec.Struct, kw_only=True):
    id: int
    state: str  # open | promoted | rolled_back | discarded
    operator: str
    created_at: dt.datetime
    updated_at: dt.datetime
    promoted_at: dt.datetime | None
    base_version: int | None
    promoted_version: int | None
    rolled_back_at: dt.datetime | None
    rolled_back_version: int | None
    percent: int  # the rollout's share (0: shadow only)
    revision: int
    changes: list[Change] = msgspec.field(default_factory=list)
    #: categorization rows it made (its rollout's users'; ``open_candidate`` only)
    rows: int | None = None


class Staged(msgspec.Struct, kw_only=True):
    candidate_id: int
    change_id: int
    op: str
    pattern_id: int
    created: bool
    #: the ruleset version moved on (the candidate is rolled out: workers apply the change now)
    version_bumped: bool


class Promoted(msgspec.Struct, kw_only=True):
    candidate_id: int
    base_version: int
    version: int
    added: int
    changed: int
    deleted: int


class RolledBack(msgspec.Struct, kw_only=True):
    candidate_id: int
    version: int
    restored: int
    removed: int


class RolloutSet(msgspec.Struct, kw_only=True):
    candidate_id: int
    percent: int
    version: int
    users_chosen: int
    users: int


def _candidate(row: Any) -> Candidate:
    return Candidate(
        id=row[0],
        state=row[1],
        operator=row[2],
        created_at=row[3],
        updated_at=row[4],
        promoted_at=row[5],
        base_version=row[6],
        promoted_version=row[7],
        rolled_back_at=row[8],
        rolled_back_version=row[9],
        percent=row[10],
        revision=row[11],
    )


def _pattern(pattern_id: int, row: Any, start: int, support: int = 0, seen: int = 0) -> Pattern:
    return Pattern(
        id=pattern_id,
        user_id=row[start],
        category_id=row[start + 1],
        kind=PatternKind(row[start + 2]),
        value=row[start + 3],
        weight=row[start + 4],
        support=support,
        seen=seen,
    )


def _changes(conn: psycopg.Connection[Any], candidate_id: int) -> list[tuple[StagedChange, Change]]:
    out = []
    for r in conn.execute(queries.CANDIDATE_CHANGES, {"candidate_id": candidate_id}):
        created, exists = r[3], r[10]
        staged = _pattern(r[2], r, 4) if created else None
        current = _pattern(r[2], r, 11, r[17], r[18]) if exists else None
        change = StagedChange(
            id=r[0],
            op=r[1],
            pattern_id=r[2],
            created=created,
            staged=staged,
            weight=r[8],
            active=r[9],
            current=current,
            current_active=bool(r[16]) if exists else True,
        )
        seen_as = staged or current
        shown = Change(
            id=r[0],
            op=r[1],
            pattern_id=r[2],
            created=created,
            user_id=seen_as.user_id if seen_as else None,
            kind=seen_as.kind.value if seen_as else None,
            value=seen_as.value if seen_as else None,
            category=r[19],
            weight=None if r[8] is None else round(r[8], 4),
            active=r[9],
            operator=r[20],
            staged_at=r[21],
            vanished=not created and not exists,
        )
        out.append((change, shown))
    return out


def load_overlay(conn: psycopg.Connection[Any], candidate_id: int, revision: int) -> Overlay:
    """What the workers apply of the candidate: its folded changes."""
    states = fold(c for c, _ in _changes(conn, candidate_id))
    return overlay_of(candidate_id, revision, states)


def _bump(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(queries.BUMP_RULESET_VERSION).fetchone()
    assert row is not None
    return int(row[0])


class CandidateAdmin:
    """``catfleet rules`` and the ``--stage`` of ``catfleet patterns``."""

    def __init__(self, db: Database, *, operator: str):
        self.db = db
        self.operator = operator

    # -- looking -------------------------------------------------------------------------------

    def open_candidate(self) -> Candidate | None:
        """The open candidate with its changes (None: nothing staged)."""

        def read(conn: psycopg.Connection[Any]) -> Candidate | None:
            row = conn.execute(queries.OPEN_CANDIDATE).fetchone()
            if row is None:
                return None
            cand = _candidate(row)
            cand.changes = [shown for _, shown in _changes(conn, cand.id)]
            made = conn.execute(queries.CANDIDATE_ROWS, {"id": cand.id}).fetchone()
            cand.rows = int(made[0]) if made else 0
            return cand

        return self.db.run(read)

    def recent(self, limit: int = 5) -> list[Candidate]:
        rows = self.db.run(lambda c: c.execute(queries.RECENT_CANDIDATES, {"limit": limit}).fetchall())
        return [_candidate(r) for r in rows]

    def overlay(self) -> Overlay:
        """The open candidate's overlay (for a shadow run); CandidateError when there is none."""

        def read(conn: psycopg.Connection[Any]) -> Overlay:
            row = conn.execute(queries.OPEN_CANDIDATE).fetchone()
            if row is None:
                raise CandidateError("nothing staged: stage changes with `catfleet patterns ... --stage`")
            cand = _candidate(row)
            return load_overlay(conn, cand.id, cand.revision)

        return self.db.run(read)

    # -- staging -------------------------------------------------------------------------------

    def _stage(self, fn: _Change) -> Staged:
        """One staged change in one transaction: the candidate opened if none is, ``fn``'s
        change recorded (op, pattern id, created, staged fields), the revision bumped, and the
        version too when the candidate is rolled out (its users get the change now)."""

        def run(conn: psycopg.Connection[Any]) -> Staged:
            with conn.transaction():
                lock = conn.execute(queries.LOCK_ROLLOUT).fetchone()
                assert lock is not None
                found = conn.execute(queries.OPEN_CANDIDATE_ID).fetchone()
                if found is None:
                    found = conn.execute(queries.CREATE_CANDIDATE, {"operator": self.operator}).fetchone()
                    assert found is not None
                candidate_id = int(found[0])
                op, pattern_id, created, fields = fn(conn, candidate_id)
                params = {
                    "candidate_id": candidate_id,
                    "op": op,
                    "pattern_id": pattern_id,
                    "created": created,
                    "user_id": None,
                    "category_id": None,
                    "kind": None,
                    "value": None,
                    "weight": None,
                    "active": None,
                    "operator": self.operator,
                    **fields,
                }
                row = conn.execute(queries.INSERT_CHANGE, params).fetchone()
                assert row is not None
                conn.execute(queries.TOUCH_CANDIDATE, {"id": candidate_id})
                conn.execute(queries.BUMP_ROLLOUT_REVISION, {"id": candidate_id})
                rolled_out = lock[1] == candidate_id and lock[2] > 0
                if rolled_out:
                    _bump(conn)
                return Staged(
                    candidate_id=candidate_id,
                    change_id=int(row[0]),
                    op=op,
                    pattern_id=pattern_id,
                    created=created,
                    version_bumped=rolled_out,
                )

        return self.db.run(run)

    @staticmethod
    def _existing(conn: psycopg.Connection[Any], candidate_id: int, pattern_id: int) -> bool:
        """True: a pattern of categorization_patterns; False: one the candidate adds."""
        if conn.execute(queries.STAGE_PATTERN, {"id": pattern_id}).fetchone() is not None:
            return True
        staged = {"candidate_id": candidate_id, "id": pattern_id}
        if conn.execute(queries.STAGED_CREATED, staged).fetchone() is not None:
            return False
        raise UnknownPattern(pattern_id)

    def stage_add(
        self, *, kind: str, value: str, category_key: str, user_id: int | None = None, weight: float = 0.9
    ) -> Staged:
        """Stage what ``patterns add`` would do: a new pattern (under an id taken now), or, when
        one with its key exists (or is staged), its weight set and it switched on."""
        kind, canonical = validated_pattern(kind, value, weight)

        def add(conn: psycopg.Connection[Any], candidate_id: int) -> tuple[str, int, bool, dict[str, Any]]:
            found = conn.execute(
                queries.CATEGORY_ID_BY_KEY, {"key": category_key, "user_id": user_id}
            ).fetchone()
            if found is None:
                raise UnknownCategory(category_key)
            key = {"user_id": user_id, "kind": kind, "value": canonical, "category_id": found[0]}
            same = conn.execute(queries.PATTERN_BY_KEY, key).fetchone()
            if same is None:
                same = conn.execute(queries.STAGED_BY_KEY, {**key, "candidate_id": candidate_id}).fetchone()
            if same is not None:
                return "add", int(same[0]), False, {"weight": weight, "active": True}
            new = conn.execute(queries.NEXT_PATTERN_ID).fetchone()
            assert new is not None
            return "add", int(new[0]), True, {**key, "weight": weight, "active": True}

        return self._stage(add)

    def stage_edit(self, pattern_id: int, *, weight: float) -> Staged:
        check_weight(weight)

        def edit(conn: psycopg.Connection[Any], candidate_id: int) -> tuple[str, int, bool, dict[str, Any]]:
            self._existing(conn, candidate_id, pattern_id)
            return "edit", pattern_id, False, {"weight": weight}

        return self._stage(edit)

    def stage_active(self, pattern_id: int, active: bool) -> Staged:
        def switch(conn: psycopg.Connection[Any], candidate_id: int) -> tuple[str, int, bool, dict[str, Any]]:
            self._existing(conn, candidate_id, pattern_id)
            return ("enable" if active else "disable"), pattern_id, False, {"active": active}

        return self._stage(switch)

    def stage_delete(self, pattern_id: int) -> Staged:
        def delete(conn: psycopg.Connection[Any], candidate_id: int) -> tuple[str, int, bool, dict[str, Any]]:
            self._existing(conn, candidate_id, pattern_id)
            return "delete", pattern_id, False, {}

        return self._stage(delete)

    # -- rolling out, promoting, rolling back --------------------------------------------------

    def _open_locked(self, conn: psycopg.Connection[Any]) -> tuple[Candidate, tuple[Any, ...]]:
        lock = conn.execute(queries.LOCK_ROLLOUT).fetchone()
        assert lock is not None
        row = conn.execute(queries.OPEN_CANDIDATE).fetchone()
        if row is None:
            raise CandidateError("nothing staged: stage changes with `catfleet patterns ... --stage`")
        return _candidate(row), tuple(lock)

    def set_rollout(self, percent: int) -> RolloutSet:
        """The workers apply the open candidate to ``percent`` % of the users (0: none)."""
        if not 0 <= percent <= 100:
            raise CandidateError(f"--percent must be 0..100, got {percent}")

        def run(conn: psycopg.Connection[Any]) -> tuple[int, int]:
            with conn.transaction():
                cand, (version, rolled, was) = self._open_locked(conn)
                if percent and not _changes(conn, cand.id):
                    raise CandidateError(f"candidate {cand.id} has no changes")
                conn.execute(queries.SET_ROLLOUT, {"id": cand.id, "percent": percent})
                before = was if rolled == cand.id else 0
                if before != percent:
                    version = _bump(conn)
                return cand.id, int(version)

        candidate_id, version = self.db.run(run)
        chosen = users = 0
        with self.db.connection(read=True) as conn:
            for (user_id,) in conn.execute(queries.ROLLOUT_USERS):
                users += 1
                chosen += in_rollout(candidate_id, user_id, percent)
        return RolloutSet(
            candidate_id=candidate_id, percent=percent, version=version, users_chosen=chosen, users=users
        )

    def promote(self) -> Promoted:
        """The open candidate becomes the ruleset: its changes applied to categorization_patterns
        in one transaction, the rows they replace kept for ``rollback``; the rollout ends."""

        def run(conn: psycopg.Connection[Any]) -> Promoted:
            with conn.transaction():
                cand, (version, _, _) = self._open_locked(conn)
                states = fold(c for c, _ in _changes(conn, cand.id))
                if not states:
                    raise CandidateError(f"candidate {cand.id} has no changes")
                gone = sorted(pid for pid, s in states.items() if s.vanished)
                if gone:
                    raise CandidateError(
                        f"candidate {cand.id} changes pattern(s) {', '.join(map(str, gone))} that no longer"
                        " exist: discard it (`catfleet rules discard`) and stage again"
                    )
                before = dict(conn.execute(queries.LOCK_PATTERNS, {"ids": sorted(states)}).fetchall())
                taken = sorted(pid for pid, s in states.items() if s.created and pid in before)
                if taken:
                    raise CandidateError(f"pattern id(s) {taken} exist already")
                ids = sorted(states)
                conn.execute(
                    queries.SAVE_BACKUPS,
                    {
                        "candidate_id": cand.id,
                        "ids": ids,
                        "rows": [Jsonb(before[i]) if i in before else None for i in ids],
                    },
                )
                counts = self._apply(conn, states)
                conn.execute(queries.CLEAR_ROLLOUT)
                if not any(counts):
                    _bump(conn)
                row = conn.execute(queries.MARK_PROMOTED, {"id": cand.id, "base_version": version}).fetchone()
                assert row is not None
                return Promoted(
                    candidate_id=cand.id,
                    base_version=int(version),
                    version=int(row[0]),
                    added=counts[0],
                    changed=counts[1],
                    deleted=counts[2],
                )

        return self.db.run(run)

    @staticmethod
    def _apply(conn: psycopg.Connection[Any], states: dict[int, PatternState]) -> tuple[int, int, int]:
        deleted = [pid for pid, s in sorted(states.items()) if s.deleted and not s.created]
        updated = [(pid, s) for pid, s in sorted(states.items()) if not s.deleted and not s.created]
        added = [(pid, s) for pid, s in sorted(states.items()) if not s.deleted and s.created]
        if deleted:
            conn.execute(queries.PROMOTE_DELETE, {"ids": deleted})
        if updated:
            conn.execute(
                queries.PROMOTE_UPDATE,
                {
                    "ids": [pid for pid, _ in updated],
                    "weights": [s.pattern.weight for _, s in updated],
                    "actives": [s.active for _, s in updated],
                },
            )
        if added:
            try:
                with conn.transaction():
                    conn.execute(queries.PROMOTE_INSERT, _columns(added))
            except psycopg.errors.UniqueViolation:
                raise CandidateError(
                    "a pattern the candidate adds exists now (saved since it was staged): discard the"
                    " candidate and stage again"
                ) from None
            except psycopg.errors.ForeignKeyViolation:
                raise CandidateError(
                    "the category of a pattern the candidate adds was deleted since: discard the"
                    " candidate and stage again"
                ) from None
        return len(added), len(updated), len(deleted)

    def rollback(self) -> RolledBack:
        """The latest promotion undone: every pattern it touched back to its row before, exactly."""

        def run(conn: psycopg.Connection[Any]) -> RolledBack:
            with conn.transaction():
                conn.execute(queries.LOCK_ROLLOUT)
                row = conn.execute(queries.LAST_PROMOTED_CANDIDATE).fetchone()
                if row is None:
                    raise CandidateError("nothing to roll back: no promotion that is not rolled back")
                cand = _candidate(row)
                params = {"id": cand.id}
                restored = conn.execute(queries.ROLLBACK_UPDATE, params).rowcount
                try:
                    with conn.transaction():
                        restored += conn.execute(queries.ROLLBACK_INSERT, params).rowcount
                except psycopg.errors.UniqueViolation:
                    raise CandidateError(
                        "a pattern the promotion deleted was saved again since: delete it first"
                    ) from None
                removed = conn.execute(queries.ROLLBACK_DELETE, params).rowcount
                done = conn.execute(queries.MARK_ROLLED_BACK, params).fetchone()
                assert done is not None
                return RolledBack(
                    candidate_id=cand.id, version=int(done[0]), restored=restored, removed=removed
                )

        return self.db.run(run)

    def discard(self) -> int:
        """The open candidate dropped unapplied (its rollout ends); its id."""

        def run(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                cand, (_, rolled, percent) = self._open_locked(conn)
                states = fold(c for c, _ in _changes(conn, cand.id))
                if rolled == cand.id:
                    conn.execute(queries.CLEAR_ROLLOUT)
                    if percent:
                        _bump(conn)
                new = [pid for pid, s in states.items() if s.created]
                if new:
                    conn.execute(queries.CLEAR_DISCARDED_PATTERN_IDS, {"id": cand.id, "ids": new})
                conn.execute(queries.MARK_DISCARDED, {"id": cand.id})
                return cand.id

        return self.db.run(run)


def _columns(added: Iterable[tuple[int, PatternState]]) -> dict[str, list[Any]]:
    rows = list(added)
    return {
        "ids": [pid for pid, _ in rows],
        "user_ids": [s.pattern.user_id for _, s in rows],
        "category_ids": [s.pattern.category_id for _, s in rows],
        "kinds": [s.pattern.kind.value for _, s in rows],
        "values": [s.pattern.value for _, s in rows],
        "weights": [s.pattern.weight for _, s in rows],
        "actives": [s.active for _, s in rows],
    }


def made_versions(conn: psycopg.Connection[Any], candidate_id: int) -> tuple[int | None, int | None]:
    """The ruleset versions a candidate's promotion made rows under: [promoted, rolled back)
    (None, None before a promotion; an open end before a rollback). CandidateError: no such one."""
    row = conn.execute(queries.CANDIDATE_VERSIONS, {"id": candidate_id}).fetchone()
    if row is None:
        raise CandidateError(f"no candidate ruleset {candidate_id} (catfleet rules show)")
    return row[0], row[1]
