-- 035_outputs_checked: every completion function refuses outputs that do
-- not hold one entry per id, before it writes anything, as complete_jobs
-- does since 031.
--
-- Since 031 each job finds its output at its place in `outputs`, and a job
-- without an entry there (outputs shorter than ids, or not a JSON array)
-- finds NULL. complete_jobs refused such a batch; complete_jobs_with's
-- completion with effects completed it, every job past the end of
-- `outputs` archived with no output (before 031 a non-array was refused
-- and those jobs were left active). complete_jobs_guarded (a worker's
-- completions) caught complete_jobs' refusal and completed the batch job
-- by job, each with its entry or NULL: the same loss. A worker's batch
-- always holds one output per id; a caller from SQL gets the error.

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
