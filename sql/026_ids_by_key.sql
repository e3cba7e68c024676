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
-- is one condition in each: rather than repeat them whole, this migration
-- rewrites their stored definitions, and fails unless each text it
-- replaces occurs exactly once (so that a later change to a function
-- cannot make it patch the wrong place, or nothing).

DO $$
DECLARE
  p record;
  def text;
BEGIN
  FOR p IN
    SELECT * FROM (VALUES
      -- 020: a completion without effects
      ('@schema@.complete_jobs(bigint[],jsonb,uuid,jsonb)',
       'WHERE j.id = u.id AND j.state = ''active''',
       'WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = ''active'''),
      -- 019: whether a batch is plain. As NOT EXISTS, PostgreSQL planned
      -- it to find a first row soon, which it expected of a sequential
      -- scan; a count has to read them all, which it does by key.
      ('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
       E'IF effects IS NULL AND NOT EXISTS (\n       SELECT 1 FROM unnest(ids, attempts)',
       E'IF effects IS NULL AND 0 = (\n       SELECT count(*) FROM unnest(ids, attempts)'),
      -- 019: a completion with effects (its third statement)
      ('@schema@.complete_jobs_with(bigint[],jsonb,uuid,jsonb,integer[])',
       'WHERE j.id = u.id AND j.state = ''active''',
       'WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = ''active'''),
      -- 009: failed for good, cancelled, expired past the retries
      ('@schema@.archive(bigint[],@schema@.job_state,jsonb[],jsonb[])',
       'WHERE j.id = u.id',
       'WHERE j.id = u.id AND j.id = ANY(ids)'),
      -- 025: a failure, its retries
      ('@schema@.fail_jobs(bigint[],jsonb[],uuid,boolean)',
       'WHERE j.id = u.id',
       'WHERE j.id = u.id AND j.id = ANY(again_ids)'),
      -- 014: a failure that asks for no retry
      ('@schema@.fail_jobs_guarded(bigint[],jsonb[],uuid,boolean)',
       'WHERE j.id = u.id AND j.state = ''active''',
       'WHERE j.id = u.id AND j.id = ANY(ids) AND j.state = ''active'''),
      -- 014: a worker's failures, at their attempts
      ('@schema@.fail_jobs_at(bigint[],jsonb[],uuid,integer[])',
       'ON j.id = u.id',
       'ON j.id = u.id AND j.id = ANY(ids)')
    ) AS v(fn, old, new)
  LOOP
    def := pg_get_functiondef(p.fn::regprocedure);
    IF (length(def) - length(replace(def, p.old, ''))) / length(p.old) <> 1 THEN
      RAISE EXCEPTION '026_ids_by_key: % does not hold "%" exactly once', p.fn, p.old;
    END IF;
    EXECUTE replace(def, p.old, p.new);
  END LOOP;
END $$;
