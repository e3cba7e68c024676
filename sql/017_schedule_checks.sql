-- 017_schedule_checks: SQL refuses what the firing processes refuse.
--
-- A zone is accepted by its exact name in the tz database, as cron.c
-- reads it (src/cron.h): PostgreSQL alone also took "europe/berlin",
-- "localtime", POSIX strings such as "Etc/GMT+25" and the leap-second
-- "right/" zones, which every process then disabled the schedule for. An
-- empty tz or job is refused instead of standing for UTC or the
-- schedule's name (leave the option out for those). A config.lua schedule
-- that PostgreSQL refuses is named by its place and name
-- ("schedules[2] (name "nightly"): option ...").

-- Raises 22023 unless tz is a zone cron.c reads: "UTC", or a tz database
-- name written exactly as the database writes it, not "localtime" nor a
-- "right/" zone.
CREATE FUNCTION @schema@.check_schedule_zone(tz text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  was text := current_setting('TimeZone');
  canonical text;
BEGIN
  IF tz = 'UTC' THEN
    RETURN;
  END IF;
  IF octet_length(tz) > 128 THEN
    RAISE EXCEPTION 'time zone name is % bytes, the limit is 128', octet_length(tz)
      USING ERRCODE = '22023';
  END IF;
  IF tz = 'localtime' OR tz LIKE 'right/%' OR tz LIKE '/%' OR tz LIKE '%..%' THEN
    RAISE EXCEPTION 'time zone "%" is not accepted (the host''s localtime, leap-second right/ zones and paths are refused): name a zone such as "Europe/Berlin"', tz
      USING ERRCODE = '22023';
  END IF;
  BEGIN
    -- PostgreSQL's own reading gives the name as the tz database writes
    -- it: a name written otherwise, or a POSIX string, is not a zone file
    PERFORM set_config('TimeZone', tz, true);
    canonical := current_setting('TimeZone');
    PERFORM set_config('TimeZone', was, true);
  EXCEPTION WHEN invalid_parameter_value THEN
    canonical := NULL;
  END;
  IF canonical IS DISTINCT FROM tz
     OR (tz ~ '[0-9]' AND NOT EXISTS (SELECT 1 FROM pg_timezone_names n WHERE n.name = tz)) THEN
    RAISE EXCEPTION 'unknown time zone "%"', tz USING ERRCODE = '22023',
      HINT = 'zone names are those of the tz database, case included, such as "Europe/Berlin"';
  END IF;
END $$;

-- schedule() (011), the SQL API, becomes store_api_schedule; the new
-- schedule() checks the name (no control characters), the data (what
-- Lua can read, 014), tz, job and backfill first (backfill false is none,
-- as in Lua; "" is refused). Same arguments and result.
ALTER FUNCTION @schema@.schedule(text, text, jsonb, jsonb) RENAME TO store_api_schedule;

CREATE FUNCTION @schema@.schedule(name text, cron text, data jsonb DEFAULT '{}',
                                  options jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  IF name ~ '[[:cntrl:]]' THEN
    RAISE EXCEPTION 'a schedule name must not contain control characters (a newline, a tab, ...)'
      USING ERRCODE = '22023';
  END IF;
  -- each fire sends it: data Lua cannot read would fail every job
  PERFORM @schema@.check_readable('data', data);
  IF jsonb_typeof(options) = 'object' THEN
    IF options ->> 'tz' = '' THEN
      RAISE EXCEPTION 'tz must be a time zone name such as "Europe/Berlin" (leave it out for UTC)'
        USING ERRCODE = '22023';
    END IF;
    IF options ->> 'job' = '' THEN
      RAISE EXCEPTION 'job must be a job name (leave it out to enqueue the schedule''s name)'
        USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(options -> 'tz') = 'string' THEN
      PERFORM @schema@.check_schedule_zone(options ->> 'tz');
    END IF;
    IF options ->> 'backfill' = '' THEN
      RAISE EXCEPTION 'backfill: an empty string is no backfill; leave it out (or false) for none'
        USING ERRCODE = '22023';
    END IF;
    IF options -> 'backfill' = 'false'::jsonb THEN -- none, as in Lua
      options := options - 'backfill';
    END IF;
  END IF;
  RETURN @schema@.store_api_schedule(name, cron, data, options);
END $$;

-- sync_config_schedules (011) becomes store_config_schedules; the new one
-- first checks what only PostgreSQL checks of each schedule (zone, send
-- options), naming the schedule by its place in config.lua.
ALTER FUNCTION @schema@.sync_config_schedules(jsonb) RENAME TO store_config_schedules;

CREATE FUNCTION @schema@.sync_config_schedules(defs jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  d jsonb;
  i bigint;
  msg text;
  hint text;
BEGIN
  FOR d, i IN SELECT e.value, e.n FROM jsonb_array_elements(defs) WITH ORDINALITY e(value, n) LOOP
    BEGIN
      PERFORM @schema@.check_schedule_zone(coalesce(nullif(d ->> 'tz', ''), 'UTC'));
      PERFORM @schema@.check_schedule_options(coalesce(d -> 'options', '{}'));
    EXCEPTION WHEN invalid_parameter_value THEN
      GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
      RAISE EXCEPTION 'schedules[%] (name "%"): %', i, d ->> 'name', msg
        USING ERRCODE = '22023', HINT = hint;
    END;
  END LOOP;
  RETURN @schema@.store_config_schedules(defs);
END $$;
