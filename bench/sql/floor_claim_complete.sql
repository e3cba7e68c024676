-- (iii) the cheapest crash-safe claim + complete, two transactions per batch:
-- claim :batch ready jobs (FOR UPDATE SKIP LOCKED, mark them active with an
-- owner, return ids and data to the client), then delete the claimed ids.
-- A crash between the two leaves the jobs active, to be retried: at least
-- once, like moonq.
\set owner random(1, 2000000000)
WITH c AS (
  UPDATE bench_floor.floor_job j SET state = 'active', owner = :owner
   WHERE j.id = ANY(ARRAY(SELECT id FROM bench_floor.floor_job
                           WHERE state = 'ready' ORDER BY id
                           LIMIT :batch FOR UPDATE SKIP LOCKED))
  RETURNING j.id, j.data)
SELECT coalesce(array_agg(id), '{}') AS ids, jsonb_agg(data) AS datas FROM c \gset
DELETE FROM bench_floor.floor_job WHERE id = ANY(:ids::bigint[]);
