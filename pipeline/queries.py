"""Every SQL statement the pipeline runs, named, in one place."""

from typing import LiteralString

#: One read per batch: the live expenses among the IDs, the ruleset version, and whether the
#: user already chose a category (those are left alone).
LOAD_EXPENSES: LiteralString = """
SELECT e.id, e.user_id, e.merchant_name, e.description, e.amount::float8, e.currency,
       e.transaction_date, e.transaction_time,
       (SELECT version FROM ruleset) AS ruleset_version,
       (c.source = 'user') AS user_owned
FROM expenses e
LEFT JOIN categorizations c ON c.expense_id = e.id
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.deleted_at IS NULL
"""

#: L3 merchant lookup for the keys the caches missed (global and the batch's users).
LOAD_MERCHANT_PATTERNS: LiteralString = """
SELECT id, user_id, category_id, kind, value, weight
FROM categorization_patterns
WHERE kind = 'merchant' AND active AND value = ANY(%(values)s::text[])
  AND (user_id IS NULL OR user_id = ANY(%(users)s::bigint[]))
"""

#: The rule set: every active non-merchant pattern, global and per user, with the version they
#: make up. One statement, so one snapshot: the version really describes these rules.
LOAD_RULES: LiteralString = """
SELECT r.version, p.id, p.user_id, p.category_id, p.kind, p.value, p.weight
FROM ruleset r
LEFT JOIN categorization_patterns p ON p.kind <> 'merchant' AND p.active
ORDER BY p.id
"""

#: One set-based, idempotent write per batch. A row owned by the user is never touched; an
#: identical repeat changes nothing (not even categorized_at); an older ruleset never
#: overwrites a newer one.
UPSERT_CATEGORIZATIONS: LiteralString = """
INSERT INTO categorizations AS c (
    expense_id, category_id, pattern_id, confidence, band, method, explanation,
    ruleset_version, message_id, correlation_id, source, enqueued_at)
SELECT u.expense_id, u.category_id, u.pattern_id, u.confidence, u.band, u.method, u.explanation,
       %(ruleset_version)s, %(message_id)s, %(correlation_id)s, 'auto', %(enqueued_at)s
FROM unnest(%(expense_ids)s::bigint[], %(category_ids)s::bigint[], %(pattern_ids)s::bigint[],
            %(confidences)s::real[], %(bands)s::text[], %(methods)s::text[], %(explanations)s::jsonb[])
     AS u(expense_id, category_id, pattern_id, confidence, band, method, explanation)
ON CONFLICT (expense_id) DO UPDATE SET
    category_id = EXCLUDED.category_id, pattern_id = EXCLUDED.pattern_id,
    confidence = EXCLUDED.confidence, band = EXCLUDED.band, method = EXCLUDED.method,
    explanation = EXCLUDED.explanation, ruleset_version = EXCLUDED.ruleset_version,
    message_id = EXCLUDED.message_id, correlation_id = EXCLUDED.correlation_id,
    enqueued_at = EXCLUDED.enqueued_at, categorized_at = clock_timestamp()
WHERE c.source = 'auto'
  AND EXCLUDED.ruleset_version >= c.ruleset_version
  AND (c.category_id, c.pattern_id, c.confidence, c.band, c.explanation)
      IS DISTINCT FROM
      (EXCLUDED.category_id, EXCLUDED.pattern_id, EXCLUDED.confidence, EXCLUDED.band, EXCLUDED.explanation)
RETURNING c.expense_id
"""

#: Expenses with no categorization yet (the producer's "all uncategorized").
UNCATEGORIZED_IDS: LiteralString = """
SELECT e.id FROM expenses e
WHERE e.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM categorizations c WHERE c.expense_id = e.id)
  AND (%(user_id)s::bigint IS NULL OR e.user_id = %(user_id)s::bigint)
ORDER BY e.id
"""

#: Failure log (RabbitMQ broker): one row per failed attempt of a message.
INSERT_FAILURE: LiteralString = """
INSERT INTO message_failures (message_id, queue_name, actor_name, retries, error_type, error, dead, at_ms)
VALUES (%(message_id)s, %(queue_name)s, %(actor_name)s, %(retries)s, %(error_type)s, %(error)s,
        %(dead)s, %(at_ms)s)
"""

FAILURE_HISTORY: LiteralString = """
SELECT message_id, queue_name, actor_name, retries, error_type, error, dead, at_ms
FROM message_failures WHERE message_id = ANY(%(ids)s::text[]) ORDER BY message_id, id
"""

#: Delivery counter (RabbitMQ broker): deliveries of a message that have not yet had an outcome.
COUNT_DELIVERY: LiteralString = """
INSERT INTO message_deliveries AS d (message_id, deliveries) VALUES (%(message_id)s, 1)
ON CONFLICT (message_id) DO UPDATE SET deliveries = d.deliveries + 1, updated_at = now()
RETURNING deliveries
"""

CLEAR_DELIVERIES: LiteralString = "DELETE FROM message_deliveries WHERE message_id = %(message_id)s"

#: Audit of dead-letter replays and purges.
INSERT_DEAD_LETTER_ACTION: LiteralString = """
INSERT INTO dead_letter_actions (operator, broker, action, filter, dry_run, count, message_ids)
VALUES (%(operator)s, %(broker)s, %(action)s, %(filter)s, %(dry_run)s, %(count)s, %(message_ids)s)
"""
