-- 009_job_events: job lifecycle events.
--
-- With job events on, every change of a job's state writes an event to
-- queue_events, in the job's own stream "job:<name>:<id>" (ctx.emit's
-- default), by the statement that makes the change (send_many: by the
-- next statement of the same call), so the event commits if and only if
-- the change does:
--
--   job.created    send, send_many; a dead-letter copy of a failed job
--   job.active     fetch_jobs (an attempt starts)
--   job.completed  complete_jobs
--   job.retrying   fail_jobs with retries left (also expiry and recovery
--                  by maintain, which fail through fail_jobs)
--   job.failed     fail_jobs without retries left
--   job.cancelled  cancel
--   job.retried    retry (a failed or cancelled job waits again)
--   job.released   release_jobs (a graceful stop gives the attempt back)
--   job.purged     purge of waiting or delayed jobs
--
-- Each event carries the job's run_id and attempt (columns) and small data:
-- the queue and attempt, plus what the change is about (the error of a
-- failed attempt, the output of a completion when it is small). Each
-- statement that writes some wakes subscribers once (events_wake).
--
-- The switch lives in the database, not in each process: SQL that an
-- application calls (send, cancel, retry) must write the same events as
-- moonq's own processes. settings.job_events is stored from config.lua's
-- events.job_events at start the way queue settings are (007): a process
-- that runs handlers stores it over what is there, so the last one to
-- start wins; any other process stores it only while it is unset. Unset
-- is off.
--
-- Off costs one lookup of a one-row table per statement: each event
-- INSERT is gated by job_events_on(), which names no column, so the
-- planner makes it a one-time filter evaluated before any row is read.
-- (A data-modifying CTE runs whether or not it is read; the state change
-- is always the one that runs, the gated INSERT only reads its rows.)
-- send_many, whose single sends are the hottest path, reads the switch
-- in its insert's statement instead and inserts events only when it is on.

-- Settings of the whole schema: one row.
CREATE TABLE @schema@.settings (
  id         boolean PRIMARY KEY DEFAULT true CHECK (id),
  job_events boolean, -- NULL: no process has stored it yet (off)
  updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO @schema@.settings DEFAULT VALUES;

-- Whether job lifecycle events are on. In a WHERE clause that names no
-- column it is a one-time filter: called once per statement. (plpgsql, so
-- its plan is cached for the session; a LANGUAGE sql body with a subquery
-- is not inlined and would be planned again by every statement.)
CREATE FUNCTION @schema@.job_events_on() RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN coalesce((SELECT s.job_events FROM @schema@.settings s), false);
END $$;

-- Stores config.lua's events.job_events: over what is stored, or with
-- only_unset only while nothing is (a process that runs no handlers).
CREATE FUNCTION @schema@.store_job_events(enabled boolean, only_unset boolean DEFAULT false)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO @schema@.settings AS s (job_events) VALUES (enabled)
  ON CONFLICT (id) DO UPDATE SET job_events = excluded.job_events, updated_at = now()
   WHERE NOT only_unset OR s.job_events IS NULL
$$;

-- A job's own stream.
CREATE FUNCTION @schema@.job_stream(name text, id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT 'job:' || name || ':' || id::text
$$;

-- The data of a job.completed event: queue, attempt and the output when
-- its JSON text is at most 1024 bytes, or else its size (output_size).
CREATE FUNCTION @schema@.completed_event_data(queue text, attempt integer, output jsonb)
RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('queue', queue, 'attempt', attempt)
         || CASE WHEN output IS NULL THEN '{}'::jsonb
                 WHEN octet_length(output::text) <= 1024
                   THEN jsonb_build_object('output', output)
                 ELSE jsonb_build_object('output_size', octet_length(output::text)) END
$$;

-- Enqueues one job per element of the JSON array `data` (002), now with a
-- job.created event per job; a job name is at most 255 bytes, so that its
-- stream fits the event store's limit of 500. The events are inserted by a
-- second statement of the same call, only when job events are on: a data-
-- modifying CTE for them would open queue_events and its four indexes on
-- every send even when off, a cost that shows on single sends.
CREATE OR REPLACE FUNCTION @schema@.send_many(name text, data jsonb, options jsonb DEFAULT '{}')
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  o     jsonb := coalesce(options, '{}');
  k     text;
  v     jsonb;
  q     text;
  d     @schema@.queue;
  prio  integer := 0;
  start timestamptz := now();
  timed boolean := false;
  rlimit integer; rdelay double precision; rbackoff boolean;
  rmax double precision; exp double precision; ret double precision;
  dl text; skey text; rid text;
  ids   bigint[];
  events_on boolean;
BEGIN
  IF name IS NULL OR name = '' THEN
    RAISE EXCEPTION 'job name must be a non-empty string' USING ERRCODE = '22023';
  END IF;
  IF octet_length(name) > 255 THEN
    RAISE EXCEPTION 'job name is % bytes, the limit is 255', octet_length(name)
      USING ERRCODE = '22023';
  END IF;
  IF jsonb_typeof(o) <> 'object' THEN
    RAISE EXCEPTION 'options must be a JSON object, got %', jsonb_typeof(o)
      USING ERRCODE = '22023';
  END IF;
  IF data IS NULL OR jsonb_typeof(data) <> 'array' THEN
    RAISE EXCEPTION 'send_many needs a JSON array of job data' USING ERRCODE = '22023';
  END IF;
  FOR k, v IN SELECT * FROM jsonb_each(o) LOOP
    CONTINUE WHEN jsonb_typeof(v) = 'null';
    CASE k
    WHEN 'queue' THEN q := @schema@.opt_text(k, v);
    WHEN 'priority' THEN prio := @schema@.opt_int(k, v, NULL);
    WHEN 'delay' THEN
      IF timed THEN
        RAISE EXCEPTION 'give either "delay" or "start_after", not both' USING ERRCODE = '22023';
      END IF;
      start := now() + make_interval(secs => @schema@.opt_num(k, v, 0));
      timed := true;
    WHEN 'start_after' THEN
      IF timed THEN
        RAISE EXCEPTION 'give either "delay" or "start_after", not both' USING ERRCODE = '22023';
      END IF;
      BEGIN
        start := @schema@.opt_text(k, v)::timestamptz;
      EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
        RAISE EXCEPTION 'option "start_after" must be a timestamp, got %', v
          USING ERRCODE = '22023';
      END;
      timed := true;
    WHEN 'retry_limit' THEN rlimit := @schema@.opt_int(k, v, 0);
    WHEN 'retry_delay' THEN rdelay := @schema@.opt_num(k, v, 0);
    WHEN 'retry_backoff' THEN rbackoff := @schema@.opt_bool(k, v);
    WHEN 'retry_delay_max' THEN rmax := @schema@.opt_num(k, v, 0);
    WHEN 'expire_in' THEN
      exp := @schema@.opt_num(k, v, 0);
      IF exp = 0 THEN
        RAISE EXCEPTION 'option "expire_in" must be > 0' USING ERRCODE = '22023';
      END IF;
    WHEN 'retention' THEN ret := @schema@.opt_num(k, v, 0);
    WHEN 'singleton_key' THEN skey := @schema@.opt_text(k, v);
    WHEN 'dead_letter' THEN dl := @schema@.opt_text(k, v);
    WHEN 'run_id' THEN rid := @schema@.opt_text(k, v);
    ELSE
      RAISE EXCEPTION 'unknown option "%"', k USING ERRCODE = '22023',
        HINT = 'known options: queue, priority, delay, start_after, retry_limit, '
               'retry_delay, retry_backoff, retry_delay_max, expire_in, '
               'retention, singleton_key, dead_letter, run_id';
    END CASE;
  END LOOP;
  q := coalesce(q, name);
  d := @schema@.queue_defaults(q);
  WITH ins AS (
    INSERT INTO @schema@.job AS j (queue, name, data, priority, retry_limit,
                                   retry_delay, retry_backoff, retry_delay_max,
                                   expire_in, retention, start_after,
                                   singleton_key, dead_letter, run_id)
    SELECT d.name, send_many.name, e.value, prio,
           coalesce(rlimit, d.retry_limit), coalesce(rdelay, d.retry_delay),
           coalesce(rbackoff, d.retry_backoff), coalesce(rmax, d.retry_delay_max),
           coalesce(exp, d.expire_in), coalesce(ret, d.retention), start,
           skey, coalesce(dl, d.dead_letter), rid
      FROM jsonb_array_elements(data) WITH ORDINALITY AS e
     ORDER BY e.ordinality
    ON CONFLICT DO NOTHING
    RETURNING j.id
  )
  -- The switch is read by this statement (a one-row scan), not by a call.
  SELECT array_agg(i.id ORDER BY i.id), (SELECT s.job_events FROM @schema@.settings s)
    INTO ids, events_on FROM ins i;
  IF ids IS NOT NULL AND events_on THEN
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(j.name, j.id), 'job.created',
           jsonb_build_object('queue', j.queue, 'attempt', 0,
                              'start_after', j.start_after),
           j.run_id, 0
      FROM @schema@.job j
     WHERE j.id = ANY(ids)
     ORDER BY j.id;
    PERFORM @schema@.events_wake();
  END IF;
  IF ids IS NOT NULL AND current_setting('moonq.no_wake', true) IS DISTINCT FROM 'on' THEN
    PERFORM @schema@.wake(q);
  END IF;
  RETURN coalesce(ids, '{}');
END $$;

-- Moves finished rows of `job` into the archive (004), writing
-- job.cancelled or job.failed (with the error) for each. `ids` are locked
-- by the caller's statement.
CREATE OR REPLACE FUNCTION @schema@.archive(ids bigint[], new_state @schema@.job_state,
                                            outputs jsonb[], errors jsonb[])
RETURNS SETOF @schema@.job_archive LANGUAGE sql AS $$
  WITH gone AS (
    DELETE FROM @schema@.job j
     USING unnest(ids, outputs, errors) AS u(id, output, error)
     WHERE j.id = u.id
    RETURNING j.*, u.output AS new_output, u.error AS new_error
  ), moved AS (
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
  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(m.name, m.id), 'job.' || m.state::text,
           jsonb_build_object('queue', m.queue, 'attempt', m.attempt)
           || CASE WHEN m.state = 'failed' THEN jsonb_build_object('error', m.error)
                   ELSE '{}'::jsonb END,
           m.run_id, m.attempt
      FROM moved m
     WHERE @schema@.job_events_on()
     ORDER BY m.id
  )
  SELECT * FROM moved
$$;

-- Fails active jobs (004): each goes back to `retry` while retries are
-- left (job.retrying, with the error and when it may start again),
-- otherwise to `failed` in the archive (job.failed, written by archive),
-- and a copy goes to its dead-letter queue when it has one (job.created
-- in the copy's stream, naming the original as dead_letter_of).
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
             AND (fail_jobs.process_id IS NULL OR jj.process_id = fail_jobs.process_id)
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

-- Cancels a job that waits or runs (002); archive writes job.cancelled.
CREATE OR REPLACE FUNCTION @schema@.cancel(job_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM @schema@.job WHERE id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM @schema@.archive(ARRAY[job_id], 'cancelled', ARRAY[NULL::jsonb],
                           ARRAY[NULL::jsonb]);
  IF @schema@.job_events_on() THEN
    PERFORM @schema@.events_wake();
  END IF;
  RETURN true;
END $$;

-- Puts a failed or cancelled job back to waiting with attempt 0 (004);
-- writes job.retried, naming the state it left as previous_state.
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
  WITH back AS (
    INSERT INTO @schema@.job (id, queue, name, data, priority, retry_limit,
                              attempt, retry_delay, retry_backoff,
                              retry_delay_max, expire_in, retention,
                              created_at, singleton_key, dead_letter, run_id,
                              error)
    VALUES (a.id, a.queue, a.name, a.data, a.priority, a.retry_limit, 0,
            a.retry_delay, a.retry_backoff, a.retry_delay_max, a.expire_in,
            a.retention, a.created_at, a.singleton_key, a.dead_letter,
            a.run_id, a.error)
    RETURNING id, name, queue, run_id, start_after
  )
  INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
  SELECT @schema@.job_stream(b.name, b.id), 'job.retried',
         jsonb_build_object('queue', b.queue, 'attempt', 0,
                            'previous_state', a.state, 'start_after', b.start_after),
         b.run_id, 0
    FROM back b
   WHERE @schema@.job_events_on();
  IF FOUND THEN
    PERFORM @schema@.events_wake();
  END IF;
  PERFORM @schema@.wake(a.queue);
  RETURN true;
END $$;

-- Claims up to `n` runnable jobs of queue q for process `process_id` (004);
-- writes job.active for each, with the process.
CREATE OR REPLACE FUNCTION @schema@.fetch_jobs(q text, n integer, process_id uuid)
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
  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(c.name, c.id), 'job.active',
           jsonb_build_object('queue', q, 'attempt', c.attempt,
                              'process_id', fetch_jobs.process_id),
           c.run_id, c.attempt
      FROM claimed c
     WHERE @schema@.job_events_on()
     ORDER BY c.id
  )
  SELECT * FROM claimed c ORDER BY c.priority DESC, c.id;
  IF FOUND AND @schema@.job_events_on() THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;

-- Completes active jobs of process `process_id` (006): stores the events
-- their handlers emitted and then job.completed, in that order, in one
-- INSERT.
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
  IF events IS NOT NULL OR (FOUND AND @schema@.job_events_on()) THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;

-- Gives active jobs of process `process_id` back (004); writes
-- job.released with the attempt taken back.
CREATE OR REPLACE FUNCTION @schema@.release_jobs(ids bigint[], process_id uuid) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  n_events bigint;
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
    RETURNING j.id, j.name, j.queue, j.run_id, j.attempt
  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(r.name, r.id), 'job.released',
           jsonb_build_object('queue', r.queue, 'attempt', r.attempt),
           r.run_id, r.attempt
      FROM r
     WHERE @schema@.job_events_on()
     ORDER BY r.id
    RETURNING 1
  )
  SELECT count(*), string_agg(DISTINCT r.queue, ','), (SELECT count(*) FROM ev)
    INTO n, wake, n_events FROM r;
  IF wake IS NOT NULL THEN
    PERFORM @schema@.wake(wake);
  END IF;
  IF n_events > 0 THEN
    PERFORM @schema@.events_wake();
  END IF;
  RETURN n;
END $$;

-- Deletes a queue's jobs in one generic state (002); writes job.purged for
-- each waiting or delayed job it deletes (finished jobs already had their
-- last event).
CREATE OR REPLACE FUNCTION @schema@.purge(q text, generic_state text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  paused boolean := coalesce((SELECT x.paused FROM @schema@.queue x WHERE x.name = q), false);
  n bigint := 0;
  m bigint;
  n_events bigint;
BEGIN
  IF generic_state IS NOT NULL AND generic_state NOT IN
     ('waiting', 'delayed', 'paused', 'completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'cannot purge state "%" (expected waiting, delayed, paused, completed, failed or cancelled)',
      generic_state USING ERRCODE = '22023';
  END IF;
  IF generic_state IS NULL OR generic_state IN ('waiting', 'paused', 'delayed') THEN
    WITH gone AS (
      DELETE FROM @schema@.job j
       WHERE j.queue = q AND j.state < 'active'
         AND CASE generic_state
               WHEN 'delayed' THEN j.start_after > now()
               WHEN 'waiting' THEN j.start_after <= now() AND NOT paused
               WHEN 'paused' THEN j.start_after <= now() AND paused
               ELSE true
             END
      RETURNING j.id, j.name, j.run_id, j.attempt
    ), ev AS (
      INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
      SELECT @schema@.job_stream(g.name, g.id), 'job.purged',
             jsonb_build_object('queue', q, 'attempt', g.attempt),
             g.run_id, g.attempt
        FROM gone g
       WHERE @schema@.job_events_on()
       ORDER BY g.id
      RETURNING 1
    )
    SELECT count(*), (SELECT count(*) FROM ev) INTO m, n_events FROM gone;
    n := n + m;
    IF n_events > 0 THEN
      PERFORM @schema@.events_wake();
    END IF;
  END IF;
  IF generic_state IS NULL OR generic_state IN ('completed', 'failed', 'cancelled') THEN
    DELETE FROM @schema@.job_archive a
     WHERE a.queue = q AND (generic_state IS NULL OR a.state::text = generic_state);
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
  END IF;
  RETURN n;
END $$;
