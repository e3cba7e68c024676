-- The SQL floor: the cheapest tables a crash-safe queue can live in.
-- floor_job: the minimal job row; a partial index for the claim, like
-- moonq's job_fetch_idx. floor_archive: a minimal archive (primary key
-- only), for the "claim + move to archive" variant.
DROP SCHEMA IF EXISTS bench_floor CASCADE;
CREATE SCHEMA bench_floor;
CREATE TABLE bench_floor.floor_job (
  id         bigserial PRIMARY KEY,
  queue      text NOT NULL,
  data       jsonb NOT NULL,
  state      text NOT NULL DEFAULT 'ready',
  priority   integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  owner      integer
);
CREATE INDEX floor_job_ready_idx ON bench_floor.floor_job (id) WHERE state = 'ready';
CREATE TABLE bench_floor.floor_archive (
  id         bigint PRIMARY KEY,
  queue      text NOT NULL,
  data       jsonb NOT NULL,
  state      text NOT NULL,
  priority   integer NOT NULL,
  created_at timestamptz NOT NULL,
  owner      integer,
  completed_at timestamptz NOT NULL DEFAULT now()
);
