-- alt_complete.sql: a leaner complete_jobs (applied after alt_queue.sql).
-- The DELETE finds its rows through the primary key (id = ANY(ids))
-- instead of joining the id list against job_active_idx (which also holds
-- the dead entries of every job completed since the last vacuum); outputs
-- are joined to the deleted rows by id afterwards, and a batch whose
-- outputs are all JSON null skips that join.
CREATE OR REPLACE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, process_id uuid)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
  IF jsonb_typeof(outputs) = 'array'
     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(outputs) o(v)
                      WHERE jsonb_typeof(o.v) <> 'null') THEN
    RETURN QUERY
    WITH gone AS (
      DELETE FROM @schema@.job j
       WHERE j.id = ANY(ids) AND j.state = 'active'
         AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
      RETURNING j.*
    )
    INSERT INTO @schema@.job_archive
      (id, queue, name, data, state, priority, retry_limit, attempt,
       retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
       start_after, created_at, started_at, singleton_key, dead_letter, run_id,
       process_id, error, output, completed_at, keep_until)
    SELECT g.id, g.queue, g.name, g.data, 'completed', g.priority, g.retry_limit,
           g.attempt, g.retry_delay, g.retry_backoff, g.retry_delay_max,
           g.expire_in, g.retention, g.start_after, g.created_at, g.started_at,
           g.singleton_key, g.dead_letter, g.run_id, g.process_id, g.error,
           NULL, now(), now() + make_interval(secs => g.retention)
      FROM gone g
    RETURNING job_archive.id;
    RETURN;
  END IF;
  RETURN QUERY
  WITH u AS (
    SELECT i.id, nullif(o.value, 'null'::jsonb) AS output
      FROM unnest(ids) WITH ORDINALITY AS i(id, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n)
        ON o.n = i.n
  ), gone AS (
    DELETE FROM @schema@.job j
     WHERE j.id = ANY(ids) AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
    RETURNING j.*
  )
  INSERT INTO @schema@.job_archive
    (id, queue, name, data, state, priority, retry_limit, attempt,
     retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
     start_after, created_at, started_at, singleton_key, dead_letter, run_id,
     process_id, error, output, completed_at, keep_until)
  SELECT g.id, g.queue, g.name, g.data, 'completed', g.priority, g.retry_limit,
         g.attempt, g.retry_delay, g.retry_backoff, g.retry_delay_max,
         g.expire_in, g.retention, g.start_after, g.created_at, g.started_at,
         g.singleton_key, g.dead_letter, g.run_id, g.process_id, g.error,
         u.output, now(), now() + make_interval(secs => g.retention)
    FROM gone g JOIN u ON u.id = g.id
  RETURNING job_archive.id;
END $$;
