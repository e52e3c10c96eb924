-- catfleet 0012: rules rolled out, not flipped (`catfleet rules`, README *Rule rollouts*).
--
-- A candidate ruleset is a list of staged pattern changes (add, edit weight, enable, disable,
-- delete) that have not taken effect. `rules diff` runs it in shadow; `rules rollout --percent N`
-- has the workers categorize a stable hash-chosen share of users with it (the share is kept on the
-- ruleset row, read with the version by every batch); `rules promote` applies it to
-- categorization_patterns in one transaction, keeping the rows it replaced, so that
-- `rules rollback` can put back exactly those rows.

CREATE TABLE ruleset_candidates (
    id               bigserial PRIMARY KEY,
    state            text NOT NULL DEFAULT 'open'
                     CHECK (state IN ('open', 'promoted', 'rolled_back', 'discarded')),
    operator         text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    promoted_at      timestamptz,
    base_version     bigint,  -- the ruleset version it was promoted over
    promoted_version bigint,  -- the version its promotion made
    rolled_back_at   timestamptz,
    rolled_back_version bigint  -- the version its rollback made
);
-- At most one candidate is open (staged changes go into it).
CREATE UNIQUE INDEX ruleset_candidates_one_open ON ruleset_candidates ((true)) WHERE state = 'open';

-- The staged changes, in order. An existing pattern's change holds only what it changes
-- (weight, active, deleted); an added pattern (created) holds the whole row, under an id taken
-- from the patterns' sequence at staging, which promotion inserts it with.
CREATE TABLE ruleset_candidate_changes (
    id           bigserial PRIMARY KEY,
    candidate_id bigint NOT NULL REFERENCES ruleset_candidates (id) ON DELETE CASCADE,
    op           text NOT NULL CHECK (op IN ('add', 'edit', 'enable', 'disable', 'delete')),
    pattern_id   bigint NOT NULL,
    created      boolean NOT NULL DEFAULT false,
    user_id      bigint,
    category_id  bigint,  -- no foreign key: TRUNCATE categories keeps working (promotion checks it)
    kind         text,
    value        text,
    weight       real CHECK (weight > 0 AND weight <= 1),
    active       boolean,
    operator     text NOT NULL,
    staged_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ruleset_candidate_changes_candidate_idx ON ruleset_candidate_changes (candidate_id, id);

-- What a promotion replaced: each touched pattern's whole row before (NULL: it did not exist).
CREATE TABLE ruleset_candidate_backups (
    candidate_id bigint NOT NULL REFERENCES ruleset_candidates (id) ON DELETE CASCADE,
    pattern_id   bigint NOT NULL,
    row          jsonb,
    PRIMARY KEY (candidate_id, pattern_id)
);

-- The rollout, read by every batch with the version: the open candidate the workers apply to
-- rollout_percent of the users (NULL / 0: none), and its revision (bumped by each change staged
-- into it, so that a worker reloads it).
ALTER TABLE ruleset
    ADD COLUMN rollout_candidate bigint,
    ADD COLUMN rollout_percent   smallint NOT NULL DEFAULT 0 CHECK (rollout_percent BETWEEN 0 AND 100),
    ADD COLUMN rollout_revision  bigint NOT NULL DEFAULT 0;

-- Which candidate made a row (NULL: the ruleset of ruleset_version alone). No foreign key, as
-- for pattern_id and category_id (0006): the hot write path takes no parent-row locks.
ALTER TABLE categorizations ADD COLUMN candidate_id bigint;
CREATE INDEX categorizations_candidate_idx ON categorizations (candidate_id) WHERE candidate_id IS NOT NULL;
