-- 029_ready_queues: the check of idle queues for runnable jobs, as a
-- function, looking each queue up on its own.
--
-- A worker checks its idle queues together (worker.c probe_cb). The check
-- was a semi-join of the queue names with job_due_idx; with statistics of
-- a few live rows (autovacuum's count under a held horizon) PostgreSQL
-- read the index's entries of every queue due by now, dead ones included,
-- once into memory, and matched the names against them: 10,000 row visits
-- and 5 to 20 ms a check at 200 jobs/s after a minute of a held horizon.
-- Now each queue is its own index range (LATERAL, LIMIT 1), read from its
-- newest entry due by now backwards: a queue that has runnable jobs has
-- them among its newest, and the entries of jobs claimed since the horizon
-- are older.

-- The 1-based positions in `queues` of the queues with a job runnable now
-- (waiting or retrying, due), in ascending order; '{}' when none.
CREATE FUNCTION @schema@.ready_queues(queues text[]) RETURNS integer[]
LANGUAGE sql STABLE AS $$
  SELECT coalesce(array_agg(u.n::integer ORDER BY u.n), '{}')
    FROM unnest(queues) WITH ORDINALITY AS u(q, n)
   CROSS JOIN LATERAL (
     SELECT 1 FROM @schema@.job j
      WHERE j.queue = u.q AND j.state < 'active' AND j.start_after <= now()
      ORDER BY j.start_after DESC
      LIMIT 1) x
$$;
