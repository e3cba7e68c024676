-- micro.sql: the CPU cost of one fetch of 1000 jobs and of completing
-- them, measured inside one backend (no network, no commit in the timing).
-- Defines pg_temp.micro(schema): fetches 1000 jobs waiting on queue 'drain'
-- of that schema, completes them, and returns schema|fetch_ms|complete_ms.
-- "floor" means bench_floor.floor_job (claim = UPDATE ... SKIP LOCKED,
-- complete = DELETE); "floor_archive" completes by moving the rows to
-- bench_floor.floor_archive. bench/run.sh calls it several times per schema,
-- interleaved, each call its own transaction (the jobs are consumed, as in
-- a drain), and keeps the fastest call.
CREATE OR REPLACE FUNCTION pg_temp.micro(s text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
  t0 timestamptz; t1 timestamptz; n bigint; d json; ids bigint[];
  o uuid := gen_random_uuid();
BEGIN
  t0 := clock_timestamp();
  IF s LIKE 'floor%' THEN
    WITH c AS (
      UPDATE bench_floor.floor_job j SET state = 'active', owner = 7
       WHERE j.id = ANY(ARRAY(SELECT id FROM bench_floor.floor_job
                               WHERE state = 'ready' ORDER BY id
                               LIMIT 1000 FOR UPDATE SKIP LOCKED))
      RETURNING j.id, j.data)
    SELECT array_agg(id), json_agg(data) INTO ids, d FROM c;
  ELSE
    EXECUTE format('SELECT array_agg(id), json_agg(data) FROM %I.fetch_jobs(''drain'', 1000, $1)', s)
      INTO ids, d USING o;
  END IF;
  t1 := clock_timestamp();
  IF cardinality(ids) IS DISTINCT FROM 1000 THEN
    RAISE 'micro: % fetched % jobs', s, cardinality(ids);
  END IF;
  IF s = 'floor' THEN
    DELETE FROM bench_floor.floor_job WHERE id = ANY(ids);
  ELSIF s = 'floor_archive' THEN
    WITH gone AS (DELETE FROM bench_floor.floor_job WHERE id = ANY(ids) RETURNING *)
    INSERT INTO bench_floor.floor_archive (id, queue, data, state, priority, created_at, owner)
    SELECT id, queue, data, 'completed', priority, created_at, owner FROM gone;
  ELSE
    EXECUTE format('SELECT count(*) FROM %I.complete_jobs($1, (SELECT jsonb_agg(NULL::jsonb) FROM unnest($1)), $2)', s)
      INTO n USING ids, o;
    IF n <> 1000 THEN
      RAISE 'micro: % completed % jobs', s, n;
    END IF;
  END IF;
  RETURN format('%s|%s|%s', s, round((extract(epoch FROM t1 - t0) * 1000)::numeric, 2),
                round((extract(epoch FROM clock_timestamp() - t1) * 1000)::numeric, 2));
END $f$;
