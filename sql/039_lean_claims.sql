-- 039_lean_claims: a claim and a completion without the statements of job
-- events when they are off, a claim that updates the rows it locked by
-- their position, and batch_order planned once a session.
--
-- Measured with bench/send_instructions.sh (BENCH_DRAIN=1: a claim and its
-- completion, each its own transaction, in instructions per job):
--
-- - fetch_jobs, fetch_jobs_many and complete_jobs wrote job events from a
--   CTE of their one statement, an INSERT into queue_events that ran
--   whether events were on or not. PostgreSQL set that INSERT up at every
--   call (its partitioned table, its generated column, a UNION, a sort):
--   about 400,000 instructions a claim and completion, 11% of a batch of
--   10. A claim now writes its events, only when they are on, by a
--   statement of its own just before its UPDATE, from the rows it has
--   locked; a completion runs a statement without the CTE unless events
--   are wanted. Either way a flow step's job.active still comes before the
--   step.started that the UPDATE's statement trigger writes, and its
--   job.completed before step.completed and flow.completed.
-- - The claim locked its jobs (lock_waiting) and then found them again by
--   primary key to update them. lock_waiting_rows also returns where the
--   locked rows are (ctid), and the UPDATE goes straight there: a row
--   locked by this transaction cannot move. 4.6% of a batch of 500.
-- - batch_order was LANGUAGE sql and not inlined where it is called (a
--   plpgsql assignment), so PostgreSQL parsed and planned its query again
--   in every transaction. In plpgsql its plan is kept for the session:
--   5% of a batch of 10.

-- lock_waiting (023) with the rows' positions: ids and tids hold the same
-- jobs in the same order (empty arrays when none is waiting).
CREATE FUNCTION @schema@.lock_waiting_rows(q text, n integer, at_priority bigint,
                                           at_id bigint, OUT ids bigint[],
                                           OUT tids tid[])
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
BEGIN
  SELECT coalesce(array_agg(x.id), '{}'), coalesce(array_agg(x.ctid), '{}')
    INTO ids, tids
    FROM (SELECT y.id, y.ctid
            FROM (VALUES (at_priority + 1, 2147483647::bigint, 0::bigint),
                         (at_priority, at_priority, at_id),
                         (-2147483648::bigint, at_priority - 1, 0::bigint)) r(lo, hi, past)
           CROSS JOIN LATERAL (
             SELECT jj.id, jj.ctid FROM @schema@.job jj
              WHERE jj.queue = q AND jj.state < 'active' AND jj.start_after <= now()
                AND jj.priority BETWEEN r.lo AND r.hi AND jj.id > r.past
              ORDER BY jj.priority DESC, jj.id
              LIMIT n
                FOR UPDATE SKIP LOCKED) y
           LIMIT n) x;
END $$;

-- The job.active events of jobs this transaction has locked to claim and
-- is about to claim, at their attempt + 1 (given by id), in the order of
-- their ids. Written before the claim's UPDATE, whose statement triggers
-- write a flow step's step.started: a step's job.active comes first.
CREATE FUNCTION @schema@.store_claim_events(ids bigint[], process_id uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
  SELECT @schema@.job_stream(j.name, j.id), 'job.active',
         jsonb_build_object('queue', j.queue, 'attempt', j.attempt + 1,
                            'process_id', store_claim_events.process_id),
         j.run_id, j.attempt + 1
    FROM @schema@.job j
   WHERE j.id = ANY(ids)
   ORDER BY j.id;
  PERFORM @schema@.events_wake();
END $$;

-- fetch_jobs (023) and fetch_jobs_many (027): the claim by position, the
-- events only when on, before the UPDATE. The edits are made with the
-- bodies unchecked (a body between two edits names a variable not
-- declared yet), then each function is checked whole.
SET LOCAL check_function_bodies = off;
SELECT @schema@.patch_function('@schema@.fetch_jobs(text,integer,uuid,integer,bigint)',
  old, new)
  FROM (VALUES
    (E'DECLARE\n  ids bigint[];\n', E'DECLARE\n  locked record;\n'),
    ('ids := @schema@.lock_waiting(q, n, 2147483648, 0);',
     'locked := @schema@.lock_waiting_rows(q, n, 2147483648, 0);'),
    ('ids := @schema@.lock_waiting(q, n, after_priority, after_id);',
     'locked := @schema@.lock_waiting_rows(q, n, after_priority, after_id);'),
    ('IF cardinality(ids) = 0 THEN', 'IF cardinality(locked.ids) = 0 THEN'),
    ('WHERE j.id = ANY(ids)', 'WHERE j.ctid = ANY(locked.tids)'),
    ($old$  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(c.name, c.id), 'job.active',
           jsonb_build_object('queue', q, 'attempt', c.attempt,
                              'process_id', fetch_jobs.process_id),
           c.run_id, c.attempt
      FROM claimed c
     WHERE @schema@.job_events_on()
     ORDER BY c.id
  )
$old$, E'  )\n'),
    (E'  IF FOUND AND @schema@.job_events_on() THEN\n'
     '    PERFORM @schema@.events_wake();\n  END IF;\n', ''),
    (E'  RETURN QUERY\n  WITH claimed AS (\n',
     E'  IF @schema@.job_events_on() THEN\n'
     '    PERFORM @schema@.store_claim_events(locked.ids, process_id);\n'
     '  END IF;\n  RETURN QUERY\n  WITH claimed AS (\n')
  ) AS edit(old, new);

SELECT @schema@.patch_function('@schema@.fetch_jobs_many(text[],integer[],uuid,integer[],bigint[])',
  old, new)
  FROM (VALUES
    (E'  ids bigint[] := \'{}\';\n',
     E'  locked record;\n  ids bigint[] := \'{}\';\n  tids tid[] := \'{}\';\n'),
    ($old$    IF after_priorities[i] IS NULL OR after_ids[i] IS NULL THEN
      ids := ids || @schema@.lock_waiting(queues[i], ns[i], 2147483648, 0);
    ELSE
      ids := ids || @schema@.lock_waiting(queues[i], ns[i], after_priorities[i],
                                          after_ids[i]);
    END IF;
$old$, $new$    IF after_priorities[i] IS NULL OR after_ids[i] IS NULL THEN
      locked := @schema@.lock_waiting_rows(queues[i], ns[i], 2147483648, 0);
    ELSE
      locked := @schema@.lock_waiting_rows(queues[i], ns[i], after_priorities[i],
                                           after_ids[i]);
    END IF;
    ids := ids || locked.ids;
    tids := tids || locked.tids;
$new$),
    ('WHERE j.id = ANY(ids)', 'WHERE j.ctid = ANY(tids)'),
    ($old$  ), ev AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT @schema@.job_stream(c.name, c.id), 'job.active',
           jsonb_build_object('queue', c.queue, 'attempt', c.attempt,
                              'process_id', fetch_jobs_many.process_id),
           c.run_id, c.attempt
      FROM claimed c
     WHERE @schema@.job_events_on()
     ORDER BY c.id
  )
$old$, E'  )\n'),
    (E'  IF FOUND AND @schema@.job_events_on() THEN\n'
     '    PERFORM @schema@.events_wake();\n  END IF;\n', ''),
    (E'  RETURN QUERY\n  WITH claimed AS (\n',
     E'  IF @schema@.job_events_on() THEN\n'
     '    PERFORM @schema@.store_claim_events(ids, process_id);\n'
     '  END IF;\n  RETURN QUERY\n  WITH claimed AS (\n')
  ) AS edit(old, new);

SET LOCAL check_function_bodies = on;
SELECT plpgsql_validator('@schema@.fetch_jobs(text,integer,uuid,integer,bigint)'::regprocedure),
       plpgsql_validator('@schema@.fetch_jobs_many(text[],integer[],uuid,integer[],bigint[])'::regprocedure);

DROP FUNCTION @schema@.lock_waiting(text, integer, bigint, bigint);

-- complete_jobs (033, 035): without events (job events off and none
-- given, as in a worker's completions with job events off) one statement
-- deletes and archives the jobs; when events are wanted (a handler
-- emitted some, or job events are on), the same with a CTE that writes
-- them, as 035's did: each job's emitted events in their order, then its
-- job.completed, jobs in the order of their ids, before the archive
-- INSERT's statement trigger writes a flow step's step.completed (and
-- flow.completed). The two statements differ only by that CTE; one
-- statement with the CTE always set up was the cost this migration
-- removes, and a separate statement for the events would have to read and
-- lock the jobs again (+5% a job with events on, measured).
CREATE OR REPLACE FUNCTION @schema@.complete_jobs(ids bigint[], outputs jsonb, process_id uuid,
                                                  events jsonb DEFAULT NULL,
                                                  attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
  batch record := @schema@.batch_order(ids);
BEGIN
  PERFORM @schema@.check_outputs('complete_jobs', ids, outputs);
  IF events IS NULL AND NOT @schema@.job_events_on() THEN
    RETURN QUERY
    WITH gone AS (
      DELETE FROM @schema@.job j
       WHERE j.id = ANY(ids) AND j.state = 'active'
         AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
         AND coalesce(attempts[batch.positions[width_bucket(j.id, batch.sorted)]], 0)
             IN (0, j.attempt)
      RETURNING j.*,
        nullif(outputs -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1),
               'null'::jsonb) AS new_output
    ), kept AS (
      INSERT INTO @schema@.job_archive
        (id, queue, name, data, state, priority, retry_limit, attempt,
         retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
         start_after, created_at, started_at, singleton_key, dead_letter, run_id,
         process_id, error, output, completed_at, keep_until)
      SELECT g.id, g.queue, g.name, g.data, 'completed', g.priority, g.retry_limit,
             g.attempt, g.retry_delay, g.retry_backoff, g.retry_delay_max,
             g.expire_in, g.retention, g.start_after, g.created_at, g.started_at,
             g.singleton_key, g.dead_letter, g.run_id, g.process_id, g.error,
             g.new_output, now(), now() + make_interval(secs => g.retention)
        FROM gone g
       WHERE g.retention > 0 OR g.run_id IS NOT NULL
    )
    SELECT g.id FROM gone g;
    RETURN;
  END IF;
  RETURN QUERY
  WITH gone AS (
    DELETE FROM @schema@.job j
     WHERE j.id = ANY(ids) AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs.process_id
       AND coalesce(attempts[batch.positions[width_bucket(j.id, batch.sorted)]], 0)
           IN (0, j.attempt)
    RETURNING j.*,
      nullif(outputs -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1),
             'null'::jsonb) AS new_output,
      nullif(events -> (batch.positions[width_bucket(j.id, batch.sorted)] - 1),
             'null'::jsonb) AS new_events
  ), stored AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, attempt)
    SELECT x.stream, x.type, x.data, x.run_id, x.attempt
      FROM (SELECT coalesce(e.stream, @schema@.job_stream(g.name, g.id)) AS stream,
                   e.type, coalesce(e.data, '{}'::jsonb) AS data, g.run_id,
                   g.attempt, g.id, e.n
              FROM gone g,
                   ROWS FROM (jsonb_to_recordset(g.new_events)
                              AS (stream text, type text, data jsonb))
                   WITH ORDINALITY AS e(stream, type, data, n)
             WHERE g.new_events IS NOT NULL
            UNION ALL
            SELECT @schema@.job_stream(g.name, g.id), 'job.completed',
                   @schema@.completed_event_data(g.queue, g.attempt, g.new_output),
                   g.run_id, g.attempt, g.id, NULL
              FROM gone g
             WHERE @schema@.job_events_on()) x
     ORDER BY x.id, x.n NULLS LAST
  ), kept AS (
    INSERT INTO @schema@.job_archive
      (id, queue, name, data, state, priority, retry_limit, attempt,
       retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
       start_after, created_at, started_at, singleton_key, dead_letter, run_id,
       process_id, error, output, completed_at, keep_until)
    SELECT g.id, g.queue, g.name, g.data, 'completed', g.priority, g.retry_limit,
           g.attempt, g.retry_delay, g.retry_backoff, g.retry_delay_max,
           g.expire_in, g.retention, g.start_after, g.created_at, g.started_at,
           g.singleton_key, g.dead_letter, g.run_id, g.process_id, g.error,
           g.new_output, now(), now() + make_interval(secs => g.retention)
      FROM gone g
     WHERE g.retention > 0 OR g.run_id IS NOT NULL
  )
  SELECT g.id FROM gone g;
  IF events IS NOT NULL OR (FOUND AND @schema@.job_events_on()) THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;


-- batch_order (031) in plpgsql: the same result, its plan kept.
CREATE OR REPLACE FUNCTION @schema@.batch_order(ids bigint[], OUT sorted bigint[],
                                                OUT positions integer[])
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
  SELECT coalesce(array_agg(u.id ORDER BY u.id, u.n), '{}'),
         coalesce(array_agg(u.n::integer ORDER BY u.id, u.n), '{}')
    INTO sorted, positions
    FROM unnest(ids) WITH ORDINALITY AS u(id, n)
   WHERE u.id IS NOT NULL;
END $$;
