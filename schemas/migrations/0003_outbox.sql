-- catfleet 0003: the transactional outbox. The host application inserts a row here in the same
-- transaction as its expense; `catfleet relay` claims pending rows, enqueues them as batch
-- messages and marks them sent. Nothing is lost between the host's commit and the broker.

CREATE TABLE categorization_requests (
    id             bigserial PRIMARY KEY,
    expense_id     bigint NOT NULL CHECK (expense_id >= 1),
    correlation_id text CHECK (length(correlation_id) <= 200),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at        timestamptz,  -- NULL: pending
    message_id     text          -- the Dramatiq message that carried it
);
-- The relay's claim: pending rows in id order.
CREATE INDEX categorization_requests_pending_idx ON categorization_requests (id) WHERE sent_at IS NULL;
-- Pruning sent rows past their retention.
CREATE INDEX categorization_requests_sent_idx ON categorization_requests (sent_at) WHERE sent_at IS NOT NULL;

-- Wake the relays (LISTEN catfleet_outbox) when requests are committed: one notification per
-- statement, delivered at commit.
CREATE FUNCTION catfleet_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('catfleet_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER categorization_requests_notify
    AFTER INSERT ON categorization_requests
    FOR EACH STATEMENT EXECUTE FUNCTION catfleet_outbox_notify();

-- Optional: let PostgreSQL write the requests. `SELECT catfleet_install_outbox_triggers();`
-- (or with the host's table: `SELECT catfleet_install_outbox_triggers('app.expenses');`)
-- requests every inserted live expense and every expense whose categorized columns change;
-- `SELECT catfleet_drop_outbox_triggers();` removes the triggers again. Statement triggers
-- with transition tables: a bulk INSERT or COPY of N rows is one INSERT … SELECT here.
CREATE FUNCTION catfleet_request_inserted_expenses() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO categorization_requests (expense_id)
    SELECT n.id FROM catfleet_new_rows n WHERE n.deleted_at IS NULL ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE FUNCTION catfleet_request_updated_expenses() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO categorization_requests (expense_id)
    SELECT n.id
    FROM catfleet_new_rows n JOIN catfleet_old_rows o ON o.id = n.id
    WHERE n.deleted_at IS NULL
      AND (n.user_id, n.merchant_name, n.description, n.amount, n.currency,
           n.transaction_date, n.transaction_time)
          IS DISTINCT FROM
          (o.user_id, o.merchant_name, o.description, o.amount, o.currency,
           o.transaction_date, o.transaction_time)
    ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE FUNCTION catfleet_install_outbox_triggers(expenses regclass DEFAULT 'expenses')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER catfleet_outbox_insert AFTER INSERT ON %s'
        ' REFERENCING NEW TABLE AS catfleet_new_rows'
        ' FOR EACH STATEMENT EXECUTE FUNCTION catfleet_request_inserted_expenses()', expenses);
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER catfleet_outbox_update AFTER UPDATE ON %s'
        ' REFERENCING OLD TABLE AS catfleet_old_rows NEW TABLE AS catfleet_new_rows'
        ' FOR EACH STATEMENT EXECUTE FUNCTION catfleet_request_updated_expenses()', expenses);
END $$;

CREATE FUNCTION catfleet_drop_outbox_triggers(expenses regclass DEFAULT 'expenses')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS catfleet_outbox_insert ON %s', expenses);
    EXECUTE format('DROP TRIGGER IF EXISTS catfleet_outbox_update ON %s', expenses);
END $$;
