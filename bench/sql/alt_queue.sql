-- alt_queue.sql: a variant of sql/002_queue.sql's hot functions, applied
-- by bench_queue --patch over a freshly migrated bench schema, to measure
-- proposed changes without touching sql/. Same signatures, same results.

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
  -- (alt) queue_defaults() inlined: a LANGUAGE sql function called from
  -- plpgsql is parsed and planned again on every call; this SELECT's plan
  -- is cached with the function.
  q := coalesce(q, name);
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
  RETURN coalesce(ids, '{}');
END $$;

-- (alt) send as plpgsql: a LANGUAGE sql function that cannot be inlined is
-- parsed and planned on every call; plpgsql caches its plan per session.
CREATE OR REPLACE FUNCTION @schema@.send(name text, data jsonb DEFAULT '{}', options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  RETURN (@schema@.send_many(name, jsonb_build_array(coalesce(data, '{}'::jsonb)),
                             options))[1];
END $$;

-- (alt) fetch: the UPDATE finds the claimed rows through the primary key
-- (id = ANY(ARRAY(...))) instead of a hash join over a sequential scan of
-- the whole job table.
CREATE OR REPLACE FUNCTION @schema@.fetch_jobs(q text, n integer, owner_id uuid)
RETURNS TABLE (id bigint, name text, data jsonb, attempt integer,
               priority integer, retry_limit integer, expire_in double precision,
               run_id text, created_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM @schema@.queue x WHERE x.name = q AND x.paused) THEN
    RETURN;
  END IF;
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
