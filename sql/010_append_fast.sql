-- 010_append_fast: appends that cost less per event.
--
-- Batches. moonq sends the appends of a loop turn as parallel arrays
-- (append_events below) instead of one JSON document of objects: the
-- events are checked by one set-based scan instead of a plpgsql call per
-- event, read once instead of twice, and the ids come back as one array.
-- moonq checks every event before sending it (events.c); the scan here
-- keeps the same rules for any other caller. append_events(jsonb) stays,
-- for a moonq of the version before still running against this schema.

-- Appends events given as parallel arrays, in order: streams[i], types[i],
-- data->i (a JSON array, one element per event) and run_ids[i] (NULL: no
-- event has one). Returns one row: the ids in input order (ascending) and
-- the events' ts (one statement, one ts). One bad event appends nothing
-- and raises 22023 naming it ("event 3: ..."). Notifies once.
CREATE FUNCTION @schema@.append_events(streams text[], types text[], data jsonb,
                                       run_ids text[])
RETURNS TABLE (ids bigint[], ts timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  n integer := coalesce(cardinality(streams), 0);
  bad record;
BEGIN
  IF n = 0 OR cardinality(types) IS DISTINCT FROM n
     OR jsonb_typeof(data) IS DISTINCT FROM 'array' OR jsonb_array_length(data) <> n
     OR (run_ids IS NOT NULL AND cardinality(run_ids) <> n) THEN
    RAISE EXCEPTION 'append_events: streams, types, data and run_ids must hold one element per event'
      USING ERRCODE = '22023';
  END IF;
  SELECT e.i, e.stream, e.type INTO bad
    FROM unnest(streams, types) WITH ORDINALITY AS e(stream, type, i)
   WHERE e.stream IS NULL OR e.stream = '' OR octet_length(e.stream) > 500
      OR strpos(e.stream, '*') > 0
      OR e.type IS NULL OR e.type = '' OR octet_length(e.type) > 200
   LIMIT 1;
  IF FOUND THEN
    BEGIN
      PERFORM @schema@.check_event(bad.stream, bad.type, NULL);
    EXCEPTION WHEN invalid_parameter_value THEN
      RAISE EXCEPTION 'event %: %', bad.i, SQLERRM USING ERRCODE = '22023';
    END;
  END IF;
  RETURN QUERY
  WITH ins AS (
    INSERT INTO @schema@.queue_events AS q (stream, type, data, run_id)
    SELECT e.stream, e.type, e.data, e.run_id
      FROM ROWS FROM (unnest(streams), unnest(types), jsonb_array_elements(data),
                      unnest(run_ids))
           WITH ORDINALITY AS e(stream, type, data, run_id, i)
     ORDER BY e.i
    RETURNING q.id, q.ts)
  SELECT array_agg(ins.id ORDER BY ins.id), min(ins.ts) FROM ins;
  PERFORM @schema@.events_wake();
END $$;
