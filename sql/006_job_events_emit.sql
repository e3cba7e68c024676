-- 006_job_events_emit: events a handler emits are stored with the job's
-- completion, in the same transaction.
--
-- complete_jobs takes, besides each job's output, the events its handler
-- emitted (ctx.emit): `events` is a JSON array aligned with `ids`, each
-- element null or an array of {stream, type, data}. They are inserted only
-- for jobs this statement completes, so a failed or crashed attempt leaves
-- no events behind and a retried job emits once, when it succeeds. A
-- missing stream is the job's own, "job:<name>:<id>"; the events carry the
-- job's run_id and attempt.

DROP FUNCTION @schema@.complete_jobs(bigint[], jsonb, uuid);
CREATE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, process_id uuid,
                                       events jsonb DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY
  WITH u AS (
    SELECT i.id, nullif(o.value, 'null'::jsonb) AS output,
           nullif(ev.value, 'null'::jsonb) AS emitted
      FROM unnest(ids) WITH ORDINALITY AS i(id, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n)
        ON o.n = i.n
      LEFT JOIN jsonb_array_elements(coalesce(events, '[]'::jsonb))
                WITH ORDINALITY AS ev(value, n)
        ON ev.n = i.n
  ), gone AS (
    DELETE FROM @schema@.job j USING u
     WHERE j.id = u.id AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
    RETURNING j.*, u.output AS new_output, u.emitted AS new_events
  ), stored AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT coalesce(e.stream, 'job:' || g.name || ':' || g.id), e.type,
           coalesce(e.data, '{}'::jsonb), g.run_id, g.attempt
      FROM gone g,
           ROWS FROM (jsonb_to_recordset(g.new_events)
                      AS (stream text, type text, data jsonb))
           WITH ORDINALITY AS e(stream, type, data, n)
     WHERE g.new_events IS NOT NULL
     ORDER BY g.id, e.n
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
         g.new_output, now(), now() + make_interval(secs => g.retention)
    FROM gone g
  RETURNING job_archive.id;
  IF events IS NOT NULL THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;
