-- 012_flows: what a handler enqueues is sent with its completion; flows,
-- runs of steps that trigger steps through events.
--
-- complete_jobs_with is complete_jobs (009) with `effects`, a JSON array
-- aligned with `ids`, each element null or {events: [...], jobs: [{name,
-- data, options}, ...], state: {key: value}} (an element that is an array
-- is the events alone, as in 006). Jobs a handler enqueued (ctx.enqueue)
-- are sent by it, in the completing transaction like the events (006): a
-- failed or crashed attempt leaves no follow-up jobs behind and a retried
-- job enqueues once. Each job's sends run in a subtransaction of their
-- own: a job whose enqueues PostgreSQL refuses (a bad option, say) fails
-- with that error and the rest of the batch completes.
--
-- A step is a handler file that declares `flow = { name, step, entry,
-- subscribes, emits }`; processes that run handlers store their flows'
-- steps in queue_flow_steps (store_flows, at start and on every reload). A
-- run is a row of queue_flow_index (005) and its stream
-- "flow:<flow>:<run_id>"; every job of a step carries the run id.
--
-- Stepping happens where a step's job completes (complete_jobs_with):
-- the events the step emitted without a stream of their own go to the
-- run's stream, with the flow columns, and every step of the flow that
-- subscribes to an event's type is sent a job whose data is the event's
-- data — all in the transaction that completes the emitting job, so a
-- retried step triggers its successors once. The state writes of the step
-- (ctx.state) are stored in the same transaction.
--
-- A run ends by triggers on the job tables, so every path that changes a
-- job (workers, maintenance, SQL cancel and retry) keeps runs right: when a
-- step's job is archived `failed` the run fails (with the step and the
-- error); when nothing of the run is left waiting, delayed, retrying or
-- running, it completes. Each step's start, retry, completion and failure
-- is an event on the run's stream. A run's row is locked while its end is
-- decided, so two steps finishing at once cannot both leave it running.

CREATE TABLE @schema@.queue_flow_steps (
  flow_name  text NOT NULL,
  step_name  text NOT NULL,
  job_name   text NOT NULL UNIQUE,
  queue      text NOT NULL, -- the queue the step's handler fetches from
  entry      boolean NOT NULL DEFAULT false,
  subscribes text[] NOT NULL DEFAULT '{}',
  emits      text[] NOT NULL DEFAULT '{}',
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (flow_name, step_name)
);
CREATE INDEX queue_flow_steps_subscribes_idx ON @schema@.queue_flow_steps
  USING gin (subscribes);

ALTER TABLE @schema@.queue_flow_index
  ADD COLUMN failed_step text,
  ADD COLUMN error jsonb,
  ADD COLUMN data jsonb;
CREATE INDEX queue_flow_index_status_idx ON @schema@.queue_flow_index
  (flow_name, status, started_at);
CREATE UNIQUE INDEX queue_flow_index_run_idx ON @schema@.queue_flow_index (run_id);
-- Analytics (examples/analytics.sql): failed runs, latest first; events of
-- a time range over every stream (ids and times grow together, so a BRIN
-- index is a few pages for millions of events).
CREATE INDEX queue_flow_index_failed_idx ON @schema@.queue_flow_index (completed_at)
  WHERE status = 'failed';
CREATE INDEX queue_events_ts_brin ON @schema@.queue_events USING brin (ts);

CREATE TABLE @schema@.queue_flow_state (
  run_id     text NOT NULL,
  key        text NOT NULL CHECK (octet_length(key) BETWEEN 1 AND 200),
  value      jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (run_id, key)
);

CREATE INDEX job_run_idx ON @schema@.job (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX job_archive_run_idx ON @schema@.job_archive (run_id) WHERE run_id IS NOT NULL;

CREATE FUNCTION @schema@.flow_stream(flow_name text, run_id text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'flow:' || flow_name || ':' || run_id $$;

-- Replaces the steps of each flow in `flows` (a JSON array of {flow,
-- steps: [{step, job, queue, entry, subscribes, emits}]}); flows not named are
-- left alone. The last process to store a flow wins.
CREATE FUNCTION @schema@.store_flows(flows jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM @schema@.queue_flow_steps s
   WHERE s.flow_name IN (SELECT f->>'flow' FROM jsonb_array_elements(flows) AS f)
      OR s.job_name IN (SELECT st->>'job' FROM jsonb_array_elements(flows) AS f,
                                             jsonb_array_elements(f->'steps') AS st);
  INSERT INTO @schema@.queue_flow_steps
    (flow_name, step_name, job_name, queue, entry, subscribes, emits)
  SELECT f->>'flow', st->>'step', st->>'job', coalesce(st->>'queue', st->>'job'),
         coalesce((st->>'entry')::boolean, false),
         ARRAY(SELECT jsonb_array_elements_text(coalesce(st->'subscribes', '[]'))),
         ARRAY(SELECT jsonb_array_elements_text(coalesce(st->'emits', '[]')))
    FROM jsonb_array_elements(flows) AS f, jsonb_array_elements(f->'steps') AS st;
END $$;

-- Appends a run-level or step-level event to a run's stream.
CREATE FUNCTION @schema@.flow_event(flow_name text, run_id text, step_name text,
                                    step_id bigint, attempt integer, type text,
                                    data jsonb) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name, step_name,
                                     step_id, attempt)
  VALUES (@schema@.flow_stream(flow_name, run_id), type, coalesce(data, '{}'), run_id,
          flow_name, step_name, step_id::text, attempt);
  SELECT @schema@.events_wake();
$$;

-- Starts a run of flow `name`: a queue_flow_index row (running), the entry
-- step's job with `data` (send options in `options`; options.run_id picks
-- the run id, a uuid otherwise) and a flow.started event, in the caller's
-- transaction. Returns the run id.
CREATE FUNCTION @schema@.start_flow(name text, data jsonb DEFAULT '{}',
                                    options jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  entry_job text;
  entry_queue text;
  rid text := coalesce(options->>'run_id', gen_random_uuid()::text);
BEGIN
  SELECT s.job_name, s.queue INTO entry_job, entry_queue FROM @schema@.queue_flow_steps s
   WHERE s.flow_name = name AND s.entry;
  IF entry_job IS NULL THEN
    RAISE EXCEPTION 'unknown flow "%" (no entry step stored: is a process with its handlers running?)', name
      USING ERRCODE = '22023';
  END IF;
  IF octet_length(rid) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'run_id must be 1 to 200 bytes' USING ERRCODE = '22023';
  END IF;
  BEGIN
    INSERT INTO @schema@.queue_flow_index (flow_name, run_id, data)
    VALUES (name, rid, coalesce(data, '{}'));
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'a run "%" exists already', rid USING ERRCODE = '22023';
  END;
  PERFORM @schema@.flow_event(name, rid, NULL, NULL, NULL, 'flow.started', data);
  PERFORM @schema@.send(entry_job, coalesce(data, '{}'),
                        jsonb_build_object('queue', entry_queue) || coalesce(options, '{}')
                          || jsonb_build_object('run_id', rid));
  -- (send wakes no one on moonq's own connections; a second wake-up of
  -- the same queue in one transaction is one NOTIFY)
  PERFORM @schema@.wake(coalesce(options->>'queue', entry_queue));
  RETURN rid;
END $$;

-- send (002) starts a run when the job is a flow's entry step and carries
-- no run id: the same as start_flow with the job's data, so sending the
-- entry job directly (SQL, moonq.queue.send, the CLI) is starting a run.
-- (send_many of entry jobs sends jobs without runs: a run per job of a
-- bulk send is start_flow's to do.)
CREATE OR REPLACE FUNCTION @schema@.send(name text, data jsonb DEFAULT '{}',
                                         options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  flow text;
  rid text;
BEGIN
  IF options->>'run_id' IS NULL THEN
    SELECT s.flow_name INTO flow FROM @schema@.queue_flow_steps s
     WHERE s.job_name = name AND s.entry;
    IF flow IS NOT NULL THEN
      rid := gen_random_uuid()::text;
      INSERT INTO @schema@.queue_flow_index (flow_name, run_id, data)
      VALUES (flow, rid, coalesce(data, '{}'));
      PERFORM @schema@.flow_event(flow, rid, NULL, NULL, NULL, 'flow.started', data);
      options := coalesce(options, '{}') || jsonb_build_object('run_id', rid);
    END IF;
  END IF;
  RETURN (@schema@.send_many(name, jsonb_build_array(coalesce(data, '{}'::jsonb)),
                             options))[1];
END $$;

-- Cancels a running run: its status becomes cancelled and its waiting,
-- delayed and retrying step jobs are cancelled (running ones finish, and
-- trigger nothing more). False when the run is not running.
CREATE FUNCTION @schema@.cancel_flow(rid text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  r @schema@.queue_flow_index;
BEGIN
  UPDATE @schema@.queue_flow_index f SET status = 'cancelled', completed_at = now()
   WHERE f.run_id = rid AND f.status = 'running'
  RETURNING * INTO r;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM @schema@.cancel(j.id) FROM @schema@.job j
   WHERE j.run_id = rid AND j.state < 'active';
  PERFORM @schema@.flow_event(r.flow_name, rid, NULL, NULL, NULL, 'flow.cancelled', '{}');
  RETURN true;
END $$;

-- A run as JSON: flow, run_id, status, started_at, completed_at, data,
-- failed_step, error, and its steps' jobs (id, step, name, state,
-- attempt, created_at, started_at, completed_at, error), oldest first.
CREATE FUNCTION @schema@.get_flow(rid text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
           'flow', f.flow_name, 'run_id', f.run_id, 'status', f.status,
           'started_at', f.started_at, 'completed_at', f.completed_at,
           'data', f.data, 'failed_step', f.failed_step, 'error', f.error,
           'steps', coalesce((
             SELECT jsonb_agg(jsonb_build_object(
                      'id', a.id, 'step', s.step_name, 'name', a.name,
                      'state', a.state, 'attempt', a.attempt,
                      'created_at', a.created_at, 'started_at', a.started_at,
                      'completed_at', a.completed_at, 'error', a.error)
                      ORDER BY a.id)
               FROM @schema@.all_jobs a
               LEFT JOIN @schema@.queue_flow_steps s ON s.job_name = a.name
              WHERE a.run_id = f.run_id), '[]'))
    FROM @schema@.queue_flow_index f
   WHERE f.run_id = rid
$$;

-- Runs of a flow, newest first: status NULL for all; keyset paging with
-- `before` (a started_at) and `n` at most.
CREATE FUNCTION @schema@.list_flows(name text, status text DEFAULT NULL,
                                    n integer DEFAULT 100,
                                    before timestamptz DEFAULT NULL)
RETURNS SETOF @schema@.queue_flow_index
LANGUAGE sql STABLE AS $$
  SELECT * FROM @schema@.queue_flow_index f
   WHERE f.flow_name = name AND (list_flows.status IS NULL OR f.status = list_flows.status)
     AND (before IS NULL OR f.started_at < before)
   ORDER BY f.started_at DESC
   LIMIT n
$$;

-- Decides whether run `rid` of `flow` ended, its row locked: failed when
-- `failed_step` is given; completed when none of its step jobs is left in
-- the job table. Writes flow.completed / flow.failed.
CREATE FUNCTION @schema@.flow_settle(flow text, rid text, failed_step text,
                                     failure jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  st text;
BEGIN
  SELECT f.status INTO st FROM @schema@.queue_flow_index f
   WHERE f.flow_name = flow AND f.run_id = rid FOR UPDATE;
  IF st IS DISTINCT FROM 'running' THEN
    RETURN;
  END IF;
  IF failed_step IS NOT NULL THEN
    UPDATE @schema@.queue_flow_index f
       SET status = 'failed', completed_at = now(), failed_step = flow_settle.failed_step,
           error = failure
     WHERE f.flow_name = flow AND f.run_id = rid;
    PERFORM @schema@.flow_event(flow, rid, failed_step, NULL, NULL, 'flow.failed',
                                jsonb_build_object('step', failed_step, 'error', failure));
  ELSIF NOT EXISTS (SELECT 1 FROM @schema@.job j
                     JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
                    WHERE j.run_id = rid AND s.flow_name = flow) THEN
    UPDATE @schema@.queue_flow_index f SET status = 'completed', completed_at = now()
     WHERE f.flow_name = flow AND f.run_id = rid;
    PERFORM @schema@.flow_event(flow, rid, NULL, NULL, NULL, 'flow.completed', '{}');
  END IF;
END $$;

-- A step's job reached an end state (archived): step.completed /
-- step.failed / step.cancelled on the run's stream, then flow_settle.
CREATE FUNCTION @schema@.flow_step_archived() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  s @schema@.queue_flow_steps;
BEGIN
  SELECT * INTO s FROM @schema@.queue_flow_steps x WHERE x.job_name = NEW.name;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  PERFORM @schema@.flow_event(s.flow_name, NEW.run_id, s.step_name, NEW.id, NEW.attempt,
                              'step.' || NEW.state::text,
                              CASE WHEN NEW.state = 'failed'
                                   THEN jsonb_build_object('error', NEW.error)
                                   ELSE '{}'::jsonb END);
  PERFORM @schema@.flow_settle(s.flow_name, NEW.run_id,
                               CASE WHEN NEW.state = 'failed' THEN s.step_name END,
                               NEW.error);
  RETURN NULL;
END $$;

CREATE TRIGGER flow_step_archived AFTER INSERT ON @schema@.job_archive
  FOR EACH ROW WHEN (NEW.run_id IS NOT NULL)
  EXECUTE FUNCTION @schema@.flow_step_archived();

-- A step's job started (active) or waits for a retry: step.started /
-- step.retrying on the run's stream.
CREATE FUNCTION @schema@.flow_step_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  s @schema@.queue_flow_steps;
BEGIN
  SELECT * INTO s FROM @schema@.queue_flow_steps x WHERE x.job_name = NEW.name;
  IF FOUND THEN
    PERFORM @schema@.flow_event(s.flow_name, NEW.run_id, s.step_name, NEW.id, NEW.attempt,
                                CASE NEW.state WHEN 'active' THEN 'step.started'
                                               ELSE 'step.retrying' END,
                                CASE WHEN NEW.state = 'retry'
                                     THEN jsonb_build_object('error', NEW.error,
                                                             'start_after', NEW.start_after)
                                     ELSE '{}'::jsonb END);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER flow_step_changed AFTER UPDATE OF state ON @schema@.job
  FOR EACH ROW WHEN (NEW.run_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state
                     AND NEW.state IN ('active', 'retry'))
  EXECUTE FUNCTION @schema@.flow_step_changed();

-- Completes jobs with their effects (see the top): for each job this call
-- completes, its enqueued jobs are sent; for a step's job, its stream-less
-- events go to the run's stream with the flow columns, each event's
-- subscribers are sent a job (the event's data, the run id) while the run
-- runs, and its state writes are stored. The rest is complete_jobs's.
CREATE FUNCTION @schema@.complete_jobs_with(ids bigint[], outputs jsonb,
                                                       process_id uuid,
                                                       effects jsonb DEFAULT NULL,
                                                       attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
  r record;
  x jsonb;
  bad_ids bigint[] := '{}';
  bad_errors jsonb[] := '{}';
  keep_ids bigint[];
  keep_outputs jsonb;
  keep_events jsonb;
  flow_ids bigint[] := '{}';
  woken text[] := '{}'; -- queues sent to (moonq's connections send no
                        -- wake-ups of their own: 002's moonq.no_wake)
BEGIN
  -- an attempt that ran past its expiry while the job started again
  -- (attempts[i] <> 0 and not the job's) completes nothing
  IF attempts IS NOT NULL AND EXISTS (
       SELECT 1 FROM unnest(ids, attempts) AS u(id, attempt)
         JOIN @schema@.job j ON j.id = u.id
        WHERE u.attempt <> 0 AND j.attempt <> u.attempt) THEN
    SELECT array_agg(i.id ORDER BY i.n), jsonb_agg(o.value ORDER BY i.n),
           CASE WHEN effects IS NULL THEN NULL ELSE jsonb_agg(e.value ORDER BY i.n) END
      INTO ids, outputs, effects
      FROM unnest(ids, attempts) WITH ORDINALITY AS i(id, attempt, n)
      JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n) ON o.n = i.n
      LEFT JOIN jsonb_array_elements(coalesce(effects, '[]')) WITH ORDINALITY AS e(value, n)
        ON e.n = i.n
      LEFT JOIN @schema@.job j ON j.id = i.id
     WHERE i.attempt = 0 OR j.attempt IS NOT DISTINCT FROM i.attempt;
    IF ids IS NULL THEN
      RETURN;
    END IF;
  END IF;
  IF effects IS NULL THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(ids, outputs, process_id, NULL);
    RETURN;
  END IF;
  -- the runs involved, locked in one order (their ends are decided by the
  -- triggers of the completion below)
  PERFORM 1 FROM @schema@.queue_flow_index f
   WHERE (f.flow_name, f.run_id) IN (
           SELECT s.flow_name, j.run_id FROM @schema@.job j
             JOIN @schema@.queue_flow_steps s ON s.job_name = j.name
            WHERE j.id = ANY(ids) AND j.run_id IS NOT NULL)
   ORDER BY f.flow_name, f.run_id
     FOR UPDATE OF f;
  FOR r IN
    SELECT i.id, e.value AS eff, j.name, j.run_id, j.attempt, s.flow_name, s.step_name,
           st.status AS run_status
      FROM unnest(ids) WITH ORDINALITY AS i(id, n)
      JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
      JOIN @schema@.job j ON j.id = i.id
      LEFT JOIN @schema@.queue_flow_steps s ON s.job_name = j.name AND j.run_id IS NOT NULL
      LEFT JOIN @schema@.queue_flow_index st ON st.flow_name = s.flow_name
                                           AND st.run_id = j.run_id
     WHERE jsonb_typeof(e.value) = 'object'
       AND j.state = 'active' AND j.process_id IS NOT DISTINCT FROM complete_jobs_with.process_id
     ORDER BY i.n
       FOR UPDATE OF j
  LOOP
    -- the handler's own enqueues, in a subtransaction (only when there are
    -- some: it costs one): a refused one fails this job alone. A step of a
    -- run that ended (cancelled, failed) while it ran sends nothing.
    IF jsonb_typeof(r.eff->'jobs') = 'array'
       AND NOT (r.flow_name IS NOT NULL AND r.run_status IS DISTINCT FROM 'running'
                AND r.run_status IS NOT NULL) THEN
      BEGIN
        FOR x IN SELECT q.value FROM jsonb_array_elements(r.eff->'jobs') AS q LOOP
          PERFORM @schema@.send(x->>'name', coalesce(x->'data', '{}'::jsonb),
                                coalesce(x->'options', '{}'::jsonb));
          woken := woken || coalesce(x->'options'->>'queue', x->>'name');
        END LOOP;
      EXCEPTION WHEN OTHERS THEN
        bad_ids := bad_ids || r.id;
        bad_errors := bad_errors || jsonb_build_object('message', 'ctx.enqueue: ' || SQLERRM);
        CONTINUE;
      END;
    END IF;
    IF r.flow_name IS NOT NULL THEN
      flow_ids := flow_ids || r.id;
      -- the step's events on the run's stream, with the flow columns
      INSERT INTO @schema@.queue_events (stream, type, data, run_id, flow_name,
                                         step_name, step_id, attempt)
      SELECT @schema@.flow_stream(r.flow_name, r.run_id), ev.type,
             coalesce(ev.data, '{}'::jsonb), r.run_id, r.flow_name, r.step_name,
             r.id::text, r.attempt
        FROM ROWS FROM (jsonb_to_recordset(CASE WHEN jsonb_typeof(r.eff->'events') = 'array'
                                                THEN r.eff->'events' ELSE '[]' END)
                        AS (stream text, type text, data jsonb))
             WITH ORDINALITY AS ev(stream, type, data, n)
       WHERE ev.stream IS NULL
       ORDER BY ev.n;
      -- successors: only while the run is running
      IF r.run_status = 'running' THEN
        WITH sent AS (
          SELECT @schema@.send(s.job_name, coalesce(ev.data, '{}'::jsonb),
                               jsonb_build_object('run_id', r.run_id, 'queue', s.queue)),
                 s.queue
            FROM ROWS FROM (jsonb_to_recordset(CASE WHEN jsonb_typeof(r.eff->'events') = 'array'
                                                    THEN r.eff->'events' ELSE '[]' END)
                            AS (stream text, type text, data jsonb))
                 WITH ORDINALITY AS ev(stream, type, data, n)
            JOIN @schema@.queue_flow_steps s
              ON s.flow_name = r.flow_name AND ev.type = ANY(s.subscribes)
           WHERE ev.stream IS NULL
           ORDER BY ev.n, s.step_name)
        SELECT woken || coalesce(array_agg(sent.queue), '{}') INTO woken FROM sent;
      END IF;
      -- state writes: {key: value}, JSON null deletes (not for a run that
      -- ended meanwhile)
      IF jsonb_typeof(r.eff->'state') = 'object' AND r.run_status = 'running' THEN
        DELETE FROM @schema@.queue_flow_state fs
         WHERE fs.run_id = r.run_id
           AND fs.key IN (SELECT k.key FROM jsonb_each(r.eff->'state') AS k
                           WHERE k.value = 'null'::jsonb);
        INSERT INTO @schema@.queue_flow_state AS fs (run_id, key, value)
        SELECT r.run_id, k.key, k.value FROM jsonb_each(r.eff->'state') AS k
         WHERE k.value <> 'null'::jsonb
        ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, updated_at = now();
      END IF;
      PERFORM @schema@.events_wake();
    END IF;
  END LOOP;
  IF cardinality(bad_ids) > 0 THEN
    PERFORM @schema@.fail_jobs(bad_ids, bad_errors, process_id);
  END IF;
  IF cardinality(woken) > 0 THEN
    PERFORM @schema@.wake(array_to_string(ARRAY(SELECT DISTINCT unnest(woken)), ','));
  END IF;
  -- the rest of the events (a step's, with a stream of their own)
  SELECT array_agg(i.id ORDER BY i.n), jsonb_agg(o.value ORDER BY i.n),
         jsonb_agg(CASE WHEN jsonb_typeof(e.value) <> 'object' THEN e.value
                        WHEN i.id = ANY(flow_ids) THEN
                          (SELECT jsonb_agg(v) FROM jsonb_array_elements(
                                    CASE WHEN jsonb_typeof(e.value->'events') = 'array'
                                         THEN e.value->'events' ELSE '[]' END) AS v
                            WHERE v->>'stream' IS NOT NULL)
                        ELSE e.value->'events' END ORDER BY i.n)
    INTO keep_ids, keep_outputs, keep_events
    FROM unnest(ids) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(outputs) WITH ORDINALITY AS o(value, n) ON o.n = i.n
    LEFT JOIN jsonb_array_elements(effects) WITH ORDINALITY AS e(value, n) ON e.n = i.n
   WHERE i.id <> ALL (bad_ids);
  IF keep_ids IS NOT NULL THEN
    RETURN QUERY SELECT * FROM @schema@.complete_jobs(keep_ids, keep_outputs,
                                                      process_id, keep_events);
  END IF;
END $$;

-- fail_jobs (009) for given attempts (aligned with ids; 0: any): a failure
-- of an attempt that ran past its expiry while the job started again is
-- not the new attempt's.
CREATE FUNCTION @schema@.fail_jobs_at(ids bigint[], errors jsonb[], process_id uuid,
                                      attempts integer[])
RETURNS TABLE (id bigint, state @schema@.job_state, start_after timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  keep_ids bigint[];
  keep_errors jsonb[];
BEGIN
  SELECT array_agg(u.id ORDER BY u.n), array_agg(u.error ORDER BY u.n)
    INTO keep_ids, keep_errors
    FROM unnest(ids, errors, attempts) WITH ORDINALITY AS u(id, error, attempt, n)
    LEFT JOIN @schema@.job j ON j.id = u.id
   WHERE u.attempt IS NULL OR u.attempt = 0 OR j.attempt IS NOT DISTINCT FROM u.attempt;
  IF keep_ids IS NOT NULL THEN
    RETURN QUERY SELECT * FROM @schema@.fail_jobs(keep_ids, keep_errors, process_id);
  END IF;
END $$;
