-- 025_active_index: completions look their jobs up by primary key.
--
-- job_active_idx indexed the running jobs (state = 'active'). The planner
-- reads it whole for a completion or failure of a few ids when the
-- statistics say few jobs run, and joins the ids against it; that index
-- also holds the dead entry of every job completed since the oldest open
-- snapshot, so while a transaction held the horizon back (five minutes at
-- 200 jobs/s: 130,000 entries), each completion took 20 ms and more.
--
-- The index now also requires process_id IS NOT NULL (every claim sets it;
-- fetch_jobs refuses a NULL process, sql/023). Statements about the jobs of
-- one process (process_id = ...), crash recovery and expiry (below) name
-- that condition and use it; a completion or failure of given ids, whose
-- condition is process_id IS NOT DISTINCT FROM ..., cannot, and finds its
-- rows through the primary key, whatever the statistics say. fail_jobs
-- (009) said process_id = ..., which let the planner read the process's
-- entries of the index (the dead ones of all it ever completed): it now
-- says IS NOT DISTINCT FROM as well.
--
-- A job made active by hand without a process (an UPDATE, not a claim)
-- is no longer expired: expiry finds running jobs through the index.
-- Those a SQL caller claimed without one before 023 are given one below.
--
-- Building the index locks job against writes for the time it takes (on a
-- queue of millions of jobs, seconds): migrate while the queue is quiet.

-- Jobs that a SQL caller claimed without a process, which fetch_jobs
-- accepted before 023, get the nil process: it never beats, so crash
-- recovery takes them back after stale_after (and expiry sees them).
UPDATE @schema@.job SET process_id = '00000000-0000-0000-0000-000000000000'
 WHERE state = 'active' AND process_id IS NULL;

CREATE INDEX job_claimed_idx ON @schema@.job (process_id)
  WHERE state = 'active' AND process_id IS NOT NULL;
DROP INDEX @schema@.job_active_idx;
ALTER INDEX @schema@.job_claimed_idx RENAME TO job_active_idx;

-- maintain (014), with the expired jobs found through the index.
CREATE OR REPLACE FUNCTION @schema@.maintain(stale_after double precision, batch integer DEFAULT 10000)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  stale_ids bigint[];
  expired_ids bigint[];
  deleted bigint;
  dead bigint;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtextextended('moonq.maintain:@schema@', 0)) THEN
    RETURN NULL;
  END IF;
  SELECT array_agg(j.id) INTO stale_ids
    FROM @schema@.job j
   WHERE j.state = 'active' AND j.process_id IS NOT NULL
     AND j.started_at < now() - make_interval(secs => stale_after)
     AND NOT EXISTS (SELECT 1 FROM @schema@.process p
                      WHERE p.id = j.process_id
                        AND p.heartbeat_at >= now() - make_interval(secs => stale_after));
  IF stale_ids IS NOT NULL THEN
    PERFORM @schema@.fail_jobs_guarded(stale_ids,
      array_fill(jsonb_build_object('message', 'the process running it stopped responding'),
                 ARRAY[cardinality(stale_ids)]), NULL, true);
  END IF;
  SELECT array_agg(j.id) INTO expired_ids
    FROM @schema@.job j
   WHERE j.state = 'active' AND j.process_id IS NOT NULL
     AND j.started_at + make_interval(secs => j.expire_in) < now();
  IF expired_ids IS NOT NULL THEN
    PERFORM @schema@.fail_jobs_guarded(expired_ids,
      array_fill(jsonb_build_object('message', 'expired: still active after expire_in'),
                 ARRAY[cardinality(expired_ids)]));
  END IF;
  DELETE FROM @schema@.process
   WHERE heartbeat_at < now() - make_interval(secs => stale_after * 10);
  GET DIAGNOSTICS dead = ROW_COUNT;
  DELETE FROM @schema@.job_archive
   WHERE id IN (SELECT a.id FROM @schema@.job_archive a
                 WHERE a.keep_until < now() LIMIT batch);
  GET DIAGNOSTICS deleted = ROW_COUNT;
  RETURN jsonb_build_object('recovered', coalesce(cardinality(stale_ids), 0),
                            'expired', coalesce(cardinality(expired_ids), 0),
                            'deleted', deleted, 'processes_removed', dead);
END $$;

-- fail_jobs (009), its jobs found by primary key (see above).
CREATE OR REPLACE FUNCTION @schema@.fail_jobs(ids bigint[], errors jsonb[],
                                              process_id uuid DEFAULT NULL,
                                              immediate boolean DEFAULT false)
RETURNS TABLE (id bigint, state @schema@.job_state, start_after timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  again_ids bigint[]; again_errors jsonb[]; again_at timestamptz[];
  final_ids bigint[]; final_errors jsonb[];
  wake text;
BEGIN
  SELECT array_agg(j.id) FILTER (WHERE j.attempt <= j.retry_limit),
         array_agg(u.error) FILTER (WHERE j.attempt <= j.retry_limit),
         array_agg(now() + make_interval(secs => CASE WHEN immediate THEN 0
                     ELSE @schema@.retry_delay(j.retry_delay, j.retry_backoff,
                                               j.retry_delay_max, j.attempt) END))
           FILTER (WHERE j.attempt <= j.retry_limit),
         array_agg(j.id) FILTER (WHERE j.attempt > j.retry_limit),
         array_agg(u.error) FILTER (WHERE j.attempt > j.retry_limit)
    INTO again_ids, again_errors, again_at, final_ids, final_errors
    FROM (SELECT jj.id, jj.attempt, jj.retry_limit, jj.retry_delay,
                 jj.retry_backoff, jj.retry_delay_max
            FROM @schema@.job jj
           WHERE jj.id = ANY(ids) AND jj.state = 'active'
             AND (fail_jobs.process_id IS NULL
                  OR jj.process_id IS NOT DISTINCT FROM fail_jobs.process_id)
           ORDER BY jj.id
             FOR UPDATE) j
    JOIN unnest(ids, errors) AS u(id, error) ON u.id = j.id;

  IF again_ids IS NOT NULL THEN
    WITH again AS (
      UPDATE @schema@.job j
         SET state = 'retry', start_after = u.at, error = u.error, process_id = NULL
        FROM unnest(again_ids, again_errors, again_at) AS u(id, error, at)
       WHERE j.id = u.id
      RETURNING j.id, j.name, j.queue, j.run_id, j.attempt, j.error, j.start_after
    ), ev AS (
      INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
      SELECT @schema@.job_stream(a.name, a.id), 'job.retrying',
             jsonb_build_object('queue', a.queue, 'attempt', a.attempt,
                                'error', a.error, 'start_after', a.start_after),
             a.run_id, a.attempt
        FROM again a
       WHERE @schema@.job_events_on()
       ORDER BY a.id
    )
    SELECT string_agg(DISTINCT a.queue, ',') FILTER (WHERE a.start_after <= now())
      INTO wake FROM again a;
    IF wake IS NOT NULL THEN
      PERFORM @schema@.wake(wake);
    END IF;
    RETURN QUERY SELECT u.id, 'retry'::@schema@.job_state, u.at
                   FROM unnest(again_ids, again_at) AS u(id, at);
  END IF;

  IF final_ids IS NOT NULL THEN
    -- The copies' ids are drawn first, so their events can name both jobs.
    WITH failed AS (
      SELECT * FROM @schema@.archive(final_ids, 'failed',
                                     array_fill(NULL::jsonb, ARRAY[cardinality(final_ids)]),
                                     final_errors)
    ), copies AS (
      SELECT f.*, nextval('@schema@.job_id_seq') AS copy_id
        FROM failed f WHERE f.dead_letter IS NOT NULL
    ), dead AS (
      INSERT INTO @schema@.job (id, queue, name, data, priority, retry_limit,
                                retry_delay, retry_backoff, retry_delay_max,
                                expire_in, retention, run_id, error)
      SELECT c.copy_id, dq.name, c.name, c.data, c.priority, dq.retry_limit,
             dq.retry_delay, dq.retry_backoff, dq.retry_delay_max,
             dq.expire_in, dq.retention, c.run_id, c.error
        FROM copies c, LATERAL @schema@.queue_defaults(c.dead_letter) dq
      RETURNING queue
    ), ev AS (
      INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
      SELECT @schema@.job_stream(c.name, c.copy_id), 'job.created',
             jsonb_build_object('queue', c.dead_letter, 'attempt', 0,
                                'dead_letter_of', c.id),
             c.run_id, 0
        FROM copies c
       WHERE @schema@.job_events_on()
       ORDER BY c.copy_id
    )
    SELECT string_agg(DISTINCT queue, ',') FROM dead INTO wake;
    IF wake IS NOT NULL THEN
      PERFORM @schema@.wake(wake);
    END IF;
    RETURN QUERY SELECT u, 'failed'::@schema@.job_state, NULL::timestamptz
                   FROM unnest(final_ids) AS u;
  END IF;
  IF (again_ids IS NOT NULL OR final_ids IS NOT NULL) AND @schema@.job_events_on() THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;
