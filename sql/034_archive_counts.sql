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
-- job_archive_counts holds the counts by queue and state, changed by
-- statement triggers of job_archive in the same transaction as the rows:
-- exact, and a count of them is a sum of a few rows. The rows are split by
-- slot (the backend's pid modulo 16), so that the completions of two
-- workers' connections do not wait on one row; counts adds the slots up.
-- Every write of job_archive is an INSERT, a DELETE or a TRUNCATE (no
-- statement changes an archived job's queue or state).

CREATE TABLE @schema@.job_archive_counts (
  queue text NOT NULL,
  state @schema@.job_state NOT NULL,
  slot  integer NOT NULL,
  jobs  bigint NOT NULL,  -- this slot's share: may be negative
  PRIMARY KEY (queue, state, slot)
);

-- The statement triggers' function: adds the inserted rows (transition
-- table `archived`), subtracts the deleted ones (`removed`), clears all on
-- TRUNCATE. Rows are upserted in (queue, state) order, so that two
-- statements sharing a slot lock its rows in one order.
CREATE FUNCTION @schema@.job_archive_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO @schema@.job_archive_counts AS c (queue, state, slot, jobs)
    SELECT a.queue, a.state, pg_backend_pid() % 16, count(*)
      FROM archived a GROUP BY a.queue, a.state ORDER BY a.queue, a.state
    ON CONFLICT (queue, state, slot) DO UPDATE SET jobs = c.jobs + excluded.jobs;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO @schema@.job_archive_counts AS c (queue, state, slot, jobs)
    SELECT r.queue, r.state, pg_backend_pid() % 16, -count(*)
      FROM removed r GROUP BY r.queue, r.state ORDER BY r.queue, r.state
    ON CONFLICT (queue, state, slot) DO UPDATE SET jobs = c.jobs + excluded.jobs;
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
INSERT INTO @schema@.job_archive_counts (queue, state, slot, jobs)
SELECT a.queue, a.state, 0, count(*) FROM @schema@.job_archive a GROUP BY a.queue, a.state;

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
