-- catfleet 0010: the RabbitMQ fleet's state (0009) belongs to one virtual host. Two fleets on
-- one database with their own vhosts (staging and production, or tests) must not see each
-- other's processes, pause each other's queues or add to each other's throughput.
ALTER TABLE fleet_processes ADD COLUMN vhost text NOT NULL DEFAULT '/';
DROP INDEX fleet_processes_beat_idx;
CREATE INDEX fleet_processes_beat_idx ON fleet_processes (vhost, beat_ms);

ALTER TABLE queue_pauses ADD COLUMN vhost text NOT NULL DEFAULT '/';
ALTER TABLE queue_pauses DROP CONSTRAINT queue_pauses_pkey;
ALTER TABLE queue_pauses ADD PRIMARY KEY (vhost, queue);

ALTER TABLE queue_actions ADD COLUMN vhost text NOT NULL DEFAULT '/';
CREATE INDEX queue_actions_vhost_idx ON queue_actions (vhost, id);

ALTER TABLE fleet_throughput ADD COLUMN vhost text NOT NULL DEFAULT '/';
ALTER TABLE fleet_throughput DROP CONSTRAINT fleet_throughput_pkey;
ALTER TABLE fleet_throughput ADD PRIMARY KEY (vhost, queue, bucket);
