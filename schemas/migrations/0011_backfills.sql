-- catfleet 0011: backfills (`catfleet backfill`). One row per run with its checkpoint: every
-- selected expense id <= last_id has been enqueued, so a resumed run goes on after it. The id of
-- a run ('backfill:<hex>') is the correlation id of its messages, hence of the rows they write.

CREATE TABLE backfill_runs (
    id          text PRIMARY KEY CHECK (id LIKE 'backfill:%'),
    selector    jsonb NOT NULL,                 -- what it selects, as resolved at its start
    lane        text NOT NULL,
    batch_size  integer NOT NULL CHECK (batch_size BETWEEN 1 AND 10000),
    rate        real CHECK (rate > 0),          -- expenses enqueued per second; NULL: unlimited
    total       bigint NOT NULL DEFAULT 0,      -- expenses selected when the run started
    enqueued    bigint NOT NULL DEFAULT 0,      -- expense ids enqueued up to the checkpoint
    last_id     bigint NOT NULL DEFAULT 0,      -- the checkpoint
    state       text NOT NULL DEFAULT 'selecting'
                CHECK (state IN ('selecting', 'enqueuing', 'enqueued', 'done', 'incomplete')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    enqueued_at timestamptz,                    -- when its last id was enqueued
    finished_at timestamptz,                    -- when every row was seen (done) or given up on
    written     bigint,                         -- rows carrying the run's id when it finished
    outcomes    jsonb                           -- those rows per band when it finished
);
CREATE INDEX backfill_runs_created_idx ON backfill_runs (created_at);

-- The ids of a run that reads them from a file (--ids-from), kept so that a resumed run selects
-- the same ones whatever became of the file.
CREATE TABLE backfill_ids (
    run_id     text NOT NULL REFERENCES backfill_runs (id) ON DELETE CASCADE,
    expense_id bigint NOT NULL,
    PRIMARY KEY (run_id, expense_id)
);

-- A run's progress is the rows carrying its id: counted through this index, which holds only
-- the rows of backfills (a query must repeat the predicate to use it).
CREATE INDEX categorizations_backfill_idx ON categorizations (correlation_id)
    WHERE correlation_id LIKE 'backfill:%';
