"""The naive fleet, the baseline of the throughput benchmark: the plain one-at-a-time design.

One message per expense; per message one SELECT of the expense, one SELECT of the merchant
patterns for its keys (global and the user's: per-expense queries, no cache), the rule set
compiled once per process and ruleset version (never per message), one upsert of one row. Same
broker, middleware, matcher and database as the fleet. Boot it with
``catfleet worker --boot workers.bench.naive:broker``.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from pipeline.matcher import Thresholds, decide, merchant_hits
from pipeline.normalize import merchant_keys, normalize_merchant
from pipeline.stores import WriteMeta, expense_from_row, pattern_from_row
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
LOAD_MERCHANT_PATTERNS = """
SELECT id, user_id, category_id, kind, value, weight FROM categorization_patterns
WHERE kind = 'merchant' AND active AND value = ANY(%s) AND (user_id IS NULL OR user_id = %s)
ORDER BY id
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
            keys = merchant_keys(normalize_merchant(expense.merchant_name))
            rows = conn.execute(LOAD_MERCHANT_PATTERNS, (list(keys), expense.user_id)).fetchall()
        merchants: dict[tuple[int, str], tuple[Any, ...]] = {}
        for p in map(pattern_from_row, rows):
            key = (p.user_id or 0, p.value)
            merchants[key] = (*merchants.get(key, ()), p)
        hits = merchant_hits(expense.user_id, keys, merchants)
        rules = runtime.categorizer.resolver.rules(row[8])  # compiled once per process and version
        hits += [
            h
            for h in rules.match(expense, keys[0] if keys else "")
            if h.pattern.user_id is None or h.pattern.user_id == expense.user_id
        ]
        runtime.categorizer.writer.upsert(
            [(expense.id, decide(hits, thresholds))], WriteMeta(ruleset_version=row[8])
        )

    return dramatiq.actor(broker=broker, actor_name=NAIVE_ACTOR, queue_name=NAIVE_QUEUE)(categorize_one_naive)


settings = settings_from_env()
setup_logging(settings)
app = build_app(settings)
declare_naive_actor(app.broker, app.runtime)
broker = app.broker
