-- catfleet 0001: the domain model (DESIGN.md §3).

CREATE TABLE categories (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 200),
    name       text NOT NULL,
    parent_id  bigint REFERENCES categories (id) ON DELETE RESTRICT,
    user_id    bigint,  -- NULL: shared by everyone
    created_at timestamptz NOT NULL DEFAULT now()
);

-- In a real deployment this is the host application's table; catfleet reads only these columns.
CREATE TABLE expenses (
    id               bigserial PRIMARY KEY,
    user_id          bigint NOT NULL,
    merchant_name    text NOT NULL DEFAULT '',
    description      text NOT NULL DEFAULT '',
    amount           numeric(14, 2) NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL DEFAULT 'USD',
    transaction_date date NOT NULL,
    transaction_time time,
    deleted_at       timestamptz
);
CREATE INDEX expenses_user_idx ON expenses (user_id);

CREATE TABLE categorization_patterns (
    id            bigserial PRIMARY KEY,
    user_id       bigint,  -- NULL: global
    category_id   bigint NOT NULL REFERENCES categories (id) ON DELETE CASCADE,
    kind          text NOT NULL
                  CHECK (kind IN ('merchant', 'keyword', 'description', 'regex', 'amount_range', 'time')),
    value         text NOT NULL CHECK (length(value) BETWEEN 1 AND 500),
    weight        real NOT NULL DEFAULT 0.9 CHECK (weight > 0 AND weight <= 1),
    source        text NOT NULL DEFAULT 'seed' CHECK (source IN ('seed', 'user', 'learned')),
    active        boolean NOT NULL DEFAULT true,
    usage_count   bigint NOT NULL DEFAULT 0,
    success_count bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT categorization_patterns_uniq UNIQUE NULLS NOT DISTINCT (user_id, kind, value, category_id)
);
-- The hot lookup: the merchants of one batch, global and per user.
CREATE INDEX categorization_patterns_merchant_idx
    ON categorization_patterns (value) WHERE kind = 'merchant' AND active;
-- The rule set: every active non-merchant pattern.
CREATE INDEX categorization_patterns_rules_idx
    ON categorization_patterns (kind) WHERE kind <> 'merchant' AND active;

CREATE TABLE categorizations (
    expense_id      bigint PRIMARY KEY REFERENCES expenses (id) ON DELETE CASCADE,
    category_id     bigint REFERENCES categories (id) ON DELETE SET NULL,
    pattern_id      bigint REFERENCES categorization_patterns (id) ON DELETE SET NULL,
    confidence      real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    band            text NOT NULL CHECK (band IN ('auto', 'suggest', 'none')),
    method          text NOT NULL,
    explanation     jsonb NOT NULL,
    ruleset_version bigint NOT NULL,
    message_id      text,
    correlation_id  text,
    source          text NOT NULL DEFAULT 'auto' CHECK (source IN ('auto', 'user')),
    enqueued_at     timestamptz,
    categorized_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX categorizations_category_idx ON categorizations (category_id);

CREATE TABLE corrections (
    id                   bigserial PRIMARY KEY,
    expense_id           bigint NOT NULL REFERENCES expenses (id) ON DELETE CASCADE,
    user_id              bigint NOT NULL,
    category_id          bigint NOT NULL REFERENCES categories (id) ON DELETE CASCADE,
    previous_category_id bigint REFERENCES categories (id) ON DELETE SET NULL,
    idempotency_key      text NOT NULL UNIQUE,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- One row: the version of the rules. Any change to the patterns bumps it (statement trigger),
-- so every worker's caches, keyed by it, go stale at once.
CREATE TABLE ruleset (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ruleset (version) VALUES (1);

CREATE FUNCTION catfleet_bump_ruleset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ruleset SET version = version + 1, changed_at = now();
    PERFORM pg_notify('catfleet_ruleset', '');
    RETURN NULL;
END $$;

-- Counters (usage_count, success_count) change without touching the rules.
CREATE TRIGGER categorization_patterns_bump_ruleset
    AFTER INSERT OR DELETE OR TRUNCATE
       OR UPDATE OF user_id, category_id, kind, value, weight, active
    ON categorization_patterns
    FOR EACH STATEMENT EXECUTE FUNCTION catfleet_bump_ruleset();
