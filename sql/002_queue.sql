-- 002_queue: the job queue.
--
-- Jobs waiting or running live in `job`, kept small so the fetch path stays
-- fast however much history accumulates; finished jobs (completed, failed,
-- cancelled) move to `job_archive` and are deleted after their retention.
-- Stored states, in this order (predicates use the order): created, retry,
-- active, completed, cancelled, failed. Users see generic states: waiting,
-- delayed, paused, active, completed, failed, cancelled.
--
-- Applications enqueue with SELECT moonq.send(name, data, options) inside
-- their own transactions; each send sends one NOTIFY on channel
-- "<schema>_wake" with the queue name as payload (moonq's own connections
-- set moonq.no_wake and send one wake() per loop turn instead).

CREATE TYPE @schema@.job_state AS ENUM
  ('created', 'retry', 'active', 'completed', 'cancelled', 'failed');

-- Per-queue settings. The row named '' holds the defaults of every queue
-- (config.lua's `queue`); a queue's own row (config.lua's `queues.<name>`)
-- overrides them; NULL means "not set here".
CREATE TABLE @schema@.queue (
  name            text PRIMARY KEY,
  paused          boolean NOT NULL DEFAULT false,
  retry_limit     integer CHECK (retry_limit >= 0),
  retry_delay     double precision CHECK (retry_delay >= 0),
  retry_backoff   boolean,
  retry_delay_max double precision CHECK (retry_delay_max >= 0),
  expire_in       double precision CHECK (expire_in > 0),
  retention       double precision CHECK (retention >= 0),
  dead_letter     text,
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE @schema@.job_id_seq;

CREATE TABLE @schema@.job (
  id              bigint PRIMARY KEY DEFAULT nextval('@schema@.job_id_seq'),
  queue           text NOT NULL,
  name            text NOT NULL,
  data            jsonb NOT NULL DEFAULT '{}',
  state           @schema@.job_state NOT NULL DEFAULT 'created'
                  CHECK (state <= 'active'),
  priority        integer NOT NULL DEFAULT 0,
  retry_limit     integer NOT NULL,
  retry_count     integer NOT NULL DEFAULT 0,
  retry_delay     double precision NOT NULL,
  retry_backoff   boolean NOT NULL,
  retry_delay_max double precision,
  expire_in       double precision NOT NULL,
  retention       double precision NOT NULL,
  start_after     timestamptz NOT NULL DEFAULT now(),
  created_at      timestamptz NOT NULL DEFAULT now(),
  started_at      timestamptz,
  singleton_key   text,
  dead_letter     text,
  run_id          text,
  owner           uuid,   -- the process running it (process.id)
  error           jsonb   -- the last failure, while it waits for a retry
);
ALTER SEQUENCE @schema@.job_id_seq OWNED BY @schema@.job.id;

-- The fetch path: runnable jobs of a queue in priority order (higher
-- first), then FIFO. start_after is a trailing key so delayed jobs are
-- skipped inside the index, without visiting the heap.
CREATE INDEX job_fetch_idx ON @schema@.job (queue, priority DESC, id, start_after)
  WHERE state < 'active';
-- When a queue runs dry, its workers ask when the next delayed job is due
-- (next_due); without this a queue of a million jobs is scanned whole.
CREATE INDEX job_due_idx ON @schema@.job (queue, start_after)
  WHERE state < 'active';
-- Expiry and crash recovery look only at running jobs.
CREATE INDEX job_active_idx ON @schema@.job (owner) WHERE state = 'active';
-- At most one waiting-or-running job per singleton key and queue (the
-- table only holds waiting and running jobs).
CREATE UNIQUE INDEX job_singleton_idx ON @schema@.job (queue, singleton_key)
  WHERE singleton_key IS NOT NULL;

CREATE TABLE @schema@.job_archive (
  LIKE @schema@.job,
  output       jsonb,
  completed_at timestamptz NOT NULL DEFAULT now(),
  keep_until   timestamptz NOT NULL
);
ALTER TABLE @schema@.job_archive ADD PRIMARY KEY (id);
ALTER TABLE @schema@.job_archive ADD CHECK (state > 'active');
CREATE INDEX job_archive_queue_idx ON @schema@.job_archive (queue, state, id);
CREATE INDEX job_archive_keep_idx ON @schema@.job_archive (keep_until);

-- Wakes idle workers of the named queues (comma-separated): one NOTIFY on
-- channel "<schema>_wake". "@schema@" is the quoted schema name, so its
-- quotes are dropped for the channel name. (plpgsql, so its plan is cached.)
CREATE FUNCTION @schema@.wake(queues text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(replace('@schema@', '"', '') || '_wake', left(queues, 7000));
END $$;

-- The settings a new job of queue q gets: its queue's row over the '' row
-- over the built-in defaults.
CREATE FUNCTION @schema@.queue_defaults(q text) RETURNS @schema@.queue
LANGUAGE plpgsql STABLE AS $$
DECLARE
  d @schema@.queue;
BEGIN
  -- plpgsql, so this plan is cached (a LANGUAGE sql function called from
  -- plpgsql would be planned again on every call).
  SELECT q, coalesce(own.paused, false),
         coalesce(own.retry_limit, base.retry_limit, 3),
         coalesce(own.retry_delay, base.retry_delay, 60),
         coalesce(own.retry_backoff, base.retry_backoff, true),
         coalesce(own.retry_delay_max, base.retry_delay_max),
         coalesce(own.expire_in, base.expire_in, 900),
         coalesce(own.retention, base.retention, 604800),
         coalesce(own.dead_letter, base.dead_letter),
         now()
    INTO d
    FROM (SELECT 1) one
    LEFT JOIN @schema@.queue own ON own.name = q
    LEFT JOIN @schema@.queue base ON base.name = '';
  RETURN d;
END $$;

-- Seconds before retry number `attempt` (1 = the first retry). Without
-- backoff: `delay`. With backoff: delay * 2^(attempt-1), capped at
-- delay_max (default one day), times a random factor in [0.8, 1.2).
CREATE FUNCTION @schema@.retry_delay(delay double precision, backoff boolean,
                                     delay_max double precision, attempt integer)
RETURNS double precision LANGUAGE sql VOLATILE AS $$
  SELECT CASE WHEN NOT backoff THEN delay
         ELSE least(coalesce(delay_max, 86400),
                    delay * power(2, least(greatest(attempt, 1) - 1, 40)))
              * (0.8 + 0.4 * random())
         END
$$;

-- Option readers for send(): each checks the JSON type and names the
-- option in its error.
CREATE FUNCTION @schema@.opt_num(k text, v jsonb, min double precision)
RETURNS double precision LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  n double precision;
BEGIN
  IF jsonb_typeof(v) <> 'number' THEN
    RAISE EXCEPTION 'option "%" must be a number, got %', k, jsonb_typeof(v)
      USING ERRCODE = '22023';
  END IF;
  n := v::text::double precision;
  IF min IS NOT NULL AND n < min THEN
    RAISE EXCEPTION 'option "%" must be >= %, got %', k, min, v
      USING ERRCODE = '22023';
  END IF;
  RETURN n;
END $$;

CREATE FUNCTION @schema@.opt_int(k text, v jsonb, min integer)
RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  n numeric;
BEGIN
  IF jsonb_typeof(v) <> 'number' OR v::text::numeric <> trunc(v::text::numeric) THEN
    RAISE EXCEPTION 'option "%" must be an integer, got %', k, v
      USING ERRCODE = '22023';
  END IF;
  n := v::text::numeric;
  IF n < -2147483648 OR n > 2147483647 OR (min IS NOT NULL AND n < min) THEN
    RAISE EXCEPTION 'option "%" is out of range: %', k, v USING ERRCODE = '22023';
  END IF;
  RETURN n::integer;
END $$;

CREATE FUNCTION @schema@.opt_text(k text, v jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF jsonb_typeof(v) <> 'string' OR v #>> '{}' = '' THEN
    RAISE EXCEPTION 'option "%" must be a non-empty string, got %', k, v
      USING ERRCODE = '22023';
  END IF;
  RETURN v #>> '{}';
END $$;

CREATE FUNCTION @schema@.opt_bool(k text, v jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF jsonb_typeof(v) <> 'boolean' THEN
    RAISE EXCEPTION 'option "%" must be a boolean, got %', k, v
      USING ERRCODE = '22023';
  END IF;
  RETURN v::text::boolean;
END $$;

-- Enqueues one job per element of the JSON array `data`, all with the same
-- options, in one statement. Returns the new ids in input order; with a
-- singleton_key only the jobs that were accepted get an id (the rest are
-- refused while a job with that key waits or runs). Options: queue,
-- priority, delay, start_after, retry_limit, retry_delay, retry_backoff,
-- retry_delay_max, expire_in, retention, singleton_key, dead_letter, run_id.
CREATE FUNCTION @schema@.send_many(name text, data jsonb, options jsonb DEFAULT '{}')
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
BEGIN
  IF name IS NULL OR name = '' THEN
    RAISE EXCEPTION 'job name must be a non-empty string' USING ERRCODE = '22023';
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
    INSERT INTO @schema@.job (queue, name, data, priority, retry_limit,
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
    RETURNING id
  )
  SELECT array_agg(id ORDER BY id) INTO ids FROM ins;
  IF ids IS NOT NULL AND current_setting('moonq.no_wake', true) IS DISTINCT FROM 'on' THEN
    PERFORM @schema@.wake(q);
  END IF;
  RETURN coalesce(ids, '{}');
END $$;

-- Enqueues one job; returns its id, or NULL when its singleton_key is
-- taken by a job that waits or runs.
CREATE FUNCTION @schema@.send(name text, data jsonb DEFAULT '{}', options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  RETURN (@schema@.send_many(name, jsonb_build_array(coalesce(data, '{}'::jsonb)),
                             options))[1];
END $$;

-- Moves finished rows of `job` into the archive. `ids` are locked by the
-- caller's statement.
CREATE FUNCTION @schema@.archive(ids bigint[], new_state @schema@.job_state,
                                 outputs jsonb[], errors jsonb[])
RETURNS SETOF @schema@.job_archive LANGUAGE sql AS $$
  WITH gone AS (
    DELETE FROM @schema@.job j
     USING unnest(ids, outputs, errors) AS u(id, output, error)
     WHERE j.id = u.id
    RETURNING j.*, u.output AS new_output, u.error AS new_error
  )
  INSERT INTO @schema@.job_archive
    (id, queue, name, data, state, priority, retry_limit, retry_count,
     retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
     start_after, created_at, started_at, singleton_key, dead_letter, run_id,
     owner, error, output, completed_at, keep_until)
  SELECT id, queue, name, data, new_state, priority, retry_limit, retry_count,
         retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
         start_after, created_at, started_at, singleton_key, dead_letter,
         run_id, owner, coalesce(new_error, error), new_output, now(),
         now() + make_interval(secs => retention)
    FROM gone
  RETURNING *
$$;

-- Fails active jobs: each goes back to `retry` (start_after per its retry
-- policy) while retries are left, otherwise to `failed` in the archive, and
-- a copy goes to its dead-letter queue when it has one. `owner_id` NULL
-- fails whoever runs them (expiry, recovery); `immediate` retries at once
-- (the job is not to blame, e.g. its process died). Returns what became of
-- each.
CREATE FUNCTION @schema@.fail_jobs(ids bigint[], errors jsonb[], owner_id uuid DEFAULT NULL,
                                   immediate boolean DEFAULT false)
RETURNS TABLE (id bigint, state @schema@.job_state, start_after timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  again_ids bigint[]; again_errors jsonb[]; again_at timestamptz[];
  final_ids bigint[]; final_errors jsonb[];
  wake text;
BEGIN
  SELECT array_agg(j.id) FILTER (WHERE j.retry_count < j.retry_limit),
         array_agg(u.error) FILTER (WHERE j.retry_count < j.retry_limit),
         array_agg(now() + make_interval(secs => CASE WHEN immediate THEN 0
                     ELSE @schema@.retry_delay(j.retry_delay, j.retry_backoff,
                                               j.retry_delay_max, j.retry_count + 1) END))
           FILTER (WHERE j.retry_count < j.retry_limit),
         array_agg(j.id) FILTER (WHERE j.retry_count >= j.retry_limit),
         array_agg(u.error) FILTER (WHERE j.retry_count >= j.retry_limit)
    INTO again_ids, again_errors, again_at, final_ids, final_errors
    FROM (SELECT jj.id, jj.retry_count, jj.retry_limit, jj.retry_delay,
                 jj.retry_backoff, jj.retry_delay_max
            FROM @schema@.job jj
           WHERE jj.id = ANY(ids) AND jj.state = 'active'
             AND (owner_id IS NULL OR jj.owner = owner_id)
           ORDER BY jj.id
             FOR UPDATE) j
    JOIN unnest(ids, errors) AS u(id, error) ON u.id = j.id;

  IF again_ids IS NOT NULL THEN
    UPDATE @schema@.job j
       SET state = 'retry', retry_count = j.retry_count + 1,
           start_after = u.at, error = u.error, owner = NULL
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

-- Both tables as one row type (the hot table's rows have no output yet).
CREATE VIEW @schema@.all_jobs AS
  SELECT j.*, NULL::jsonb AS output, NULL::timestamptz AS completed_at,
         NULL::timestamptz AS keep_until
    FROM @schema@.job j
  UNION ALL
  SELECT * FROM @schema@.job_archive;

-- A job as users see it: generic state, attempt, output and error.
CREATE FUNCTION @schema@.job_json(j @schema@.all_jobs, paused boolean)
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
    'attempt', j.retry_count + 1, 'retry_count', j.retry_count,
    'retry_limit', j.retry_limit, 'retry_delay', j.retry_delay,
    'retry_backoff', j.retry_backoff, 'retry_delay_max', j.retry_delay_max,
    'expire_in', j.expire_in, 'retention', j.retention,
    'start_after', j.start_after, 'created_at', j.created_at,
    'started_at', j.started_at, 'completed_at', j.completed_at,
    'keep_until', j.keep_until,
    'singleton_key', j.singleton_key, 'dead_letter', j.dead_letter,
    'run_id', j.run_id, 'owner', j.owner, 'output', j.output,
    'error', j.error))
$$;

CREATE FUNCTION @schema@.get_job(job_id bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT @schema@.job_json(a, coalesce((SELECT q.paused FROM @schema@.queue q
                                      WHERE q.name = a.queue), false))
    FROM @schema@.all_jobs a WHERE a.id = job_id
$$;

-- Jobs of a queue, newest first (or oldest first with newest_first false),
-- optionally only those in one generic state, after the id `after_id`
-- (keyset pagination: pass the last id of the previous page).
CREATE FUNCTION @schema@.list_jobs(q text, generic_state text, lim integer,
                                   after_id bigint, newest_first boolean)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
  paused boolean := coalesce((SELECT x.paused FROM @schema@.queue x WHERE x.name = q), false);
  result jsonb;
BEGIN
  IF generic_state IS NOT NULL AND generic_state NOT IN
     ('waiting', 'delayed', 'paused', 'active', 'completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'unknown state "%" (expected waiting, delayed, paused, active, completed, failed or cancelled)',
      generic_state USING ERRCODE = '22023';
  END IF;
  SELECT coalesce(jsonb_agg(@schema@.job_json(s.j, paused)
                            ORDER BY CASE WHEN newest_first THEN -(s.j).id ELSE (s.j).id END), '[]')
    INTO result
    FROM (SELECT a AS j
            FROM @schema@.all_jobs a
           WHERE a.queue = q
             AND (after_id IS NULL OR
                  CASE WHEN newest_first THEN a.id < after_id ELSE a.id > after_id END)
             AND CASE generic_state
                   WHEN 'waiting' THEN a.state < 'active' AND a.start_after <= now() AND NOT paused
                   WHEN 'paused' THEN a.state < 'active' AND a.start_after <= now() AND paused
                   WHEN 'delayed' THEN a.state < 'active' AND a.start_after > now()
                   ELSE generic_state IS NULL OR a.state::text = generic_state
                 END
           ORDER BY CASE WHEN newest_first THEN -a.id ELSE a.id END
           LIMIT greatest(coalesce(lim, 100), 0)) s;
  RETURN result;
END $$;

CREATE FUNCTION @schema@.counts(q text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  WITH p AS (
    SELECT coalesce((SELECT x.paused FROM @schema@.queue x WHERE x.name = q), false) AS paused
  ), hot AS (
    SELECT count(*) FILTER (WHERE j.state < 'active' AND j.start_after <= now()) AS ready,
           count(*) FILTER (WHERE j.state < 'active' AND j.start_after > now()) AS delayed,
           count(*) FILTER (WHERE j.state = 'active') AS active
      FROM @schema@.job j WHERE j.queue = q
  ), done AS (
    SELECT count(*) FILTER (WHERE a.state = 'completed') AS completed,
           count(*) FILTER (WHERE a.state = 'failed') AS failed,
           count(*) FILTER (WHERE a.state = 'cancelled') AS cancelled
      FROM @schema@.job_archive a WHERE a.queue = q
  )
  SELECT jsonb_build_object(
    'waiting', CASE WHEN p.paused THEN 0 ELSE hot.ready END,
    'paused', CASE WHEN p.paused THEN hot.ready ELSE 0 END,
    'delayed', hot.delayed, 'active', hot.active,
    'completed', done.completed, 'failed', done.failed,
    'cancelled', done.cancelled)
  FROM p, hot, done
$$;

-- Pause and resume hold for every process on every host: fetch reads the
-- flag. Resuming wakes idle workers at once.
CREATE FUNCTION @schema@.pause(q text) RETURNS void LANGUAGE sql AS $$
  INSERT INTO @schema@.queue (name, paused) VALUES (q, true)
  ON CONFLICT (name) DO UPDATE SET paused = true, updated_at = now()
$$;

CREATE FUNCTION @schema@.resume(q text) RETURNS void LANGUAGE sql AS $$
  UPDATE @schema@.queue SET paused = false, updated_at = now() WHERE name = q;
  SELECT @schema@.wake(q);
$$;

-- Cancels a job that waits or runs (a running handler is not interrupted,
-- its result is discarded). Returns false when there was no such job.
CREATE FUNCTION @schema@.cancel(job_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM @schema@.job WHERE id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM @schema@.archive(ARRAY[job_id], 'cancelled', ARRAY[NULL::jsonb],
                           ARRAY[NULL::jsonb]);
  RETURN true;
END $$;

-- Puts a failed or cancelled job back to waiting, with a fresh retry
-- budget. Returns false when there was no such job.
CREATE FUNCTION @schema@.retry(job_id bigint) RETURNS boolean
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
                            retry_count, retry_delay, retry_backoff,
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

-- Deletes a queue's jobs in one generic state (or all when NULL). Running
-- jobs are not purged: cancel them. Returns how many went.
CREATE FUNCTION @schema@.purge(q text, generic_state text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  paused boolean := coalesce((SELECT x.paused FROM @schema@.queue x WHERE x.name = q), false);
  n bigint := 0;
  m bigint;
BEGIN
  IF generic_state IS NOT NULL AND generic_state NOT IN
     ('waiting', 'delayed', 'paused', 'completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'cannot purge state "%" (expected waiting, delayed, paused, completed, failed or cancelled)',
      generic_state USING ERRCODE = '22023';
  END IF;
  IF generic_state IS NULL OR generic_state IN ('waiting', 'paused', 'delayed') THEN
    DELETE FROM @schema@.job j
     WHERE j.queue = q AND j.state < 'active'
       AND CASE generic_state
             WHEN 'delayed' THEN j.start_after > now()
             WHEN 'waiting' THEN j.start_after <= now() AND NOT paused
             WHEN 'paused' THEN j.start_after <= now() AND paused
             ELSE true
           END;
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
  END IF;
  IF generic_state IS NULL OR generic_state IN ('completed', 'failed', 'cancelled') THEN
    DELETE FROM @schema@.job_archive a
     WHERE a.queue = q AND (generic_state IS NULL OR a.state::text = generic_state);
    GET DIAGNOSTICS m = ROW_COUNT;
    n := n + m;
  END IF;
  RETURN n;
END $$;

-- One maintenance pass; returns NULL when another process is running one.
-- Active jobs of processes whose heartbeat is older than `stale_after`
-- seconds, and active jobs past their expire_in, are failed (so they retry
-- per their policy); dead processes are unregistered; archived jobs past
-- their retention are deleted, at most `batch` of them.
CREATE FUNCTION @schema@.maintain(stale_after double precision, batch integer DEFAULT 10000)
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
   WHERE j.state = 'active' AND j.owner IS NOT NULL
     AND j.started_at < now() - make_interval(secs => stale_after)
     AND NOT EXISTS (SELECT 1 FROM @schema@.process p
                      WHERE p.id = j.owner
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

-- Claims up to `n` runnable jobs of queue q for process `owner_id`: higher
-- priority first, then oldest first; none while the queue is paused.
CREATE FUNCTION @schema@.fetch_jobs(q text, n integer, owner_id uuid)
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
       SET state = 'active', started_at = now(), owner = owner_id
     WHERE j.id = ANY(ARRAY(
             SELECT jj.id FROM @schema@.job jj
              WHERE jj.queue = q AND jj.state < 'active' AND jj.start_after <= now()
              ORDER BY jj.priority DESC, jj.id
              LIMIT n
                FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.name, j.data, j.retry_count + 1, j.priority,
              j.retry_limit, j.expire_in, j.run_id, j.created_at
  )
  SELECT * FROM claimed c ORDER BY c.priority DESC, c.id;
END $$;

-- Completes active jobs of process `owner_id`: `outputs` is a JSON array
-- parallel to `ids` (JSON null: no output). Returns the ids completed; a job
-- no longer active (cancelled, expired, recovered) is left alone.
CREATE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, owner_id uuid)
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
       AND j.owner IS NOT DISTINCT FROM owner_id
    RETURNING j.*, u.output AS new_output
  )
  INSERT INTO @schema@.job_archive
    (id, queue, name, data, state, priority, retry_limit, retry_count,
     retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
     start_after, created_at, started_at, singleton_key, dead_letter, run_id,
     owner, error, output, completed_at, keep_until)
  SELECT g.id, g.queue, g.name, g.data, 'completed', g.priority, g.retry_limit,
         g.retry_count, g.retry_delay, g.retry_backoff, g.retry_delay_max,
         g.expire_in, g.retention, g.start_after, g.created_at, g.started_at,
         g.singleton_key, g.dead_letter, g.run_id, g.owner, g.error,
         g.new_output, now(), now() + make_interval(secs => g.retention)
    FROM gone g
  RETURNING job_archive.id;
END $$;

-- Registers process `process_id` or moves its heartbeat forward.
CREATE FUNCTION @schema@.heartbeat(process_id uuid, host_name text, os_pid integer,
                                   moonq_version text)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO @schema@.process (id, host, pid, version)
  VALUES (process_id, host_name, os_pid, moonq_version)
  ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
$$;

-- Stores a queue's defaults (q = '' for every queue) from config.lua;
-- `settings` holds retry_limit, retry_delay, retry_backoff, retry_delay_max,
-- expire_in, retention, dead_letter. The paused flag is left as it is.
CREATE FUNCTION @schema@.configure_queue(q text, settings jsonb)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO @schema@.queue AS x (name, retry_limit, retry_delay, retry_backoff,
                                   retry_delay_max, expire_in, retention, dead_letter)
  VALUES (q, (settings->>'retry_limit')::integer,
          (settings->>'retry_delay')::double precision,
          (settings->>'retry_backoff')::boolean,
          (settings->>'retry_delay_max')::double precision,
          (settings->>'expire_in')::double precision,
          (settings->>'retention')::double precision,
          settings->>'dead_letter')
  ON CONFLICT (name) DO UPDATE
    SET retry_limit = excluded.retry_limit, retry_delay = excluded.retry_delay,
        retry_backoff = excluded.retry_backoff,
        retry_delay_max = excluded.retry_delay_max,
        expire_in = excluded.expire_in, retention = excluded.retention,
        dead_letter = excluded.dead_letter, updated_at = now()
$$;

-- Seconds until the next delayed job of queue q is due (0 if one is due
-- already), or NULL when it has none.
CREATE FUNCTION @schema@.next_due(q text) RETURNS double precision
LANGUAGE plpgsql STABLE AS $$
DECLARE
  due timestamptz;
BEGIN
  SELECT min(j.start_after) INTO due
    FROM @schema@.job j
   WHERE j.queue = q AND j.state < 'active' AND j.start_after > now();
  IF due IS NULL THEN
    RETURN NULL;
  END IF;
  RETURN greatest(extract(epoch FROM due - now()), 0)::double precision;
END $$;

-- Gives active jobs of process `owner_id` back (a graceful stop): they wait
-- again at once and this attempt does not count. Returns how many.
CREATE FUNCTION @schema@.release_jobs(ids bigint[], owner_id uuid) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  wake text;
BEGIN
  WITH r AS (
    UPDATE @schema@.job j
       SET state = CASE WHEN j.retry_count > 0 THEN 'retry'::@schema@.job_state
                        ELSE 'created'::@schema@.job_state END,
           start_after = now(), owner = NULL, started_at = NULL
     WHERE j.id = ANY(ids) AND j.state = 'active' AND j.owner = owner_id
    RETURNING j.queue
  )
  SELECT count(*), string_agg(DISTINCT r.queue, ',') INTO n, wake FROM r;
  IF wake IS NOT NULL THEN
    PERFORM @schema@.wake(wake);
  END IF;
  RETURN n;
END $$;
