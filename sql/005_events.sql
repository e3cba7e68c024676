-- 005_events: the event store.
--
-- queue_events keeps the column names analytics SQL is written against
-- (stream, ts, type, run_id, flow_name, step_name, step_id, attempt, data);
-- the flow columns are NULL for events outside flows. `tx` is the id of the
-- transaction that wrote the row: readers use it to stay gap-safe.
--
-- Gap safety. An identity value is drawn when a row is inserted but the
-- row becomes visible when its transaction commits, so a reader that moves
-- a cursor over ids (`id > last`) skips a row whose transaction commits
-- after a row with a higher id is already visible. Readers here move over
-- snapshots instead, as PgQ does: a reader's position is a snapshot B
-- (every event visible in B has been delivered); the next read takes the
-- reading statement's own snapshot T and delivers the events visible in T
-- and not in B, then moves to T. An event not visible in B was written by a
-- transaction at or above B's xmax or in B's in-progress list (xip), which
-- is how the read finds them through the index on tx. Each committed event
-- becomes visible in exactly one such step, so nothing is skipped and
-- nothing is delivered twice, and a transaction left open elsewhere in the
-- cluster holds back nothing but its own events (the plain "read below
-- xmin" rule stalls every reader behind it).

CREATE TABLE @schema@.queue_events (
  id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  stream    text NOT NULL,
  ts        timestamptz NOT NULL DEFAULT now(),
  type      text NOT NULL,
  run_id    text,
  flow_name text,
  step_name text,
  step_id   text,
  attempt   integer,
  data      jsonb NOT NULL DEFAULT '{}',
  tx        xid8 NOT NULL DEFAULT pg_current_xact_id(),
  CONSTRAINT queue_events_stream_check CHECK (stream <> '' AND octet_length(stream) <= 500),
  CONSTRAINT queue_events_type_check CHECK (type <> '' AND octet_length(type) <= 200)
);
-- By stream (exact names and `prefix*` patterns), by run, by type and time,
-- and by writer for the readers.
CREATE INDEX queue_events_stream_idx ON @schema@.queue_events (stream text_pattern_ops, id);
CREATE INDEX queue_events_run_idx ON @schema@.queue_events (run_id, id) WHERE run_id IS NOT NULL;
CREATE INDEX queue_events_type_ts_idx ON @schema@.queue_events (type, ts);
CREATE INDEX queue_events_tx_idx ON @schema@.queue_events (tx, id);

-- Flow runs, one row per run (maintained by flows).
CREATE TABLE @schema@.queue_flow_index (
  flow_name    text NOT NULL,
  run_id       text NOT NULL,
  started_at   timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  status       text NOT NULL DEFAULT 'running'
               CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
  PRIMARY KEY (flow_name, run_id)
);
CREATE INDEX queue_flow_index_started_idx ON @schema@.queue_flow_index (started_at);

-- A stream pattern as a LIKE pattern: `*` is the only wildcard; `%`, `_`
-- and `\` in names are literal.
CREATE FUNCTION @schema@.stream_like(pattern text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT replace(replace(replace(replace(pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
$$;

-- One wake-up per transaction: identical notifications of a transaction
-- collapse into one, and the payload is constant (a hint, never the data).
CREATE FUNCTION @schema@.events_wake() RETURNS void
LANGUAGE sql AS $$
  SELECT pg_notify(replace('@schema@', '"', '') || '_events', '')
$$;

-- Checks one event; raises 22023 naming what is wrong.
CREATE FUNCTION @schema@.check_event(stream text, type text, data jsonb)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF stream IS NULL OR stream = '' THEN
    RAISE EXCEPTION 'event stream must be a non-empty string' USING ERRCODE = '22023';
  ELSIF octet_length(stream) > 500 THEN
    RAISE EXCEPTION 'event stream is % bytes, the limit is 500', octet_length(stream)
      USING ERRCODE = '22023';
  ELSIF type IS NULL OR type = '' THEN
    RAISE EXCEPTION 'event type must be a non-empty string' USING ERRCODE = '22023';
  ELSIF octet_length(type) > 200 THEN
    RAISE EXCEPTION 'event type is % bytes, the limit is 200', octet_length(type)
      USING ERRCODE = '22023';
  ELSIF strpos(stream, '*') > 0 THEN
    RAISE EXCEPTION 'event stream "%" contains "*" (the pattern wildcard)', stream
      USING ERRCODE = '22023';
  END IF;
END $$;

-- Appends one event inside the caller's transaction (the outbox pattern);
-- returns its id. Readers see it when the transaction commits.
CREATE FUNCTION @schema@.append(stream text, type text, data jsonb DEFAULT '{}',
                                run_id text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  new_id bigint;
BEGIN
  PERFORM @schema@.check_event(stream, type, data);
  INSERT INTO @schema@.queue_events (stream, type, data, run_id)
  VALUES (stream, type, coalesce(data, '{}'), run_id)
  RETURNING id INTO new_id;
  PERFORM @schema@.events_wake();
  RETURN new_id;
END $$;

-- Appends a JSON array of events ({stream, type, data, run_id, flow_name,
-- step_name, step_id, attempt}) in one statement, in order; returns each
-- event's id and ts in input order. One bad event appends nothing.
CREATE FUNCTION @schema@.append_events(events jsonb)
RETURNS TABLE (id bigint, ts timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
  IF jsonb_typeof(events) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'events must be a JSON array' USING ERRCODE = '22023';
  END IF;
  PERFORM @schema@.check_event(e.stream, e.type, e.data)
     FROM jsonb_to_recordset(events) AS e(stream text, type text, data jsonb);
  RETURN QUERY
  WITH ins AS (
    INSERT INTO @schema@.queue_events AS q
      (stream, type, data, run_id, flow_name, step_name, step_id, attempt)
    SELECT e.stream, e.type, coalesce(e.data, '{}'), e.run_id, e.flow_name,
           e.step_name, e.step_id, e.attempt
      FROM ROWS FROM (jsonb_to_recordset(events)
             AS (stream text, type text, data jsonb, run_id text, flow_name text,
                 step_name text, step_id text, attempt integer))
           WITH ORDINALITY AS e(stream, type, data, run_id, flow_name, step_name,
                                step_id, attempt, n)
     ORDER BY e.n
    RETURNING q.id, q.ts)
  SELECT ins.id, ins.ts FROM ins ORDER BY ins.id;
  IF jsonb_array_length(events) > 0 THEN
    PERFORM @schema@.events_wake();
  END IF;
END $$;

-- Events of `pattern` (a stream name or `prefix*`) in stream order (id),
-- filtered by the non-NULL arguments; at most `n`.
CREATE FUNCTION @schema@.query_events(pattern text, types text[], after_id bigint,
                                      before_id bigint, run text, from_ts timestamptz,
                                      to_ts timestamptz, n integer)
RETURNS SETOF @schema@.queue_events
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF strpos(pattern, '*') = 0 THEN
    RETURN QUERY SELECT * FROM @schema@.queue_events e
     WHERE e.stream = pattern
       AND (types IS NULL OR e.type = ANY(types))
       AND (after_id IS NULL OR e.id > after_id)
       AND (before_id IS NULL OR e.id < before_id)
       AND (run IS NULL OR e.run_id = run)
       AND (from_ts IS NULL OR e.ts >= from_ts)
       AND (to_ts IS NULL OR e.ts < to_ts)
     ORDER BY e.id LIMIT n;
  ELSE
    RETURN QUERY SELECT * FROM @schema@.queue_events e
     WHERE e.stream LIKE @schema@.stream_like(pattern)
       AND (types IS NULL OR e.type = ANY(types))
       AND (after_id IS NULL OR e.id > after_id)
       AND (before_id IS NULL OR e.id < before_id)
       AND (run IS NULL OR e.run_id = run)
       AND (from_ts IS NULL OR e.ts >= from_ts)
       AND (to_ts IS NULL OR e.ts < to_ts)
     ORDER BY e.id LIMIT n;
  END IF;
END $$;

-- One step of a reader (see "Gap safety" above). `base` is the reader's
-- position; `target` the snapshot of a step in progress (NULL: take this
-- statement's own); `after_id` the last id delivered within that step (0
-- at its start); `min_id` excludes events up to an id (subscribe from an
-- id). Returns at most n events of `pattern` (NULL: every stream), and in
-- every row the step's target snapshot; no events: one row whose id is
-- NULL. Fewer than n events means the step is complete (the reader moves
-- to the target).
--
-- Two plans, chosen here rather than left to the planner (which cannot
-- estimate `tx >= x` and may walk the whole primary key for ORDER BY id
-- LIMIT n): a reader at the start of the log (base xmax 1: everything is
-- new) pages through ids; a reader near the head collects the few rows
-- written by transactions at or above base's xmax, or in its in-progress
-- list, through the index on tx, then orders them.
CREATE FUNCTION @schema@.read_events(pattern text, base pg_snapshot,
                                     target pg_snapshot, after_id bigint,
                                     min_id bigint, n integer)
RETURNS TABLE (snapshot pg_snapshot, id bigint, stream text, ts timestamptz,
               type text, run_id text, flow_name text, step_name text,
               step_id text, attempt integer, data jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  -- STABLE: every statement here runs in the calling statement's snapshot,
  -- the one pg_current_snapshot() returns.
  t pg_snapshot := coalesce(target, pg_current_snapshot());
  like_pattern text := @schema@.stream_like(pattern);
  lo xid8 := pg_snapshot_xmax(base);
  hi xid8 := pg_snapshot_xmax(t);
  xip xid8[] := ARRAY(SELECT pg_snapshot_xip(base));
  floor_id bigint := greatest(after_id, min_id);
BEGIN
  IF lo <= '1'::xid8 THEN
    RETURN QUERY
    SELECT t, e.id, e.stream, e.ts, e.type, e.run_id, e.flow_name, e.step_name,
           e.step_id, e.attempt, e.data
      FROM @schema@.queue_events e
     WHERE e.id > floor_id
       AND e.tx < hi
       AND pg_visible_in_snapshot(e.tx, t)
       AND (pattern IS NULL OR e.stream LIKE like_pattern)
     ORDER BY e.id
     LIMIT n;
  ELSE
    RETURN QUERY
    WITH fresh AS MATERIALIZED (
      SELECT e.* FROM @schema@.queue_events e
       WHERE e.tx >= lo AND e.tx < hi AND e.id > floor_id
      UNION ALL
      SELECT e.* FROM @schema@.queue_events e
       WHERE cardinality(xip) > 0 -- a one-time filter: no scan without
         AND e.tx = ANY(xip) AND e.tx < lo AND e.id > floor_id
    )
    SELECT t, f.id, f.stream, f.ts, f.type, f.run_id, f.flow_name, f.step_name,
           f.step_id, f.attempt, f.data
      FROM fresh f
     WHERE pg_visible_in_snapshot(f.tx, t)
       AND (pattern IS NULL OR f.stream LIKE like_pattern)
     ORDER BY f.id
     LIMIT n;
  END IF;
  IF NOT FOUND THEN
    RETURN QUERY SELECT t, NULL::bigint, NULL::text, NULL::timestamptz, NULL::text,
                        NULL::text, NULL::text, NULL::text, NULL::text,
                        NULL::integer, NULL::jsonb;
  END IF;
END $$;

-- Retention: deletes up to n events older than `keep` seconds, oldest ids
-- first (ids follow time closely enough: a late commit's event goes in a
-- later pass), and returns how many. One process of the cluster does each
-- pass; the others return NULL at once. Appends never wait for it: it
-- deletes in small batches, old rows only.
CREATE FUNCTION @schema@.delete_old_events(keep double precision, n integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  deleted bigint;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtextextended('moonq.event_retention:@schema@', 0)) THEN
    RETURN NULL;
  END IF;
  DELETE FROM @schema@.queue_events e
   WHERE e.id IN (SELECT o.id FROM @schema@.queue_events o ORDER BY o.id LIMIT n)
     AND e.ts < now() - make_interval(secs => keep);
  GET DIAGNOSTICS deleted = ROW_COUNT;
  RETURN deleted;
END $$;
