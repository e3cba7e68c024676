-- 020_complete_unkept: a completed job whose retention is 0 is deleted
-- without an archive row.
--
-- Completing moves each job's row into job_archive: the copy of the whole
-- row is most of what a completion costs PostgreSQL. A job sent with
-- retention 0 (queue.retention = 0 in config.lua, or the send option) is
-- not kept after it finishes, so its completion is now the DELETE alone
-- (maintenance deleted the archive row soon after anyway). Flow steps are
-- still archived whatever their retention: their archive rows decide when
-- a run ends (012). Failed and cancelled jobs keep the archive path.

-- complete_jobs (009), with the archive INSERT over the kept jobs only;
-- returns every completed id, archived or not.
CREATE OR REPLACE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, process_id uuid,
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
    SELECT x.stream, x.type, x.data, x.run_id, x.attempt
      FROM (SELECT coalesce(e.stream, @schema@.job_stream(g.name, g.id)) AS stream,
                   e.type, coalesce(e.data, '{}'::jsonb) AS data, g.run_id,
                   g.attempt, g.id, e.n
              FROM gone g,
                   ROWS FROM (jsonb_to_recordset(g.new_events)
                              AS (stream text, type text, data jsonb))
                   WITH ORDINALITY AS e(stream, type, data, n)
             WHERE g.new_events IS NOT NULL
            UNION ALL
            SELECT @schema@.job_stream(g.name, g.id), 'job.completed',
                   @schema@.completed_event_data(g.queue, g.attempt, g.new_output),
                   g.run_id, g.attempt, g.id, NULL
              FROM gone g
             WHERE @schema@.job_events_on()) x
     ORDER BY x.id, x.n NULLS LAST
  ), kept AS (
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
     WHERE g.retention > 0 OR g.run_id IS NOT NULL
  )
  SELECT g.id FROM gone g;
  IF events IS NOT NULL OR (FOUND AND @schema@.job_events_on()) THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;
