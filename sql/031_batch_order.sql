-- 031_batch_order: the statements that complete, fail or archive a batch of
-- jobs pair each job with its entry of the batch by a binary search, not by
-- a join whose plan the row estimate picks.
--
-- A worker's connection runs these functions often enough that PostgreSQL
-- gives their statements a plan for any arguments (a generic plan), which
-- assumes an array holds ten elements. With the statistics of a busy table
-- it then expects a handful of the batch's jobs, and joined the batch's
-- arrays (unnest(ids) WITH ORDINALITY, its outputs, its errors) to them in a
-- nested loop over a materialized side: every id compared with every job,
-- 500,000 comparisons for a batch of 1,000 jobs. That was 70 ms of a 90 ms
-- completion of 1,000 jobs, and the largest single cost of a worker's drain
-- (bench/RESULTS.md, "Completions without a nested loop"). No plan choice
-- can do that now: each statement finds its jobs by `id = ANY(ids)` alone
-- (an index condition, sql/026), and each job finds its own output, error,
-- attempt or effects at positions[width_bucket(id, sorted)] -- a binary
-- search of the batch's ids in order.

-- The ids of a batch in ascending order (sorted, NULLs left out), and for
-- each the place (1-based) it has in ids (positions): the entry of a
-- parallel array (outputs, errors, attempts) of the job with id x is at
-- positions[width_bucket(x, sorted)] for every x in ids; an id given twice
-- finds its last place. Empty arrays for an empty or NULL ids.
CREATE FUNCTION @schema@.batch_order(ids bigint[], OUT sorted bigint[],
                                     OUT positions integer[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(array_agg(u.id ORDER BY u.id, u.n), '{}'),
         coalesce(array_agg(u.n::integer ORDER BY u.id, u.n), '{}')
    FROM unnest(ids) WITH ORDINALITY AS u(id, n)
   WHERE u.id IS NOT NULL
$$;

-- complete_jobs (020, 026): the outputs and events of each job by its place.
-- `outputs` must hold one entry per id.
SELECT @schema@.patch_function('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb)',
  E'BEGIN\n  RETURN QUERY\n  WITH u AS (',
  E'DECLARE\n  batch record := @schema@.batch_order(ids);\nBEGIN\n'
  || E'  IF jsonb_typeof(outputs) IS DISTINCT FROM ''array''\n'
  || E'     OR jsonb_array_length(outputs) <> coalesce(cardinality(ids), 0) THEN\n'
  || E'    RAISE EXCEPTION ''complete_jobs: outputs must be a JSON array with one entry per id (% ids)'',\n'
  || E'      coalesce(cardinality(ids), 0) USING ERRCODE = ''22023'';\n'
  || E'  END IF;\n'
  || E'  RETURN QUERY\n  WITH u AS (');
SELECT @schema@.patch_function('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb)',
  $old$WITH u AS (
    SELECT i.id, nullif(o.value, 'null'::jsonb) AS output,
           nullif(ev.value, 'null'::jsonb) AS emitted
      FROM unnest(ids) WITH ORDINALITY AS i(id, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n)
        ON o.n = i.n
      LEFT JOIN jsonb_array_elements(coalesce(events, '[]'::jsonb))
                WITH ORDINALITY AS ev(value, n)
        ON ev.n = i.n
  ), gone AS (
    DELETE FROM @schema@.job j USING u
     WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
    RETURNING j.*, u.output AS new_output, u.emitted AS new_events
  )$old$,
  $new$WITH gone AS (
    DELETE FROM @schema@.job j
     WHERE j.id = ANY(ids) AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
    RETURNING j.*,
      nullif(outputs -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1),
             'null'::jsonb) AS new_output,
      nullif(events -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1),
             'null'::jsonb) AS new_events
  )$new$);

-- complete_jobs_with (019, 026): whether the batch is plain, the jobs with
-- enqueues, and the completion, each job's attempt, output and effects by
-- its place.
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  E'DECLARE\n',
  E'DECLARE\n  batch record := @schema@.batch_order(ids);\n');
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  $old$SELECT count(*) FROM unnest(ids, attempts) AS u(id, attempt)
         JOIN @schema@.job j ON j.id = u.id AND j.id = ANY(ids)
        WHERE u.attempt <> 0 AND j.attempt <> u.attempt)$old$,
  $new$SELECT count(*) FROM @schema@.job j
        WHERE j.id = ANY(ids)
          AND j.attempt <> coalesce(nullif(attempts[batch.positions[width_bucket(j.id, batch.sorted)]], 0),
                                    j.attempt))$new$);
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  $old$FROM (SELECT i.n, i.id, e.value AS eff, s.flow_name, st.status AS run_status
              FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
              JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
              JOIN @schema@.job j ON j.id = i.id
                                 AND (i.attempt IS NULL OR i.attempt IN (0, j.attempt))
              LEFT JOIN$old$,
  $new$FROM (SELECT i.n, j.id, effects -> (i.n - 1) AS eff, s.flow_name, st.status AS run_status
              FROM @schema@.job j
              CROSS JOIN LATERAL (SELECT batch.positions[width_bucket(j.id, batch.sorted)] AS n) i
              LEFT JOIN$new$);
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  $old$WHERE jsonb_typeof(e.value->'jobs') = 'array' AND j.state = 'active'$old$,
  $new$WHERE jsonb_typeof(effects -> (i.n - 1) -> 'jobs') = 'array' AND j.state = 'active'
               AND coalesce(attempts[i.n], 0) IN (0, j.attempt)$new$);
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  $old$WITH u AS (
    SELECT i.id, i.attempt, i.n, nullif(o.value, 'null'::jsonb) AS output, e.value AS eff
      FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n) ON o.n = i.n
      LEFT JOIN jsonb_array_elements(coalesce(effects, '[]'::jsonb)) WITH ORDINALITY AS e(value, n)
        ON e.n = i.n
     WHERE i.id <> ALL (bad_ids)
  ), gone AS (
    DELETE FROM @schema@.job j USING u
     WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
       AND (u.attempt IS NULL OR u.attempt IN (0, j.attempt))
    RETURNING j.*, u.n, u.output, u.eff
  )$old$,
  $new$WITH gone AS (
    DELETE FROM @schema@.job j
     WHERE j.id = ANY(ids) AND j.id <> ALL (bad_ids) AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
       AND coalesce(attempts[batch.positions[width_bucket(j.id, batch.sorted)]], 0)
           IN (0, j.attempt)
    RETURNING j.*, batch.positions[width_bucket(j.id, batch.sorted)] AS n,
      nullif(outputs -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1),
             'null'::jsonb) AS output,
      effects -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1) AS eff
  )$new$);

-- archive (009, 026): each job's output and error by its place (now in
-- plpgsql, for the batch's order). Its first and last patches make one
-- valid body together: bodies are checked after the last.
SET check_function_bodies = off;
SELECT @schema@.patch_function('@schema@.archive(bigint[],@schema@.job_state,jsonb[],jsonb[])',
  E'LANGUAGE sql\nAS $function$\n',
  E'LANGUAGE plpgsql\nAS $function$\nDECLARE\n  batch record := @schema@.batch_order(ids);\n'
  || E'BEGIN\n  RETURN QUERY\n');
SELECT @schema@.patch_function('@schema@.archive(bigint[],@schema@.job_state,jsonb[],jsonb[])',
  $old$DELETE FROM @schema@.job j
     USING unnest(ids, outputs, errors) AS u(id, output, error)
     WHERE j.id = u.id AND j.id = ANY(ids)
    RETURNING j.*, u.output AS new_output, u.error AS new_error$old$,
  $new$DELETE FROM @schema@.job j
     WHERE j.id = ANY(ids)
    RETURNING j.*,
      outputs[batch.positions[width_bucket(j.id, batch.sorted)]] AS new_output,
      errors[batch.positions[width_bucket(j.id, batch.sorted)]] AS new_error$new$);
SELECT @schema@.patch_function('@schema@.archive(bigint[],@schema@.job_state,jsonb[],jsonb[])',
  E'  SELECT * FROM moved\n$function$',
  E'  SELECT * FROM moved;\nEND $function$');
RESET check_function_bodies;
SELECT plpgsql_validator('@schema@.archive(bigint[],@schema@.job_state,jsonb[],jsonb[])'::regprocedure);

-- fail_jobs (025, 026): each job's error by its place; the retries in the
-- order of their ids, so that each finds its own time and error by its id.
SELECT @schema@.patch_function('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
  E'DECLARE\n',
  E'DECLARE\n  batch record := @schema@.batch_order(ids);\n');
SELECT @schema@.patch_function('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
  $old$SELECT array_agg(j.id) FILTER (WHERE j.attempt <= j.retry_limit),
         array_agg(u.error) FILTER (WHERE j.attempt <= j.retry_limit),$old$,
  $new$SELECT array_agg(j.id ORDER BY j.id) FILTER (WHERE j.attempt <= j.retry_limit),
         array_agg(u.error ORDER BY j.id) FILTER (WHERE j.attempt <= j.retry_limit),$new$);
SELECT @schema@.patch_function('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
  $old$j.retry_delay_max, j.attempt) END))
           FILTER$old$,
  $new$j.retry_delay_max, j.attempt) END)
                   ORDER BY j.id)
           FILTER$new$);
SELECT @schema@.patch_function('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
  'JOIN unnest(ids, errors) AS u(id, error) ON u.id = j.id;',
  E'CROSS JOIN LATERAL (SELECT errors[batch.positions[width_bucket(j.id, batch.sorted)]]\n'
  || E'                          AS error) u;');
SELECT @schema@.patch_function('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
  $old$SET state = 'retry', start_after = u.at, error = u.error, process_id = NULL
        FROM unnest(again_ids, again_errors, again_at) AS u(id, error, at)
       WHERE j.id = u.id AND j.id = ANY(again_ids)$old$,
  $new$SET state = 'retry', process_id = NULL, -- again_ids are in order
             start_after = again_at[width_bucket(j.id, again_ids)],
             error = again_errors[width_bucket(j.id, again_ids)]
       WHERE j.id = ANY(again_ids)$new$);

-- fail_jobs_guarded (014, 026): the jobs whose failure asks for no retry,
-- chosen from the batch before they are looked up.
SELECT @schema@.patch_function('@schema@.fail_jobs_guarded(bigint[],jsonb[],uuid,boolean)',
  $old$FROM unnest(ids, errors) AS u(id, error)
   WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = 'active' AND u.error->'retry' = 'false'::jsonb;$old$,
  $new$WHERE j.id = ANY(ARRAY(SELECT u.id FROM unnest(ids, errors) AS u(id, error)
                           WHERE u.error->'retry' = 'false'::jsonb))
     AND j.state = 'active';$new$);

-- fail_jobs_at (014, 026): the jobs at their attempts, found by id and
-- then looked up in order.
CREATE OR REPLACE FUNCTION @schema@.fail_jobs_at(ids bigint[], errors jsonb[],
                                                 process_id uuid, attempts integer[])
RETURNS TABLE (id bigint, state @schema@.job_state, start_after timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  batch record := @schema@.batch_order(ids);
  at_attempt bigint[]; -- the batch's jobs at the attempt given for them, in order
  keep_ids bigint[];
  keep_errors jsonb[];
BEGIN
  at_attempt := ARRAY(SELECT j.id FROM @schema@.job j
                       WHERE j.id = ANY(ids)
                         AND j.attempt = attempts[batch.positions[width_bucket(j.id, batch.sorted)]]
                       ORDER BY j.id);
  SELECT array_agg(u.id ORDER BY u.n), array_agg(u.error ORDER BY u.n)
    INTO keep_ids, keep_errors
    FROM unnest(ids, errors, attempts) WITH ORDINALITY AS u(id, error, attempt, n)
   WHERE u.attempt IS NULL OR u.attempt = 0
      OR at_attempt[width_bucket(u.id, at_attempt)] = u.id;
  IF keep_ids IS NOT NULL THEN
    RETURN QUERY SELECT * FROM @schema@.fail_jobs_guarded(keep_ids, keep_errors, process_id);
  END IF;
END $$;
