-- 027_fetch_many: one statement claims jobs of many queues.
--
-- A worker has one consumer per queue its handlers name, and each fetched
-- with a statement of its own (fetch_jobs, 023). With many queues of a few
-- jobs each, every claim paid a statement's fixed cost (a round trip,
-- executor start-up, a transaction and its commit) for a handful of jobs:
-- 1,000 queues of 20 jobs took 2,000 claims of 10 jobs, and PostgreSQL
-- spent 1.8 times as much CPU per job as on the same jobs in one queue.
-- The worker now gathers the fetches its consumers want in one loop turn
-- and claims for all of them with fetch_jobs_many: each queue's jobs are
-- chosen as fetch_jobs chooses them (lock_waiting, from the head or past a
-- position), then one UPDATE claims them all.

-- Claims, for each i, up to ns[i] runnable jobs of queue queues[i] for
-- process `process_id`, as fetch_jobs(queues[i], ns[i], process_id,
-- after_priorities[i], after_ids[i]) would (NULL arrays or elements: from
-- the head of the queue), in one transaction. Paused queues and ns[i] < 1
-- claim nothing. Writes job.active for each claimed job, as fetch_jobs.
-- Returns the jobs grouped by queue, in the order the queues are given,
-- each queue's in claim order (priority descending, then id); claim_took
-- is the time in seconds spent choosing that queue's jobs (the walk of its
-- index). Errors (22023): process_id NULL, arrays of different lengths, a
-- queue NULL or named twice.
CREATE FUNCTION @schema@.fetch_jobs_many(queues text[], ns integer[],
                                         process_id uuid,
                                         after_priorities integer[],
                                         after_ids bigint[])
RETURNS TABLE (queue text, id bigint, name text, data jsonb, attempt integer,
               priority integer, retry_limit integer, expire_in double precision,
               run_id text, created_at timestamptz, claim_took double precision)
LANGUAGE plpgsql AS $$
DECLARE
  m integer := coalesce(cardinality(queues), 0);
  paused text[];
  ids bigint[] := '{}';
  took double precision[];
  t timestamptz;
BEGIN
  IF process_id IS NULL THEN -- crash recovery and expiry find a running job by it
    RAISE EXCEPTION 'fetch_jobs_many: process_id is required (the process that runs the jobs)'
      USING ERRCODE = '22023';
  END IF;
  IF coalesce(cardinality(ns), 0) <> m
     OR coalesce(cardinality(after_priorities), m) <> m
     OR coalesce(cardinality(after_ids), m) <> m THEN
    RAISE EXCEPTION 'fetch_jobs_many: queues, ns, after_priorities and after_ids must have one element per queue (% queues, % ns, % after_priorities, % after_ids)',
      m, coalesce(cardinality(ns), 0), cardinality(after_priorities),
      cardinality(after_ids)
      USING ERRCODE = '22023';
  END IF;
  IF m = 0 THEN
    RETURN;
  END IF;
  IF array_position(queues, NULL) IS NOT NULL
     OR (SELECT count(DISTINCT x) FROM unnest(queues) x) <> m THEN
    RAISE EXCEPTION 'fetch_jobs_many: every queue must be named once and not be NULL'
      USING ERRCODE = '22023';
  END IF;
  paused := ARRAY(SELECT x.name FROM @schema@.queue x
                   WHERE x.name = ANY(queues) AND x.paused);
  took := array_fill(NULL::double precision, ARRAY[m]);
  FOR i IN 1 .. m LOOP
    CONTINUE WHEN ns[i] IS NULL OR ns[i] < 1 OR queues[i] = ANY(paused);
    t := clock_timestamp();
    IF after_priorities[i] IS NULL OR after_ids[i] IS NULL THEN
      ids := ids || @schema@.lock_waiting(queues[i], ns[i], 2147483648, 0);
    ELSE
      ids := ids || @schema@.lock_waiting(queues[i], ns[i], after_priorities[i],
                                          after_ids[i]);
    END IF;
    took[i] := extract(epoch FROM clock_timestamp() - t);
  END LOOP;
  IF cardinality(ids) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY
  WITH claimed AS (
    UPDATE @schema@.job j
       SET state = 'active', started_at = now(),
           process_id = fetch_jobs_many.process_id, attempt = j.attempt + 1
     WHERE j.id = ANY(ids)
    RETURNING j.queue, j.id, j.name, j.data, j.attempt, j.priority,
              j.retry_limit, j.expire_in, j.run_id, j.created_at
  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(c.name, c.id), 'job.active',
           jsonb_build_object('queue', c.queue, 'attempt', c.attempt,
                              'process_id', fetch_jobs_many.process_id),
           c.run_id, c.attempt
      FROM claimed c
     WHERE @schema@.job_events_on()
     ORDER BY c.id
  )
  SELECT c.queue, c.id, c.name, c.data, c.attempt, c.priority, c.retry_limit,
         c.expire_in, c.run_id, c.created_at, u.took
    FROM claimed c
    JOIN unnest(queues, took) WITH ORDINALITY u(q, took, k) ON u.q = c.queue
   ORDER BY u.k, c.priority DESC, c.id;
  IF FOUND AND @schema@.job_events_on() THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;
