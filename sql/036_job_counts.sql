-- 036_job_counts: a queue's waiting and active jobs are counted as they
-- change, as its finished jobs are since 034; counts(q) no longer visits
-- the queue's rows.
--
-- counts(q) counted the queue's rows of `job` at each call: 27 ms with
-- 50,000 waiting jobs, half a second with a million, and a dashboard or a
-- script polling it (GET /api/queues calls it for every queue) took that
-- from the workers draining the same rows.
--
-- 034's table becomes job_counts and holds the changes of every state's
-- count: statement triggers of `job` (INSERT, UPDATE, DELETE, TRUNCATE)
-- add a row for each (queue, state) whose count a statement changed, in
-- the same transaction as the rows, as job_archive's triggers do for the
-- finished states. An UPDATE that moves no job between queues or states
-- (a progress, a heartbeat's claim renewal) adds nothing. The jobs that
-- wait for a later start (delayed) are counted from job_due_idx, whose
-- range past now() holds only them: still a visit per delayed job, and
-- none per job that is ready.

-- The tables this changes, locked first and in the order moonq's statements
-- write them (job, job_archive, then the counts job_archive's triggers
-- write): processes of an older moonq still completing jobs meanwhile wait
-- for the migration. Renaming the counts first and then replacing
-- job_archive's triggers took them in the opposite order, and a completion
-- holding job_archive between its rows and its trigger deadlocked the
-- migration (tests/test_migrate.c, upgrade_while_jobs_complete).
LOCK TABLE @schema@.job IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE @schema@.job_archive, @schema@.job_archive_counts IN ACCESS EXCLUSIVE MODE;

ALTER TABLE @schema@.job_archive_counts RENAME TO job_counts;
ALTER INDEX @schema@.job_archive_counts_queue_idx RENAME TO job_counts_queue_idx;

-- The statement triggers' function for `job` and `job_archive`: inserted
-- rows (`added`) count +1, deleted ones (`removed`) -1, and an UPDATE's
-- rows -1 as they were (`before`) and +1 as they are (`after`), summed by
-- queue and state so that only the changes are written. A TRUNCATE forgets
-- the states its table holds: created, retry and active in `job`, the
-- finished ones in `job_archive`. It replaces 034's job_archive_counted.
CREATE FUNCTION @schema@.job_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO @schema@.job_counts (queue, state, jobs)
    SELECT a.queue, a.state, count(*) FROM added a GROUP BY a.queue, a.state;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO @schema@.job_counts (queue, state, jobs)
    SELECT c.queue, c.state, sum(c.jobs) FROM (
      SELECT b.queue, b.state, -1 AS jobs FROM before b
      UNION ALL
      SELECT a.queue, a.state, 1 FROM after a) c
     GROUP BY c.queue, c.state HAVING sum(c.jobs) <> 0;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO @schema@.job_counts (queue, state, jobs)
    SELECT r.queue, r.state, -count(*) FROM removed r GROUP BY r.queue, r.state;
  ELSIF TG_TABLE_NAME = 'job' THEN
    DELETE FROM @schema@.job_counts WHERE state <= 'active';
  ELSE
    DELETE FROM @schema@.job_counts WHERE state > 'active';
  END IF;
  RETURN NULL;
END $$;

DROP TRIGGER job_archive_inserted ON @schema@.job_archive;
DROP TRIGGER job_archive_deleted ON @schema@.job_archive;
DROP TRIGGER job_archive_truncated ON @schema@.job_archive;
DROP FUNCTION @schema@.job_archive_counted();
CREATE TRIGGER job_archive_inserted AFTER INSERT ON @schema@.job_archive
  REFERENCING NEW TABLE AS added
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();
CREATE TRIGGER job_archive_deleted AFTER DELETE ON @schema@.job_archive
  REFERENCING OLD TABLE AS removed
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();
CREATE TRIGGER job_archive_truncated AFTER TRUNCATE ON @schema@.job_archive
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();

CREATE TRIGGER job_inserted AFTER INSERT ON @schema@.job
  REFERENCING NEW TABLE AS added
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();
CREATE TRIGGER job_updated AFTER UPDATE ON @schema@.job
  REFERENCING OLD TABLE AS before NEW TABLE AS after
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();
CREATE TRIGGER job_deleted AFTER DELETE ON @schema@.job
  REFERENCING OLD TABLE AS removed
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();
CREATE TRIGGER job_truncated AFTER TRUNCATE ON @schema@.job
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_counted();

-- The jobs in `job` now. The triggers exist, and hold `job` against writes
-- until this migration commits, so no job is counted twice or missed.
INSERT INTO @schema@.job_counts (queue, state, jobs)
SELECT j.queue, j.state, count(*) FROM @schema@.job j GROUP BY j.queue, j.state;

-- Adds each queue's and state's changes up into one row (none when they
-- sum to 0), as 034's sum_archive_counts did for the finished states. The
-- rows it deletes are the rows it sums: a change a transaction inserts
-- meanwhile stays for the next time. Its locks make a TRUNCATE of either
-- table wait for it, and it for a TRUNCATE, so that a sum is not written
-- back over a truncated table. Called by maintain, under maintain's lock.
CREATE FUNCTION @schema@.sum_job_counts() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE @schema@.job, @schema@.job_archive IN ROW SHARE MODE;
  WITH gone AS (
    DELETE FROM @schema@.job_counts RETURNING queue, state, jobs
  )
  INSERT INTO @schema@.job_counts (queue, state, jobs)
  SELECT g.queue, g.state, sum(g.jobs) FROM gone g
   GROUP BY g.queue, g.state HAVING sum(g.jobs) <> 0;
END $$;

SELECT @schema@.patch_function('@schema@.maintain(double precision,integer)',
  E'  PERFORM @schema@.sum_archive_counts();\n',
  E'  PERFORM @schema@.sum_job_counts();\n');
DROP FUNCTION @schema@.sum_archive_counts();

-- counts (002, 034): every state from job_counts; of the queued jobs, the
-- delayed ones from job_due_idx.
CREATE OR REPLACE FUNCTION @schema@.counts(q text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  WITH p AS (
    SELECT coalesce((SELECT x.paused FROM @schema@.queue x WHERE x.name = q), false) AS paused
  ), c AS (
    SELECT coalesce(sum(c.jobs) FILTER (WHERE c.state < 'active'), 0) AS queued,
           coalesce(sum(c.jobs) FILTER (WHERE c.state = 'active'), 0) AS active,
           coalesce(sum(c.jobs) FILTER (WHERE c.state = 'completed'), 0) AS completed,
           coalesce(sum(c.jobs) FILTER (WHERE c.state = 'failed'), 0) AS failed,
           coalesce(sum(c.jobs) FILTER (WHERE c.state = 'cancelled'), 0) AS cancelled
      FROM @schema@.job_counts c WHERE c.queue = q
  ), d AS (
    SELECT count(*) AS delayed FROM @schema@.job j
     WHERE j.queue = q AND j.state < 'active' AND j.start_after > now()
  )
  SELECT jsonb_build_object(
    'waiting', CASE WHEN p.paused THEN 0 ELSE c.queued - d.delayed END,
    'paused', CASE WHEN p.paused THEN c.queued - d.delayed ELSE 0 END,
    'delayed', d.delayed, 'active', c.active,
    'completed', c.completed, 'failed', c.failed,
    'cancelled', c.cancelled)
  FROM p, c, d
$$;
