-- 022_input_messages: two messages about bad input say what was wrong.
--
-- start_flow refuses a flow name over 200 bytes (the limit of a flow's
-- name in its handler files) saying so, instead of echoing the whole name
-- back as an unknown flow. A duration option past its limit shows its
-- value as a number ("1e+300"), not its first 40 digits.

-- start_flow (012), with the name's length checked first.
CREATE OR REPLACE FUNCTION @schema@.start_flow(name text, data jsonb DEFAULT '{}',
                                    options jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  entry_job text;
  entry_queue text;
  rid text := coalesce(options->>'run_id', gen_random_uuid()::text);
BEGIN
  IF octet_length(name) > 200 THEN
    RAISE EXCEPTION 'flow name is % bytes, the limit is 200', octet_length(name)
      USING ERRCODE = '22023';
  END IF;
  SELECT s.job_name, s.queue INTO entry_job, entry_queue FROM @schema@.queue_flow_steps s
   WHERE s.flow_name = name AND s.entry;
  IF entry_job IS NULL THEN
    RAISE EXCEPTION 'unknown flow "%" (no entry step stored: is a process with its handlers running?)', name
      USING ERRCODE = '22023';
  END IF;
  IF octet_length(rid) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'run_id must be 1 to 200 bytes' USING ERRCODE = '22023';
  END IF;
  BEGIN
    INSERT INTO @schema@.queue_flow_index (flow_name, run_id, data)
    VALUES (name, rid, coalesce(data, '{}'));
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'a run "%" exists already', rid USING ERRCODE = '22023';
  END;
  PERFORM @schema@.flow_event(name, rid, NULL, NULL, NULL, 'flow.started', data);
  PERFORM @schema@.send(entry_job, coalesce(data, '{}'),
                        jsonb_build_object('queue', entry_queue) || coalesce(options, '{}')
                          || jsonb_build_object('run_id', rid));
  -- (send wakes no one on moonq's own connections; a second wake-up of
  -- the same queue in one transaction is one NOTIFY)
  PERFORM @schema@.wake(coalesce(options->>'queue', entry_queue));
  RETURN rid;
END $$;

-- opt_num (014), showing a value too long to read as a float.
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
      k, CASE WHEN octet_length(v::text) <= 40 THEN v::text ELSE n::text END
      USING ERRCODE = '22023';
  END IF;
  RETURN n;
END $$;
