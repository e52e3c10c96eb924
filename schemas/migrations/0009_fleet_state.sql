-- catfleet 0009: the fleet's own state for the RabbitMQ broker (workers/fleet/state.py; the Redis
-- broker keeps the same in its Redis): one record per live worker process, paused queues, the
-- audit of pauses and resumes, and messages finished per queue and 10-second bucket.
CREATE TABLE fleet_processes (
    id      text PRIMARY KEY,
    record  jsonb NOT NULL,
    beat_ms bigint NOT NULL
);
CREATE INDEX fleet_processes_beat_idx ON fleet_processes (beat_ms);

CREATE TABLE queue_pauses (
    queue    text PRIMARY KEY,
    operator text NOT NULL,
    at_ms    bigint NOT NULL
);

CREATE TABLE queue_actions (
    id       bigserial PRIMARY KEY,
    at_ms    bigint NOT NULL,
    operator text NOT NULL,
    action   text NOT NULL CHECK (action IN ('pause', 'resume')),
    queue    text NOT NULL
);

CREATE TABLE fleet_throughput (
    queue     text NOT NULL,
    bucket    bigint NOT NULL,
    processed bigint NOT NULL,
    PRIMARY KEY (queue, bucket)
);
