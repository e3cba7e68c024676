-- 024_send_one_statement: a single send is one statement (the INSERT).
--
-- send used to go through send_many, which ran a statement for each step:
-- the flow-entry lookup, the data check, the options loop, the queue
-- defaults, the insert, the wake-up. Each paid PostgreSQL's executor
-- start-up, and together they cost more than the insert itself. Now:
--  - name, options shape and data are checked by one expression
--    (send_problem), not by statements;
--  - options are read only when there are some (read_send_options), by
--    expressions, without a loop over jsonb_each;
--  - the queue's defaults (job_defaults, a LANGUAGE sql set-returning
--    function, so that the planner inlines it into the calling statement)
--    and the flow-entry lookup are parts of the insert;
--  - whether job events are on is read by the insert too (as 009's
--    send_many did), and the events and a flow's run are written only when
--    they are due;
--  - ON CONFLICT names its arbiter, the singleton index: without one every
--    unique index was probed for each row, the primary key included,
--    which a job from the sequence cannot collide with.
-- send_many reads its options and defaults the same way. (An application's
-- send still wakes its queue with a statement of its own after the insert;
-- moonq's connections set moonq.no_wake and skip it.)
--
-- Unknown option names are now reported before bad values (the options
-- loop reported whichever came first in jsonb's key order); bad values
-- are still checked in that order. A singleton_key refusal of a flow's
-- entry job no longer leaves a run started without its job.

-- Options of send and send_many as read by read_send_options: NULL where not
-- given (or given as JSON null). start_after also holds the time of
-- `delay`.
CREATE TYPE @schema@.send_options AS (
  queue           text,
  priority        integer,
  start_after     timestamptz,
  retry_limit     integer,
  retry_delay     double precision,
  retry_backoff   boolean,
  retry_delay_max double precision,
  expire_in       double precision,
  retention       double precision,
  singleton_key   text,
  dead_letter     text,
  run_id          text
);

-- Reads and checks the options of a send (a JSON object): 22023 naming the
-- first bad option, unknown names first, then values in jsonb's key order
-- (shorter names first). Keys whose value is JSON null are left out.
CREATE FUNCTION @schema@.read_send_options(o jsonb) RETURNS @schema@.send_options
LANGUAGE plpgsql STABLE AS $$
DECLARE
  r       @schema@.send_options;
  unknown jsonb := jsonb_strip_nulls(o - '{queue, priority, delay, start_after,
                     retry_limit, retry_delay, retry_backoff, retry_delay_max,
                     expire_in, retention, singleton_key, dead_letter, run_id}'::text[]);
BEGIN
  IF unknown <> '{}' THEN
    RAISE EXCEPTION 'unknown option "%"', (SELECT k FROM jsonb_object_keys(unknown) k LIMIT 1)
      USING ERRCODE = '22023',
      HINT = 'known options: queue, priority, delay, start_after, retry_limit, '
             'retry_delay, retry_backoff, retry_delay_max, expire_in, '
             'retention, singleton_key, dead_letter, run_id';
  END IF;
  -- (o->'x' <> 'null' is NULL, so false, when x is not given)
  IF o->'delay' <> 'null' THEN
    r.start_after := now() + make_interval(secs => @schema@.opt_num('delay', o->'delay', 0));
  END IF;
  IF o->'queue' <> 'null' THEN
    r.queue := @schema@.opt_text('queue', o->'queue');
  END IF;
  IF o->'run_id' <> 'null' THEN
    r.run_id := @schema@.opt_text('run_id', o->'run_id');
  END IF;
  IF o->'priority' <> 'null' THEN
    r.priority := @schema@.opt_int('priority', o->'priority', NULL);
  END IF;
  IF o->'expire_in' <> 'null' THEN
    r.expire_in := @schema@.opt_num('expire_in', o->'expire_in', 0);
    IF r.expire_in = 0 THEN
      RAISE EXCEPTION 'option "expire_in" must be > 0' USING ERRCODE = '22023';
    END IF;
  END IF;
  IF o->'retention' <> 'null' THEN
    r.retention := @schema@.opt_num('retention', o->'retention', 0);
  END IF;
  IF o->'dead_letter' <> 'null' THEN
    r.dead_letter := @schema@.opt_text('dead_letter', o->'dead_letter');
  END IF;
  IF o->'retry_delay' <> 'null' THEN
    r.retry_delay := @schema@.opt_num('retry_delay', o->'retry_delay', 0);
  END IF;
  IF o->'retry_limit' <> 'null' THEN
    r.retry_limit := @schema@.opt_int('retry_limit', o->'retry_limit', 0);
  END IF;
  IF o->'start_after' <> 'null' THEN
    IF r.start_after IS NOT NULL THEN
      RAISE EXCEPTION 'give either "delay" or "start_after", not both' USING ERRCODE = '22023';
    END IF;
    BEGIN
      r.start_after := @schema@.opt_text('start_after', o->'start_after')::timestamptz;
    EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
      RAISE EXCEPTION 'option "start_after" must be a timestamp, got %', o->'start_after'
        USING ERRCODE = '22023';
    END;
    IF NOT isfinite(r.start_after) THEN -- "infinity": a job that never runs
      RAISE EXCEPTION 'option "start_after" must be a finite timestamp, got %', o->'start_after'
        USING ERRCODE = '22023';
    END IF;
  END IF;
  IF o->'retry_backoff' <> 'null' THEN
    r.retry_backoff := @schema@.opt_bool('retry_backoff', o->'retry_backoff');
  END IF;
  IF o->'singleton_key' <> 'null' THEN
    r.singleton_key := @schema@.opt_text('singleton_key', o->'singleton_key');
  END IF;
  IF o->'retry_delay_max' <> 'null' THEN
    r.retry_delay_max := @schema@.opt_num('retry_delay_max', o->'retry_delay_max', 0);
  END IF;
  RETURN r;
END $$;

-- What is wrong with a send's job name, options (a JSON object) and data,
-- or NULL. `level` is unreadable()'s: 0 for send's data, 1 for the array
-- of send_many. LANGUAGE sql, so that it is inlined into the caller's
-- expression: checking costs no statement.
CREATE FUNCTION @schema@.send_problem(name text, options jsonb, data jsonb, level integer)
RETURNS text LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN name IS NULL OR name = '' THEN 'job name must be a non-empty string'
    WHEN octet_length(name) > 255
      THEN 'job name is ' || octet_length(name)::text || ' bytes, the limit is 255'
    WHEN jsonb_typeof(options) <> 'object'
      THEN 'options must be a JSON object, got ' || jsonb_typeof(options)
    WHEN level = 1 AND (data IS NULL OR jsonb_typeof(data) <> 'array')
      THEN 'send_many needs a JSON array of job data'
    ELSE 'job data ' || @schema@.unreadable(data, level)
  END
$$;

-- The settings a new job of queue q gets (queue_defaults, 002), as a set
-- of one row: a LANGUAGE sql set-returning function is inlined into the
-- statement that reads it, so its joins cost no statement of their own.
CREATE FUNCTION @schema@.job_defaults(q text) RETURNS SETOF @schema@.queue
LANGUAGE sql STABLE AS $$
  SELECT q, coalesce(own.paused, false),
         coalesce(own.retry_limit, base.retry_limit, 3),
         coalesce(own.retry_delay, base.retry_delay, 60),
         coalesce(own.retry_backoff, base.retry_backoff, true),
         coalesce(own.retry_delay_max, base.retry_delay_max),
         coalesce(own.expire_in, base.expire_in, 900),
         coalesce(own.retention, base.retention, 604800),
         coalesce(own.dead_letter, base.dead_letter),
         now()
    FROM (SELECT 1) one
    LEFT JOIN @schema@.queue own ON own.name = q
    LEFT JOIN @schema@.queue base ON base.name = ''
$$;

-- queue_defaults (002), from job_defaults: the defaults are written once.
CREATE OR REPLACE FUNCTION @schema@.queue_defaults(q text) RETURNS @schema@.queue
LANGUAGE plpgsql STABLE AS $$
DECLARE
  d @schema@.queue;
BEGIN
  SELECT * INTO d FROM @schema@.job_defaults(q);
  RETURN d;
END $$;

-- send_many (014), with read_send_options, send_problem and job_defaults.
CREATE OR REPLACE FUNCTION @schema@.send_many(name text, data jsonb, options jsonb DEFAULT '{}')
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  o         jsonb := coalesce(options, '{}');
  problem   text := @schema@.send_problem(name, o, data, 1);
  opts      @schema@.send_options;
  q         text;
  ids       bigint[];
  events_on boolean;
BEGIN
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%', problem USING ERRCODE = '22023';
  END IF;
  IF o <> '{}' THEN
    opts := @schema@.read_send_options(o);
  END IF;
  q := coalesce(opts.queue, name);
  WITH ins AS (
    INSERT INTO @schema@.job AS j (queue, name, data, priority, retry_limit,
                                   retry_delay, retry_backoff, retry_delay_max,
                                   expire_in, retention, start_after,
                                   singleton_key, dead_letter, run_id)
    SELECT d.name, send_many.name, e.value, coalesce(opts.priority, 0),
           coalesce(opts.retry_limit, d.retry_limit),
           coalesce(opts.retry_delay, d.retry_delay),
           coalesce(opts.retry_backoff, d.retry_backoff),
           coalesce(opts.retry_delay_max, d.retry_delay_max),
           coalesce(opts.expire_in, d.expire_in),
           coalesce(opts.retention, d.retention),
           coalesce(opts.start_after, now()), opts.singleton_key,
           coalesce(opts.dead_letter, d.dead_letter), opts.run_id
      FROM @schema@.job_defaults(q) d,
           jsonb_array_elements(data) WITH ORDINALITY AS e
     ORDER BY e.ordinality
    ON CONFLICT (queue, singleton_key) WHERE singleton_key IS NOT NULL DO NOTHING
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

-- send (012): one INSERT, which also reads the queue's defaults, whether
-- the job is a flow's entry step (then, sent without a run_id, it starts a
-- run as start_flow does) and whether job events are on. Returns the job's
-- id, or NULL when its singleton_key is taken by a job that waits or runs.
CREATE OR REPLACE FUNCTION @schema@.send(name text, data jsonb DEFAULT '{}',
                                         options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  o         jsonb := coalesce(options, '{}');
  d         jsonb := coalesce(data, '{}');
  problem   text := @schema@.send_problem(name, o, d, 0);
  opts      @schema@.send_options;
  q         text;
  new_id    bigint;
  rid       text;
  start     timestamptz;
  events_on boolean;
  flow      text;
BEGIN
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%', problem USING ERRCODE = '22023';
  END IF;
  IF o <> '{}' THEN
    opts := @schema@.read_send_options(o);
  END IF;
  q := coalesce(opts.queue, name);
  INSERT INTO @schema@.job AS j (queue, name, data, priority, retry_limit,
                                 retry_delay, retry_backoff, retry_delay_max,
                                 expire_in, retention, start_after,
                                 singleton_key, dead_letter, run_id)
  SELECT q, send.name, d, coalesce(opts.priority, 0),
         coalesce(opts.retry_limit, dq.retry_limit),
         coalesce(opts.retry_delay, dq.retry_delay),
         coalesce(opts.retry_backoff, dq.retry_backoff),
         coalesce(opts.retry_delay_max, dq.retry_delay_max),
         coalesce(opts.expire_in, dq.expire_in),
         coalesce(opts.retention, dq.retention),
         coalesce(opts.start_after, now()), opts.singleton_key,
         coalesce(opts.dead_letter, dq.dead_letter),
         coalesce(opts.run_id, (SELECT gen_random_uuid()::text
                                  FROM @schema@.queue_flow_steps f
                                 WHERE f.job_name = send.name AND f.entry))
    FROM @schema@.job_defaults(q) dq
  ON CONFLICT (queue, singleton_key) WHERE singleton_key IS NOT NULL DO NOTHING
  RETURNING j.id, j.run_id, j.start_after, (SELECT s.job_events FROM @schema@.settings s)
    INTO new_id, rid, start, events_on;
  IF new_id IS NULL THEN
    RETURN NULL;
  END IF;
  IF rid IS NOT NULL AND opts.run_id IS NULL THEN
    -- a flow's entry job sent without a run: the run starts here
    SELECT f.flow_name INTO flow FROM @schema@.queue_flow_steps f
     WHERE f.job_name = name AND f.entry;
    INSERT INTO @schema@.queue_flow_index (flow_name, run_id, data) VALUES (flow, rid, d);
    PERFORM @schema@.flow_event(flow, rid, NULL, NULL, NULL, 'flow.started', data);
  END IF;
  IF events_on THEN
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    VALUES (@schema@.job_stream(name, new_id), 'job.created',
            jsonb_build_object('queue', q, 'attempt', 0, 'start_after', start), rid, 0);
    PERFORM @schema@.events_wake();
  END IF;
  IF current_setting('moonq.no_wake', true) IS DISTINCT FROM 'on' THEN
    PERFORM @schema@.wake(q);
  END IF;
  RETURN new_id;
END $$;
