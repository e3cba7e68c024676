-- 035_batch_entries: a batch's entries are found where they belong: the
-- completion functions refuse outputs without one entry per id, and the
-- flow steps' archive trigger finds a run's outcome by flow and run id.
--
-- Outputs. Since 031 each job finds its output at its place in `outputs`,
-- and a job without an entry there (outputs shorter than ids, or not a
-- JSON array) finds NULL. complete_jobs refused such a batch;
-- complete_jobs_with's completion with effects completed it, every job
-- past the end of `outputs` archived with no output (before 031 a
-- non-array was refused and those jobs were left active).
-- complete_jobs_guarded (a worker's completions) caught complete_jobs'
-- refusal and completed the batch job by job, each with its entry or NULL:
-- the same loss. Every completion function now checks first, before it
-- writes anything; a worker's batch always holds one output per id.

-- Raises 22023 naming fn when outputs is not a JSON array with one entry
-- per element of ids (NULLs included; a NULL or empty ids takes []).
CREATE FUNCTION @schema@.check_outputs(fn text, ids bigint[], outputs jsonb)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF (CASE WHEN jsonb_typeof(outputs) = 'array'
           THEN jsonb_array_length(outputs) <> coalesce(cardinality(ids), 0)
           ELSE true END) THEN
    RAISE EXCEPTION '%: outputs must be a JSON array with one entry per id (% ids, got %)',
      fn, coalesce(cardinality(ids), 0),
      CASE WHEN jsonb_typeof(outputs) = 'array'
           THEN 'an array of ' || jsonb_array_length(outputs)
           ELSE coalesce('a JSON ' || jsonb_typeof(outputs), 'NULL') END
      USING ERRCODE = '22023';
  END IF;
END $$;

-- complete_jobs (031, 033): its own check becomes the shared one.
SELECT @schema@.patch_function('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb,integer[])',
  $old$  IF jsonb_typeof(outputs) IS DISTINCT FROM 'array'
     OR jsonb_array_length(outputs) <> coalesce(cardinality(ids), 0) THEN
    RAISE EXCEPTION 'complete_jobs: outputs must be a JSON array with one entry per id (% ids)',
      coalesce(cardinality(ids), 0) USING ERRCODE = '22023';
  END IF;
$old$,
  $new$  PERFORM @schema@.check_outputs('complete_jobs', ids, outputs);
$new$);

-- complete_jobs_with (019, 031, 033): checked before either path.
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  E'BEGIN\n  -- a batch without effects (plain jobs, as a rule) goes to complete_jobs\n',
  E'BEGIN\n  PERFORM @schema@.check_outputs(''complete_jobs_with'', ids, outputs);\n'
  || E'  -- a batch without effects (plain jobs, as a rule) goes to complete_jobs\n');

-- complete_jobs_guarded (014): checked before the batch's completion, whose
-- errors it takes for the errors of single jobs.
SELECT @schema@.patch_function('@schema@.complete_jobs_guarded(bigint[],jsonb,uuid,jsonb,integer[])',
  E'BEGIN\n  BEGIN\n',
  E'BEGIN\n  PERFORM @schema@.check_outputs(''complete_jobs_guarded'', ids, outputs);\n  BEGIN\n');

-- flow_steps_archived (032): a run's outcome is found by its flow and run
-- id together. A handler's ctx.enqueue passes its run id on, so a job of
-- another flow's step can carry the run id of a run of this flow; archived
-- in one statement with this run's last step (a batch of completions, say),
-- the run was in r_runs twice, once for each flow, and its position by run
-- id alone was the other flow's entry when that flow's name sorted after:
-- the run matched no row of queue_flow_index and stayed running for good,
-- with no job left (or did not fail, when its step had failed).
SELECT @schema@.patch_function('@schema@.flow_steps_archived()',
  E'  pos jsonb;         -- {run id: its 1-based position in r_runs}\n',
  E'  pos jsonb;         -- {[flow, run id] as text: its 1-based position in r_runs}\n');
SELECT @schema@.patch_function('@schema@.flow_steps_archived()',
  $old$  pos := (SELECT jsonb_object_agg(u.run_id, u.n)
            FROM unnest(r_runs) WITH ORDINALITY AS u(run_id, n));
  WITH ended AS (
    UPDATE @schema@.queue_flow_index f
       SET status = CASE WHEN r_failed[(pos ->> f.run_id)::integer] IS NULL
                         THEN 'completed' ELSE 'failed' END,
           completed_at = now(), failed_step = r_failed[(pos ->> f.run_id)::integer],
           error = r_errors[(pos ->> f.run_id)::integer]
     WHERE f.run_id = ANY(r_runs) AND f.flow_name = r_flows[(pos ->> f.run_id)::integer]
       AND f.status = 'running'
       AND (r_failed[(pos ->> f.run_id)::integer] IS NOT NULL OR NOT EXISTS ($old$,
  $new$  pos := (SELECT jsonb_object_agg(jsonb_build_array(u.flow_name, u.run_id)::text, u.n)
            FROM unnest(r_flows, r_runs) WITH ORDINALITY AS u(flow_name, run_id, n));
  WITH ended AS (
    UPDATE @schema@.queue_flow_index f
       SET status = CASE WHEN r_failed[(pos ->> jsonb_build_array(f.flow_name, f.run_id)::text)::integer] IS NULL
                         THEN 'completed' ELSE 'failed' END,
           completed_at = now(),
           failed_step = r_failed[(pos ->> jsonb_build_array(f.flow_name, f.run_id)::text)::integer],
           error = r_errors[(pos ->> jsonb_build_array(f.flow_name, f.run_id)::text)::integer]
     WHERE f.run_id = ANY(r_runs) AND pos ? jsonb_build_array(f.flow_name, f.run_id)::text
       AND f.status = 'running'
       AND (r_failed[(pos ->> jsonb_build_array(f.flow_name, f.run_id)::text)::integer] IS NOT NULL
            OR NOT EXISTS ($new$);
SELECT @schema@.patch_function('@schema@.flow_steps_archived()',
  E'              (pos ->> f.run_id)::integer AS n\n',
  E'              (pos ->> jsonb_build_array(f.flow_name, f.run_id)::text)::integer AS n\n');
