-- 004_process_attempt: one name per concept in the job tables and the job
-- JSON.
--
-- The process running a job is `process_id` (the process table's id), in
-- columns, parameters and the job JSON alike; it was `owner`/`owner_id`.
--
-- `attempt` is the number of the attempt that runs or last ran: 0 before
-- the first run, 1 while the first runs and after it, and so on. It
-- replaces `retry_count` (the failed attempts so far), which the job JSON
-- showed next to `attempt` = retry_count + 1. A claim (fetch_jobs) now
-- counts the attempt instead of a failure (fail_jobs); retries are left
-- while attempt <= retry_limit, so retry_limit still counts the retries
-- after the first attempt. A released attempt (release_jobs) is taken back.
--
-- Renaming a column does not rewrite the function bodies that name it, nor
-- the columns of the all_jobs view, so every function that reads or writes
-- one is created again below, and the view's columns are renamed too.

ALTER TABLE @schema@.job RENAME COLUMN owner TO process_id;
ALTER TABLE @schema@.job RENAME COLUMN retry_count TO attempt;
ALTER TABLE @schema@.job_archive RENAME COLUMN owner TO process_id;
ALTER TABLE @schema@.job_archive RENAME COLUMN retry_count TO attempt;
ALTER VIEW @schema@.all_jobs RENAME COLUMN owner TO process_id;
ALTER VIEW @schema@.all_jobs RENAME COLUMN retry_count TO attempt;
COMMENT ON COLUMN @schema@.job.process_id IS 'the process running the job (process.id)';
COMMENT ON COLUMN @schema@.job.attempt IS 'the attempt that runs or last ran; 0 before the first';

-- The stored counts of failures become counts of attempts: a row that was
-- running when it was stored (active, completed, failed, or cancelled while
-- it ran: started after its last start_after) gains the attempt that ran.
UPDATE @schema@.job SET attempt = attempt + 1 WHERE state = 'active';
UPDATE @schema@.job_archive SET attempt = attempt + 1
 WHERE state <> 'cancelled' OR started_at >= start_after;

-- Moves finished rows of `job` into the archive. `ids` are locked by the
-- caller's statement.
CREATE OR REPLACE FUNCTION @schema@.archive(ids bigint[], new_state @schema@.job_state,
                                 outputs jsonb[], errors jsonb[])
RETURNS SETOF @schema@.job_archive LANGUAGE sql AS $$
  WITH gone AS (
    DELETE FROM @schema@.job j
     USING unnest(ids, outputs, errors) AS u(id, output, error)
     WHERE j.id = u.id
    RETURNING j.*, u.output AS new_output, u.error AS new_error
  )
  INSERT INTO @schema@.job_archive
    (id, queue, name, data, state, priority, retry_limit, attempt,
     retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
     start_after, created_at, started_at, singleton_key, dead_letter, run_id,
     process_id, error, output, completed_at, keep_until)
  SELECT id, queue, name, data, new_state, priority, retry_limit, attempt,
         retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
         start_after, created_at, started_at, singleton_key, dead_letter,
         run_id, process_id, coalesce(new_error, error), new_output, now(),
         now() + make_interval(secs => retention)
    FROM gone
  RETURNING *
$$;

-- Fails active jobs: each goes back to `retry` (start_after per its retry
-- policy) while retries are left (attempt <= retry_limit), otherwise to
-- `failed` in the archive, and a copy goes to its dead-letter queue when it
-- has one. `process_id` NULL fails whoever runs them (expiry, recovery);
-- `immediate` retries at once (the job is not to blame, e.g. its process
-- died). Returns what became of each.
DROP FUNCTION @schema@.fail_jobs(bigint[], jsonb[], uuid, boolean);
CREATE FUNCTION @schema@.fail_jobs(ids bigint[], errors jsonb[], process_id uuid DEFAULT NULL,
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
             AND (fail_jobs.process_id IS NULL OR jj.process_id = fail_jobs.process_id)
           ORDER BY jj.id
             FOR UPDATE) j
    JOIN unnest(ids, errors) AS u(id, error) ON u.id = j.id;

  IF again_ids IS NOT NULL THEN
    UPDATE @schema@.job j
       SET state = 'retry', start_after = u.at, error = u.error, process_id = NULL
      FROM unnest(again_ids, again_errors, again_at) AS u(id, error, at)
     WHERE j.id = u.id;
    SELECT string_agg(DISTINCT j.queue, ',') INTO wake
      FROM @schema@.job j WHERE j.id = ANY(again_ids) AND j.start_after <= now();
    IF wake IS NOT NULL THEN
      PERFORM @schema@.wake(wake);
    END IF;
    RETURN QUERY SELECT u.id, 'retry'::@schema@.job_state, u.at
                   FROM unnest(again_ids, again_at) AS u(id, at);
  END IF;

  IF final_ids IS NOT NULL THEN
    WITH failed AS (
      SELECT * FROM @schema@.archive(final_ids, 'failed',
                                     array_fill(NULL::jsonb, ARRAY[cardinality(final_ids)]),
                                     final_errors)
    ), dead AS (
      INSERT INTO @schema@.job (queue, name, data, priority, retry_limit,
                                retry_delay, retry_backoff, retry_delay_max,
                                expire_in, retention, run_id, error)
      SELECT dq.name, f.name, f.data, f.priority, dq.retry_limit,
             dq.retry_delay, dq.retry_backoff, dq.retry_delay_max,
             dq.expire_in, dq.retention, f.run_id, f.error
        FROM failed f, LATERAL @schema@.queue_defaults(f.dead_letter) dq
       WHERE f.dead_letter IS NOT NULL
      RETURNING queue
    )
    SELECT string_agg(DISTINCT queue, ',') FROM dead INTO wake;
    IF wake IS NOT NULL THEN
      PERFORM @schema@.wake(wake);
    END IF;
    RETURN QUERY SELECT u, 'failed'::@schema@.job_state, NULL::timestamptz
                   FROM unnest(final_ids) AS u;
  END IF;
END $$;

-- A job as users see it: generic state, attempt, output and error.
CREATE OR REPLACE FUNCTION @schema@.job_json(j @schema@.all_jobs, paused boolean)
RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object(
    'id', j.id, 'queue', j.queue, 'name', j.name, 'data', j.data,
    'state', CASE
               WHEN j.state > 'active' OR j.state = 'active' THEN j.state::text
               WHEN j.start_after > now() THEN 'delayed'
               WHEN paused THEN 'paused'
               ELSE 'waiting' END,
    'stored_state', j.state::text,
    'priority', j.priority,
    'attempt', j.attempt,
    'retry_limit', j.retry_limit, 'retry_delay', j.retry_delay,
    'retry_backoff', j.retry_backoff, 'retry_delay_max', j.retry_delay_max,
    'expire_in', j.expire_in, 'retention', j.retention,
    'start_after', j.start_after, 'created_at', j.created_at,
    'started_at', j.started_at, 'completed_at', j.completed_at,
    'keep_until', j.keep_until,
    'singleton_key', j.singleton_key, 'dead_letter', j.dead_letter,
    'run_id', j.run_id, 'process_id', j.process_id, 'output', j.output,
    'error', j.error))
$$;

-- Puts a failed or cancelled job back to waiting, with a fresh retry
-- budget (attempt 0). Returns false when there was no such job.
CREATE OR REPLACE FUNCTION @schema@.retry(job_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  a @schema@.job_archive;
BEGIN
  DELETE FROM @schema@.job_archive
   WHERE id = job_id AND state IN ('failed', 'cancelled')
  RETURNING * INTO a;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO @schema@.job (id, queue, name, data, priority, retry_limit,
                            attempt, retry_delay, retry_backoff,
                            retry_delay_max, expire_in, retention,
                            created_at, singleton_key, dead_letter, run_id,
                            error)
  VALUES (a.id, a.queue, a.name, a.data, a.priority, a.retry_limit, 0,
          a.retry_delay, a.retry_backoff, a.retry_delay_max, a.expire_in,
          a.retention, a.created_at, a.singleton_key, a.dead_letter,
          a.run_id, a.error);
  PERFORM @schema@.wake(a.queue);
  RETURN true;
END $$;

-- One maintenance pass; returns NULL when another process is running one.
-- Active jobs of processes whose heartbeat is older than `stale_after`
-- seconds, and active jobs past their expire_in, are failed (so they retry
-- per their policy); dead processes are unregistered; archived jobs past
-- their retention are deleted, at most `batch` of them.
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
    PERFORM @schema@.fail_jobs(stale_ids,
      array_fill(jsonb_build_object('message', 'the process running it stopped responding'),
                 ARRAY[cardinality(stale_ids)]), NULL, true);
  END IF;
  SELECT array_agg(j.id) INTO expired_ids
    FROM @schema@.job j
   WHERE j.state = 'active'
     AND j.started_at + make_interval(secs => j.expire_in) < now();
  IF expired_ids IS NOT NULL THEN
    PERFORM @schema@.fail_jobs(expired_ids,
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

-- Claims up to `n` runnable jobs of queue q for process `process_id`:
-- higher priority first, then oldest first; none while the queue is paused.
-- Each claim starts the job's next attempt.
DROP FUNCTION @schema@.fetch_jobs(text, integer, uuid);
CREATE FUNCTION @schema@.fetch_jobs(q text, n integer, process_id uuid)
RETURNS TABLE (id bigint, name text, data jsonb, attempt integer,
               priority integer, retry_limit integer, expire_in double precision,
               run_id text, created_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM @schema@.queue x WHERE x.name = q AND x.paused) THEN
    RETURN;
  END IF;
  -- The UPDATE finds the claimed rows through the primary key; joining it
  -- to a CTE instead makes the planner hash the whole table.
  RETURN QUERY
  WITH claimed AS (
    UPDATE @schema@.job j
       SET state = 'active', started_at = now(), process_id = fetch_jobs.process_id,
           attempt = j.attempt + 1
     WHERE j.id = ANY(ARRAY(
             SELECT jj.id FROM @schema@.job jj
              WHERE jj.queue = q AND jj.state < 'active' AND jj.start_after <= now()
              ORDER BY jj.priority DESC, jj.id
              LIMIT n
                FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.name, j.data, j.attempt, j.priority,
              j.retry_limit, j.expire_in, j.run_id, j.created_at
  )
  SELECT * FROM claimed c ORDER BY c.priority DESC, c.id;
END $$;

-- Completes active jobs of process `process_id`: `outputs` is a JSON array
-- parallel to `ids` (JSON null: no output). Returns the ids completed; a job
-- no longer active (cancelled, expired, recovered) is left alone.
DROP FUNCTION @schema@.complete_jobs(bigint[], jsonb, uuid);
CREATE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, process_id uuid)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY
  WITH u AS (
    SELECT i.id, nullif(o.value, 'null'::jsonb) AS output
      FROM unnest(ids) WITH ORDINALITY AS i(id, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n)
        ON o.n = i.n
  ), gone AS (
    DELETE FROM @schema@.job j USING u
     WHERE j.id = u.id AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
    RETURNING j.*, u.output AS new_output
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
END $$;

-- Gives active jobs of process `process_id` back (a graceful stop): they
-- wait again at once and this attempt does not count. Returns how many.
DROP FUNCTION @schema@.release_jobs(bigint[], uuid);
CREATE FUNCTION @schema@.release_jobs(ids bigint[], process_id uuid) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  wake text;
BEGIN
  WITH r AS (
    UPDATE @schema@.job j
       SET state = CASE WHEN j.attempt > 1 THEN 'retry'::@schema@.job_state
                        ELSE 'created'::@schema@.job_state END,
           attempt = j.attempt - 1,
           start_after = now(), process_id = NULL, started_at = NULL
     WHERE j.id = ANY(ids) AND j.state = 'active'
       AND j.process_id = release_jobs.process_id
    RETURNING j.queue
  )
  SELECT count(*), string_agg(DISTINCT r.queue, ',') INTO n, wake FROM r;
  IF wake IS NOT NULL THEN
    PERFORM @schema@.wake(wake);
  END IF;
  RETURN n;
END $$;
