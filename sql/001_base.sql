-- 001_base: the process registry.
--
-- Every running moonq process (the supervisor and each worker, on every
-- host) has a row here and moves heartbeat_at forward while it lives; a row
-- whose heartbeat has gone stale belongs to a process that died. Later
-- migrations add the job queue and the event store. "@schema@" stands for
-- the quoted schema name (moonq's migrate.c substitutes it).

CREATE TABLE @schema@.process (
  id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  host         text        NOT NULL,
  pid          integer     NOT NULL,
  version      text        NOT NULL,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Finding stale processes scans by heartbeat.
CREATE INDEX process_heartbeat_at_idx ON @schema@.process (heartbeat_at);
