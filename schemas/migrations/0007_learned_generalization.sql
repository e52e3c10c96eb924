-- catfleet 0007: learning beyond the exact merchant (pipeline/generalize.py).
--
-- learned_labels: each corrected expense's current user category and normalized merchant (one row
-- per expense: a new correction of the expense moves it). learned_merchant_votes: per user, the
-- merchant's vote, the majority of its labels; user 0 is the fleet's vote, set only when at least
-- FLEET_MIN_USERS different users agree. learned_token_votes: per user (0: the fleet), how many
-- distinct merchants with a token (or token pair) vote for a category.
--
-- No foreign keys: these rows are derived from corrections, and the tables must not stand in
-- the way of a TRUNCATE of categories or expenses. Readers join categories (a vote for a deleted
-- category is ignored); truncating corrections truncates all three (trigger below).
CREATE TABLE learned_labels (
    expense_id  bigint PRIMARY KEY,
    user_id     bigint NOT NULL,
    merchant    text NOT NULL,
    category_id bigint NOT NULL
);
CREATE INDEX learned_labels_merchant_idx ON learned_labels (user_id, merchant);

CREATE TABLE learned_merchant_votes (
    user_id     bigint NOT NULL,  -- 0: the fleet's vote
    merchant    text NOT NULL,
    category_id bigint NOT NULL,
    PRIMARY KEY (user_id, merchant)
);
CREATE INDEX learned_merchant_votes_merchant_idx ON learned_merchant_votes (merchant);

CREATE TABLE learned_token_votes (
    id          bigserial UNIQUE,
    user_id     bigint NOT NULL,  -- 0: fleet-wide (tokens of the fleet's merchant votes)
    token       text NOT NULL,
    category_id bigint NOT NULL,
    merchants   integer NOT NULL CHECK (merchants >= 0),
    PRIMARY KEY (user_id, token, category_id)
);

-- Token votes are rules the workers read: a change bumps the ruleset version like a pattern's.
CREATE TRIGGER learned_token_votes_bump_ruleset
    AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF merchants
    ON learned_token_votes
    FOR EACH STATEMENT EXECUTE FUNCTION catfleet_bump_ruleset();

CREATE FUNCTION catfleet_corrections_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE learned_labels, learned_merchant_votes, learned_token_votes;
    RETURN NULL;
END $$;
CREATE TRIGGER corrections_truncate_learned
    AFTER TRUNCATE ON corrections
    FOR EACH STATEMENT EXECUTE FUNCTION catfleet_corrections_truncated();
