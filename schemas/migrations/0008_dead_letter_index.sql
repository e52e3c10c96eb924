-- catfleet 0008: dead letters an operator (and the console) can page and filter at scale.
-- message_failures.attempt: which run of the actor failed (1 the first, 0 not known).
-- dead_letter_actions: the --limit and --rate an action was given; message ids indexed (a
-- letter's history shows the replays that named it).
-- dead_letter_index: one row per dead letter of the Redis broker, kept by the dead-letter store
-- (workers/backends/redis/deadletters.py) from the XQ sorted sets, which stay the truth: a row
-- whose letter is no longer in its XQ (under the same time of death) is stale and pruned when
-- a query meets it. It answers the filters Redis cannot (actor, error type, error text,
-- expense id, correlation id, message id); its expense ids are indexed by GIN.
-- dead_letter_index_marks: per queue, the latest time of death already indexed.

ALTER TABLE message_failures ADD COLUMN attempt integer NOT NULL DEFAULT 0;

ALTER TABLE dead_letter_actions ADD COLUMN limit_n integer, ADD COLUMN rate double precision;
CREATE INDEX dead_letter_actions_ids_idx ON dead_letter_actions USING gin (message_ids);

CREATE TABLE dead_letter_index (
    space          text NOT NULL,
    queue_name     text NOT NULL,
    rid            text NOT NULL,
    message_id     text NOT NULL,
    actor_name     text NOT NULL,
    error_type     text NOT NULL,
    error          text NOT NULL,
    correlation_id text,
    expense_ids    bigint[] NOT NULL DEFAULT '{}',
    died_at_ms     bigint NOT NULL,
    PRIMARY KEY (space, queue_name, rid)
);
CREATE INDEX dead_letter_index_died_idx ON dead_letter_index (space, died_at_ms DESC);
CREATE INDEX dead_letter_index_actor_idx ON dead_letter_index (space, actor_name, died_at_ms DESC);
CREATE INDEX dead_letter_index_error_idx ON dead_letter_index (space, error_type, died_at_ms DESC);
CREATE INDEX dead_letter_index_correlation_idx ON dead_letter_index (space, correlation_id, died_at_ms DESC)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX dead_letter_index_message_idx ON dead_letter_index (space, message_id);
CREATE INDEX dead_letter_index_expenses_idx ON dead_letter_index USING gin (expense_ids);

CREATE TABLE dead_letter_index_marks (
    space       text NOT NULL,
    queue_name  text NOT NULL,
    indexed_ms  bigint NOT NULL,
    PRIMARY KEY (space, queue_name)
);
