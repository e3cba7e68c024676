-- (iv) like (iii), but completing moves the rows to a minimal archive table
-- (primary key only), as moonq keeps finished jobs for their retention.
\set owner random(1, 2000000000)
WITH c AS (
  UPDATE bench_floor.floor_job j SET state = 'active', owner = :owner
   WHERE j.id = ANY(ARRAY(SELECT id FROM bench_floor.floor_job
                           WHERE state = 'ready' ORDER BY id
                           LIMIT :batch FOR UPDATE SKIP LOCKED))
  RETURNING j.id, j.data)
SELECT coalesce(array_agg(id), '{}') AS ids, jsonb_agg(data) AS datas FROM c \gset
WITH gone AS (DELETE FROM bench_floor.floor_job WHERE id = ANY(:ids::bigint[]) RETURNING *)
INSERT INTO bench_floor.floor_archive (id, queue, data, state, priority, created_at, owner)
SELECT id, queue, data, 'completed', priority, created_at, owner FROM gone;
