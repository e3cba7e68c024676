-- 023_fetch_after: a claim may start past the queue's claimed head.
--
-- Every claimed or completed job leaves an entry in job_fetch_idx that only
-- VACUUM removes, and that a scan marks dead only once no open snapshot
-- can see the old row. While a transaction holds the horizon back (a long
-- report, a session idle in a transaction), these entries pile up at the
-- head of the queue, and a claim that walks the queue from its start
-- visits the table row of each: at 200 jobs/s that was 35 ms per claim
-- after five minutes, and the queue fell behind.
--
-- A worker therefore passes the position of a job it claimed a moment ago
-- (its priority and id): the claim takes jobs of a higher priority, jobs
-- of that priority with a greater id, then jobs of lower priorities, each
-- an index range that starts after the dead entries instead of walking
-- them. Jobs that become runnable behind that position (a retry or a
-- delayed job coming due, a job whose sending transaction committed after
-- later ones were claimed) are taken by the claims without a position,
-- which the worker makes at least every MQ_FETCH_HEAD_INTERVAL seconds
-- (src/worker.c) and whenever a delayed job is due.

-- Locks up to n runnable jobs of queue q that come after the place
-- (at_priority, at_id) in claim order (priority descending, then id), or
-- have a priority above at_priority; returns their ids in that order.
-- (2^31, 0) is the place before every job: the head of the queue.
--
-- It reads three ranges of job_fetch_idx in turn: higher priorities, the
-- place's priority past its id, lower priorities; the outer LIMIT stops
-- before a range it does not need. (FOR UPDATE is not allowed in a
-- UNION's branches; in a lateral subquery it is.) Each range must be read
-- in index order from its start. Where the statistics say the queue holds
-- a few jobs (autovacuum under a held horizon counts only the live ones),
-- the planner would rather scan job_due_idx as a bitmap and sort, which
-- reads every entry of the queue, dead ones included: hence the two
-- settings, which hold for this statement only.
CREATE FUNCTION @schema@.lock_waiting(q text, n integer, at_priority bigint,
                                      at_id bigint)
RETURNS bigint[]
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
BEGIN
  RETURN ARRAY(
    SELECT x.id
      FROM (VALUES (at_priority + 1, 2147483647::bigint, 0::bigint),
                   (at_priority, at_priority, at_id),
                   (-2147483648::bigint, at_priority - 1, 0::bigint)) r(lo, hi, past)
     CROSS JOIN LATERAL (
       SELECT jj.id FROM @schema@.job jj
        WHERE jj.queue = q AND jj.state < 'active' AND jj.start_after <= now()
          AND jj.priority BETWEEN r.lo AND r.hi AND jj.id > r.past
        ORDER BY jj.priority DESC, jj.id
        LIMIT n
          FOR UPDATE SKIP LOCKED) x
     LIMIT n);
END $$;

-- Claims up to `n` runnable jobs of queue q for process `process_id`,
-- priority first then FIFO.
-- after_priority and after_id, both given: only jobs that come after
-- (after_priority, after_id) in that order, and jobs of a higher priority;
-- NULL: from the head of the queue. Writes job.active for each claimed
-- job, with the process (009).
CREATE FUNCTION @schema@.fetch_jobs(q text, n integer, process_id uuid,
                                    after_priority integer, after_id bigint)
RETURNS TABLE (id bigint, name text, data jsonb, attempt integer,
               priority integer, retry_limit integer, expire_in double precision,
               run_id text, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  ids bigint[];
BEGIN
  IF process_id IS NULL THEN -- crash recovery and expiry find a running job by it
    RAISE EXCEPTION 'fetch_jobs: process_id is required (the process that runs the jobs)'
      USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM @schema@.queue x WHERE x.name = q AND x.paused) THEN
    RETURN;
  END IF;
  IF after_priority IS NULL OR after_id IS NULL THEN
    ids := @schema@.lock_waiting(q, n, 2147483648, 0);
  ELSE
    ids := @schema@.lock_waiting(q, n, after_priority, after_id);
  END IF;
  IF cardinality(ids) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY
  WITH claimed AS (
    UPDATE @schema@.job j
       SET state = 'active', started_at = now(), process_id = fetch_jobs.process_id,
           attempt = j.attempt + 1
     WHERE j.id = ANY(ids)
    RETURNING j.id, j.name, j.data, j.attempt, j.priority,
              j.retry_limit, j.expire_in, j.run_id, j.created_at
  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(c.name, c.id), 'job.active',
           jsonb_build_object('queue', q, 'attempt', c.attempt,
                              'process_id', fetch_jobs.process_id),
           c.run_id, c.attempt
      FROM claimed c
     WHERE @schema@.job_events_on()
     ORDER BY c.id
  )
  SELECT * FROM claimed c ORDER BY c.priority DESC, c.id;
  IF FOUND AND @schema@.job_events_on() THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;

-- The claim without a position (009), kept for callers in SQL.
CREATE OR REPLACE FUNCTION @schema@.fetch_jobs(q text, n integer, process_id uuid)
RETURNS TABLE (id bigint, name text, data jsonb, attempt integer,
               priority integer, retry_limit integer, expire_in double precision,
               run_id text, created_at timestamptz)
LANGUAGE sql AS $$
  SELECT * FROM @schema@.fetch_jobs(q, n, process_id, NULL, NULL)
$$;
