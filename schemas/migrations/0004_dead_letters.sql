-- catfleet 0005: bookkeeping of failed and dead-lettered messages.
-- The failure log and delivery counter live here for the RabbitMQ broker (it has no Redis to
-- keep them in, and a dead-lettered AMQP message cannot be given new headers); the audit of
-- dead-letter replays and purges is kept here for both brokers.

CREATE TABLE message_failures (
    id          bigserial PRIMARY KEY,
    message_id  text NOT NULL,
    queue_name  text NOT NULL,
    actor_name  text NOT NULL,
    retries     integer NOT NULL,
    error_type  text NOT NULL,
    error       text NOT NULL,
    dead        boolean NOT NULL,
    at_ms       bigint NOT NULL
);
CREATE INDEX message_failures_message_idx ON message_failures (message_id, id);
CREATE INDEX message_failures_at_idx ON message_failures (at_ms);

CREATE TABLE message_deliveries (
    message_id  text PRIMARY KEY,
    deliveries  integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dead_letter_actions (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    operator    text NOT NULL,
    broker      text NOT NULL,
    action      text NOT NULL CHECK (action IN ('replay', 'purge')),
    filter      jsonb NOT NULL,
    dry_run     boolean NOT NULL,
    count       integer NOT NULL,
    message_ids text[] NOT NULL
);
