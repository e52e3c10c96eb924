-- catfleet 0013: dead-letter pages that cost the same at any depth, on both brokers.
-- dead_letter_index.body: the letter's stored bytes, for the RabbitMQ broker (AMQP cannot read a
-- queued message by id, so a page or `show` is answered from the index; the XQ stays the truth
-- for replay and purge). NULL for the Redis broker, whose XQ hash has them.
-- Pages are read after a cursor (died_at_ms, rid), newest first: the indexes below hold that
-- order, so a deep page costs what the first does (no OFFSET walk).

ALTER TABLE dead_letter_index ADD COLUMN body bytea;

CREATE INDEX dead_letter_index_keyset_idx ON dead_letter_index (space, died_at_ms DESC, rid DESC);
CREATE INDEX dead_letter_index_queue_keyset_idx
    ON dead_letter_index (space, queue_name, died_at_ms DESC, rid DESC);
DROP INDEX dead_letter_index_died_idx;
