-- 011_schedules: cron schedules that fire exactly once per slot.
--
-- A schedule names a cron expression read in a time zone; each fire time
-- (a "slot") enqueues one job. Every moonq process that runs handlers
-- keeps the enabled schedules in memory, computes their slots with
-- src/cron.c and, when a slot comes, calls fire_schedules() for it. Several
-- processes (on several hosts) call it for the same slot; the primary key
-- of schedule_fire (schedule_id, slot) lets exactly one of them insert the
-- slot's row, and the job is inserted by the same statement, so a slot
-- fires once across the cluster without electing a leader. A slot older
-- than the schedule's last fired one is never fired late (last_slot), so
-- old rows of schedule_fire can be deleted (delete_old_fires) without a
-- slot ever firing twice.
--
-- Schedules come from config.lua (source 'config', stored at start by
-- sync_config_schedules) and from the API: schedule(), unschedule() here,
-- moonq.schedule() in Lua, `moonq schedule` on the command line. Every
-- change notifies channel "<schema>_schedules" (payload ''), so running
-- processes read the schedules again without a restart. SQL cannot parse a
-- cron expression the way src/cron.c does: schedule() checks its shape
-- only, and the first moonq process that loads a schedule whose
-- expression or zone it refuses disables it and records why in `error`.
--
-- Each fire's job is named after the schedule's `job` (default: its name)
-- and carries the schedule's data and send options; its run_id is
-- "schedule:<name>:<slot>", the slot as UTC ISO 8601
-- ("schedule:nightly:2026-03-29T01:00:00Z").

CREATE SEQUENCE @schema@.schedule_version_seq;

CREATE TABLE @schema@.schedule (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name       text NOT NULL UNIQUE CHECK (name <> '' AND octet_length(name) <= 200),
  cron       text NOT NULL CHECK (cron <> '' AND octet_length(cron) <= 256),
  tz         text NOT NULL DEFAULT 'UTC' CHECK (tz <> '' AND octet_length(tz) <= 128),
  job        text NOT NULL CHECK (job <> '' AND octet_length(job) <= 255),
  data       jsonb NOT NULL DEFAULT '{}',
  options    jsonb NOT NULL DEFAULT '{}',  -- send options of the jobs (checked)
  -- Missed slots made up for after downtime: those of the last
  -- backfill_seconds, or the backfill_slots most recent; neither: none.
  backfill_seconds integer CHECK (backfill_seconds BETWEEN 1 AND 31622400),
  backfill_slots   integer CHECK (backfill_slots BETWEEN 1 AND 1000),
  enabled    boolean NOT NULL DEFAULT true,
  source     text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'config')),
  error      text,         -- why a process disabled it
  last_slot  timestamptz,  -- the last slot fired
  next_slot  timestamptz,  -- the next slot, as the processes computed it
  -- Bumped by every change that the firing processes read (cron, tz,
  -- backfill, enabled): they compare it with what they hold.
  version    bigint NOT NULL DEFAULT nextval('@schema@.schedule_version_seq'),
  -- When cron, tz or enabled last changed: slots before it are not missed
  -- slots (the schedule did not exist, or said something else).
  changed_at timestamptz NOT NULL DEFAULT now(),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK (backfill_seconds IS NULL OR backfill_slots IS NULL)
) WITH (fillfactor = 50); -- room on each page: every fire updates its row (HOT)
ALTER SEQUENCE @schema@.schedule_version_seq OWNED BY @schema@.schedule.version;

-- One row per slot fired. job_id is the id the slot's job got (NULL when
-- its singleton_key refused it). No foreign key: its check would cost each
-- fire a lookup and a lock of the schedule's row, which fire_schedules
-- holds already; deleting a schedule deletes its rows (schedule ids are
-- never reused).
CREATE TABLE @schema@.schedule_fire (
  schedule_id bigint NOT NULL,
  slot        timestamptz NOT NULL,
  job_id      bigint,
  fired_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schedule_id, slot)
);
-- delete_old_fires walks the oldest rows.
CREATE INDEX schedule_fire_fired_at_idx ON @schema@.schedule_fire (fired_at);

-- Tells running processes that schedules changed (one notification per
-- transaction: identical ones collapse).
CREATE FUNCTION @schema@.schedules_changed() RETURNS void
LANGUAGE sql AS $$
  SELECT pg_notify(replace('@schema@', '"', '') || '_schedules', '')
$$;

-- A backfill as text: "90s", "30m", "1h", "1d12h" (units d h m s, each
-- once, in that order, 1s to 366d, as @every reads them), a number of
-- seconds ("3600"; "0" is off), or a count of slots ("5 slots", "1 slot",
-- 1 to 1000). NULL or '' is off. Returns (seconds, slots), at most one
-- set; raises 22023 on anything else.
CREATE FUNCTION @schema@.parse_backfill(backfill text, OUT seconds integer, OUT slots integer)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  m text[];
  total bigint;
BEGIN
  IF backfill IS NULL OR backfill = '' OR backfill = '0' THEN
    RETURN;
  END IF;
  m := regexp_match(backfill, '^\s*([0-9]{1,4})\s*slots?\s*$');
  IF m IS NOT NULL THEN
    slots := m[1]::integer;
    IF slots BETWEEN 1 AND 1000 THEN
      RETURN;
    END IF;
    RAISE EXCEPTION 'backfill: a count of slots must be 1 to 1000, got %', slots
      USING ERRCODE = '22023';
  END IF;
  m := regexp_match(backfill, '^([0-9]{1,9})$');
  IF m IS NULL THEN
    m := regexp_match(backfill, '^(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?$');
    IF m IS NULL OR backfill = '' THEN
      RAISE EXCEPTION 'backfill: expected a duration ("30m", "1h", "1d12h"), seconds or a count ("5 slots"), got "%"',
        backfill USING ERRCODE = '22023';
    END IF;
    total := coalesce(m[1]::bigint, 0) * 86400 + coalesce(m[2]::bigint, 0) * 3600
           + coalesce(m[3]::bigint, 0) * 60 + coalesce(m[4]::bigint, 0);
  ELSE
    total := m[1]::bigint;
  END IF;
  IF total < 1 OR total > 31622400 THEN
    RAISE EXCEPTION 'backfill: a duration must be 1s to 366d, got "%"', backfill
      USING ERRCODE = '22023';
  END IF;
  seconds := total;
END $$;

-- A backfill as parse_backfill reads it, from its columns: "1h30m",
-- "5 slots", or NULL (off).
CREATE FUNCTION @schema@.backfill_text(seconds integer, slots integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN slots IS NOT NULL THEN slots || CASE WHEN slots = 1 THEN ' slot' ELSE ' slots' END
    WHEN seconds IS NOT NULL THEN
      concat(nullif(seconds / 86400, 0) || 'd', nullif(seconds % 86400 / 3600, 0) || 'h',
             nullif(seconds % 3600 / 60, 0) || 'm', nullif(seconds % 60, 0) || 's')
  END
$$;

-- Checks the send options of a schedule's jobs the way send() reads them
-- (002), so that a fire never fails on them. run_id and start_after are
-- the schedule's to set. Raises 22023 naming the option.
CREATE FUNCTION @schema@.check_schedule_options(options jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  k text;
  v jsonb;
BEGIN
  IF jsonb_typeof(options) IS DISTINCT FROM 'object' THEN
    RAISE EXCEPTION 'options must be a JSON object, got %',
      coalesce(jsonb_typeof(options), 'NULL') USING ERRCODE = '22023';
  END IF;
  FOR k, v IN SELECT * FROM jsonb_each(options) LOOP
    CONTINUE WHEN jsonb_typeof(v) = 'null';
    CASE
    WHEN k IN ('queue', 'singleton_key', 'dead_letter') THEN
      PERFORM @schema@.opt_text(k, v);
    WHEN k = 'priority' THEN PERFORM @schema@.opt_int(k, v, NULL);
    WHEN k = 'retry_limit' THEN PERFORM @schema@.opt_int(k, v, 0);
    WHEN k IN ('delay', 'retry_delay', 'retry_delay_max', 'retention') THEN
      PERFORM @schema@.opt_num(k, v, 0);
    WHEN k = 'expire_in' THEN
      IF @schema@.opt_num(k, v, 0) = 0 THEN
        RAISE EXCEPTION 'option "expire_in" must be > 0' USING ERRCODE = '22023';
      END IF;
    WHEN k = 'retry_backoff' THEN PERFORM @schema@.opt_bool(k, v);
    WHEN k IN ('run_id', 'start_after') THEN
      RAISE EXCEPTION 'option "%" cannot be given to a schedule (each fire sets it)', k
        USING ERRCODE = '22023';
    ELSE
      RAISE EXCEPTION 'unknown option "%"', k USING ERRCODE = '22023',
        HINT = 'schedule options: tz, job, backfill and the send options queue, '
               'priority, delay, retry_limit, retry_delay, retry_backoff, '
               'retry_delay_max, expire_in, retention, singleton_key, dead_letter';
    END CASE;
  END LOOP;
END $$;

-- The shape of a cron expression: 5 or 6 fields of digits, names, `*`,
-- `,`, `-` and `/`, or a macro, or "@every <interval>". moonq processes
-- parse it fully (src/cron.c) when they load the schedule.
CREATE FUNCTION @schema@.check_cron(cron text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  words text[] := regexp_split_to_array(btrim(coalesce(cron, ''), E' \t'), E'[ \t]+');
BEGIN
  IF coalesce(cron, '') = '' OR octet_length(cron) > 256 THEN
    RAISE EXCEPTION 'a cron expression must be 1 to 256 bytes' USING ERRCODE = '22023';
  END IF;
  IF lower(words[1]) = '@every' AND cardinality(words) = 2 AND
     words[2] ~ '^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$' AND words[2] <> '' THEN
    RETURN;
  END IF;
  IF cardinality(words) = 1 AND lower(words[1]) IN
     ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') THEN
    RETURN;
  END IF;
  IF cardinality(words) IN (5, 6) AND
     NOT EXISTS (SELECT 1 FROM unnest(words) w WHERE w !~ '^[0-9A-Za-z*,/-]+$') THEN
    RETURN;
  END IF;
  RAISE EXCEPTION '"%": not a cron expression (5 or 6 fields, a macro such as @daily, or @every 5m)',
    cron USING ERRCODE = '22023';
END $$;

-- A schedule as the API shows it.
CREATE FUNCTION @schema@.schedule_json(s @schema@.schedule) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'name', s.name, 'cron', s.cron, 'tz', s.tz, 'job', s.job, 'data', s.data,
    'options', s.options,
    'backfill', @schema@.backfill_text(s.backfill_seconds, s.backfill_slots),
    'enabled', s.enabled, 'source', s.source, 'error', s.error,
    'next_slot', s.next_slot, 'last_slot', s.last_slot,
    'created_at', s.created_at, 'updated_at', s.updated_at)
$$;

-- Creates schedule `name` or replaces its definition (enabling it again);
-- its history (last_slot, fired slots) is kept. tz NULL is UTC, job NULL
-- the name, data and options NULL {}; `options` holds send options only
-- (check_schedule_options); backfill as parse_backfill reads it; source
-- 'api' or 'config'. A row that would not change is not written. Returns
-- the stored row. Raises 22023 on bad input.
CREATE FUNCTION @schema@.put_schedule(name text, cron text, tz text, job text, data jsonb,
                                      options jsonb, backfill text, source text)
RETURNS @schema@.schedule LANGUAGE plpgsql AS $$
DECLARE
  b record;
  s @schema@.schedule;
BEGIN
  IF coalesce(name, '') = '' OR octet_length(name) > 200 THEN
    RAISE EXCEPTION 'a schedule name must be 1 to 200 bytes' USING ERRCODE = '22023';
  END IF;
  PERFORM @schema@.check_cron(cron);
  tz := coalesce(nullif(tz, ''), 'UTC');
  BEGIN
    PERFORM now() AT TIME ZONE tz;
  EXCEPTION WHEN invalid_parameter_value THEN
    RAISE EXCEPTION 'unknown time zone "%"', tz USING ERRCODE = '22023';
  END;
  job := coalesce(nullif(job, ''), name);
  IF octet_length(job) > 255 THEN
    RAISE EXCEPTION 'job name is % bytes, the limit is 255', octet_length(job)
      USING ERRCODE = '22023';
  END IF;
  options := coalesce(options, '{}');
  PERFORM @schema@.check_schedule_options(options);
  b := @schema@.parse_backfill(backfill);
  INSERT INTO @schema@.schedule AS x (name, cron, tz, job, data, options, backfill_seconds,
                                      backfill_slots, source)
  VALUES (put_schedule.name, put_schedule.cron, tz, job, coalesce(data, '{}'), options,
          b.seconds, b.slots, coalesce(put_schedule.source, 'api'))
  ON CONFLICT ON CONSTRAINT schedule_name_key DO UPDATE
    SET cron = excluded.cron, tz = excluded.tz, job = excluded.job, data = excluded.data,
        options = excluded.options, backfill_seconds = excluded.backfill_seconds,
        backfill_slots = excluded.backfill_slots, source = excluded.source,
        enabled = true, error = NULL, updated_at = now(),
        version = CASE WHEN (x.cron, x.tz, x.backfill_seconds, x.backfill_slots, x.enabled,
                             x.error IS NULL)
                            IS DISTINCT FROM (excluded.cron, excluded.tz, excluded.backfill_seconds,
                                              excluded.backfill_slots, true, true)
                       THEN nextval('@schema@.schedule_version_seq') ELSE x.version END,
        changed_at = CASE WHEN (x.cron, x.tz, x.enabled)
                               IS DISTINCT FROM (excluded.cron, excluded.tz, true)
                          THEN now() ELSE x.changed_at END,
        next_slot = CASE WHEN (x.cron, x.tz) IS DISTINCT FROM (excluded.cron, excluded.tz)
                         THEN NULL ELSE x.next_slot END
    WHERE (x.cron, x.tz, x.job, x.data, x.options, x.backfill_seconds, x.backfill_slots,
           x.source, x.enabled, x.error)
          IS DISTINCT FROM (excluded.cron, excluded.tz, excluded.job, excluded.data,
                            excluded.options, excluded.backfill_seconds,
                            excluded.backfill_slots, excluded.source, true, NULL::text)
  RETURNING * INTO s;
  IF FOUND THEN
    PERFORM @schema@.schedules_changed();
  ELSE
    SELECT * INTO s FROM @schema@.schedule x WHERE x.name = put_schedule.name;
  END IF;
  RETURN s;
END $$;

-- The SQL API: SELECT moonq.schedule('nightly', '0 3 * * *', '{"keep": 7}',
-- '{"tz": "Europe/Berlin", "backfill": "1h", "priority": 5}'). Options
-- tz, job and backfill (a string, or a number of seconds) are the
-- schedule's; the others are send options of its jobs.
CREATE FUNCTION @schema@.schedule(name text, cron text, data jsonb DEFAULT '{}',
                                  options jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  o jsonb := coalesce(options, '{}');
  k text;
BEGIN
  IF jsonb_typeof(o) <> 'object' THEN
    RAISE EXCEPTION 'options must be a JSON object, got %', jsonb_typeof(o)
      USING ERRCODE = '22023';
  END IF;
  FOREACH k IN ARRAY ARRAY['tz', 'job'] LOOP
    IF o ? k AND jsonb_typeof(o -> k) NOT IN ('string', 'null') THEN
      RAISE EXCEPTION 'option "%" must be a string, got %', k, o -> k USING ERRCODE = '22023';
    END IF;
  END LOOP;
  IF o ? 'backfill' AND jsonb_typeof(o -> 'backfill') NOT IN ('string', 'number', 'null') THEN
    RAISE EXCEPTION 'option "backfill" must be a string or a number of seconds, got %',
      o -> 'backfill' USING ERRCODE = '22023';
  END IF;
  RETURN @schema@.schedule_json(
    @schema@.put_schedule(name, cron, o ->> 'tz', o ->> 'job', data,
                          o - 'tz' - 'job' - 'backfill', o ->> 'backfill', 'api'));
END $$;

-- Deletes schedule `name` and its history; false when there was none.
CREATE FUNCTION @schema@.unschedule(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  gone bigint;
BEGIN
  DELETE FROM @schema@.schedule s WHERE s.name = unschedule.name RETURNING s.id INTO gone;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  DELETE FROM @schema@.schedule_fire f WHERE f.schedule_id = gone;
  PERFORM @schema@.schedules_changed();
  RETURN true;
END $$;

-- Every schedule, by name. next_slot is what the processes that fire it
-- computed last (NULL before one has loaded it, or while disabled).
CREATE FUNCTION @schema@.schedules()
RETURNS TABLE (name text, cron text, tz text, job text, data jsonb, options jsonb,
               backfill text, enabled boolean, source text, error text,
               next_slot timestamptz, last_slot timestamptz)
LANGUAGE sql STABLE AS $$
  SELECT s.name, s.cron, s.tz, s.job, s.data, s.options,
         @schema@.backfill_text(s.backfill_seconds, s.backfill_slots), s.enabled,
         s.source, s.error, s.next_slot, s.last_slot
    FROM @schema@.schedule s ORDER BY s.name
$$;

-- Stores config.lua's schedules (a JSON array of {name, cron, tz, job,
-- data, options, backfill}) over what is stored, as put_schedule does
-- with source 'config'; a schedule that came from config and is no longer
-- in it is deleted when it never fired and disabled when it did (its
-- history stays). Returns {"stored": n, "disabled": n, "deleted": n}.
CREATE FUNCTION @schema@.sync_config_schedules(defs jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  d jsonb;
  names text[] := '{}';
  disabled bigint;
  deleted bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('moonq.schedules:@schema@', 0));
  FOR d IN SELECT e.value FROM jsonb_array_elements(defs) e LOOP
    PERFORM @schema@.put_schedule(d ->> 'name', d ->> 'cron', d ->> 'tz', d ->> 'job',
                                  d -> 'data', d -> 'options', d ->> 'backfill', 'config');
    names := names || (d ->> 'name');
  END LOOP;
  WITH gone AS (
    DELETE FROM @schema@.schedule s
     WHERE s.source = 'config' AND s.name <> ALL(names) AND s.last_slot IS NULL
    RETURNING s.id
  ), fires AS (
    DELETE FROM @schema@.schedule_fire f USING gone WHERE f.schedule_id = gone.id
  )
  SELECT count(*) INTO deleted FROM gone;
  UPDATE @schema@.schedule s
     SET enabled = false, next_slot = NULL, updated_at = now(), changed_at = now(),
         version = nextval('@schema@.schedule_version_seq')
   WHERE s.source = 'config' AND s.name <> ALL(names) AND s.enabled;
  GET DIAGNOSTICS disabled = ROW_COUNT;
  IF deleted + disabled > 0 THEN
    PERFORM @schema@.schedules_changed();
  END IF;
  RETURN jsonb_build_object('stored', cardinality(names), 'disabled', disabled,
                            'deleted', deleted);
END $$;

-- What a firing process holds of each enabled schedule. `since` (Unix
-- seconds) is where missed slots start: the last slot fired or the last
-- change of cron, tz or enabled, whichever is later.
CREATE FUNCTION @schema@.load_schedules()
RETURNS TABLE (id bigint, version bigint, name text, cron text, tz text,
               backfill_seconds integer, backfill_slots integer, since double precision,
               next_slot double precision)
LANGUAGE sql STABLE AS $$
  SELECT s.id, s.version, s.name, s.cron, s.tz, s.backfill_seconds, s.backfill_slots,
         extract(epoch FROM greatest(s.last_slot, s.changed_at))::double precision,
         extract(epoch FROM s.next_slot)::double precision
    FROM @schema@.schedule s WHERE s.enabled ORDER BY s.id
$$;

-- Stores the next slots a process computed after loading (only where they
-- differ) and disables the schedules it could not read, with the reason:
-- errors[i] NULL means schedule ids[i] is fine. Arrays are parallel.
CREATE FUNCTION @schema@.store_schedule_next(ids bigint[], nexts double precision[],
                                             errors text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('moonq.schedules:@schema@', 0));
  UPDATE @schema@.schedule s
     SET next_slot = to_timestamp(u.next)
    FROM unnest(ids, nexts, errors) AS u(id, next, error)
   WHERE s.id = u.id AND u.error IS NULL AND s.enabled
     AND s.next_slot IS DISTINCT FROM to_timestamp(u.next);
  UPDATE @schema@.schedule s
     SET enabled = false, error = u.error, next_slot = NULL, updated_at = now(),
         version = nextval('@schema@.schedule_version_seq')
    FROM unnest(ids, errors) AS u(id, error)
   WHERE s.id = u.id AND u.error IS NOT NULL AND s.enabled;
  IF FOUND THEN
    PERFORM @schema@.schedules_changed();
  END IF;
END $$;

-- Wakes the workers of `queues`, in notifications of at most ~7,000 bytes
-- of names each (a NOTIFY payload holds 8,000).
CREATE FUNCTION @schema@.wake_queues(queues text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  q text;
  batch text := '';
BEGIN
  FOREACH q IN ARRAY coalesce(queues, '{}') LOOP
    IF batch <> '' AND octet_length(batch) + octet_length(q) > 7000 THEN
      PERFORM @schema@.wake(batch);
      batch := '';
    END IF;
    batch := CASE WHEN batch = '' THEN q ELSE batch || ',' || q END;
  END LOOP;
  IF batch <> '' THEN
    PERFORM @schema@.wake(batch);
  END IF;
END $$;

-- Fires slots: slots[i] (Unix seconds) of schedule ids[i]; nexts[i] is the
-- schedule's next slot after them, stored for display. For each slot not
-- fired yet and after the schedule's last fired slot, one row in
-- schedule_fire and one job, in this transaction; slots another process
-- fired, or that came too late, are left alone. The schedules are locked
-- in id order, so concurrent calls for the same slots queue up (the later
-- ones then find the slots taken) instead of deadlocking.
-- Disabled or deleted schedules fire nothing. Returns how many slots this
-- call fired.
--
-- One statement for the whole batch (a fire is about a tenth of a
-- millisecond of PostgreSQL's time): the jobs are inserted as send() would
-- insert them, with each queue's own settings over queue_defaults('')
-- (which holds config.lua's `queue` and the built-in defaults), and their
-- job.created events written as send_many writes them (009).
CREATE FUNCTION @schema@.fire_schedules(ids bigint[], slots double precision[],
                                        nexts double precision[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  base @schema@.queue := @schema@.queue_defaults('');
  fired integer;
  drawn bigint[];
  made bigint[];
  queues text[];
BEGIN
  -- `locked` takes the schedules' rows in id order; after waiting for a
  -- concurrent fire it holds their latest version (last_slot moved, or
  -- disabled), and that fire's rows in schedule_fire are conflicts.
  -- One writer of schedules at a time (fires, config syncs, stored next
  -- slots): their row locks came in different orders and deadlocked.
  PERFORM pg_advisory_xact_lock(hashtextextended('moonq.schedules:@schema@', 0));
  -- A slot more than a minute ahead of the database's clock is a host
  -- whose clock runs fast: firing it would move last_slot past the slots
  -- every other host has still to fire.
  WITH want AS (
    SELECT u.id, to_timestamp(u.slot) AS slot, to_timestamp(u.next) AS next
      FROM unnest(ids, slots, nexts) AS u(id, slot, next)
     WHERE to_timestamp(u.slot) <= now() + interval '60 seconds'
  ), locked AS MATERIALIZED (
    SELECT s.id, s.name, s.job, s.data, s.options, s.last_slot
      FROM @schema@.schedule s
     WHERE s.id IN (SELECT w.id FROM want w) AND s.enabled
     ORDER BY s.id FOR NO KEY UPDATE
  ), won AS (
    INSERT INTO @schema@.schedule_fire AS f (schedule_id, slot, job_id)
    SELECT w.id, w.slot, nextval('@schema@.job_id_seq')
      FROM want w JOIN locked s ON s.id = w.id
     WHERE s.last_slot IS NULL OR w.slot > s.last_slot
     ORDER BY w.id, w.slot
    ON CONFLICT DO NOTHING
    RETURNING f.schedule_id, f.slot, f.job_id
  ), fire AS (
    SELECT won.*, s.name, s.job, s.data, s.options,
           coalesce(s.options ->> 'queue', s.job) AS queue
      FROM won JOIN locked s ON s.id = won.schedule_id
  ), jobs AS (
    INSERT INTO @schema@.job AS j (id, queue, name, data, priority, retry_limit,
                                   retry_delay, retry_backoff, retry_delay_max,
                                   expire_in, retention, start_after,
                                   singleton_key, dead_letter, run_id)
    SELECT f.job_id, f.queue, f.job, f.data,
           coalesce((f.options ->> 'priority')::integer, 0),
           coalesce((f.options ->> 'retry_limit')::integer, q.retry_limit, base.retry_limit),
           coalesce((f.options ->> 'retry_delay')::double precision, q.retry_delay,
                    base.retry_delay),
           coalesce((f.options ->> 'retry_backoff')::boolean, q.retry_backoff,
                    base.retry_backoff),
           coalesce((f.options ->> 'retry_delay_max')::double precision, q.retry_delay_max,
                    base.retry_delay_max),
           coalesce((f.options ->> 'expire_in')::double precision, q.expire_in,
                    base.expire_in),
           coalesce((f.options ->> 'retention')::double precision, q.retention,
                    base.retention),
           now() + make_interval(secs => coalesce((f.options ->> 'delay')::double precision, 0)),
           f.options ->> 'singleton_key',
           coalesce(f.options ->> 'dead_letter', q.dead_letter, base.dead_letter),
           'schedule:' || f.name || ':'
             || to_char(f.slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
      FROM fire f LEFT JOIN @schema@.queue q ON q.name = f.queue
     ORDER BY f.schedule_id, f.slot
    ON CONFLICT DO NOTHING
    RETURNING j.id, j.queue
  ), moved AS (
    UPDATE @schema@.schedule s
       SET last_slot = greatest(s.last_slot, m.slot), next_slot = m.next
      FROM (SELECT w.id, max(w.slot) AS slot, max(w.next) AS next
              FROM want w JOIN won ON won.schedule_id = w.id AND won.slot = w.slot
             GROUP BY w.id) m
     WHERE s.id = m.id
  )
  SELECT (SELECT count(*) FROM won), (SELECT array_agg(won.job_id) FROM won),
         (SELECT array_agg(jobs.id) FROM jobs),
         (SELECT array_agg(DISTINCT jobs.queue) FROM jobs)
    INTO fired, drawn, made, queues;
  IF cardinality(drawn) IS DISTINCT FROM cardinality(made) THEN
    -- A singleton_key refused some: their slots fired without a job.
    UPDATE @schema@.schedule_fire f SET job_id = NULL
     WHERE f.job_id = ANY(drawn) AND f.job_id <> ALL(coalesce(made, '{}'));
  END IF;
  IF made IS NOT NULL AND (SELECT s.job_events FROM @schema@.settings s) THEN
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(j.name, j.id), 'job.created',
           jsonb_build_object('queue', j.queue, 'attempt', 0,
                              'start_after', j.start_after),
           j.run_id, 0
      FROM @schema@.job j
     WHERE j.id = ANY(made)
     ORDER BY j.id;
    PERFORM @schema@.events_wake();
  END IF;
  PERFORM @schema@.wake_queues(queues);
  RETURN fired;
END $$;

-- Deletes at most `n` rows of schedule_fire fired more than `keep` seconds
-- ago; NULL when another process is doing it. The schedules' last_slot
-- keeps a slot from firing twice once its row is gone.
CREATE FUNCTION @schema@.delete_old_fires(keep double precision, n integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  deleted bigint;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtextextended('moonq.delete_old_fires:@schema@', 0)) THEN
    RETURN NULL;
  END IF;
  DELETE FROM @schema@.schedule_fire f
   WHERE (f.schedule_id, f.slot) IN (
           SELECT o.schedule_id, o.slot FROM @schema@.schedule_fire o
            WHERE o.fired_at < now() - make_interval(secs => keep)
            ORDER BY o.fired_at LIMIT n);
  GET DIAGNOSTICS deleted = ROW_COUNT;
  RETURN deleted;
END $$;
