"""Learning from a user's correction, in one transaction.

A correction (expense, chosen category, idempotency key):

1. is recorded in ``corrections`` under its idempotency key; a replay of the same key changes
   nothing at all (the same key for a different expense or category is a permanent error);
2. writes the user's category (``source = 'user'``: automatic runs never overwrite it);
3. creates or strengthens the user's ``merchant`` pattern (``source = 'learned'``) for the
   normalized merchant and the chosen category. A learned pattern's weight is its smoothed
   success ratio ``(success + 0.5) / (usage + 1)``, where usage counts every correction of this
   user for this merchant: one correction gives 0.75 (suggest), two 0.83, three 0.875 (auto at
   the default 0.85); a merchant whose corrections disagree (Amazon: books one day, groceries the
   next) gets lower weights for every category, and the matcher's conflict penalty lowers the
   confidence further;
4. weakens what led to the wrong answer: the user's other patterns for the merchant lose the
   vote (their ratio falls); the pattern stored on the previous automatic row, when it is the
   user's own, has its weight multiplied by ``WEAKEN_FACTOR`` (never below ``MIN_WEIGHT``) and is
   switched off when that falls below ``DEACTIVATE_BELOW``. A global pattern is not changed by
   one user's correction (only its usage count grows); the user's learned pattern outranks it
   for that user anyway;
5. labels the expense with its normalized merchant and category and moves the votes that
   changes (``pipeline.generalize``): the user's vote for the merchant (the majority of its
   labelled expenses), the tokens of that merchant (once per distinct merchant), the fleet's
   vote and its global learned pattern (``FLEET_MIN_USERS`` different users must agree);
6. bumps the ruleset version (the statement triggers do it), so the next batch on every worker
   misses its caches and sees the new rules.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import psycopg

from pipeline import queries
from pipeline.db import Database
from pipeline.errors import ConflictingCorrection, UnknownCategory, UnknownExpense
from pipeline.generalize import apply_label
from pipeline.normalize import normalize_merchant
from schemas import Correction

#: Smoothing of a learned pattern's success ratio: weight = (success + 0.5) / (usage + 1).
PRIOR_SUCCESS = 0.5
PRIOR_TOTAL = 1.0
#: The pattern behind a wrong automatic answer: weight x 0.7, bounded below, off below 0.3.
WEAKEN_FACTOR = 0.7
MIN_WEIGHT = 0.05
DEACTIVATE_BELOW = 0.3

_json = msgspec.json.Encoder()


class LearnReport(msgspec.Struct, kw_only=True):
    """What one correction did."""

    correction_id: int
    duplicate: bool  # a replay of an idempotency key already recorded: nothing changed
    expense_id: int
    user_id: int | None = None
    category_id: int | None = None
    previous_category_id: int | None = None
    pattern_id: int | None = None  # the learned (or strengthened) merchant pattern
    weakened: list[int] = msgspec.field(default_factory=list)
    fleet_pattern_id: int | None = None  # the merchant's global learned pattern, when it has one
    ruleset_version: int | None = None


def default_correction_key(expense_id: int, category_key: str) -> str:
    """The idempotency key used when the caller gives none: stable for the same (expense,
    category), so sending the same correction twice records it once. Choosing a category again
    for an expense after changing it in between needs an explicit key."""
    digest = hashlib.sha256(f"{expense_id}\x00{category_key}".encode()).hexdigest()[:32]
    return f"correct:{expense_id}:{digest}"


class Learner:
    def __init__(self, db: Database):
        self.db = db

    def learn(
        self, correction: Correction, *, message_id: str | None = None, correlation_id: str | None = None
    ) -> LearnReport:
        """Apply one correction in one transaction (retried as a whole on a transient failure)."""

        def attempt(conn: psycopg.Connection[Any]) -> LearnReport:
            with conn.transaction():
                return self._learn(conn, correction, message_id, correlation_id)

        return self.db.run(attempt)

    def _learn(
        self,
        conn: psycopg.Connection[Any],
        c: Correction,
        message_id: str | None,
        correlation_id: str | None,
    ) -> LearnReport:
        replay = self._replay(conn, c)
        if replay is not None:
            return replay
        ctx = conn.execute(
            queries.LOAD_CORRECTION_CONTEXT, {"expense_id": c.expense_id, "category_key": c.category_key}
        ).fetchone()
        if ctx is None:
            raise UnknownExpense(c.expense_id)
        user_id, merchant_name, previous_category, previous_pattern, previous_source, chosen = ctx
        if chosen is None:
            raise UnknownCategory(c.category_key)
        conn.execute(queries.LOCK_RULESET)
        row = conn.execute(
            queries.INSERT_CORRECTION,
            {
                "expense_id": c.expense_id,
                "user_id": user_id,
                "category_id": chosen,
                "previous_category_id": previous_category,
                "key": c.idempotency_key,
            },
        ).fetchone()
        if row is None:  # a concurrent delivery of the same correction recorded it first
            return self._replay(conn, c) or LearnReport(
                correction_id=0, duplicate=True, expense_id=c.expense_id
            )
        report = LearnReport(
            correction_id=row[0],
            duplicate=False,
            expense_id=c.expense_id,
            user_id=user_id,
            category_id=chosen,
            previous_category_id=previous_category,
        )
        value = normalize_merchant(merchant_name)
        params = {
            "user_id": user_id,
            "category_id": chosen,
            "value": value,
            "prior_success": PRIOR_SUCCESS,
            "prior_total": PRIOR_TOTAL,
        }
        if value:
            report.pattern_id = conn.execute(queries.LEARN_MERCHANT_PATTERN, params).fetchone()[0]  # type: ignore[index]
            report.weakened += [r[0] for r in conn.execute(queries.WEAKEN_MERCHANT_SIBLINGS, params)]
            generalized = apply_label(
                conn, expense_id=c.expense_id, user_id=user_id, merchant=value, category_id=chosen
            )
            report.fleet_pattern_id = generalized.fleet_pattern_id
        if previous_pattern is not None and previous_source == "auto" and previous_category != chosen:
            weakened = conn.execute(
                queries.WEAKEN_PREVIOUS_PATTERN,
                {
                    **params,
                    "pattern_id": previous_pattern,
                    "factor": WEAKEN_FACTOR,
                    "min_weight": MIN_WEIGHT,
                    "deactivate_below": DEACTIVATE_BELOW,
                },
            ).fetchone()
            if weakened is not None and weakened[1]:
                report.weakened.append(weakened[0])
        explanation = {
            "decided_by": "user",
            "correction_id": report.correction_id,
            "idempotency_key": c.idempotency_key,
            "previous_category_id": previous_category,
            "learned_pattern_id": report.pattern_id,
        }
        version = conn.execute(
            queries.WRITE_USER_CATEGORIZATION,
            {
                "expense_id": c.expense_id,
                "category_id": chosen,
                "pattern_id": report.pattern_id,
                "explanation": _json.encode(explanation).decode(),
                "message_id": message_id,
                "correlation_id": correlation_id or c.correlation_id,
            },
        ).fetchone()
        report.ruleset_version = version[0] if version else None
        return report

    def reach(self, expense_id: int, *, limit: int) -> list[int]:
        """The expenses a correction of ``expense_id`` should reach: up to ``limit`` of the same
        user's other live expenses whose normalized merchant is this one's and whose row is not
        the user's own choice (``source <> 'user'``, or no row yet), newest first. One streamed
        pass (a server-side cursor) over the user's expenses: the normalizer is Python's."""
        if limit <= 0:
            return []

        def find(conn: psycopg.Connection[Any]) -> list[int]:
            source = conn.execute(queries.REACH_SOURCE, {"expense_id": expense_id}).fetchone()
            if source is None:
                return []
            user_id, merchant_name = source
            value = normalize_merchant(merchant_name)
            if not value:
                return []
            found: list[int] = []
            with conn.transaction(), conn.cursor(name="catfleet_reach") as cur:
                cur.itersize = 2_000
                cur.execute(queries.REACH_CANDIDATES, {"user_id": user_id, "expense_id": expense_id})
                for other_id, other_merchant in cur:
                    if normalize_merchant(other_merchant) == value:
                        found.append(other_id)
                        if len(found) >= limit:
                            break
            return found

        return self.db.run(find, read=True)

    @staticmethod
    def _replay(conn: psycopg.Connection[Any], c: Correction) -> LearnReport | None:
        row = conn.execute(queries.FIND_CORRECTION, {"key": c.idempotency_key}).fetchone()
        if row is None:
            return None
        correction_id, expense_id, category_id, category_key = row
        if (expense_id, category_key) != (c.expense_id, c.category_key):
            raise ConflictingCorrection(
                f"idempotency key {c.idempotency_key!r} was already used for expense {expense_id}"
                f" -> {category_key!r}, not expense {c.expense_id} -> {c.category_key!r}"
            )
        return LearnReport(
            correction_id=correction_id, duplicate=True, expense_id=expense_id, category_id=category_id
        )
