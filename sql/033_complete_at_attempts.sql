-- 033_complete_at_attempts: complete_jobs takes the attempts the jobs were
-- claimed at, so that a worker's plain batch is one statement.
--
-- complete_jobs_with sent a batch without effects to complete_jobs only
-- after a statement had counted the batch's jobs that had started again
-- since (a claim that ran past its expiry): one more read of every job of
-- every batch, about a sixth of a completion's time. complete_jobs now
-- leaves those jobs out itself, as complete_jobs_with's own completion
-- does: a job given an attempt other than 0 or NULL completes only at that
-- attempt.

-- complete_jobs(ids, outputs, process_id, events, attempts): a new
-- parameter, so a new function (the one of 031 with one more argument),
-- then the old one dropped.
SELECT @schema@.patch_function('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb)',
  'events jsonb DEFAULT NULL::jsonb)',
  'events jsonb DEFAULT NULL::jsonb, attempts integer[] DEFAULT NULL::integer[])');
DROP FUNCTION @schema@.complete_jobs(bigint[], jsonb, uuid, jsonb);
SELECT @schema@.patch_function('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb,integer[])',
  E'       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id\n    RETURNING',
  E'       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id\n'
  || E'       AND coalesce(attempts[batch.positions[width_bucket(j.id, batch.sorted)]], 0)\n'
  || E'           IN (0, j.attempt)\n    RETURNING');

-- complete_jobs_with: a batch without effects goes to complete_jobs with
-- its attempts, unchecked; the batch's order is sorted only for the others.
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  E'DECLARE\n  batch record := @schema@.batch_order(ids);\n',
  E'DECLARE\n  batch record;\n');
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  $old$  -- a batch without effects whose jobs are all at their attempts (plain
  -- jobs, as a rule) goes to complete_jobs as it is
  IF effects IS NULL AND 0 = (
       SELECT count(*) FROM @schema@.job j
        WHERE j.id = ANY(ids)
          AND j.attempt <> coalesce(nullif(attempts[batch.positions[width_bucket(j.id, batch.sorted)]], 0),
                                    j.attempt)) THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(ids, outputs, process_id, NULL);
    RETURN;
  END IF;
$old$,
  $new$  -- a batch without effects (plain jobs, as a rule) goes to complete_jobs
  IF effects IS NULL THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(ids, outputs, process_id, NULL, attempts);
    RETURN;
  END IF;
  batch := @schema@.batch_order(ids);
$new$);
