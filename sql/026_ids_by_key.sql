-- 026_ids_by_key: the statements that complete, fail or archive given jobs
-- find them by primary key, whatever the statistics say.
--
-- These statements join the given ids (unnest(ids, ...)) to job on
-- j.id = u.id. A worker's connection runs them often enough that PostgreSQL
-- settles on a plan for any ids, which assumes ten of them. When the table's
-- statistics count few live rows -- as autovacuum leaves them while a
-- transaction holds the horizon back: it can remove nothing and counts only
-- the live rows -- that plan reads all of job (a sequential scan, or a whole
-- read of job_pkey into a hash) and joins the ids against it, visiting the
-- dead version of every job claimed or completed since the horizon. At 200
-- jobs/s that made completions take 20 to 60 ms after a few minutes
-- (bench/RESULTS.md, "Held-back horizon"). Saying j.id = ANY(ids) as well
-- gives each statement a condition on job_pkey, which the planner then uses
-- to look the ids up; the rows found are the same.
--
-- The functions are long (complete_jobs_with is 260 lines), and the change
-- is one condition in each: rather than repeat them whole, patch_function
-- rewrites their stored definitions.

-- Replaces text `old` with `new` in the stored definition of function fn
-- and stores the result (CREATE OR REPLACE: its owner, grants and settings
-- stay). Raises unless `old` occurs exactly once, so that a function
-- changed since cannot be patched in the wrong place, or not at all. For
-- migrations that change a few words of a long function.
CREATE FUNCTION @schema@.patch_function(fn regprocedure, old text, new text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  def text := pg_get_functiondef(fn);
BEGIN
  IF (length(def) - length(replace(def, old, ''))) / length(old) <> 1 THEN
    RAISE EXCEPTION 'patch_function: % does not hold "%" exactly once', fn, old;
  END IF;
  EXECUTE replace(def, old, new);
END $$;

-- 020: a completion without effects
SELECT @schema@.patch_function('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb)',
  'WHERE j.id = u.id AND j.state = ''active''',
  'WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = ''active''');
-- 019: whether a batch is plain. As NOT EXISTS, PostgreSQL planned it to
-- find a first row soon, which it expected of a sequential scan; a count
-- has to read them all, which it does by key.
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  E'IF effects IS NULL AND NOT EXISTS (\n       SELECT 1 FROM unnest(ids, attempts)',
  E'IF effects IS NULL AND 0 = (\n       SELECT count(*) FROM unnest(ids, attempts)');
-- 019: a completion with effects (its third statement)
SELECT @schema@.patch_function('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
  'WHERE j.id = u.id AND j.state = ''active''',
  'WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = ''active''');
-- 009: failed for good, cancelled, expired past the retries
SELECT @schema@.patch_function('@schema@.archive(bigint[],@schema@.job_state,jsonb[],jsonb[])',
  'WHERE j.id = u.id',
  'WHERE j.id = u.id AND j.id = ANY(ids)');
-- 025: a failure, its retries
SELECT @schema@.patch_function('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
  'WHERE j.id = u.id',
  'WHERE j.id = u.id AND j.id = ANY(again_ids)');
-- 014: a failure that asks for no retry
SELECT @schema@.patch_function('@schema@.fail_jobs_guarded(bigint[],jsonb[],uuid,boolean)',
  'WHERE j.id = u.id AND j.state = ''active''',
  'WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = ''active''');
-- 014: a worker's failures, at their attempts
SELECT @schema@.patch_function('@schema@.fail_jobs_at(bigint[],jsonb[],uuid,integer[])',
  'ON j.id = u.id',
  'ON j.id = u.id AND j.id = ANY(ids)');
