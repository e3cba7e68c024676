-- 021_store_flows: processes storing their flows at once no longer fail,
-- and a flow whose files are gone is removed.
--
-- store_flows (012) deleted and inserted a flow's steps with no lock, so
-- two processes starting or reloading together (workers = 2) collided on
-- the steps' primary key and one store failed. It now takes a lock of its
-- own first. It also takes {"flows": [...], "dropped": [...]}: the flows a
-- process stored before and declares no more (their handler files were
-- deleted) are removed, so they can no longer be started. An array is
-- still read as the flows alone.

CREATE OR REPLACE FUNCTION @schema@.store_flows(flows jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  list jsonb := flows;
  dropped text[] := '{}';
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('moonq.flows:@schema@', 0));
  IF jsonb_typeof(flows) = 'object' THEN
    list := coalesce(flows->'flows', '[]');
    dropped := ARRAY(SELECT jsonb_array_elements_text(coalesce(flows->'dropped', '[]')));
  END IF;
  DELETE FROM @schema@.queue_flow_steps s
   WHERE s.flow_name = ANY(dropped)
      OR s.flow_name IN (SELECT f->>'flow' FROM jsonb_array_elements(list) AS f)
      OR s.job_name IN (SELECT st->>'job' FROM jsonb_array_elements(list) AS f,
                                             jsonb_array_elements(f->'steps') AS st);
  INSERT INTO @schema@.queue_flow_steps
    (flow_name, step_name, job_name, queue, entry, subscribes, emits)
  SELECT f->>'flow', st->>'step', st->>'job', coalesce(st->>'queue', st->>'job'),
         coalesce((st->>'entry')::boolean, false),
         ARRAY(SELECT jsonb_array_elements_text(coalesce(st->'subscribes', '[]'))),
         ARRAY(SELECT jsonb_array_elements_text(coalesce(st->'emits', '[]')))
    FROM jsonb_array_elements(list) AS f, jsonb_array_elements(f->'steps') AS st;
END $$;
