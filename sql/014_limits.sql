-- 014_limits: PostgreSQL's limits checked where values come in, and one
-- bad row no longer fails the batch it is written with.
--
-- Limits (the same in Lua, config.lua, handler files and SQL):
--  - durations (delay, retry_delay, retry_delay_max, expire_in, retention)
--    are at most 3,155,760,000 seconds (100 years), so that a timestamp
--    computed from one stays far inside PostgreSQL's range (294276 AD);
--  - a queue name (queue, dead_letter) is 1 to 255 bytes, like a job name;
--    a singleton_key at most 1,000 bytes and a run_id at most 200 (their
--    btree index rows must fit ~2,700 bytes);
--  - a wake-up's payload (queue names) over 7,999 bytes becomes "*", a
--    wake-up of every queue, instead of failing the statement.
-- The tables get the same bounds as CHECK constraints (rows stored before
-- are brought within them first), so a value from any other path cannot
-- overflow a computation later.
--
-- JSON that jsonb holds and Lua cannot (a number beyond a 64-bit float's
-- range, nesting deeper than 128 levels) is refused where it comes in from
-- SQL (send, send_many, append): the limits of the Lua side are the limits
-- of all. A worker that meets such data anyway (stored before) fails its
-- job without retry.
--
-- Batches: complete_jobs_guarded, fail_jobs_guarded and release_jobs_guarded
-- run complete_jobs_with, fail_jobs and release_jobs for the batch in a
-- subtransaction and, when PostgreSQL refuses it, for each job alone: a job
-- refused fails with the reason (completion) or is left to its expiry, and
-- the rest of the batch is stored. The worker's batches, fail_jobs_at and
-- maintenance go through them.

-- Seconds allowed for any duration (100 years of 365.25 days).
CREATE FUNCTION @schema@.duration_max() RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$ SELECT 3155760000::double precision $$;

-- opt_num (002) reads durations only: now bounded above too.
CREATE OR REPLACE FUNCTION @schema@.opt_num(k text, v jsonb, min double precision)
RETURNS double precision LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  n double precision;
BEGIN
  IF jsonb_typeof(v) <> 'number' THEN
    RAISE EXCEPTION 'option "%" must be a number, got %', k, jsonb_typeof(v)
      USING ERRCODE = '22023';
  END IF;
  BEGIN
    n := v::text::double precision;
  EXCEPTION WHEN numeric_value_out_of_range THEN
    n := 'Infinity';
  END;
  IF min IS NOT NULL AND n < min THEN
    RAISE EXCEPTION 'option "%" must be >= %, got %', k, min, v
      USING ERRCODE = '22023';
  END IF;
  IF n > @schema@.duration_max() THEN
    RAISE EXCEPTION 'option "%" is % seconds, the limit is 3155760000 (100 years)',
      k, left(v::text, 40) USING ERRCODE = '22023';
  END IF;
  RETURN n;
END $$;

-- opt_text (002), with each text option's limit in bytes.
CREATE OR REPLACE FUNCTION @schema@.opt_text(k text, v jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  s text;
  lim integer;
BEGIN
  IF jsonb_typeof(v) <> 'string' OR v #>> '{}' = '' THEN
    RAISE EXCEPTION 'option "%" must be a non-empty string, got %', k, left(v::text, 80)
      USING ERRCODE = '22023';
  END IF;
  s := v #>> '{}';
  lim := CASE k WHEN 'queue' THEN 255 WHEN 'dead_letter' THEN 255
                WHEN 'singleton_key' THEN 1000 WHEN 'run_id' THEN 200 END;
  IF lim IS NOT NULL AND octet_length(s) > lim THEN
    RAISE EXCEPTION 'option "%" is % bytes, the limit is %', k, octet_length(s), lim
      USING ERRCODE = '22023';
  END IF;
  RETURN s;
END $$;

-- wake (002): the payload is bounded in bytes (NOTIFY's limit is 8,000);
-- names that do not fit wake every queue ("*") instead.
CREATE OR REPLACE FUNCTION @schema@.wake(queues text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(replace('@schema@', '"', '') || '_wake',
                    CASE WHEN octet_length(queues) > 7999 THEN '*' ELSE queues END);
END $$;

-- A queue row's name and durations, checked with a message naming the
-- limit (pause, resume and the stored settings all write this table).
CREATE FUNCTION @schema@.check_queue_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  k text;
  v double precision;
BEGIN
  IF octet_length(NEW.name) > 255 THEN
    RAISE EXCEPTION 'queue name is % bytes, the limit is 255', octet_length(NEW.name)
      USING ERRCODE = '22023';
  END IF;
  IF octet_length(NEW.dead_letter) > 255 THEN
    RAISE EXCEPTION 'dead_letter is % bytes, the limit is 255', octet_length(NEW.dead_letter)
      USING ERRCODE = '22023';
  END IF;
  FOR k, v IN VALUES ('retry_delay', NEW.retry_delay), ('retry_delay_max', NEW.retry_delay_max),
                     ('expire_in', NEW.expire_in), ('retention', NEW.retention) LOOP
    IF v > @schema@.duration_max() THEN
      RAISE EXCEPTION 'queue setting "%" is % seconds, the limit is 3155760000 (100 years)',
        k, v USING ERRCODE = '22023';
    END IF;
  END LOOP;
  RETURN NEW;
END $$;

-- Rows stored before these limits, brought within them, and the limits
-- kept by the tables too.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['queue', 'job'] LOOP
    EXECUTE format(
      'UPDATE @schema@.%1$I SET retry_delay = least(retry_delay, m.v),
              retry_delay_max = least(retry_delay_max, m.v),
              expire_in = least(expire_in, m.v), retention = least(retention, m.v)
         FROM (SELECT @schema@.duration_max() AS v) m
        WHERE greatest(retry_delay, retry_delay_max, expire_in, retention) > m.v;
       ALTER TABLE @schema@.%1$I ADD CONSTRAINT %2$I
         CHECK (greatest(retry_delay, retry_delay_max, expire_in, retention) <= 3155760000)',
      t, t || '_durations_check');
  END LOOP;
END $$;

CREATE TRIGGER check_queue_row BEFORE INSERT OR UPDATE ON @schema@.queue
  FOR EACH ROW EXECUTE FUNCTION @schema@.check_queue_row();

-- ---- JSON that Lua can read ------------------------------------------------

-- What in v moonq's Lua side cannot represent, or NULL: nesting deeper
-- than 128 levels below v (v's own level is `level`, 0 or 1: 1 for the
-- elements of an array that send_many was given) or a number beyond
-- +-1.7976931348623157e308 (a 64-bit float). The paths are constants, so
-- they are parsed once.
CREATE FUNCTION @schema@.unreadable(v jsonb, level integer DEFAULT 0) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN jsonb_path_exists(v, CASE WHEN level = 1 THEN 'strict $.**{130 to last}'::jsonpath
                                   ELSE 'strict $.**{129 to last}'::jsonpath END)
      THEN 'is nested deeper than 128 levels, the limit moonq can read'
    WHEN jsonb_path_exists(v, 'strict $.** ? (@.type() == "number" && '
                              '(@ > 1.7976931348623158e308 || @ < -1.7976931348623158e308))')
      THEN 'holds a number beyond 1.7976931348623157e308, the largest moonq can read '
           '(a 64-bit float)'
  END
$$;

-- Raises 22023 naming `what` when unreadable(v, level).
CREATE FUNCTION @schema@.check_readable(what text, v jsonb, level integer DEFAULT 0)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  problem text := @schema@.unreadable(v, level);
BEGIN
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '% %', what, problem USING ERRCODE = '22023';
  END IF;
END $$;

-- send_many (009), refusing data the Lua side cannot read.
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
  PERFORM @schema@.check_readable('job data', data, 1);
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
      IF NOT isfinite(start) THEN -- "infinity": a job that never runs
        RAISE EXCEPTION 'option "start_after" must be a finite timestamp, got %', v
          USING ERRCODE = '22023';
      END IF;
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

-- job_json (004): data that Lua cannot read is shown as data_text (the
-- stored JSON as text) with data_error saying why, so that moonq.queue.get,
-- list and `moonq job` can show the job.
CREATE OR REPLACE FUNCTION @schema@.job_json(j @schema@.all_jobs, paused boolean)
RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object(
    'id', j.id, 'queue', j.queue, 'name', j.name,
    'data', CASE WHEN u.problem IS NULL THEN j.data END,
    'data_error', 'job data ' || u.problem,
    'data_text', CASE WHEN u.problem IS NOT NULL THEN j.data::text END,
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
    'run_id', j.run_id, 'process_id', j.process_id,
    'output', CASE WHEN u.output_problem IS NULL THEN j.output END,
    'output_error', 'job output ' || u.output_problem,
    'output_text', CASE WHEN u.output_problem IS NOT NULL THEN j.output::text END,
    'error', CASE WHEN u.error_problem IS NULL THEN j.error END,
    'error_error', 'job error ' || u.error_problem,
    'error_text', CASE WHEN u.error_problem IS NOT NULL THEN j.error::text END))
    FROM (SELECT @schema@.unreadable(j.data) AS problem,
                 @schema@.unreadable(j.output) AS output_problem,
                 @schema@.unreadable(j.error) AS error_problem) u
$$;

ALTER FUNCTION @schema@.check_event(text, text, jsonb) RENAME TO check_event_names;

-- check_event (005), and the event's data readable by the Lua side.
CREATE FUNCTION @schema@.check_event(stream text, type text, data jsonb)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  PERFORM @schema@.check_event_names(stream, type, data);
  IF data IS NOT NULL THEN
    PERFORM @schema@.check_readable('event data', data);
  END IF;
END $$;

-- ---- one bad row does not fail its batch ---------------------------------

-- complete_jobs_with (012) for the whole batch, or, when PostgreSQL refuses
-- it, for each job alone: a job whose completion is refused fails (its
-- retry policy decides what follows) with the reason. Returns the ids
-- completed.
CREATE FUNCTION @schema@.complete_jobs_guarded(ids bigint[], outputs jsonb, process_id uuid,
                                            effects jsonb DEFAULT NULL,
                                            attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
  done bigint[];
  one bigint[];
  bad_ids bigint[] := '{}';
  bad_errors jsonb[] := '{}';
  bad_attempts integer[] := '{}';
BEGIN
  BEGIN
    SELECT array_agg(c) INTO done
      FROM @schema@.complete_jobs_with(ids, outputs, process_id, effects, attempts) c;
  EXCEPTION WHEN OTHERS THEN
    done := '{}';
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
      BEGIN
        SELECT array_agg(c) INTO one
          FROM @schema@.complete_jobs_with(ARRAY[ids[i]], jsonb_build_array(outputs->(i - 1)),
                 process_id,
                 CASE WHEN effects IS NULL THEN NULL ELSE jsonb_build_array(effects->(i - 1)) END,
                 CASE WHEN attempts IS NULL THEN NULL ELSE ARRAY[attempts[i]] END) c;
        done := done || coalesce(one, '{}');
      EXCEPTION WHEN OTHERS THEN
        bad_ids := bad_ids || ids[i];
        bad_errors := bad_errors || jsonb_build_object('message',
          'storing the job''s result failed: ' || SQLERRM);
        bad_attempts := bad_attempts || coalesce(attempts[i], 0);
      END;
    END LOOP;
    IF cardinality(bad_ids) > 0 THEN
      PERFORM @schema@.fail_jobs_at(bad_ids, bad_errors, process_id, bad_attempts);
    END IF;
  END;
  RETURN QUERY SELECT unnest(done);
END $$;

-- fail_jobs (009) for the whole batch, or, when PostgreSQL refuses it,
-- for each job alone; a job whose failure is refused is failed once more
-- without retry and with the reason added to its error, and otherwise left
-- active (its expiry tries again). An error object holding "retry": false
-- fails its job without retry (a job that cannot succeed: data moonq cannot
-- read). Same result as fail_jobs.
CREATE FUNCTION @schema@.fail_jobs_guarded(ids bigint[], errors jsonb[],
                                           process_id uuid DEFAULT NULL,
                                           immediate boolean DEFAULT false)
RETURNS TABLE (id bigint, state @schema@.job_state, start_after timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  out_ids bigint[] := '{}';
  out_states @schema@.job_state[] := '{}';
  out_at timestamptz[] := '{}';
  r record;
BEGIN
  -- no retry for these: the attempt that failed is the last
  UPDATE @schema@.job j SET retry_limit = least(j.retry_limit, j.attempt - 1)
    FROM unnest(ids, errors) AS u(id, error)
   WHERE j.id = u.id AND j.state = 'active' AND u.error->'retry' = 'false'::jsonb;
  BEGIN
    SELECT coalesce(array_agg(f.id), '{}'), coalesce(array_agg(f.state), '{}'),
           coalesce(array_agg(f.start_after), '{}')
      INTO out_ids, out_states, out_at
      FROM @schema@.fail_jobs(ids, errors, process_id, immediate) f;
  EXCEPTION WHEN OTHERS THEN
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
      BEGIN
        FOR r IN SELECT * FROM @schema@.fail_jobs(ARRAY[ids[i]], ARRAY[errors[i]],
                                                      process_id, immediate) LOOP
          out_ids := out_ids || r.id;
          out_states := out_states || r.state;
          out_at := out_at || r.start_after;
        END LOOP;
      EXCEPTION WHEN OTHERS THEN
        BEGIN
          UPDATE @schema@.job j SET retry_limit = least(j.retry_limit, j.attempt - 1)
           WHERE j.id = ids[i] AND j.state = 'active';
          FOR r IN SELECT * FROM @schema@.fail_jobs(ARRAY[ids[i]],
                     ARRAY[coalesce(errors[i], '{}'::jsonb)
                           || jsonb_build_object('store_error',
                                'storing this failure with a retry failed: ' || SQLERRM)],
                     process_id, immediate) LOOP
            out_ids := out_ids || r.id;
            out_states := out_states || r.state;
            out_at := out_at || r.start_after;
          END LOOP;
        EXCEPTION WHEN OTHERS THEN
          RAISE WARNING 'moonq: failing job % failed: %', ids[i], SQLERRM;
        END;
      END;
    END LOOP;
  END;
  RETURN QUERY SELECT * FROM unnest(out_ids, out_states, out_at);
END $$;

-- release_jobs (009) for the whole batch, or each job alone when
-- PostgreSQL refuses it (a job not released stays active until its expiry).
-- Returns how many were released.
CREATE FUNCTION @schema@.release_jobs_guarded(ids bigint[], process_id uuid) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  n bigint := 0;
BEGIN
  BEGIN
    RETURN @schema@.release_jobs(ids, process_id);
  EXCEPTION WHEN OTHERS THEN
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
      BEGIN
        n := n + @schema@.release_jobs(ARRAY[ids[i]], process_id);
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'moonq: releasing job % failed: %', ids[i], SQLERRM;
      END;
    END LOOP;
  END;
  RETURN n;
END $$;

-- fail_jobs_at (012), now through fail_jobs_guarded: fail_jobs (009) for
-- given attempts (aligned with ids; 0: any): a failure
-- of an attempt that ran past its expiry while the job started again is
-- not the new attempt's.
CREATE OR REPLACE FUNCTION @schema@.fail_jobs_at(ids bigint[], errors jsonb[], process_id uuid,
                                      attempts integer[])
RETURNS TABLE (id bigint, state @schema@.job_state, start_after timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  keep_ids bigint[];
  keep_errors jsonb[];
BEGIN
  SELECT array_agg(u.id ORDER BY u.n), array_agg(u.error ORDER BY u.n)
    INTO keep_ids, keep_errors
    FROM unnest(ids, errors, attempts) WITH ORDINALITY AS u(id, error, attempt, n)
    LEFT JOIN @schema@.job j ON j.id = u.id
   WHERE u.attempt IS NULL OR u.attempt = 0 OR j.attempt IS NOT DISTINCT FROM u.attempt;
  IF keep_ids IS NOT NULL THEN
    RETURN QUERY SELECT * FROM @schema@.fail_jobs_guarded(keep_ids, keep_errors, process_id);
  END IF;
END $$;

-- maintain (004), now failing jobs through fail_jobs_guarded. One
-- maintenance pass; returns NULL when another process is running one.
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
    PERFORM @schema@.fail_jobs_guarded(stale_ids,
      array_fill(jsonb_build_object('message', 'the process running it stopped responding'),
                 ARRAY[cardinality(stale_ids)]), NULL, true);
  END IF;
  SELECT array_agg(j.id) INTO expired_ids
    FROM @schema@.job j
   WHERE j.state = 'active'
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

-- retry (009): a job whose singleton_key is taken by a job that waits or
-- runs cannot go back; say so instead of naming the index.
ALTER FUNCTION @schema@.retry(bigint) RENAME TO retry_job;

CREATE FUNCTION @schema@.retry(job_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  k text;
BEGIN
  RETURN @schema@.retry_job(job_id);
EXCEPTION WHEN unique_violation THEN
  SELECT a.singleton_key INTO k FROM @schema@.job_archive a WHERE a.id = job_id;
  RAISE EXCEPTION 'job % cannot be retried: another job with singleton_key "%" waits or runs',
    job_id, left(k, 200) USING ERRCODE = '23505';
END $$;
