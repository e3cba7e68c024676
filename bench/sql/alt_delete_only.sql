-- alt_delete_only.sql: complete_jobs that deletes and keeps no archive row
-- (an upper bound: what completing costs without moving the row to
-- job_archive, e.g. for queues with retention 0). Same signature.
CREATE OR REPLACE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, process_id uuid)
RETURNS SETOF bigint LANGUAGE sql AS $$
  DELETE FROM @schema@.job j
   WHERE j.id = ANY(ids) AND j.state = 'active'
     AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
  RETURNING j.id
$$;
