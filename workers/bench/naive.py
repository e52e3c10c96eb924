"""The naive fleet, the baseline of the throughput benchmark: what the Rails engine did.

One message per expense; per message one SELECT of the expense, every pattern of the user
loaded and compiled, one INSERT. Same broker, middleware, matcher and database as the fleet.
Boot it with ``catfleet worker --boot workers.bench.naive:broker``.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from pipeline.matcher import Thresholds, decide, merchant_hits
from pipeline.normalize import merchant_keys, normalize_merchant
from pipeline.rules import Ruleset
from pipeline.stores import WriteMeta, expense_from_row, pattern_from_row
from schemas import PatternKind
from workers.app import build_app
from workers.config import settings_from_env
from workers.logs import setup_logging
from workers.runtime import Runtime, RuntimeHolder

NAIVE_ACTOR = "categorize_one_naive"
NAIVE_QUEUE = "naive"

LOAD_ONE = """
SELECT e.id, e.user_id, e.merchant_name, e.description, e.amount::float8, e.currency, e.transaction_date,
       e.transaction_time, (SELECT version FROM ruleset)
FROM expenses e WHERE e.id = %s AND e.deleted_at IS NULL
"""
LOAD_PATTERNS = """
SELECT id, user_id, category_id, kind, value, weight FROM categorization_patterns
WHERE active AND (user_id IS NULL OR user_id = %s)
"""


def declare_naive_actor(broker: dramatiq.Broker, holder: RuntimeHolder) -> dramatiq.Actor[Any, Any]:
    def categorize_one_naive(expense_id: int) -> None:
        runtime = holder.runtime
        assert isinstance(runtime, Runtime)  # the naive fleet reads PostgreSQL itself
        thresholds = Thresholds(runtime.settings.auto_threshold, runtime.settings.suggest_threshold)
        with runtime.db.connection() as conn:
            row = conn.execute(LOAD_ONE, (expense_id,)).fetchone()
            if row is None:
                return
            expense = expense_from_row(row)
            patterns = [
                pattern_from_row(r) for r in conn.execute(LOAD_PATTERNS, (expense.user_id,)).fetchall()
            ]
        merchants: dict[tuple[int, str], tuple[Any, ...]] = {}
        for p in patterns:
            if p.kind is PatternKind.MERCHANT:
                key = (p.user_id or 0, p.value)
                merchants[key] = (*merchants.get(key, ()), p)
        keys = merchant_keys(normalize_merchant(expense.merchant_name))
        hits = merchant_hits(expense.user_id, keys, merchants)
        hits += Ruleset(row[8], patterns).match(expense, keys[0] if keys else "")
        runtime.categorizer.writer.upsert(
            [(expense.id, decide(hits, thresholds))], WriteMeta(ruleset_version=row[8])
        )

    return dramatiq.actor(broker=broker, actor_name=NAIVE_ACTOR, queue_name=NAIVE_QUEUE)(categorize_one_naive)


settings = settings_from_env()
setup_logging(settings)
app = build_app(settings)
declare_naive_actor(app.broker, app.runtime)
broker = app.broker
