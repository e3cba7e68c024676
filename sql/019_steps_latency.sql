-- 019_steps_latency: a batch with effects completes in two statements
-- (three when a run may end), and the completing process is told which
-- queues its completions sent jobs to, so it fetches them itself instead
-- of waiting for a wake-up.
--
-- complete_jobs_with (013) took, for a step that emits: a statement
-- locking the runs, one reading the batch, one writing the steps' events
-- and successor jobs, a wake-up, one choosing what to complete, then
-- complete_jobs (009), whose archive statement fired the statement trigger
-- of 013 with three statements of its own (the step.* events, the runs'
-- locks, their ends) -- about 2 ms in PostgreSQL for one step, most of it
-- the executor setting up and tearing down each statement. Now:
--   1. the runs of the batch's jobs are locked, in one order;
--   2. (only when a handler enqueued jobs) the batch is read and the
--      enqueues sent, as in 013;
--   3. one statement deletes the jobs still active at their attempt and
--      writes, for those it deleted: the archive rows, the steps' events
--      and successor jobs, the events the handlers emitted, job.completed
--      and job.created (job events on) and step.completed. A step's run
--      whose successors were sent cannot end here; it returns the others;
--   4. (only for those) one statement ends the runs with no step job left;
--   5. (only when a step wrote state) one statement stores the writes.
-- Statement 3 writes what complete_jobs writes for a job (the archive row,
-- its events, job.completed): a batch without effects still goes to
-- complete_jobs, so a change to what completing a job writes belongs in
-- both.
-- The archive trigger (013) leaves the rows of statement 3 alone
-- (moonq.steps_settled): that statement writes their events and its
-- caller settles their runs. Everything else archived (failures, cancels,
-- expiry, completions without effects) goes through the trigger as before.
-- A fetched step's step.started is one statement instead of three.
--
-- Exactly once: a step's successors are sent by the statement that
-- deletes its job, from the rows it deleted, so a job completed twice
-- (an attempt that ran past its expiry, a completion sent again after a
-- lost connection) sends them once, and an attempt that is not the job's
-- sends nothing.
--
-- complete_jobs_sent is what moonq's processes call (queue.c): it runs
-- complete_jobs_guarded (014) and returns, besides the ids completed, the
-- queues the completions sent jobs to and how many each, and sends no
-- wake-up for them: the process fetches those it consumes and has room
-- for and wakes the others itself. Other callers of complete_jobs_with
-- (SQL, complete_jobs_guarded alone) wake the queues as before.

-- Completes jobs with their effects; see 012 for the arguments and the
-- top of this file for how.
CREATE OR REPLACE FUNCTION @schema@.complete_jobs_with(ids bigint[], outputs jsonb,
                                                       process_id uuid,
                                                       effects jsonb DEFAULT NULL,
                                                       attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
  -- with enqueues: the jobs of the batch that have effects (an object),
  -- locked, in batch order (parallel arrays)
  b_ids bigint[];
  b_effects jsonb[];
  b_send boolean[]; -- its enqueues are sent (not a step of an ended run)
  r record;
  bad_ids bigint[] := '{}';
  bad_errors jsonb[] := '{}';
  enqueued jsonb;      -- [{q: queue, n: jobs sent to it}]: the enqueues'
  sent jsonb;          -- the same: the successors', then all
  done bigint[];       -- the ids completed
  end_runs text[];     -- runs a step of which completed without a successor
  state_runs text[];   -- the state writes of steps of running runs
  state_writes jsonb[];
  flag text;
BEGIN
  -- a batch without effects whose jobs are all at their attempts (plain
  -- jobs, as a rule) goes to complete_jobs as it is
  IF effects IS NULL AND NOT EXISTS (
       SELECT 1 FROM unnest(ids, attempts) AS u(id, attempt)
         JOIN @schema@.job j ON j.id = u.id AND j.id = ANY(ids)
        WHERE u.attempt <> 0 AND j.attempt <> u.attempt) THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(ids, outputs, process_id, NULL);
    RETURN;
  END IF;
  -- 1. the runs of the batch's jobs, locked in one order (run ids are
  -- unique: queue_flow_index_run_idx)
  PERFORM 1 FROM @schema@.queue_flow_index f
   WHERE f.run_id = ANY(ARRAY(SELECT j.run_id FROM @schema@.job j
                               WHERE j.id = ANY(ids) AND j.run_id IS NOT NULL))
   ORDER BY f.flow_name, f.run_id
     FOR UPDATE OF f;
  -- 2. the handlers' own enqueues: all of them in one statement and one
  -- subtransaction; when PostgreSQL refuses one (a bad option, say), job
  -- by job to find the jobs that fail. Only the jobs that will complete
  -- (active, this process's, at their attempt: locked) send them.
  IF EXISTS (SELECT 1 FROM jsonb_array_elements(effects) AS e
              WHERE jsonb_typeof(e.value->'jobs') = 'array') THEN
    SELECT array_agg(b.id ORDER BY b.n), array_agg(b.eff ORDER BY b.n),
           array_agg(b.flow_name IS NULL OR b.run_status IS NULL OR b.run_status = 'running'
                     ORDER BY b.n)
      INTO b_ids, b_effects, b_send
      FROM (SELECT i.n, i.id, e.value AS eff, s.flow_name, st.status AS run_status
              FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
              JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
              JOIN @schema@.job j ON j.id = i.id
                                 AND (i.attempt IS NULL OR i.attempt IN (0, j.attempt))
              LEFT JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
                                                  AND j.run_id IS NOT NULL
              LEFT JOIN @schema@.queue_flow_index st ON st.flow_name = s.flow_name
                                                   AND st.run_id = j.run_id
             WHERE jsonb_typeof(e.value->'jobs') = 'array' AND j.state = 'active'
               AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
               AND j.id = ANY(ids) -- (through the index, not a hash of the table)
               FOR UPDATE OF j) b;
    BEGIN
      SELECT jsonb_agg(jsonb_build_object('q', q.queue, 'n', 1)) INTO enqueued
        FROM unnest(b_effects, b_send) AS u(eff, send),
             unnest(@schema@.send_enqueued(u.eff->'jobs')) AS q(queue)
       WHERE u.send;
    EXCEPTION WHEN OTHERS THEN
      enqueued := NULL;
      FOR r IN SELECT u.id, u.eff FROM unnest(b_ids, b_effects, b_send) AS u(id, eff, send)
                WHERE u.send LOOP
        BEGIN
          enqueued := coalesce(enqueued, '[]')
                  || (SELECT coalesce(jsonb_agg(jsonb_build_object('q', q.queue, 'n', 1)), '[]')
                        FROM unnest(@schema@.send_enqueued(r.eff->'jobs')) AS q(queue));
        EXCEPTION WHEN OTHERS THEN
          bad_ids := bad_ids || r.id;
          bad_errors := bad_errors
                        || jsonb_build_object('message', 'ctx.enqueue: ' || SQLERRM);
        END;
      END LOOP;
    END;
    IF cardinality(bad_ids) > 0 THEN
      PERFORM @schema@.fail_jobs(bad_ids, bad_errors, process_id);
    END IF;
  END IF;
  -- 3. the completion; the archive trigger leaves its rows to it
  flag := set_config('moonq.steps_settled', 'on', true);
  WITH u AS (
    SELECT i.id, i.attempt, i.n, nullif(o.value, 'null'::jsonb) AS output, e.value AS eff
      FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n) ON o.n = i.n
      LEFT JOIN jsonb_array_elements(coalesce(effects, '[]'::jsonb)) WITH ORDINALITY AS e(value, n)
        ON e.n = i.n
     WHERE i.id <> ALL (bad_ids)
  ), gone AS (
    DELETE FROM @schema@.job j USING u
     WHERE j.id = u.id AND j.state = 'active'
       AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
       AND (u.attempt IS NULL OR u.attempt IN (0, j.attempt))
    RETURNING j.*, u.n, u.output, u.eff
  ), step AS MATERIALIZED ( -- the steps among them, with their run's status
    SELECT g.id, g.n, g.run_id, g.attempt, g.eff, s.flow_name, s.step_name,
           f.status AS run_status
      FROM gone g
      JOIN @schema@.queue_flow_steps s ON s.job_name = g.name
      LEFT JOIN @schema@.queue_flow_index f ON f.run_id = g.run_id
     WHERE g.run_id IS NOT NULL
  ), ev AS ( -- the steps' events without a stream of their own
    SELECT st.*, e.type, coalesce(e.data, '{}'::jsonb) AS data, e.k
      FROM step st,
           ROWS FROM (jsonb_to_recordset(CASE WHEN jsonb_typeof(st.eff->'events') = 'array'
                                              THEN st.eff->'events' ELSE '[]' END)
                      AS (stream text, type text, data jsonb))
           WITH ORDINALITY AS e(stream, type, data, k)
     WHERE jsonb_typeof(st.eff) = 'object' AND e.stream IS NULL
  ), emitted AS ( -- the other events: their own stream, or the job's
    SELECT g.id, g.name, g.run_id, g.attempt, e.stream, e.type,
           coalesce(e.data, '{}'::jsonb) AS data, e.k
      FROM gone g,
           ROWS FROM (jsonb_to_recordset(CASE jsonb_typeof(g.eff)
                                           WHEN 'array' THEN g.eff
                                           WHEN 'object' THEN
                                             CASE WHEN jsonb_typeof(g.eff->'events') = 'array'
                                                  THEN g.eff->'events' END
                                         END)
                      AS (stream text, type text, data jsonb))
           WITH ORDINALITY AS e(stream, type, data, k)
     WHERE e.stream IS NOT NULL OR jsonb_typeof(g.eff) = 'array'
        OR NOT EXISTS (SELECT 1 FROM step st WHERE st.id = g.id)
  ), base AS MATERIALIZED (
    SELECT * FROM @schema@.queue_defaults('')
  ), successor AS ( -- each event's subscribers get a job, while the run runs
    INSERT INTO @schema@.job AS j (queue, name, data, retry_limit, retry_delay,
                                   retry_backoff, retry_delay_max, expire_in,
                                   retention, dead_letter, run_id)
    SELECT s.queue, s.job_name, ev.data,
           coalesce(q.retry_limit, base.retry_limit),
           coalesce(q.retry_delay, base.retry_delay),
           coalesce(q.retry_backoff, base.retry_backoff),
           coalesce(q.retry_delay_max, base.retry_delay_max),
           coalesce(q.expire_in, base.expire_in),
           coalesce(q.retention, base.retention),
           coalesce(q.dead_letter, base.dead_letter), ev.run_id
      FROM ev
      JOIN @schema@.queue_flow_steps s
        ON s.flow_name = ev.flow_name AND ev.type = ANY(s.subscribes)
      CROSS JOIN base
      LEFT JOIN @schema@.queue q ON q.name = s.queue
     WHERE ev.run_status = 'running'
     ORDER BY ev.n, ev.k, s.step_name
    RETURNING j.id, j.name, j.queue, j.run_id, j.start_after
  ), archived AS (
    INSERT INTO @schema@.job_archive
      (id, queue, name, data, state, priority, retry_limit, attempt,
       retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
       start_after, created_at, started_at, singleton_key, dead_letter, run_id,
       process_id, error, output, completed_at, keep_until)
    SELECT g.id, g.queue, g.name, g.data, 'completed', g.priority, g.retry_limit,
           g.attempt, g.retry_delay, g.retry_backoff, g.retry_delay_max,
           g.expire_in, g.retention, g.start_after, g.created_at, g.started_at,
           g.singleton_key, g.dead_letter, g.run_id, g.process_id, g.error,
           g.output, now(), now() + make_interval(secs => g.retention)
      FROM gone g
  ), stored AS ( -- in the order 013 wrote them: the steps' events and
                 -- job.created of their successors; per job, its other
                 -- events then job.completed; step.completed
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name,
                                       step_name, step_id, attempt)
    SELECT x.stream, x.type, x.data, x.run_id, x.flow_name, x.step_name, x.step_id,
           x.attempt
      FROM (SELECT @schema@.flow_stream(ev.flow_name, ev.run_id) AS stream, ev.type,
                   ev.data, ev.run_id, ev.flow_name, ev.step_name,
                   ev.id::text AS step_id, ev.attempt, 0 AS part, ev.n AS o1, ev.k AS o2
              FROM ev
            UNION ALL
            SELECT @schema@.job_stream(c.name, c.id), 'job.created',
                   jsonb_build_object('queue', c.queue, 'attempt', 0,
                                      'start_after', c.start_after),
                   c.run_id, NULL, NULL, NULL, 0, 1, c.id, 0
              FROM successor c
             WHERE @schema@.job_events_on()
            UNION ALL
            SELECT coalesce(m.stream, @schema@.job_stream(m.name, m.id)), m.type, m.data,
                   m.run_id, NULL, NULL, NULL, m.attempt, 2, m.id, m.k
              FROM emitted m
            UNION ALL
            SELECT @schema@.job_stream(g.name, g.id), 'job.completed',
                   @schema@.completed_event_data(g.queue, g.attempt, g.output),
                   g.run_id, NULL, NULL, NULL, g.attempt, 2, g.id, NULL
              FROM gone g
             WHERE @schema@.job_events_on()
            UNION ALL
            SELECT @schema@.flow_stream(st.flow_name, st.run_id), 'step.completed', '{}',
                   st.run_id, st.flow_name, st.step_name, st.id::text, st.attempt, 3, st.id, 0
              FROM step st) x
     ORDER BY x.part, x.o1, x.o2 NULLS LAST
  )
  SELECT (SELECT array_agg(g.id ORDER BY g.n) FROM gone g),
         (SELECT jsonb_agg(jsonb_build_object('q', c.queue, 'n', c.n))
            FROM (SELECT c.queue, count(*) AS n FROM successor c GROUP BY c.queue) c),
         (SELECT array_agg(DISTINCT st.run_id) FROM step st
           WHERE st.run_status = 'running'
             AND NOT EXISTS (SELECT 1 FROM successor c WHERE c.run_id = st.run_id)),
         (SELECT array_agg(st.run_id ORDER BY st.n) FROM step st
           WHERE st.run_status = 'running' AND jsonb_typeof(st.eff->'state') = 'object'),
         (SELECT array_agg(st.eff->'state' ORDER BY st.n) FROM step st
           WHERE st.run_status = 'running' AND jsonb_typeof(st.eff->'state') = 'object')
    INTO done, sent, end_runs, state_runs, state_writes
    FROM (SELECT 1) one;
  flag := set_config('moonq.steps_settled', '', true);
  -- 4. the runs that may have ended: completed when none of their step
  -- jobs is left (their rows are locked since 1., so this statement sees
  -- what any other completion of theirs committed)
  IF end_runs IS NOT NULL THEN
    WITH ended AS (
      UPDATE @schema@.queue_flow_index f SET status = 'completed', completed_at = now()
       WHERE f.run_id = ANY(end_runs) AND f.status = 'running'
         AND NOT EXISTS (SELECT 1 FROM @schema@.job j
                           JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
                          WHERE j.run_id = f.run_id AND s.flow_name = f.flow_name)
      RETURNING f.flow_name, f.run_id
    )
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name)
    SELECT @schema@.flow_stream(e.flow_name, e.run_id), 'flow.completed', '{}',
           e.run_id, e.flow_name
      FROM ended e
     ORDER BY e.flow_name, e.run_id;
  END IF;
  -- 5. the state writes ({key: value}, JSON null deletes; the batch's last
  -- write of a key wins)
  IF state_runs IS NOT NULL THEN
    WITH writes AS (
      SELECT DISTINCT ON (u.run_id, w.key) u.run_id, w.key, w.value
        FROM unnest(state_runs, state_writes) WITH ORDINALITY AS u(run_id, state, n),
             jsonb_each(u.state) AS w
       ORDER BY u.run_id, w.key, u.n DESC
    ), deleted AS (
      DELETE FROM @schema@.queue_flow_state fs
       USING writes w
       WHERE fs.run_id = w.run_id AND fs.key = w.key AND w.value = 'null'::jsonb
    )
    INSERT INTO @schema@.queue_flow_state AS fs (run_id, key, value)
    SELECT w.run_id, w.key, w.value FROM writes w WHERE w.value <> 'null'::jsonb
    ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, updated_at = now();
  END IF;
  IF done IS NOT NULL THEN
    PERFORM @schema@.events_wake();
  END IF;
  -- the queues sent to: told to complete_jobs_sent's caller, else woken
  sent := coalesce(enqueued, '[]') || coalesce(sent, '[]');
  IF sent <> '[]' THEN
    IF coalesce(current_setting('moonq.sent', true), '') <> '' THEN
      flag := set_config('moonq.sent', (current_setting('moonq.sent')::jsonb || sent)::text,
                         true);
    ELSE
      PERFORM @schema@.wake_queues(ARRAY(SELECT DISTINCT x.value->>'q'
                                           FROM jsonb_array_elements(sent) AS x));
    END IF;
  END IF;
  RETURN QUERY SELECT unnest(done);
END $$;

-- The archive trigger (013) leaves the rows of complete_jobs_with's
-- completion statement to it (moonq.steps_settled is on around that
-- statement alone): its function is not even called.
DROP TRIGGER flow_steps_archived ON @schema@.job_archive;
CREATE TRIGGER flow_steps_archived AFTER INSERT ON @schema@.job_archive
  REFERENCING NEW TABLE AS archived
  FOR EACH STATEMENT
  WHEN (current_setting('moonq.steps_settled', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION @schema@.flow_steps_archived();

-- step.started / step.retrying (012) in one statement, without a lookup
-- and a call of flow_event per fetched step.
CREATE OR REPLACE FUNCTION @schema@.flow_step_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name, step_name,
                                     step_id, attempt)
  SELECT @schema@.flow_stream(s.flow_name, NEW.run_id),
         CASE NEW.state WHEN 'active' THEN 'step.started' ELSE 'step.retrying' END,
         CASE WHEN NEW.state = 'retry'
              THEN jsonb_build_object('error', NEW.error, 'start_after', NEW.start_after)
              ELSE '{}'::jsonb END,
         NEW.run_id, s.flow_name, s.step_name, NEW.id::text, NEW.attempt
    FROM @schema@.queue_flow_steps s
   WHERE s.job_name = NEW.name;
  IF FOUND THEN
    PERFORM @schema@.events_wake();
  END IF;
  RETURN NULL;
END $$;

-- complete_jobs_guarded (014) for moonq's processes: returns a row (id,
-- NULL, NULL) per job completed, then a row (NULL, queue, jobs) per queue
-- the completions sent jobs to (successor steps, ctx.enqueue), and wakes
-- none of those queues: the caller fetches them or wakes them (queue.c).
CREATE FUNCTION @schema@.complete_jobs_sent(ids bigint[], outputs jsonb, process_id uuid,
                                            effects jsonb DEFAULT NULL,
                                            attempts integer[] DEFAULT NULL)
RETURNS TABLE (id bigint, queue text, jobs bigint) LANGUAGE plpgsql AS $$
DECLARE
  flag text;
BEGIN
  -- complete_jobs_with adds what it sends here instead of waking
  flag := set_config('moonq.sent', '[]', true);
  RETURN QUERY
  SELECT c, NULL::text, NULL::bigint
    FROM @schema@.complete_jobs_guarded(ids, outputs, process_id, effects, attempts) AS c;
  RETURN QUERY
  SELECT NULL::bigint, s.q, sum(s.n)::bigint
    FROM jsonb_to_recordset(current_setting('moonq.sent')::jsonb) AS s(q text, n bigint)
   GROUP BY s.q
   ORDER BY s.q;
  flag := set_config('moonq.sent', '', true);
END $$;

-- Generic plans, as 013 set them (CREATE OR REPLACE dropped the setting).
ALTER FUNCTION @schema@.complete_jobs_with(bigint[], jsonb, uuid, jsonb, integer[])
  SET plan_cache_mode = force_generic_plan;
