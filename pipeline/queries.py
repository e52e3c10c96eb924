"""Every SQL statement the pipeline runs, named, in one place."""

from typing import LiteralString

#: One read per batch: the live expenses among the IDs, the ruleset version, whether the
#: user already chose a category (those are left alone), and the rollout of a candidate ruleset
#: ([candidate, revision, percent]; NULL when none is rolled out: migration 0012).
LOAD_EXPENSES: LiteralString = """
SELECT e.id, e.user_id, e.merchant_name, e.description, e.amount::float8, e.currency,
       e.transaction_date, e.transaction_time,
       (SELECT version FROM ruleset) AS ruleset_version,
       (c.source = 'user') AS user_owned,
       (SELECT ARRAY[rollout_candidate, rollout_revision, rollout_percent] FROM ruleset
        WHERE rollout_candidate IS NOT NULL AND rollout_percent > 0) AS rollout
FROM expenses e
LEFT JOIN categorizations c ON c.expense_id = e.id
WHERE e.id = ANY(%(ids)s::bigint[]) AND e.deleted_at IS NULL
"""

#: L3 merchant lookup for the keys the caches missed. Part 0: the global (and, for users with
#: very many, the user's) patterns of the asked merchant names. Part 1: all merchant patterns of
#: each asked user, up to a bound: one cache entry per user instead of one per user and merchant.
#: Part 2: the token votes of the asked (user or 0, token) pairs, each with the merchants of its
#: token (all categories) and only those of at least ``token_min`` merchants; a vote for a deleted
#: category is ignored. Part 3: all such votes of each asked user, up to a bound (one cache entry
#: per user, like part 1). Parts 0 and 1 carry a fleet-learned global pattern's evidence (agreeing
#: users, voting users) in the last two columns, 0 for every other pattern.
LOAD_MERCHANT_PATTERNS: LiteralString = """
SELECT 0 AS part, id, user_id, category_id, kind, value, weight,
       CASE WHEN user_id IS NULL AND source = 'learned' THEN success_count ELSE 0 END AS support,
       CASE WHEN user_id IS NULL AND source = 'learned' THEN usage_count ELSE 0 END AS seen
FROM categorization_patterns
WHERE kind = 'merchant' AND active AND value = ANY(%(values)s::text[])
  AND (user_id IS NULL OR user_id = ANY(%(users)s::bigint[]))
UNION ALL
SELECT 1 AS part, id, user_id, category_id, kind, value, weight, 0, 0
FROM (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY id) AS n
      FROM categorization_patterns
      WHERE kind = 'merchant' AND active AND user_id = ANY(%(entry_users)s::bigint[])) own
WHERE n <= %(entry_max)s + 1
UNION ALL
SELECT 2 AS part, -t.id, t.user_id, t.category_id, 'token', t.token, 0::real, t.merchants, t.seen
FROM (SELECT v.id, v.user_id, v.token, v.category_id, v.merchants::bigint AS merchants,
             (sum(v.merchants) OVER (PARTITION BY v.user_id, v.token))::bigint AS seen
      FROM learned_token_votes v
      JOIN unnest(%(token_users)s::bigint[], %(tokens)s::text[]) AS q(user_id, token)
        ON v.user_id = q.user_id AND v.token = q.token
      JOIN categories k ON k.id = v.category_id
      WHERE v.merchants > 0) t
WHERE t.merchants >= %(token_min)s
UNION ALL
SELECT 3 AS part, -t.id, t.user_id, t.category_id, 'token', t.token, 0::real, t.merchants, t.seen
FROM (SELECT u.*, row_number() OVER (PARTITION BY u.user_id ORDER BY u.id DESC) AS n
      FROM (SELECT v.id, v.user_id, v.token, v.category_id, v.merchants::bigint AS merchants,
                   (sum(v.merchants) OVER (PARTITION BY v.user_id, v.token))::bigint AS seen
            FROM learned_token_votes v
            JOIN categories k ON k.id = v.category_id
            WHERE v.user_id = ANY(%(token_entry_users)s::bigint[]) AND v.merchants > 0) u
      WHERE u.merchants >= %(token_min)s) t
WHERE t.n <= %(token_entry_max)s + 1
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
#: older ruleset never overwrites a newer one; a replay (same result, same correlation id)
#: changes nothing, not even categorized_at. A run that computes the same result under another
#: correlation id (another request; without one given, the message id) re-tags the row: its
#: message_id and correlation_id become this run's, so a run is traced from its rows, while
#: categorized_at, enqueued_at and ruleset_version keep dating the result. Only ids inserted or
#: with a changed result come back: a re-tagged row keeps its categorized_at, which is earlier
#: than this statement's start (a row changed or inserted now gets clock_timestamp(), later).
#: Still one statement per batch (the data-modifying CTE runs once). The candidate that made a
#: row (candidate_id, migration 0012; NULL: the ruleset alone) is part of its result: a rollout
#: user's row made by the current ruleset before is rewritten by the candidate, and back.
UPSERT_CATEGORIZATIONS: LiteralString = """
WITH w AS (
INSERT INTO categorizations AS c (
    expense_id, category_id, pattern_id, confidence, band, method, explanation,
    ruleset_version, message_id, correlation_id, source, enqueued_at, candidate_id)
-- Arrays go in binary: no per-element quoting and escaping on either side. candidate_ids is
-- empty unless a rollout user is in the batch (unnest pads it with NULLs).
SELECT u.expense_id, u.category_id, u.pattern_id, u.confidence, u.band, u.method, u.explanation,
       %(ruleset_version)s, %(message_id)s, %(correlation_id)s, 'auto', %(enqueued_at)s, u.candidate_id
FROM unnest(%(expense_ids)b::bigint[], %(category_ids)b::bigint[], %(pattern_ids)b::bigint[],
            %(confidences)b::real[], %(bands)b::text[], %(methods)b::text[], %(explanations)b::json[],
            %(candidate_ids)b::bigint[])
     AS u(expense_id, category_id, pattern_id, confidence, band, method, explanation, candidate_id)
ON CONFLICT (expense_id) DO UPDATE SET
    category_id = EXCLUDED.category_id, pattern_id = EXCLUDED.pattern_id,
    confidence = EXCLUDED.confidence, band = EXCLUDED.band, method = EXCLUDED.method,
    explanation = EXCLUDED.explanation, candidate_id = EXCLUDED.candidate_id,
    message_id = EXCLUDED.message_id, correlation_id = EXCLUDED.correlation_id,
    (ruleset_version, enqueued_at, categorized_at) = (
        SELECT CASE WHEN r.changed THEN EXCLUDED.ruleset_version ELSE c.ruleset_version END,
               CASE WHEN r.changed THEN EXCLUDED.enqueued_at ELSE c.enqueued_at END,
               CASE WHEN r.changed THEN clock_timestamp() ELSE c.categorized_at END
        FROM (SELECT (c.category_id, c.pattern_id, c.confidence, c.band, c.explanation::text, c.candidate_id)
                     IS DISTINCT FROM
                     (EXCLUDED.category_id, EXCLUDED.pattern_id, EXCLUDED.confidence, EXCLUDED.band,
                      EXCLUDED.explanation::text, EXCLUDED.candidate_id) AS changed) r)
WHERE c.source = 'auto'
  AND EXCLUDED.ruleset_version >= c.ruleset_version
  AND ((c.category_id, c.pattern_id, c.confidence, c.band, c.explanation::text, c.candidate_id)
       IS DISTINCT FROM
       (EXCLUDED.category_id, EXCLUDED.pattern_id, EXCLUDED.confidence, EXCLUDED.band, EXCLUDED.explanation::text,
        EXCLUDED.candidate_id)
       OR c.correlation_id IS DISTINCT FROM EXCLUDED.correlation_id)
RETURNING c.expense_id, c.categorized_at >= statement_timestamp() AS changed
)
SELECT expense_id FROM w WHERE changed
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
#: The version and the rollout of a candidate (0012), for ``catfleet status``.
RULESET_STATE: LiteralString = """
SELECT version, CASE WHEN rollout_percent > 0 THEN rollout_candidate END, rollout_percent FROM ruleset
"""
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
INSERT INTO message_failures
    (message_id, queue_name, actor_name, retries, error_type, error, dead, at_ms, attempt)
VALUES (%(message_id)s, %(queue_name)s, %(actor_name)s, %(retries)s, %(error_type)s, %(error)s,
        %(dead)s, %(at_ms)s, %(attempt)s)
"""

FAILURE_HISTORY: LiteralString = """
SELECT message_id, queue_name, actor_name, retries, error_type, error, dead, at_ms, attempt
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
INSERT INTO dead_letter_actions
    (operator, broker, action, filter, dry_run, count, message_ids, limit_n, rate)
VALUES (%(operator)s, %(broker)s, %(action)s, %(filter)s, %(dry_run)s, %(count)s, %(message_ids)s,
        %(limit)s, %(rate)s)
RETURNING id
"""
#: Grows an audit entry by the messages moved since its last update.
ADD_TO_DEAD_LETTER_ACTION: LiteralString = """
UPDATE dead_letter_actions
SET count = count + cardinality(%(ids)s::text[]), message_ids = message_ids || %(ids)s::text[]
WHERE id = %(entry)s
"""

_DEAD_LETTER_ACTION_COLUMNS: LiteralString = """
SELECT id, (extract(epoch FROM at) * 1000)::bigint, operator, broker, action, filter, dry_run,
       count, message_ids, limit_n, rate
FROM dead_letter_actions
"""
#: The audit trail, newest first.
LIST_DEAD_LETTER_ACTIONS: LiteralString = (
    _DEAD_LETTER_ACTION_COLUMNS + "ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s"
)
#: The audit entries that moved these messages (GIN on message_ids), oldest first.
DEAD_LETTER_ACTIONS_OF: LiteralString = (
    _DEAD_LETTER_ACTION_COLUMNS + "WHERE message_ids && %(ids)s::text[] ORDER BY id"
)

# --- Dead-letter index (Redis broker; workers/backends/redis/deadletters.py). The XQ sorted sets
# are the truth: a row whose rid is no longer in its XQ under the same time of death is stale.
# Queries with optional filters run unprepared (``prepare=False``): each is planned with its
# values, so an absent filter (NULL) folds away and the matching index is used. ---

_DEAD_LETTER_INDEX_WHERE: LiteralString = """
WHERE space = %(space)s
  AND (%(queue)s::text IS NULL OR queue_name = %(queue)s)
  AND (%(actor)s::text IS NULL OR actor_name = %(actor)s)
  AND (%(error_type)s::text IS NULL OR error_type = %(error_type)s)
  AND (%(error)s::text IS NULL OR strpos(lower(error_type || ': ' || error), lower(%(error)s)) > 0)
  AND (%(correlation_id)s::text IS NULL OR correlation_id = %(correlation_id)s)
  AND (%(expense_id)s::bigint IS NULL OR expense_ids @> ARRAY[%(expense_id)s::bigint])
  AND (%(ids)s::text[] IS NULL OR message_id = ANY(%(ids)s::text[]))
  AND (%(died_after)s::bigint IS NULL OR died_at_ms >= %(died_after)s)
  AND (%(died_before)s::bigint IS NULL OR died_at_ms <= %(died_before)s)
  AND (%(queues)s::text[] IS NULL OR queue_name = ANY(%(queues)s::text[]))
"""
#: The page starts after this cursor (newest first: older than it), if one is given. It is not
#: part of the count: ``total`` is every letter the filter matches.
_DEAD_LETTER_INDEX_AFTER: LiteralString = """
  AND (%(after_ms)s::bigint IS NULL OR (died_at_ms, rid) < (%(after_ms)s::bigint, %(after_rid)s::text))
ORDER BY died_at_ms DESC, rid DESC LIMIT %(limit)s OFFSET %(offset)s
"""
#: One page of the matching letters, newest first (``limit`` NULL: all of them), after a cursor.
PAGE_DEAD_LETTER_INDEX: LiteralString = (
    "SELECT queue_name, rid, died_at_ms FROM dead_letter_index"
    + _DEAD_LETTER_INDEX_WHERE
    + _DEAD_LETTER_INDEX_AFTER
)
#: The same with the stored bytes (RabbitMQ broker: the page is answered from the index).
PAGE_DEAD_LETTER_BODIES: LiteralString = (
    "SELECT queue_name, rid, died_at_ms, body FROM dead_letter_index"
    + _DEAD_LETTER_INDEX_WHERE
    + _DEAD_LETTER_INDEX_AFTER
)
COUNT_DEAD_LETTER_INDEX: LiteralString = "SELECT count(*) FROM dead_letter_index" + _DEAD_LETTER_INDEX_WHERE
#: Rows per queue (RabbitMQ broker: compared with each XQ's message count).
DEAD_LETTER_INDEX_COUNTS: LiteralString = """
SELECT queue_name, count(*) FROM dead_letter_index
WHERE space = %(space)s AND queue_name = ANY(%(queues)s::text[]) GROUP BY queue_name
"""
#: Counts per actor and per final error type over these queues (RabbitMQ broker).
DEAD_LETTER_INDEX_QUEUE_FACETS: LiteralString = """
SELECT CASE WHEN grouping(actor_name) = 0 THEN 'actor' ELSE 'error_type' END,
       CASE WHEN grouping(actor_name) = 0 THEN actor_name ELSE error_type END, count(*)
FROM dead_letter_index
WHERE space = %(space)s AND queue_name = ANY(%(queues)s::text[])
GROUP BY GROUPING SETS ((actor_name), (error_type))
"""
#: A RabbitMQ worker's row for the letter it has just dead-lettered (``nack``): its final error
#: and time of death from the failure log when it has them already, else left for ``COMPLETE``.
INSERT_DEAD_LETTER: LiteralString = """
INSERT INTO dead_letter_index AS d (space, queue_name, rid, message_id, actor_name, error_type, error,
                                    correlation_id, expense_ids, died_at_ms, body)
SELECT %(space)s, %(queue_name)s, %(rid)s, %(message_id)s, %(actor_name)s,
       coalesce(f.error_type, ''), coalesce(left(f.error, %(error_chars)s), ''), %(correlation_id)s,
       %(expense_ids)s::bigint[], coalesce(f.at_ms, %(died_at_ms)s), %(body)s
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT error_type, error, CASE WHEN dead THEN at_ms END AS at_ms FROM message_failures
    WHERE message_id = %(message_id)s ORDER BY dead DESC, id DESC LIMIT 1
) AS f ON true
ON CONFLICT (space, queue_name, rid) DO UPDATE SET
    message_id = EXCLUDED.message_id, actor_name = EXCLUDED.actor_name,
    error_type = EXCLUDED.error_type, error = EXCLUDED.error,
    correlation_id = EXCLUDED.correlation_id, expense_ids = EXCLUDED.expense_ids,
    died_at_ms = EXCLUDED.died_at_ms, body = EXCLUDED.body
"""
#: Rows written before their failure was recorded (no final error yet): completed from the
#: failure log (the final error: the last dead record, else the last one).
COMPLETE_DEAD_LETTER_INDEX: LiteralString = """
UPDATE dead_letter_index d
SET error_type = f.error_type, error = left(f.error, %(error_chars)s),
    died_at_ms = CASE WHEN f.dead THEN f.at_ms ELSE d.died_at_ms END
FROM dead_letter_index x
CROSS JOIN LATERAL (
    SELECT error_type, error, dead, at_ms FROM message_failures
    WHERE message_id = x.message_id ORDER BY dead DESC, id DESC LIMIT 1
) AS f
WHERE x.space = %(space)s AND x.error_type = '' AND x.queue_name = ANY(%(queues)s::text[])
  AND d.space = x.space AND d.queue_name = x.queue_name AND d.rid = x.rid
"""
#: Rows from a JSON array of objects with their stored bytes (hex): a RabbitMQ XQ read whole.
UPSERT_DEAD_LETTER_BODIES: LiteralString = """
INSERT INTO dead_letter_index AS d (space, queue_name, rid, message_id, actor_name, error_type, error,
                                    correlation_id, expense_ids, died_at_ms, body)
SELECT %(space)s, x.queue_name, x.rid, x.message_id, x.actor_name, x.error_type, x.error,
       x.correlation_id, coalesce(x.expense_ids, '{}'), x.died_at_ms, decode(x.body, 'hex')
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(queue_name text, rid text, message_id text,
     actor_name text, error_type text, error text, correlation_id text, expense_ids bigint[],
     died_at_ms bigint, body text)
ON CONFLICT (space, queue_name, rid) DO UPDATE SET
    message_id = EXCLUDED.message_id, actor_name = EXCLUDED.actor_name,
    error_type = EXCLUDED.error_type, error = EXCLUDED.error,
    correlation_id = EXCLUDED.correlation_id, expense_ids = EXCLUDED.expense_ids,
    died_at_ms = EXCLUDED.died_at_ms, body = EXCLUDED.body
"""
#: After a whole XQ was read: the queue's rows of letters it no longer has (written before the
#: read began: a worker's row for a letter that arrived during the read is kept).
DELETE_DEAD_LETTERS_NOT_IN: LiteralString = """
DELETE FROM dead_letter_index
WHERE space = %(space)s AND queue_name = %(queue)s AND died_at_ms < %(before)s
  AND NOT (rid = ANY(%(rids)s::text[]))
"""
#: After a rebuild wrote many rows: the planner's statistics at once.
ANALYZE_DEAD_LETTER_INDEX: LiteralString = "ANALYZE dead_letter_index"
#: One letter by message id, with its stored bytes (RabbitMQ ``show``).
DEAD_LETTER_BY_MESSAGE: LiteralString = """
SELECT queue_name, rid, died_at_ms, body FROM dead_letter_index
WHERE space = %(space)s AND message_id = %(message_id)s AND queue_name = ANY(%(queues)s::text[])
ORDER BY died_at_ms DESC LIMIT 1
"""
#: Counts per actor and per final error type (the console's filter choices).
DEAD_LETTER_INDEX_FACETS: LiteralString = """
SELECT CASE WHEN grouping(actor_name) = 0 THEN 'actor' ELSE 'error_type' END,
       CASE WHEN grouping(actor_name) = 0 THEN actor_name ELSE error_type END, count(*)
FROM dead_letter_index WHERE space = %(space)s
GROUP BY GROUPING SETS ((actor_name), (error_type))
"""
#: Rows already indexed among these rids, with the time of death they were indexed under.
KNOWN_DEAD_LETTERS: LiteralString = """
SELECT rid, died_at_ms, error_type FROM dead_letter_index
WHERE space = %(space)s AND queue_name = %(queue)s AND rid = ANY(%(rids)s::text[])
"""
#: Rows from a JSON array of objects (one per letter): inserted, or brought up to date.
UPSERT_DEAD_LETTER_INDEX: LiteralString = """
INSERT INTO dead_letter_index AS d (space, queue_name, rid, message_id, actor_name, error_type, error,
                                    correlation_id, expense_ids, died_at_ms)
SELECT %(space)s, x.queue_name, x.rid, x.message_id, x.actor_name, x.error_type, x.error,
       x.correlation_id, coalesce(x.expense_ids, '{}'), x.died_at_ms
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(queue_name text, rid text, message_id text,
     actor_name text, error_type text, error text, correlation_id text, expense_ids bigint[],
     died_at_ms bigint)
ON CONFLICT (space, queue_name, rid) DO UPDATE SET
    message_id = EXCLUDED.message_id, actor_name = EXCLUDED.actor_name,
    error_type = EXCLUDED.error_type, error = EXCLUDED.error,
    correlation_id = EXCLUDED.correlation_id, expense_ids = EXCLUDED.expense_ids,
    died_at_ms = EXCLUDED.died_at_ms
"""
#: Rows of letters that left their XQ (replayed, purged, or found stale): ``pairs`` is a JSON
#: array of [queue, rid].
DELETE_DEAD_LETTER_INDEX: LiteralString = """
DELETE FROM dead_letter_index d USING jsonb_array_elements(%(pairs)s::jsonb) AS p(pair)
WHERE d.space = %(space)s AND d.queue_name = p.pair->>0 AND d.rid = p.pair->>1
"""
#: Rows of letters past Dramatiq's dead-message TTL (its maintenance drops them from the XQ).
EXPIRE_DEAD_LETTER_INDEX: LiteralString = """
DELETE FROM dead_letter_index WHERE space = %(space)s AND died_at_ms < %(before)s
"""
DEAD_LETTER_INDEX_MARKS: LiteralString = """
SELECT queue_name, indexed_ms FROM dead_letter_index_marks
WHERE space = %(space)s AND queue_name = ANY(%(queues)s::text[])
"""
SET_DEAD_LETTER_INDEX_MARK: LiteralString = """
INSERT INTO dead_letter_index_marks AS m (space, queue_name, indexed_ms)
VALUES (%(space)s, %(queue)s, %(indexed_ms)s)
ON CONFLICT (space, queue_name) DO UPDATE SET indexed_ms = greatest(m.indexed_ms, EXCLUDED.indexed_ms)
"""

# --- Learning from corrections (pipeline/learning.py): one transaction per correction. ---

#: A correction already recorded under this idempotency key (a replay).
FIND_CORRECTION: LiteralString = """
SELECT c.id, c.expense_id, c.category_id, k.key
FROM corrections c JOIN categories k ON k.id = c.category_id
WHERE c.idempotency_key = %(key)s
"""

#: The expense, its current categorization and the chosen category (shared or the user's own).
LOAD_CORRECTION_CONTEXT: LiteralString = """
SELECT e.user_id, e.merchant_name, c.category_id, c.pattern_id, c.source,
       (SELECT k.id FROM categories k
        WHERE k.key = %(category_key)s AND (k.user_id IS NULL OR k.user_id = e.user_id)) AS chosen
FROM expenses e
LEFT JOIN categorizations c ON c.expense_id = e.id
WHERE e.id = %(expense_id)s AND e.deleted_at IS NULL
"""

#: Corrections take the ruleset row first: the pattern trigger would take it at their first
#: pattern change anyway, and taking it before any pattern row means two corrections of the same
#: merchant cannot deadlock (each would hold its own pattern row and wait for the other's).
LOCK_RULESET: LiteralString = """
SELECT version FROM ruleset FOR UPDATE
"""

#: Record the correction; nothing comes back when a concurrent replay recorded it first.
INSERT_CORRECTION: LiteralString = """
INSERT INTO corrections (expense_id, user_id, category_id, previous_category_id, idempotency_key)
VALUES (%(expense_id)s, %(user_id)s, %(category_id)s, %(previous_category_id)s, %(key)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

#: Create or strengthen the user's merchant pattern for the chosen category. A learned pattern's
#: weight is its smoothed success ratio, (success + PRIOR_SUCCESS) / (usage + PRIOR_TOTAL), where
#: usage counts every correction of this user for this merchant (a new pattern inherits the count
#: of its older siblings); a pattern a person saved (source seed/user) keeps its weight.
LEARN_MERCHANT_PATTERN: LiteralString = """
INSERT INTO categorization_patterns AS p
    (user_id, category_id, kind, value, weight, source, usage_count, success_count)
SELECT %(user_id)s, %(category_id)s, 'merchant', %(value)s,
       (1 + %(prior_success)s) / (n.usage + 1 + %(prior_total)s), 'learned', n.usage + 1, 1
FROM (SELECT coalesce(max(usage_count), 0) AS usage FROM categorization_patterns
      WHERE user_id = %(user_id)s AND kind = 'merchant' AND value = %(value)s) n
ON CONFLICT ON CONSTRAINT categorization_patterns_uniq DO UPDATE SET
    usage_count = p.usage_count + 1,
    success_count = p.success_count + 1,
    weight = CASE WHEN p.source = 'learned'
                  THEN (p.success_count + 1 + %(prior_success)s) / (p.usage_count + 1 + %(prior_total)s)
                  ELSE p.weight END,
    updated_at = now()
RETURNING id
"""

#: The user's other patterns for the same merchant lost this vote: their usage grows, so a
#: learned one's success ratio (its weight) falls. Locked in id order (one order for all writers).
WEAKEN_MERCHANT_SIBLINGS: LiteralString = """
UPDATE categorization_patterns p SET
    usage_count = p.usage_count + 1,
    weight = CASE WHEN p.source = 'learned'
                  THEN (p.success_count + %(prior_success)s) / (p.usage_count + 1 + %(prior_total)s)
                  ELSE p.weight END,
    updated_at = now()
WHERE p.id IN (SELECT id FROM categorization_patterns
               WHERE user_id = %(user_id)s AND kind = 'merchant' AND value = %(value)s
                 AND category_id <> %(category_id)s
               ORDER BY id FOR UPDATE)
RETURNING p.id
"""

#: The pattern behind the wrong automatic answer, when it is the user's own and not one of the
#: merchant siblings above: weight times WEAKEN_FACTOR (never below MIN_WEIGHT), switched off
#: below DEACTIVATE_BELOW. A global pattern only counts the miss (one user's correction does not
#: change everybody's rules; the user's learned pattern outranks it for that user anyway).
WEAKEN_PREVIOUS_PATTERN: LiteralString = """
UPDATE categorization_patterns p SET
    usage_count = p.usage_count + 1,
    weight = CASE WHEN p.user_id IS NULL THEN p.weight
                  ELSE greatest(%(min_weight)s, p.weight * %(factor)s) END,
    active = CASE WHEN p.user_id IS NULL THEN p.active
                  ELSE p.active AND p.weight * %(factor)s >= %(deactivate_below)s END,
    updated_at = now()
WHERE p.id = %(pattern_id)s AND p.category_id <> %(category_id)s
  AND (p.user_id IS NULL OR p.user_id = %(user_id)s)
  AND NOT (p.user_id IS NOT NULL AND p.kind = 'merchant' AND p.value = %(value)s)
  AND NOT (p.user_id IS NULL AND p.source = 'learned')  -- fleet patterns count users (below)
RETURNING p.id, p.user_id IS NOT NULL AS weakened
"""

# --- Generalization (pipeline/generalize.py), in the correction's transaction. ---

#: The expense's label (its current user category, its normalized merchant) before this
#: correction, locked; then the new one.
LOAD_LABEL: LiteralString = """
SELECT merchant, category_id FROM learned_labels WHERE expense_id = %(expense_id)s FOR UPDATE
"""

SAVE_LABEL: LiteralString = """
INSERT INTO learned_labels (expense_id, user_id, merchant, category_id)
VALUES (%(expense_id)s, %(user_id)s, %(merchant)s, %(category_id)s)
ON CONFLICT (expense_id) DO UPDATE SET
    user_id = EXCLUDED.user_id, merchant = EXCLUDED.merchant, category_id = EXCLUDED.category_id
"""

#: The user's vote for a merchant: the category most of its labelled expenses carry (ties: the
#: category just chosen, then the lowest id); none when no expense of it is labelled. Returns
#: the vote before and after.
REVOTE_MERCHANT: LiteralString = """
WITH new AS (
    SELECT category_id FROM learned_labels
    WHERE user_id = %(user_id)s AND merchant = %(merchant)s
    GROUP BY category_id
    ORDER BY count(*) DESC, bool_or(category_id = %(category_id)s) DESC, category_id
    LIMIT 1),
old AS (
    SELECT category_id FROM learned_merchant_votes
    WHERE user_id = %(user_id)s AND merchant = %(merchant)s FOR UPDATE),
saved AS (
    INSERT INTO learned_merchant_votes (user_id, merchant, category_id)
    SELECT %(user_id)s, %(merchant)s, category_id FROM new
    ON CONFLICT (user_id, merchant) DO UPDATE SET category_id = EXCLUDED.category_id
    RETURNING 1),
dropped AS (
    DELETE FROM learned_merchant_votes
    WHERE user_id = %(user_id)s AND merchant = %(merchant)s AND NOT EXISTS (SELECT 1 FROM new)
    RETURNING 1)
SELECT (SELECT category_id FROM old), (SELECT category_id FROM new)
"""

#: The fleet's vote for a merchant (stored as user 0): the category at least ``min_users``
#: different users voted for, more than for any other; none otherwise. Returns the vote before
#: and after, the users agreeing with the new one and all users voting on the merchant.
REVOTE_FLEET: LiteralString = """
WITH tally AS (
    SELECT category_id, count(*) AS users FROM learned_merchant_votes
    WHERE merchant = %(merchant)s AND user_id <> 0
    GROUP BY category_id),
ranked AS (
    SELECT category_id, users, sum(users) OVER () AS voters,
           row_number() OVER (ORDER BY users DESC, category_id) AS n
    FROM tally),
new AS (
    SELECT category_id, users, voters FROM ranked
    WHERE n = 1 AND users >= %(min_users)s
      AND users > coalesce((SELECT users FROM ranked WHERE n = 2), 0)),
old AS (
    SELECT category_id FROM learned_merchant_votes
    WHERE user_id = 0 AND merchant = %(merchant)s FOR UPDATE),
saved AS (
    INSERT INTO learned_merchant_votes (user_id, merchant, category_id)
    SELECT 0, %(merchant)s, category_id FROM new
    ON CONFLICT (user_id, merchant) DO UPDATE SET category_id = EXCLUDED.category_id
    RETURNING 1),
dropped AS (
    DELETE FROM learned_merchant_votes
    WHERE user_id = 0 AND merchant = %(merchant)s AND NOT EXISTS (SELECT 1 FROM new)
    RETURNING 1)
SELECT (SELECT category_id FROM old), new.category_id, new.users, new.voters
FROM (SELECT 1) one LEFT JOIN new ON true
"""

#: The global learned pattern of the fleet's vote: weight, usage (voting users) and success
#: (agreeing users) follow the tally. A seed or person-saved global pattern of the same merchant
#: and category is left as it is.
SAVE_FLEET_PATTERN: LiteralString = """
INSERT INTO categorization_patterns AS p
    (user_id, category_id, kind, value, weight, source, usage_count, success_count)
VALUES (NULL, %(category_id)s, 'merchant', %(merchant)s, %(weight)s, 'learned', %(voters)s, %(users)s)
ON CONFLICT ON CONSTRAINT categorization_patterns_uniq DO UPDATE SET
    weight = CASE WHEN p.source = 'learned' THEN EXCLUDED.weight ELSE p.weight END,
    usage_count = CASE WHEN p.source = 'learned' THEN EXCLUDED.usage_count ELSE p.usage_count END,
    success_count = CASE WHEN p.source = 'learned' THEN EXCLUDED.success_count ELSE p.success_count END,
    updated_at = now()
WHERE (p.weight, p.usage_count, p.success_count)
      IS DISTINCT FROM (EXCLUDED.weight, EXCLUDED.usage_count, EXCLUDED.success_count)
RETURNING id
"""

#: Global learned patterns of the merchant for any category but the fleet's vote (all of them
#: when the fleet has none): the users no longer agree enough.
DROP_FLEET_PATTERNS: LiteralString = """
DELETE FROM categorization_patterns
WHERE user_id IS NULL AND kind = 'merchant' AND value = %(merchant)s AND source = 'learned'
  AND category_id IS DISTINCT FROM %(category_id)s::bigint
RETURNING id
"""

#: A merchant's vote moved from ``old`` to ``new`` (either may be NULL) in ``scope`` (a user, or
#: 0 for the fleet): each of its tokens loses one merchant for the old category and gains one
#: for the new.
MOVE_TOKEN_VOTES: LiteralString = """
WITH lost AS (
    UPDATE learned_token_votes SET merchants = merchants - 1
    WHERE user_id = %(scope)s AND category_id = %(old)s::bigint AND token = ANY(%(tokens)s::text[])
      AND merchants > 0
    RETURNING 1)
INSERT INTO learned_token_votes AS t (user_id, token, category_id, merchants)
SELECT %(scope)s, token, %(new)s::bigint, 1 FROM unnest(%(tokens)s::text[]) AS token
WHERE %(new)s::bigint IS NOT NULL
ORDER BY token
ON CONFLICT (user_id, token, category_id) DO UPDATE SET merchants = t.merchants + 1
"""

#: The user's own category: source 'user', never overwritten by automatic runs afterwards.
WRITE_USER_CATEGORIZATION: LiteralString = """
INSERT INTO categorizations AS c (
    expense_id, category_id, pattern_id, confidence, band, method, explanation,
    ruleset_version, message_id, correlation_id, source)
VALUES (%(expense_id)s, %(category_id)s, %(pattern_id)s, 1.0, 'auto', 'user', %(explanation)s::json,
        (SELECT version FROM ruleset), %(message_id)s, %(correlation_id)s, 'user')
ON CONFLICT (expense_id) DO UPDATE SET
    category_id = EXCLUDED.category_id, pattern_id = EXCLUDED.pattern_id,
    confidence = EXCLUDED.confidence, band = EXCLUDED.band, method = EXCLUDED.method,
    explanation = EXCLUDED.explanation, ruleset_version = EXCLUDED.ruleset_version,
    message_id = EXCLUDED.message_id, correlation_id = EXCLUDED.correlation_id,
    source = 'user', enqueued_at = NULL, categorized_at = clock_timestamp(), candidate_id = NULL
RETURNING ruleset_version
"""

# --- Pattern management (pipeline/patterns.py, `catfleet patterns`). ---

LIST_PATTERNS: LiteralString = """
SELECT p.id, p.user_id, k.key, p.kind, p.value, p.weight::float8, p.source, p.active,
       p.usage_count, p.success_count, p.updated_at
FROM categorization_patterns p JOIN categories k ON k.id = p.category_id
WHERE (%(user_id)s::bigint IS NULL OR p.user_id = %(user_id)s::bigint)
  AND (%(source)s::text IS NULL OR p.source = %(source)s::text)
  AND (%(kind)s::text IS NULL OR p.kind = %(kind)s::text)
  AND (%(active)s::boolean IS NULL OR p.active = %(active)s::boolean)
  AND (%(category)s::text IS NULL OR k.key = %(category)s::text)
  AND (%(search)s::text IS NULL OR strpos(lower(p.value), lower(%(search)s::text)) > 0)
ORDER BY p.id
LIMIT %(limit)s OFFSET %(offset)s
"""

SET_PATTERN_ACTIVE: LiteralString = """
UPDATE categorization_patterns SET active = %(active)s, updated_at = now()
WHERE id = %(id)s
RETURNING id
"""

SET_PATTERN_WEIGHT: LiteralString = """
UPDATE categorization_patterns SET weight = %(weight)s, updated_at = now()
WHERE id = %(id)s
RETURNING id
"""

DELETE_PATTERN: LiteralString = "DELETE FROM categorization_patterns WHERE id = %(id)s RETURNING id"

CATEGORY_ID_BY_KEY: LiteralString = """
SELECT id FROM categories WHERE key = %(key)s AND (user_id IS NULL OR user_id = %(user_id)s::bigint)
"""

#: Saved by a person: source 'user'. Saving an existing pattern again sets its weight and
#: switches it back on.
ADD_PATTERN: LiteralString = """
INSERT INTO categorization_patterns AS p (user_id, category_id, kind, value, weight, source)
VALUES (%(user_id)s, %(category_id)s, %(kind)s, %(value)s, %(weight)s, 'user')
ON CONFLICT ON CONSTRAINT categorization_patterns_uniq DO UPDATE SET
    weight = EXCLUDED.weight, active = true, updated_at = now()
RETURNING id, (xmax = 0) AS created
"""

# The fleet's state (workers.fleet.state) for the RabbitMQ broker: migrations 0009 and 0010,
# every statement within one vhost.
PUBLISH_PROCESS: LiteralString = """
INSERT INTO fleet_processes (id, vhost, record, beat_ms) VALUES (%(id)s, %(vhost)s, %(record)s, %(beat_ms)s)
ON CONFLICT (id) DO UPDATE SET vhost = EXCLUDED.vhost, record = EXCLUDED.record, beat_ms = EXCLUDED.beat_ms
"""
REMOVE_PROCESS: LiteralString = "DELETE FROM fleet_processes WHERE id = %(id)s"
PRUNE_PROCESSES: LiteralString = """
DELETE FROM fleet_processes WHERE vhost = %(vhost)s AND beat_ms <= %(fresh_after)s
"""
LIVE_PROCESSES: LiteralString = """
SELECT record::text FROM fleet_processes WHERE vhost = %(vhost)s AND beat_ms > %(fresh_after)s
"""
PAUSED_QUEUES: LiteralString = "SELECT queue, operator, at_ms FROM queue_pauses WHERE vhost = %(vhost)s"
PAUSE_QUEUE: LiteralString = """
WITH paused AS (
    INSERT INTO queue_pauses (vhost, queue, operator, at_ms)
    VALUES (%(vhost)s, %(queue)s, %(operator)s, %(at_ms)s)
    ON CONFLICT (vhost, queue) DO NOTHING
    RETURNING queue
)
INSERT INTO queue_actions (vhost, at_ms, operator, action, queue)
SELECT %(vhost)s, %(at_ms)s, %(operator)s, 'pause', queue FROM paused
RETURNING id
"""
RESUME_QUEUE: LiteralString = """
WITH resumed AS (
    DELETE FROM queue_pauses WHERE vhost = %(vhost)s AND queue = %(queue)s RETURNING queue
)
INSERT INTO queue_actions (vhost, at_ms, operator, action, queue)
SELECT %(vhost)s, %(at_ms)s, %(operator)s, 'resume', queue FROM resumed
RETURNING id
"""
QUEUE_ACTIONS: LiteralString = """
SELECT at_ms, operator, action, queue FROM queue_actions WHERE vhost = %(vhost)s
ORDER BY id DESC LIMIT %(limit)s
"""
ADD_PROCESSED: LiteralString = """
INSERT INTO fleet_throughput (vhost, queue, bucket, processed) VALUES (%(vhost)s, %(queue)s, %(bucket)s, %(n)s)
ON CONFLICT (vhost, queue, bucket) DO UPDATE SET processed = fleet_throughput.processed + EXCLUDED.processed
"""
PRUNE_THROUGHPUT: LiteralString = (
    "DELETE FROM fleet_throughput WHERE vhost = %(vhost)s AND bucket < %(oldest)s"
)
THROUGHPUT: LiteralString = """
SELECT queue, bucket, processed FROM fleet_throughput
WHERE vhost = %(vhost)s AND queue = ANY(%(queues)s) AND bucket >= %(oldest)s
"""

# --- Corrections reach the rest (issue 12, part 3) ---------------------------------------------
#: The corrected expense's user and raw merchant name.
REACH_SOURCE: LiteralString = "SELECT user_id, merchant_name FROM expenses WHERE id = %(expense_id)s"
#: The user's other live expenses whose row (if any) is not the user's own choice, newest first;
#: the caller keeps those whose normalized merchant is the corrected one.
REACH_CANDIDATES: LiteralString = """
SELECT e.id, e.merchant_name FROM expenses e
LEFT JOIN categorizations c ON c.expense_id = e.id
WHERE e.user_id = %(user_id)s AND e.deleted_at IS NULL AND e.id <> %(expense_id)s
  AND c.source IS DISTINCT FROM 'user'
ORDER BY e.id DESC
"""

# --- Backfills (issue 12, part 2; migration 0011) ----------------------------------------------
#: The selectable expenses: live, not the user's own choice; ``selector`` clauses are added to it.
BACKFILL_SELECT: LiteralString = """
SELECT e.id, e.merchant_name FROM expenses e
LEFT JOIN categorizations c ON c.expense_id = e.id
WHERE e.deleted_at IS NULL AND c.source IS DISTINCT FROM 'user'
"""
BACKFILL_INSERT_RUN: LiteralString = """
INSERT INTO backfill_runs (id, selector, lane, batch_size, rate)
VALUES (%(id)s, %(selector)s, %(lane)s, %(batch_size)s, %(rate)s)
"""
BACKFILL_STAGE_IDS: LiteralString = "CREATE TEMP TABLE backfill_staging (expense_id bigint) ON COMMIT DROP"
BACKFILL_COPY_IDS: LiteralString = "COPY backfill_staging (expense_id) FROM STDIN"
BACKFILL_KEEP_IDS: LiteralString = """
INSERT INTO backfill_ids (run_id, expense_id)
SELECT DISTINCT %(id)s, expense_id FROM backfill_staging ON CONFLICT DO NOTHING
"""
BACKFILL_SET_TOTAL: LiteralString = """
UPDATE backfill_runs SET total = %(total)s, state = 'enqueuing', updated_at = now() WHERE id = %(id)s
"""
BACKFILL_CHECKPOINT: LiteralString = """
UPDATE backfill_runs SET last_id = %(last_id)s, enqueued = enqueued + %(n)s, updated_at = now()
WHERE id = %(id)s
"""
BACKFILL_ENQUEUED: LiteralString = """
UPDATE backfill_runs SET state = 'enqueued', enqueued_at = now(), updated_at = now()
WHERE id = %(id)s AND state IN ('selecting', 'enqueuing')
"""
BACKFILL_FINISH: LiteralString = """
UPDATE backfill_runs SET state = %(state)s, finished_at = now(), updated_at = now(),
    written = %(written)s, outcomes = %(outcomes)s
WHERE id = %(id)s
"""
BACKFILL_RUN_COLUMNS: LiteralString = """
id, selector, lane, batch_size, rate, total, enqueued, last_id, state, created_at, updated_at,
enqueued_at, finished_at, written, outcomes
"""
BACKFILL_GET_RUN: LiteralString = "SELECT " + BACKFILL_RUN_COLUMNS + " FROM backfill_runs WHERE id = %(id)s"
BACKFILL_LIST_RUNS: LiteralString = (
    "SELECT " + BACKFILL_RUN_COLUMNS + " FROM backfill_runs ORDER BY created_at DESC, id LIMIT %(limit)s"
)
#: The rows carrying a run's id, per band (the predicate repeated: the partial index's).
BACKFILL_PROGRESS: LiteralString = """
SELECT band, count(*) FROM categorizations
WHERE correlation_id = %(id)s AND correlation_id LIKE 'backfill:%%'
GROUP BY band
"""

# --- Rule rollouts (issue 12, part 4; migration 0012; pipeline/candidates.py) ------------------
#: The staged changes of a candidate, in order, each with the pattern's current row (if any) and
#: the category keys (the staged one of an added pattern, else the current one).
CANDIDATE_CHANGES: LiteralString = """
SELECT ch.id, ch.op, ch.pattern_id, ch.created, ch.user_id, ch.category_id, ch.kind, ch.value,
       ch.weight, ch.active,
       p.id IS NOT NULL, p.user_id, p.category_id, p.kind, p.value, p.weight, p.active,
       CASE WHEN p.user_id IS NULL AND p.source = 'learned' THEN p.success_count ELSE 0 END,
       CASE WHEN p.user_id IS NULL AND p.source = 'learned' THEN p.usage_count ELSE 0 END,
       coalesce(sk.key, pk.key), ch.operator, ch.staged_at
FROM ruleset_candidate_changes ch
LEFT JOIN categorization_patterns p ON p.id = ch.pattern_id AND NOT ch.created
LEFT JOIN categories sk ON sk.id = ch.category_id
LEFT JOIN categories pk ON pk.id = p.category_id
WHERE ch.candidate_id = %(candidate_id)s
ORDER BY ch.id
"""
CANDIDATE_COLUMNS: LiteralString = """
c.id, c.state, c.operator, c.created_at, c.updated_at, c.promoted_at, c.base_version,
c.promoted_version, c.rolled_back_at, c.rolled_back_version,
CASE WHEN r.rollout_candidate = c.id THEN r.rollout_percent ELSE 0 END,
CASE WHEN r.rollout_candidate = c.id THEN r.rollout_revision ELSE 0 END
"""
#: The open candidate (at most one), locked when ``lock``.
OPEN_CANDIDATE: LiteralString = (
    "SELECT " + CANDIDATE_COLUMNS + " FROM ruleset_candidates c CROSS JOIN ruleset r WHERE c.state = 'open'"
)
GET_CANDIDATE: LiteralString = (
    "SELECT " + CANDIDATE_COLUMNS + " FROM ruleset_candidates c CROSS JOIN ruleset r WHERE c.id = %(id)s"
)
#: The latest promotion not rolled back yet (what `rules rollback` undoes).
LAST_PROMOTED_CANDIDATE: LiteralString = (
    "SELECT " + CANDIDATE_COLUMNS + " FROM ruleset_candidates c CROSS JOIN ruleset r"
    " WHERE c.state = 'promoted' ORDER BY c.promoted_at DESC, c.id DESC LIMIT 1"
)
RECENT_CANDIDATES: LiteralString = (
    "SELECT " + CANDIDATE_COLUMNS + " FROM ruleset_candidates c CROSS JOIN ruleset r"
    " ORDER BY c.id DESC LIMIT %(limit)s"
)
CANDIDATE_VERSIONS: LiteralString = """
SELECT promoted_version, rolled_back_version FROM ruleset_candidates WHERE id = %(id)s
"""
#: The rows a candidate made (categorizations_candidate_idx).
CANDIDATE_ROWS: LiteralString = "SELECT count(*) FROM categorizations WHERE candidate_id = %(id)s"
#: Serializes every rollout change: the ruleset row, locked.
LOCK_ROLLOUT: LiteralString = "SELECT version, rollout_candidate, rollout_percent FROM ruleset FOR UPDATE"
OPEN_CANDIDATE_ID: LiteralString = "SELECT id FROM ruleset_candidates WHERE state = 'open'"
CREATE_CANDIDATE: LiteralString = """
INSERT INTO ruleset_candidates (operator) VALUES (%(operator)s) RETURNING id
"""
#: The pattern a staged change is about (locked, so that it cannot change under the staging).
STAGE_PATTERN: LiteralString = """
SELECT id, user_id, category_id, kind, value, weight, active FROM categorization_patterns
WHERE id = %(id)s FOR SHARE
"""
#: An existing pattern with the unique key of an added one.
PATTERN_BY_KEY: LiteralString = """
SELECT id FROM categorization_patterns
WHERE user_id IS NOT DISTINCT FROM %(user_id)s::bigint AND kind = %(kind)s AND value = %(value)s
  AND category_id = %(category_id)s
"""
#: A pattern the candidate adds with that unique key (a second `add` of it is an edit of the first).
STAGED_BY_KEY: LiteralString = """
SELECT pattern_id FROM ruleset_candidate_changes
WHERE candidate_id = %(candidate_id)s AND created
  AND user_id IS NOT DISTINCT FROM %(user_id)s::bigint AND kind = %(kind)s AND value = %(value)s
  AND category_id = %(category_id)s
"""
#: Whether the candidate adds this pattern id (then edit, enable, disable and delete may name it).
STAGED_CREATED: LiteralString = """
SELECT 1 FROM ruleset_candidate_changes
WHERE candidate_id = %(candidate_id)s AND created AND pattern_id = %(id)s
"""
NEXT_PATTERN_ID: LiteralString = "SELECT nextval(pg_get_serial_sequence('categorization_patterns', 'id'))"
INSERT_CHANGE: LiteralString = """
INSERT INTO ruleset_candidate_changes
    (candidate_id, op, pattern_id, created, user_id, category_id, kind, value, weight, active, operator)
VALUES (%(candidate_id)s, %(op)s, %(pattern_id)s, %(created)s, %(user_id)s, %(category_id)s, %(kind)s,
        %(value)s, %(weight)s, %(active)s, %(operator)s)
RETURNING id
"""
TOUCH_CANDIDATE: LiteralString = "UPDATE ruleset_candidates SET updated_at = now() WHERE id = %(id)s"
#: A new revision of the rolled-out candidate: the workers reload it.
BUMP_ROLLOUT_REVISION: LiteralString = """
UPDATE ruleset SET rollout_revision = rollout_revision + 1 WHERE rollout_candidate = %(id)s
"""
#: A change of what the workers apply (a rollout's share or a rolled-out candidate's changes):
#: a new ruleset version, so that every row keeps the version that made it (and `backfill
#: --stale-ruleset` finds the rows made before), announced like a pattern change.
BUMP_RULESET_VERSION: LiteralString = """
WITH bumped AS (UPDATE ruleset SET version = version + 1, changed_at = now() RETURNING version)
SELECT version, pg_notify('catfleet_ruleset', '') FROM bumped
"""
SET_ROLLOUT: LiteralString = """
UPDATE ruleset SET rollout_candidate = %(id)s::bigint, rollout_percent = %(percent)s,
    rollout_revision = rollout_revision + 1
"""
CLEAR_ROLLOUT: LiteralString = "UPDATE ruleset SET rollout_candidate = NULL, rollout_percent = 0"
#: Every user with a live expense (for how many a rollout share chooses).
ROLLOUT_USERS: LiteralString = "SELECT DISTINCT user_id FROM expenses WHERE deleted_at IS NULL"
#: The touched patterns' rows before a promotion, locked (the backup is taken from them).
LOCK_PATTERNS: LiteralString = """
SELECT id, to_jsonb(p) FROM categorization_patterns p WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE
"""
SAVE_BACKUPS: LiteralString = """
INSERT INTO ruleset_candidate_backups (candidate_id, pattern_id, row)
SELECT %(candidate_id)s, u.pattern_id, u.row
FROM unnest(%(ids)s::bigint[], %(rows)s::jsonb[]) AS u(pattern_id, row)
"""
PROMOTE_DELETE: LiteralString = "DELETE FROM categorization_patterns WHERE id = ANY(%(ids)s::bigint[])"
PROMOTE_UPDATE: LiteralString = """
UPDATE categorization_patterns p SET weight = u.weight, active = u.active, updated_at = now()
FROM unnest(%(ids)s::bigint[], %(weights)s::real[], %(actives)s::boolean[]) AS u(id, weight, active)
WHERE p.id = u.id
"""
#: Added patterns keep the id they were staged under (source 'user', as `patterns add`).
PROMOTE_INSERT: LiteralString = """
INSERT INTO categorization_patterns (id, user_id, category_id, kind, value, weight, source, active)
SELECT u.id, u.user_id, u.category_id, u.kind, u.value, u.weight, 'user', u.active
FROM unnest(%(ids)s::bigint[], %(user_ids)s::bigint[], %(category_ids)s::bigint[], %(kinds)s::text[],
            %(values)s::text[], %(weights)s::real[], %(actives)s::boolean[])
     AS u(id, user_id, category_id, kind, value, weight, active)
"""
MARK_PROMOTED: LiteralString = """
UPDATE ruleset_candidates SET state = 'promoted', promoted_at = now(), updated_at = now(),
    base_version = %(base_version)s, promoted_version = (SELECT version FROM ruleset)
WHERE id = %(id)s
RETURNING promoted_version
"""
#: Rollback: every touched pattern back to its row before the promotion, exactly (ids, counters
#: and timestamps too): rows that existed are updated in place (a delete would clear
#: categorizations.pattern_id), rows the promotion deleted are inserted again, and patterns it
#: added are deleted.
ROLLBACK_UPDATE: LiteralString = """
UPDATE categorization_patterns p SET
    user_id = o.user_id, category_id = o.category_id, kind = o.kind, value = o.value,
    weight = o.weight, source = o.source, active = o.active, usage_count = o.usage_count,
    success_count = o.success_count, created_at = o.created_at, updated_at = o.updated_at
FROM ruleset_candidate_backups b,
     LATERAL jsonb_populate_record(NULL::categorization_patterns, b.row) o
WHERE b.candidate_id = %(id)s AND b.row IS NOT NULL AND p.id = b.pattern_id
"""
ROLLBACK_INSERT: LiteralString = """
INSERT INTO categorization_patterns
SELECT o.* FROM ruleset_candidate_backups b,
     LATERAL jsonb_populate_record(NULL::categorization_patterns, b.row) o
WHERE b.candidate_id = %(id)s AND b.row IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM categorization_patterns p WHERE p.id = b.pattern_id)
"""
ROLLBACK_DELETE: LiteralString = """
DELETE FROM categorization_patterns p USING ruleset_candidate_backups b
WHERE b.candidate_id = %(id)s AND b.row IS NULL AND p.id = b.pattern_id
"""
MARK_ROLLED_BACK: LiteralString = """
UPDATE ruleset_candidates SET state = 'rolled_back', rolled_back_at = now(), updated_at = now(),
    rolled_back_version = (SELECT version FROM ruleset)
WHERE id = %(id)s
RETURNING rolled_back_version
"""
MARK_DISCARDED: LiteralString = """
UPDATE ruleset_candidates SET state = 'discarded', updated_at = now() WHERE id = %(id)s
"""
#: Rows a discarded candidate made that name a pattern it would have added (never inserted).
CLEAR_DISCARDED_PATTERN_IDS: LiteralString = """
UPDATE categorizations SET pattern_id = NULL
WHERE candidate_id = %(id)s AND pattern_id = ANY(%(ids)s::bigint[])
"""
