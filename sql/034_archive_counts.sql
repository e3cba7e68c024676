-- 034_archive_counts: a queue's finished jobs are counted as they are
-- archived and deleted, not read from job_archive at each call of counts.
--
-- counts(q) (moonq.queue.counts, `moonq counts`, GET /api/queues, which
-- calls it for every queue) counted the queue's completed, failed and
-- cancelled jobs in job_archive: one visit per archived job, so a call grew
-- with the history (a second and more with the millions of rows a week's
-- retention keeps at a few thousand jobs a minute), and a dashboard polling
-- it took its share of the database from the workers.
--
-- job_archive_counts holds changes of those counts, by queue and state:
-- statement triggers of job_archive add a row for each (queue, state) a
-- statement archived (+ its jobs) or deleted (- its jobs), in the same
-- transaction as the rows, so the sum is exact; maintain adds a queue's
-- rows up into one from time to time. Changes are only ever inserted: two
-- transactions that archive jobs of one queue never wait on each other's
-- rows (a row per queue and state, updated in place, made every archiving
-- transaction wait for the last one's commit, and could deadlock two that
-- each archived twice). Every write of job_archive is an INSERT, a DELETE
-- or a TRUNCATE (no statement changes an archived job's queue or state).

CREATE TABLE @schema@.job_archive_counts (
  queue text NOT NULL,
  state @schema@.job_state NOT NULL,
  jobs  bigint NOT NULL  -- a change: + jobs archived, - jobs deleted
);
CREATE INDEX job_archive_counts_queue_idx ON @schema@.job_archive_counts (queue);

-- The statement triggers' function: a row for each (queue, state) of the
-- inserted rows (transition table `archived`) and of the deleted ones
-- (`removed`); on TRUNCATE, every row goes.
CREATE FUNCTION @schema@.job_archive_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO @schema@.job_archive_counts (queue, state, jobs)
    SELECT a.queue, a.state, count(*) FROM archived a GROUP BY a.queue, a.state;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO @schema@.job_archive_counts (queue, state, jobs)
    SELECT r.queue, r.state, -count(*) FROM removed r GROUP BY r.queue, r.state;
  ELSE
    DELETE FROM @schema@.job_archive_counts;
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER job_archive_inserted AFTER INSERT ON @schema@.job_archive
  REFERENCING NEW TABLE AS archived
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_archive_counted();
CREATE TRIGGER job_archive_deleted AFTER DELETE ON @schema@.job_archive
  REFERENCING OLD TABLE AS removed
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_archive_counted();
CREATE TRIGGER job_archive_truncated AFTER TRUNCATE ON @schema@.job_archive
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.job_archive_counted();

-- The jobs archived so far. The triggers exist, and hold job_archive
-- against writes until this migration commits, so no row is counted twice
-- or missed.
INSERT INTO @schema@.job_archive_counts (queue, state, jobs)
SELECT a.queue, a.state, count(*) FROM @schema@.job_archive a GROUP BY a.queue, a.state;

-- Adds each queue's and state's changes up into one row (none when they
-- sum to 0). The rows it deletes are the rows it sums: a change a
-- transaction inserts meanwhile stays for the next time. Its lock on
-- job_archive makes a TRUNCATE wait for it, and it for a TRUNCATE, so that
-- a sum is not written back over a truncated archive. Called by maintain,
-- under maintain's lock (one at a time).
CREATE FUNCTION @schema@.sum_archive_counts() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE @schema@.job_archive IN ROW SHARE MODE;
  WITH gone AS (
    DELETE FROM @schema@.job_archive_counts RETURNING queue, state, jobs
  )
  INSERT INTO @schema@.job_archive_counts (queue, state, jobs)
  SELECT g.queue, g.state, sum(g.jobs) FROM gone g
   GROUP BY g.queue, g.state HAVING sum(g.jobs) <> 0;
END $$;

-- maintain (025): the counts' changes added up, after the retention's
-- deletes (whose changes they include).
SELECT @schema@.patch_function('@schema@.maintain(double precision,integer)',
  E'  GET DIAGNOSTICS deleted = ROW_COUNT;\n',
  E'  GET DIAGNOSTICS deleted = ROW_COUNT;\n  PERFORM @schema@.sum_archive_counts();\n');

-- counts (002): the finished jobs from job_archive_counts.
SELECT @schema@.patch_function('@schema@.counts(text)',
  $old$SELECT count(*) FILTER (WHERE a.state = 'completed') AS completed,
           count(*) FILTER (WHERE a.state = 'failed') AS failed,
           count(*) FILTER (WHERE a.state = 'cancelled') AS cancelled
      FROM @schema@.job_archive a WHERE a.queue = q$old$,
  $new$SELECT coalesce(sum(c.jobs) FILTER (WHERE c.state = 'completed'), 0) AS completed,
           coalesce(sum(c.jobs) FILTER (WHERE c.state = 'failed'), 0) AS failed,
           coalesce(sum(c.jobs) FILTER (WHERE c.state = 'cancelled'), 0) AS cancelled
      FROM @schema@.job_archive_counts c WHERE c.queue = q$new$);
