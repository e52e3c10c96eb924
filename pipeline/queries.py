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
-- Arrays go in binary: no per-element quoting and escaping on either side.
SELECT u.expense_id, u.category_id, u.pattern_id, u.confidence, u.band, u.method, u.explanation,
       %(ruleset_version)s, %(message_id)s, %(correlation_id)s, 'auto', %(enqueued_at)s
FROM unnest(%(expense_ids)b::bigint[], %(category_ids)b::bigint[], %(pattern_ids)b::bigint[],
            %(confidences)b::real[], %(bands)b::text[], %(methods)b::text[], %(explanations)b::jsonb[])
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

#: The current ruleset version (bumped by every pattern change), for ``catfleet status``.
RULESET_VERSION: LiteralString = "SELECT version FROM ruleset"
#: Outbox (0003): a relay claims pending requests in id order; rows another relay holds are
#: skipped, so several relays share the work. Age is measured on the database's clock.
CLAIM_REQUESTS: LiteralString = """
SELECT id, expense_id, correlation_id, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age
FROM categorization_requests
WHERE sent_at IS NULL
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

#: In the claiming transaction, after the messages are in the broker.
MARK_REQUESTS_SENT: LiteralString = """
UPDATE categorization_requests AS r
SET sent_at = clock_timestamp(), message_id = u.message_id
FROM unnest(%(ids)s::bigint[], %(message_ids)s::text[]) AS u(id, message_id)
WHERE r.id = u.id
"""

#: Relay lag: the age of the oldest pending request, and how many are pending.
PENDING_REQUESTS: LiteralString = """
SELECT count(*),
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
FROM categorization_requests
WHERE sent_at IS NULL
"""

#: Sent requests past their retention, removed a bounded number at a time.
PRUNE_SENT_REQUESTS: LiteralString = """
DELETE FROM categorization_requests
WHERE id IN (
    SELECT id FROM categorization_requests
    WHERE sent_at IS NOT NULL AND sent_at < clock_timestamp() - make_interval(secs => %(retention)s)
    LIMIT %(limit)s
)
"""

#: What a host application runs in its own transaction (Python hosts: OutboxStore.request).
INSERT_REQUESTS: LiteralString = """
INSERT INTO categorization_requests (expense_id, correlation_id)
SELECT unnest(%(expense_ids)s::bigint[]), %(correlation_id)s
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
