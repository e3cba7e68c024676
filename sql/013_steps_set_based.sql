-- 013_steps_set_based: a completion batch's effects in a few statements
-- over the whole batch; handlers' queues remembered, so a handler that
-- moves to another queue takes its waiting jobs along.
--
-- complete_jobs_with (012) looped over the batch in plpgsql: per job a
-- subtransaction for its enqueues, an INSERT of its events, a send() per
-- successor step (send_many's option parsing, queue_defaults and its own
-- INSERT) and the state writes. Now, whatever the batch size:
--   1. the runs are locked (in one order) and the batch's jobs with
--      effects are locked and read into arrays, one statement each;
--   2. the handlers' enqueues are sent by one statement in one
--      subtransaction; only when PostgreSQL refuses one is the batch sent
--      again job by job, each in a subtransaction of its own, to find the
--      jobs to fail (a refused enqueue fails its job alone, as before);
--   3. one statement writes the steps' events to their runs' streams and
--      the successor steps' jobs (inserted as send() inserts them, with
--      their job.created events); one more the state writes, when there
--      are some;
--   4. complete_jobs (009) completes the rest as before, and the steps'
--      ends are written by one statement-level trigger for all the rows
--      archived (012's trigger ran per row).
-- Guarantees are those of 012: all of it commits with the completion or
-- not at all; a job no longer active, not this process's, or at another
-- attempt writes nothing; a step of a run that ended while it ran sends
-- and writes nothing.

-- Sends the jobs a handler enqueued, `jobs` a JSON array of {name, data,
-- options}, in order; returns the queue of each.
CREATE FUNCTION @schema@.send_enqueued(jobs jsonb) RETURNS text[]
LANGUAGE sql AS $$
  SELECT array_agg(s.queue ORDER BY s.k)
    FROM (SELECT x.k, coalesce(x.value->'options'->>'queue', x.value->>'name') AS queue,
                 @schema@.send(x.value->>'name', coalesce(x.value->'data', '{}'::jsonb),
                               coalesce(x.value->'options', '{}'::jsonb)) AS id
            FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(value, k)) s
$$;

-- Completes jobs with their effects; see 012 for the arguments and the
-- top of this file for how.
CREATE OR REPLACE FUNCTION @schema@.complete_jobs_with(ids bigint[], outputs jsonb,
                                                       process_id uuid,
                                                       effects jsonb DEFAULT NULL,
                                                       attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
  -- the jobs of the batch that have effects (an object), locked, in batch
  -- order: parallel arrays
  b_ids bigint[];
  b_effects jsonb[];
  b_runs text[];
  b_attempts integer[];
  b_flows text[];
  b_steps text[];
  b_status text[];
  b_send boolean[]; -- its enqueues are sent (not a step of an ended run)
  r record;
  x jsonb;
  bad_ids bigint[] := '{}';
  bad_errors jsonb[] := '{}';
  flow_ids bigint[];
  woken text[];      -- queues sent to (moonq's connections send no
  more_woken text[]; -- wake-ups of their own: 002's moonq.no_wake)
  keep_ids bigint[];
  keep_outputs jsonb;
  keep_events jsonb;
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
  IF effects IS NOT NULL THEN
    -- the runs of the batch's steps, locked in one order (their ends are
    -- decided by the archive trigger of the completion below)
    PERFORM 1 FROM @schema@.job j
      JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
      JOIN @schema@.queue_flow_index f ON f.flow_name = s.flow_name AND f.run_id = j.run_id
     WHERE j.id = ANY(ids)
     ORDER BY f.flow_name, f.run_id
       FOR UPDATE OF f;
    -- the jobs with effects; an attempt that ran past its expiry while the
    -- job started again (attempts[i] <> 0 and not the job's) writes nothing
    SELECT array_agg(b.id ORDER BY b.n), array_agg(b.eff ORDER BY b.n),
           array_agg(b.run_id ORDER BY b.n), array_agg(b.attempt ORDER BY b.n),
           array_agg(b.flow_name ORDER BY b.n), array_agg(b.step_name ORDER BY b.n),
           array_agg(b.run_status ORDER BY b.n),
           array_agg(b.flow_name IS NULL OR b.run_status IS NULL OR b.run_status = 'running'
                     ORDER BY b.n)
      INTO b_ids, b_effects, b_runs, b_attempts, b_flows, b_steps, b_status, b_send
      FROM (SELECT i.n, i.id, e.value AS eff, j.run_id, j.attempt, s.flow_name, s.step_name,
                   st.status AS run_status
              FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
              JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
              JOIN @schema@.job j ON j.id = i.id
                                 AND (i.attempt IS NULL OR i.attempt IN (0, j.attempt))
              LEFT JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
                                                  AND j.run_id IS NOT NULL
              LEFT JOIN @schema@.queue_flow_index st ON st.flow_name = s.flow_name
                                                   AND st.run_id = j.run_id
             WHERE jsonb_typeof(e.value) = 'object' AND j.state = 'active'
               AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
               AND j.id = ANY(ids) -- (through the index, not a hash of the table)
               FOR UPDATE OF j) b;
    -- the handlers' own enqueues: all of them in one statement and one
    -- subtransaction; when PostgreSQL refuses one (a bad option, say), job
    -- by job to find the jobs that fail
    IF EXISTS (SELECT 1 FROM unnest(b_effects, b_send) AS u(eff, send)
                WHERE u.send AND jsonb_typeof(u.eff->'jobs') = 'array') THEN
      BEGIN
        SELECT array_agg(q.queue) INTO woken
          FROM unnest(b_effects, b_send) WITH ORDINALITY AS u(eff, send, n),
               unnest(@schema@.send_enqueued(u.eff->'jobs')) AS q(queue)
         WHERE u.send AND jsonb_typeof(u.eff->'jobs') = 'array';
      EXCEPTION WHEN OTHERS THEN
        woken := '{}';
        FOR r IN SELECT u.id, u.eff FROM unnest(b_ids, b_effects, b_send) AS u(id, eff, send)
                  WHERE u.send AND jsonb_typeof(u.eff->'jobs') = 'array' LOOP
          BEGIN
            woken := woken || @schema@.send_enqueued(r.eff->'jobs');
          EXCEPTION WHEN OTHERS THEN
            bad_ids := bad_ids || r.id;
            bad_errors := bad_errors
                          || jsonb_build_object('message', 'ctx.enqueue: ' || SQLERRM);
          END;
        END LOOP;
      END;
    END IF;
    -- the steps: their events without a stream of their own go to the run's
    -- stream with the flow columns; each such event's subscribers are sent a
    -- job (the event's data, the run id) and the state writes ({key: value},
    -- JSON null deletes; the batch's last write of a key wins) are stored,
    -- both only while the run runs
    SELECT array_agg(u.id) INTO flow_ids
      FROM unnest(b_ids, b_flows) AS u(id, flow_name)
     WHERE u.flow_name IS NOT NULL AND u.id <> ALL (bad_ids);
    IF flow_ids IS NOT NULL THEN
      WITH step AS (
        SELECT u.*
          FROM unnest(b_ids, b_effects, b_runs, b_attempts, b_flows, b_steps, b_status)
               WITH ORDINALITY AS u(id, eff, run_id, attempt, flow_name, step_name,
                                    run_status, n)
         WHERE u.id = ANY(flow_ids)
      ), ev AS (
        SELECT step.*, e.type, coalesce(e.data, '{}'::jsonb) AS data, e.k
          FROM step,
               ROWS FROM (jsonb_to_recordset(CASE WHEN jsonb_typeof(step.eff->'events') = 'array'
                                                  THEN step.eff->'events' ELSE '[]' END)
                          AS (stream text, type text, data jsonb))
               WITH ORDINALITY AS e(stream, type, data, k)
         WHERE e.stream IS NULL
      ), base AS MATERIALIZED (
        SELECT * FROM @schema@.queue_defaults('')
      ), sent AS (
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
      ), stored AS ( -- the steps' events, then job.created of the jobs sent
        INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name,
                                           step_name, step_id, attempt)
        SELECT x.stream, x.type, x.data, x.run_id, x.flow_name, x.step_name, x.step_id,
               x.attempt
          FROM (SELECT @schema@.flow_stream(ev.flow_name, ev.run_id) AS stream, ev.type,
                       ev.data, ev.run_id, ev.flow_name, ev.step_name,
                       ev.id::text AS step_id, ev.attempt, 0 AS part, ev.n, ev.k
                  FROM ev
                UNION ALL
                SELECT @schema@.job_stream(sent.name, sent.id), 'job.created',
                       jsonb_build_object('queue', sent.queue, 'attempt', 0,
                                          'start_after', sent.start_after),
                       sent.run_id, NULL, NULL, NULL, 0, 1, sent.id, 0
                  FROM sent
                 WHERE @schema@.job_events_on()) x
         ORDER BY x.part, x.n, x.k
      )
      SELECT array_agg(DISTINCT sent.queue) INTO more_woken FROM sent;
      woken := coalesce(woken, '{}') || coalesce(more_woken, '{}');
      PERFORM @schema@.events_wake();
      -- the state writes, by a statement of their own only when there are
      -- some (an empty data-modifying CTE still opens its table)
      IF EXISTS (SELECT 1 FROM unnest(b_ids, b_effects, b_status) AS u(id, eff, run_status)
                  WHERE u.id = ANY(flow_ids) AND u.run_status = 'running'
                    AND jsonb_typeof(u.eff->'state') = 'object') THEN
        WITH writes AS (
          SELECT DISTINCT ON (u.run_id, w.key) u.run_id, w.key, w.value
            FROM unnest(b_ids, b_effects, b_runs, b_status) WITH ORDINALITY
                   AS u(id, eff, run_id, run_status, n),
                 jsonb_each(CASE WHEN jsonb_typeof(u.eff->'state') = 'object'
                                 THEN u.eff->'state' ELSE '{}' END) AS w
           WHERE u.id = ANY(flow_ids) AND u.run_status = 'running'
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
    END IF;
    IF cardinality(bad_ids) > 0 THEN
      PERFORM @schema@.fail_jobs(bad_ids, bad_errors, process_id);
    END IF;
    IF cardinality(woken) > 0 THEN
      PERFORM @schema@.wake_queues(ARRAY(SELECT DISTINCT unnest(woken)));
    END IF;
  END IF;
  -- what complete_jobs completes: the jobs at their attempt that did not
  -- fail above, with the events it stores (a step's: those with a stream
  -- of their own)
  SELECT array_agg(k.id ORDER BY k.n), jsonb_agg(k.output ORDER BY k.n),
         jsonb_agg(k.events ORDER BY k.n)
    INTO keep_ids, keep_outputs, keep_events
    FROM (SELECT i.n, i.id, o.value AS output,
                 CASE WHEN jsonb_typeof(e.value) <> 'object' THEN e.value
                      WHEN i.id = ANY(flow_ids)
                        THEN jsonb_path_query_array(e.value, 'lax $.events[*] ? (@.stream != null)')
                      ELSE e.value->'events' END AS events
            FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
            JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n) ON o.n = i.n
            LEFT JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n)
              ON e.n = i.n
            LEFT JOIN @schema@.job j ON j.id = i.id AND i.attempt <> 0
           WHERE i.id <> ALL (bad_ids)
             AND (i.attempt IS NULL OR i.attempt = 0 OR j.attempt = i.attempt)) k;
  IF keep_ids IS NOT NULL THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(keep_ids, keep_outputs, process_id,
                                                      CASE WHEN effects IS NOT NULL
                                                           THEN keep_events END);
  END IF;
END $$;

-- flow_event (012) in plpgsql, so its plans are cached for the session:
-- as a LANGUAGE sql function it was planned again on every call, about
-- half a millisecond for each step's start (the fetch's trigger).
CREATE OR REPLACE FUNCTION @schema@.flow_event(flow_name text, run_id text, step_name text,
                                               step_id bigint, attempt integer, type text,
                                               data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name, step_name,
                                     step_id, attempt)
  VALUES (@schema@.flow_stream(flow_event.flow_name, flow_event.run_id), flow_event.type,
          coalesce(flow_event.data, '{}'), flow_event.run_id, flow_event.flow_name,
          flow_event.step_name, flow_event.step_id::text, flow_event.attempt);
  PERFORM @schema@.events_wake();
END $$;

-- A statement's archived step jobs, all at once (012's trigger ran per
-- row: a lookup, an event and a run's settling each): step.completed /
-- step.failed / step.cancelled on the runs' streams, then each run
-- involved is settled, its row locked (runs in one order): failed, with
-- its first failed step of the statement and the error, when one failed;
-- completed when none of its step jobs is left in the job table;
-- flow.failed / flow.completed on its stream. The locks are taken by a
-- statement of their own, so the check after them sees what a
-- transaction that held them committed.
DROP TRIGGER flow_step_archived ON @schema@.job_archive;
DROP FUNCTION @schema@.flow_step_archived();
DROP FUNCTION @schema@.flow_settle(text, text, text, jsonb);

CREATE FUNCTION @schema@.flow_steps_archived() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  r_flows text[];
  r_runs text[];
  r_failed text[];   -- the failed step, NULL when none failed
  r_errors jsonb[];
BEGIN
  -- (most statements archive no step: they pay for this line alone)
  IF NOT EXISTS (SELECT 1 FROM archived a WHERE a.run_id IS NOT NULL) THEN
    RETURN NULL;
  END IF;
  WITH steps AS MATERIALIZED (
    SELECT a.id, a.run_id, a.attempt, a.state, a.error, s.flow_name, s.step_name
      FROM archived a JOIN @schema@.queue_flow_steps s ON s.job_name = a.name
     WHERE a.run_id IS NOT NULL
  ), stepped AS (
    INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name, step_name,
                                       step_id, attempt)
    SELECT @schema@.flow_stream(st.flow_name, st.run_id), 'step.' || st.state::text,
           CASE WHEN st.state = 'failed' THEN jsonb_build_object('error', st.error)
                ELSE '{}'::jsonb END,
           st.run_id, st.flow_name, st.step_name, st.id::text, st.attempt
      FROM steps st
     ORDER BY st.id
  )
  SELECT array_agg(r.flow_name ORDER BY r.flow_name, r.run_id),
         array_agg(r.run_id ORDER BY r.flow_name, r.run_id),
         array_agg(r.failed_step ORDER BY r.flow_name, r.run_id),
         array_agg(r.error ORDER BY r.flow_name, r.run_id)
    INTO r_flows, r_runs, r_failed, r_errors
    FROM (SELECT DISTINCT ON (st.flow_name, st.run_id) st.flow_name, st.run_id,
                 CASE WHEN st.state = 'failed' THEN st.step_name END AS failed_step,
                 CASE WHEN st.state = 'failed' THEN st.error END AS error
            FROM steps st
           ORDER BY st.flow_name, st.run_id, st.state = 'failed' DESC, st.id) r;
  IF r_runs IS NULL THEN
    RETURN NULL;
  END IF;
  PERFORM 1 FROM @schema@.queue_flow_index f
   WHERE f.run_id = ANY(r_runs) -- (run ids are unique: queue_flow_index_run_idx)
   ORDER BY f.flow_name, f.run_id
     FOR UPDATE OF f;
  WITH r AS (
    SELECT u.* FROM unnest(r_flows, r_runs, r_failed, r_errors) WITH ORDINALITY
                    AS u(flow_name, run_id, failed_step, error, n)
  ), ended AS (
    UPDATE @schema@.queue_flow_index f
       SET status = CASE WHEN r.failed_step IS NULL THEN 'completed' ELSE 'failed' END,
           completed_at = now(), failed_step = r.failed_step, error = r.error
      FROM r
     WHERE f.run_id = ANY(r_runs) AND f.flow_name = r.flow_name AND f.run_id = r.run_id
       AND f.status = 'running'
       AND (r.failed_step IS NOT NULL OR NOT EXISTS (
              SELECT 1 FROM @schema@.job j
                JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
               WHERE j.run_id = r.run_id AND s.flow_name = r.flow_name))
    RETURNING f.flow_name, f.run_id, f.status, r.failed_step, r.error, r.n
  )
  INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name, step_name)
  SELECT @schema@.flow_stream(e.flow_name, e.run_id), 'flow.' || e.status,
         CASE WHEN e.failed_step IS NULL THEN '{}'::jsonb
              ELSE jsonb_build_object('step', e.failed_step, 'error', e.error) END,
         e.run_id, e.flow_name, e.failed_step
    FROM ended e
   ORDER BY e.n;
  PERFORM @schema@.events_wake();
  RETURN NULL;
END $$;

-- Generic plans (each statement finds its rows through an index whatever
-- the arrays hold): with custom plans for the arrays of each call some
-- statements were planned again every time, which took longer (0.5 to
-- 0.8 ms each) than running them.
ALTER FUNCTION @schema@.flow_steps_archived() SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @schema@.complete_jobs_with(bigint[], jsonb, uuid, jsonb, integer[])
  SET plan_cache_mode = force_generic_plan;

CREATE TRIGGER flow_steps_archived AFTER INSERT ON @schema@.job_archive
  REFERENCING NEW TABLE AS archived
  FOR EACH STATEMENT EXECUTE FUNCTION @schema@.flow_steps_archived();

-- The queue each job name's handler consumes, as the processes that run
-- handlers store it (store_handler_queues, at start and on every reload;
-- the last one to store a name wins, as with flows' steps), and the
-- queues its handler consumed before. Jobs already sent to a queue the
-- handler no longer consumes would otherwise wait there for good: they
-- move to the handler's queue (move_handler_jobs) when the handler's
-- queue is stored and at every maintenance pass, which catches jobs sent
-- to the old queue later (by a process still running the old file, or a
-- retry of an attempt that was running during the change).
CREATE TABLE @schema@.handler_queue (
  job_name   text PRIMARY KEY,
  queue      text NOT NULL,
  previous   text[] NOT NULL DEFAULT '{}', -- queues it consumed before
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Moves the waiting, delayed and retrying jobs of the job names in `names`
-- (NULL: all) from the queues their handlers consumed before to the queues
-- they consume now, and wakes those. Jobs being fetched at this moment are
-- left alone (they start anyway); a job whose singleton key is taken in the
-- new queue stays where it is. Returns [{job, from, to, moved}], one
-- element per name and old queue that had jobs to move.
CREATE FUNCTION @schema@.move_handler_jobs(names text[] DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  moves jsonb;
  queues text[];
BEGIN
  WITH picked AS (
    SELECT j.id, j.name, j.queue AS from_queue, h.queue AS to_queue, j.singleton_key
      FROM @schema@.handler_queue h
      JOIN @schema@.job j ON j.queue = ANY(h.previous) AND j.name = h.job_name
     WHERE h.previous <> '{}' AND (names IS NULL OR h.job_name = ANY(names))
       AND j.state < 'active'
       AND (j.singleton_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM @schema@.job x
               WHERE x.queue = h.queue AND x.singleton_key = j.singleton_key))
       FOR UPDATE OF j SKIP LOCKED
  ), chosen AS ( -- of two old jobs with one singleton key, the first moves
    SELECT DISTINCT ON (p.to_queue, coalesce('k:' || p.singleton_key, 'i:' || p.id)) p.*
      FROM picked p
     ORDER BY p.to_queue, coalesce('k:' || p.singleton_key, 'i:' || p.id), p.id
  ), moved AS (
    UPDATE @schema@.job j SET queue = c.to_queue
      FROM chosen c
     WHERE j.id = c.id
    RETURNING c.name, c.from_queue, c.to_queue
  )
  SELECT jsonb_agg(jsonb_build_object('job', g.name, 'from', g.from_queue,
                                      'to', g.to_queue, 'moved', g.n)
                   ORDER BY g.name, g.from_queue),
         array_agg(DISTINCT g.to_queue)
    INTO moves, queues
    FROM (SELECT m.name, m.from_queue, m.to_queue, count(*) AS n
            FROM moved m GROUP BY m.name, m.from_queue, m.to_queue) g;
  IF queues IS NOT NULL THEN
    PERFORM @schema@.wake_queues(queues);
  END IF;
  RETURN coalesce(moves, '[]');
END $$;

-- Stores the queues of a process's handlers, `handlers` a JSON object
-- {job name: queue}: a name whose queue changed keeps its old queue among
-- its previous ones. Then moves the jobs of those names
-- (move_handler_jobs) and returns what moved.
CREATE FUNCTION @schema@.store_handler_queues(handlers jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO @schema@.handler_queue AS hq (job_name, queue)
  SELECT h.key, h.value FROM jsonb_each_text(handlers) AS h
  ON CONFLICT (job_name) DO UPDATE
     SET previous = array_remove(array_remove(hq.previous, hq.queue) || hq.queue,
                                 excluded.queue),
         queue = excluded.queue, updated_at = now()
   WHERE hq.queue <> excluded.queue;
  RETURN @schema@.move_handler_jobs(ARRAY(SELECT jsonb_object_keys(handlers)));
END $$;
