-- 012_enqueue_with_completion: jobs a handler enqueues (ctx.enqueue) are
-- sent with the job's completion, in its transaction, like the events it
-- emits (006): a failed or crashed attempt leaves no follow-up jobs behind
-- and a retried job enqueues once, when it succeeds.
--
-- complete_jobs_with is complete_jobs (009) with `effects`, a JSON array
-- aligned with `ids`, each element null or {events: [...], jobs: [{name,
-- data, options}, ...]} (an element that is an array is taken as the
-- events alone, as in 006). The jobs of a job this call completes are sent
-- first, each job's in a subtransaction of its own: a job whose enqueues
-- PostgreSQL refuses (a bad option, say) fails with that error and the
-- rest of the batch completes. The completion itself is complete_jobs's.

CREATE FUNCTION @schema@.complete_jobs_with(ids bigint[], outputs jsonb, process_id uuid,
                                            effects jsonb DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
  r record;
  x jsonb;
  bad_ids bigint[] := '{}';
  bad_errors jsonb[] := '{}';
  keep_ids bigint[];
  keep_outputs jsonb;
  keep_events jsonb;
BEGIN
  IF effects IS NULL THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(ids, outputs, process_id, NULL);
    RETURN;
  END IF;
  FOR r IN
    SELECT i.id, e.value->'jobs' AS jobs
      FROM unnest(ids) WITH ORDINALITY AS i(id, n)
      JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
      JOIN @schema@.job j ON j.id = i.id
     WHERE jsonb_typeof(e.value) = 'object' AND jsonb_typeof(e.value->'jobs') = 'array'
       AND j.state = 'active' AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
     ORDER BY i.n
       FOR UPDATE OF j
  LOOP
    BEGIN
      FOR x IN SELECT q.value FROM jsonb_array_elements(r.jobs) AS q LOOP
        PERFORM @schema@.send(x->>'name', coalesce(x->'data', '{}'::jsonb),
                              coalesce(x->'options', '{}'::jsonb));
      END LOOP;
    EXCEPTION WHEN OTHERS THEN
      bad_ids := bad_ids || r.id;
      bad_errors := bad_errors || jsonb_build_object('message', 'ctx.enqueue: ' || SQLERRM);
    END;
  END LOOP;
  IF cardinality(bad_ids) > 0 THEN
    PERFORM @schema@.fail_jobs(bad_ids, bad_errors, process_id);
  END IF;
  SELECT array_agg(i.id ORDER BY i.n), jsonb_agg(o.value ORDER BY i.n),
         jsonb_agg(CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value->'events'
                        ELSE e.value END ORDER BY i.n)
    INTO keep_ids, keep_outputs, keep_events
    FROM unnest(ids) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n) ON o.n = i.n
    LEFT JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
   WHERE i.id <> ALL (bad_ids);
  IF keep_ids IS NOT NULL THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(keep_ids, keep_outputs,
                                                               process_id, keep_events);
  END IF;
END $$;
