-- 016_queues: every queue a schema knows, with its counts, in one call
-- (moonq.queue.queues(), GET /api/queues).
--
-- A queue is known when it has a row in the queue table (settings or a
-- pause; the "" row holds the defaults of every queue and is not one) or
-- jobs, waiting or finished. The names with jobs are found by a loose index
-- scan of the indexes that lead with the queue (job_due_idx,
-- job_archive_queue_idx): one probe per queue, not a read of every job.
CREATE FUNCTION @schema@.queue_names() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
  WITH RECURSIVE hot(q) AS (
    (SELECT j.queue FROM @schema@.job j ORDER BY j.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM @schema@.job j WHERE j.queue > hot.q ORDER BY j.queue LIMIT 1)
      FROM hot WHERE hot.q IS NOT NULL
  ), done(q) AS (
    (SELECT a.queue FROM @schema@.job_archive a ORDER BY a.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT a.queue FROM @schema@.job_archive a WHERE a.queue > done.q
             ORDER BY a.queue LIMIT 1)
      FROM done WHERE done.q IS NOT NULL
  )
  SELECT x.name FROM @schema@.queue x WHERE x.name <> ''
  UNION SELECT hot.q FROM hot WHERE hot.q IS NOT NULL
  UNION SELECT done.q FROM done WHERE done.q IS NOT NULL
$$;

-- [{name, paused, counts: {waiting, paused, delayed, active, completed,
-- failed, cancelled}}] by name.
CREATE FUNCTION @schema@.queues() RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'name', n.name,
           'paused', coalesce(x.paused, false),
           'counts', @schema@.counts(n.name)) ORDER BY n.name), '[]'::jsonb)
    FROM @schema@.queue_names() AS n(name)
    LEFT JOIN @schema@.queue x ON x.name = n.name
$$;
