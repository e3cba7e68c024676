-- 008_event_groups: consumer groups over the event store.
--
-- A group reads one stream pattern. Its events are split into a fixed
-- number of partitions by stream (stream_partition: every event of a
-- stream falls in one partition, so a stream's events are handled in
-- order), and each partition has one checkpoint, owned by at most one
-- member at a time. Members are processes (or several handles in one)
-- that join under a consumer name and keep a lease by calling join_group
-- every few seconds; each takes a fair share of the partitions (the ones
-- that are free, up to ceil(partitions / members)) and gives back what is
-- over its share, so a new member gets work and a dead one's partitions
-- are taken over once its lease has run out.
--
-- A checkpoint is a reader position as in 005 (a snapshot `base`, and
-- within a step in progress its `target` snapshot and the last id handled),
-- so a group is exactly as gap-safe as a subscription. Every change of
-- owner bumps the partition's epoch, and a checkpoint is written only by
-- the owner with the epoch it claimed: a member that stalled past its lease
-- (a paused process) cannot move a checkpoint it no longer owns.
--
-- An event whose handler keeps failing is parked (queue_event_parked) after
-- the member's retry limit, and the partition goes on; replay_parked marks
-- parked events to be handed to the group again.

CREATE TABLE @schema@.queue_event_groups (
  group_name text PRIMARY KEY
             CHECK (group_name <> '' AND octet_length(group_name) <= 200),
  pattern    text NOT NULL CHECK (pattern <> '' AND octet_length(pattern) <= 500),
  partitions integer NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE @schema@.queue_event_group_members (
  group_name  text NOT NULL REFERENCES @schema@.queue_event_groups ON DELETE CASCADE,
  consumer    text NOT NULL CHECK (consumer <> '' AND octet_length(consumer) <= 200),
  token       text NOT NULL, -- the member handle now holding the name
  process_id  text,          -- its process (queue_processes.id), for display
  joined_at   timestamptz NOT NULL DEFAULT now(),
  lease_until timestamptz NOT NULL,
  PRIMARY KEY (group_name, consumer)
);

CREATE TABLE @schema@.queue_event_checkpoints (
  group_name text NOT NULL REFERENCES @schema@.queue_event_groups ON DELETE CASCADE,
  partition  integer NOT NULL,
  consumer   text,                     -- the owner; NULL while free
  epoch      bigint NOT NULL DEFAULT 0, -- bumped at every change of owner
  base       pg_snapshot NOT NULL DEFAULT '1:1:',
  target     pg_snapshot,
  after_id   bigint NOT NULL DEFAULT 0,
  last_id    bigint,                   -- the last event handled
  handled    bigint NOT NULL DEFAULT 0, -- events handled, for display
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (group_name, partition)
);

CREATE TABLE @schema@.queue_event_parked (
  group_name text NOT NULL REFERENCES @schema@.queue_event_groups ON DELETE CASCADE,
  event_id   bigint NOT NULL,
  partition  integer NOT NULL,
  consumer   text NOT NULL,  -- the member that gave up on it
  attempts   integer NOT NULL,
  error      text,
  parked_at  timestamptz NOT NULL DEFAULT now(),
  replay     boolean NOT NULL DEFAULT false, -- to be handed to the group again
  PRIMARY KEY (group_name, event_id)
);
CREATE INDEX queue_event_parked_replay_idx ON @schema@.queue_event_parked (group_name, partition)
  WHERE replay;

-- A stream's partition key: 31 bits of md5 of its name, the same on every
-- PostgreSQL version and platform (hashtext is not promised to be), so a
-- stream never moves to another partition under a checkpoint. Stored with
-- each event (computed once, at insert) so that a group's readers test
-- `partition_key % partitions` per row, which costs next to nothing.
CREATE FUNCTION @schema@.stream_partition_key(stream text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT (('x' || left(md5(stream), 8))::bit(32)::integer) & 2147483647
$$;

ALTER TABLE @schema@.queue_events
  ADD COLUMN partition_key integer NOT NULL
  GENERATED ALWAYS AS (@schema@.stream_partition_key(stream)) STORED;

-- The partition (0 .. n-1) of a stream in a group of n partitions.
CREATE FUNCTION @schema@.stream_partition(stream text, n integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT @schema@.stream_partition_key(stream) % n
$$;

-- read_events (005) learns to read one partition of a pattern: `part` of
-- `parts` (NULL: every partition); and a step that goes on after a full
-- batch walks the ids from the last one delivered instead of collecting the
-- whole step through the index on tx again.
DROP FUNCTION @schema@.read_events(text, pg_snapshot, pg_snapshot, bigint, bigint, integer);
CREATE FUNCTION @schema@.read_events(pattern text, base pg_snapshot,
                                     target pg_snapshot, after_id bigint,
                                     min_id bigint, n integer,
                                     part integer DEFAULT NULL,
                                     parts integer DEFAULT NULL)
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
  IF lo <= '1'::xid8 OR after_id > 0 THEN
    -- From the start of the log, or further into a step that filled a
    -- batch already (a big step: collecting all of it again for every
    -- batch would cost its size each time), walk the ids from where the
    -- step is.
    RETURN QUERY
    SELECT t, e.id, e.stream, e.ts, e.type, e.run_id, e.flow_name, e.step_name,
           e.step_id, e.attempt, e.data
      FROM @schema@.queue_events e
     WHERE e.id > floor_id
       AND e.tx < hi
       AND pg_visible_in_snapshot(e.tx, t)
       AND (lo <= '1'::xid8 OR NOT pg_visible_in_snapshot(e.tx, base))
       AND (pattern IS NULL OR e.stream LIKE like_pattern)
       AND (parts IS NULL OR e.partition_key % parts = part)
     ORDER BY e.id
     LIMIT n;
  ELSE
    RETURN QUERY
    -- The step's rows, narrow (the data of rows another pattern or
    -- partition filters out is never copied); the rows chosen are fetched
    -- whole by id.
    WITH fresh AS MATERIALIZED (
      SELECT e.id, e.tx, e.stream, e.partition_key FROM @schema@.queue_events e
       WHERE e.tx >= lo AND e.tx < hi AND e.id > floor_id
      UNION ALL
      SELECT e.id, e.tx, e.stream, e.partition_key FROM @schema@.queue_events e
       WHERE cardinality(xip) > 0 -- a one-time filter: no scan without
         AND e.tx = ANY(xip) AND e.tx < lo AND e.id > floor_id
    ), chosen AS MATERIALIZED (
      SELECT f.id FROM fresh f
       WHERE pg_visible_in_snapshot(f.tx, t)
         AND (pattern IS NULL OR f.stream LIKE like_pattern)
         AND (parts IS NULL OR f.partition_key % parts = part)
       ORDER BY f.id
       LIMIT n
    )
    SELECT t, e.id, e.stream, e.ts, e.type, e.run_id, e.flow_name, e.step_name,
           e.step_id, e.attempt, e.data
      FROM chosen c JOIN @schema@.queue_events e ON e.id = c.id
     ORDER BY e.id;
  END IF;
  IF NOT FOUND THEN
    RETURN QUERY SELECT t, NULL::bigint, NULL::text, NULL::timestamptz, NULL::text,
                        NULL::text, NULL::text, NULL::text, NULL::text,
                        NULL::integer, NULL::jsonb;
  END IF;
END $$;

-- Which partitions (of `parts`) of a pattern have committed events that
-- some of `bases` (the positions of a member's idle partitions) has not
-- seen: a member wakes only those on a wake-up instead of reading every
-- partition it owns. Candidates only: a partition woken may find nothing.
CREATE FUNCTION @schema@.probe_partitions(pattern text, parts integer,
                                          bases pg_snapshot[])
RETURNS SETOF integer LANGUAGE plpgsql STABLE AS $$
DECLARE
  t pg_snapshot := pg_current_snapshot();
  lo xid8 := (SELECT min(pg_snapshot_xmax(b)) FROM unnest(bases) AS b);
  hi xid8 := pg_snapshot_xmax(t);
  xip xid8[] := ARRAY(SELECT DISTINCT pg_snapshot_xip(b) FROM unnest(bases) AS b);
  like_pattern text := @schema@.stream_like(pattern);
BEGIN
  RETURN QUERY
  SELECT DISTINCT f.partition_key % parts FROM (
    SELECT e.tx, e.stream, e.partition_key FROM @schema@.queue_events e
     WHERE e.tx >= lo AND e.tx < hi
    UNION ALL
    SELECT e.tx, e.stream, e.partition_key FROM @schema@.queue_events e
     WHERE cardinality(xip) > 0 AND e.tx = ANY(xip) AND e.tx < lo
  ) f
  WHERE pg_visible_in_snapshot(f.tx, t) AND f.stream LIKE like_pattern;
END $$;

-- Joins a group or renews a member's lease; see the top of this file.
--
-- `joining`: the handle's first call. It takes over the consumer name
-- from whatever handle held it (a restarted process resumes at once; the
-- old holder, if it still runs, is fenced by the epochs). A later call
-- whose token no longer holds the name returns one row with state
-- 'replaced'. `releasing`: partitions the member stopped reading and gives
-- back. `n_partitions` NULL takes the group's count (a new group: 16).
--
-- Returns the partitions the member owns after the call with their
-- checkpoints, or one row with partition NULL when it owns none; every
-- row carries the member's fair share, how many of its partition's parked
-- events wait for a replay, and the group's number of partitions.
CREATE FUNCTION @schema@.join_group(group_name text, pattern text,
                                    n_partitions integer, consumer text,
                                    token text, process_id text,
                                    lease double precision, joining boolean,
                                    releasing integer[])
RETURNS TABLE (state text, partition integer, epoch bigint, base text,
               target text, after_id bigint, share integer, replays integer,
               group_partitions integer)
LANGUAGE plpgsql AS $$
DECLARE
  g @schema@.queue_event_groups;
  held text;
  live integer;
  fair integer;
  mine integer;
  gname text := group_name;
  me text := consumer;
BEGIN
  IF gname IS NULL OR gname = '' OR octet_length(gname) > 200 THEN
    RAISE EXCEPTION 'group name must be 1 to 200 bytes' USING ERRCODE = '22023';
  ELSIF me IS NULL OR me = '' OR octet_length(me) > 200 THEN
    RAISE EXCEPTION 'consumer name must be 1 to 200 bytes' USING ERRCODE = '22023';
  ELSIF pattern IS NULL OR pattern = '' OR octet_length(pattern) > 500 THEN
    RAISE EXCEPTION 'stream pattern must be 1 to 500 bytes' USING ERRCODE = '22023';
  ELSIF n_partitions IS NOT NULL AND (n_partitions < 1 OR n_partitions > 1024) THEN
    RAISE EXCEPTION 'partitions is %, it must be 1 to 1024', n_partitions
      USING ERRCODE = '22023';
  ELSIF lease IS NULL OR lease <= 0 THEN
    RAISE EXCEPTION 'lease must be > 0 seconds' USING ERRCODE = '22023';
  END IF;
  INSERT INTO @schema@.queue_event_groups AS q (group_name, pattern, partitions)
  VALUES (gname, pattern, coalesce(n_partitions, 16))
  ON CONFLICT DO NOTHING;
  -- One join at a time per group: the rest of this is read-modify-write.
  SELECT * INTO g FROM @schema@.queue_event_groups q WHERE q.group_name = gname
     FOR UPDATE;
  IF g.pattern <> pattern THEN
    RAISE EXCEPTION 'group "%" reads the pattern "%", not "%"', gname, g.pattern, pattern
      USING ERRCODE = '22023';
  ELSIF n_partitions IS NOT NULL AND g.partitions <> n_partitions THEN
    RAISE EXCEPTION 'group "%" has % partitions, not %', gname, g.partitions, n_partitions
      USING ERRCODE = '22023';
  END IF;
  INSERT INTO @schema@.queue_event_checkpoints AS c (group_name, partition)
  SELECT gname, p FROM generate_series(0, g.partitions - 1) AS p
  ON CONFLICT DO NOTHING;

  -- Members whose lease ran out are gone; their partitions are free.
  WITH dead AS (
    DELETE FROM @schema@.queue_event_group_members m
     WHERE m.group_name = gname AND m.lease_until < now() AND m.consumer <> me
    RETURNING m.consumer)
  UPDATE @schema@.queue_event_checkpoints c SET consumer = NULL
   WHERE c.group_name = gname AND c.consumer IN (SELECT dead.consumer FROM dead);

  SELECT m.token INTO held FROM @schema@.queue_event_group_members m
   WHERE m.group_name = gname AND m.consumer = me;
  IF FOUND AND held <> token AND NOT joining THEN
    RETURN QUERY SELECT 'replaced'::text, NULL::integer, NULL::bigint, NULL::text,
                        NULL::text, NULL::bigint, NULL::integer, NULL::integer,
                        g.partitions;
    RETURN;
  END IF;
  INSERT INTO @schema@.queue_event_group_members AS m
    (group_name, consumer, token, process_id, lease_until)
  VALUES (gname, me, token, process_id, now() + make_interval(secs => lease))
  ON CONFLICT ON CONSTRAINT queue_event_group_members_pkey DO UPDATE
    SET token = excluded.token, process_id = excluded.process_id,
        lease_until = excluded.lease_until;
  IF held IS DISTINCT FROM token THEN
    -- A new holder of the name: fence whatever the previous one still runs.
    UPDATE @schema@.queue_event_checkpoints c SET epoch = c.epoch + 1
     WHERE c.group_name = gname AND c.consumer = me;
  END IF;

  UPDATE @schema@.queue_event_checkpoints c SET consumer = NULL
   WHERE c.group_name = gname AND c.consumer = me
     AND c.partition = ANY(coalesce(releasing, '{}'));

  SELECT count(*) INTO live FROM @schema@.queue_event_group_members m
   WHERE m.group_name = gname;
  fair := (g.partitions + live - 1) / live;
  SELECT count(*) INTO mine FROM @schema@.queue_event_checkpoints c
   WHERE c.group_name = gname AND c.consumer = me;
  IF mine < fair THEN
    UPDATE @schema@.queue_event_checkpoints c
       SET consumer = me, epoch = c.epoch + 1
     WHERE c.group_name = gname
       AND c.partition IN (SELECT f.partition FROM @schema@.queue_event_checkpoints f
                            WHERE f.group_name = gname AND f.consumer IS NULL
                            ORDER BY f.partition LIMIT fair - mine);
  END IF;

  RETURN QUERY
  SELECT 'ok'::text, c.partition, c.epoch, c.base::text, c.target::text, c.after_id,
         fair,
         (SELECT count(*)::integer FROM @schema@.queue_event_parked p
           WHERE p.group_name = gname AND p.partition = c.partition AND p.replay),
         g.partitions
    FROM @schema@.queue_event_checkpoints c
   WHERE c.group_name = gname AND c.consumer = me
   ORDER BY c.partition;
  IF NOT FOUND THEN
    RETURN QUERY SELECT 'ok'::text, NULL::integer, NULL::bigint, NULL::text,
                        NULL::text, NULL::bigint, fair, 0, g.partitions;
  END IF;
END $$;

-- A member leaves: its partitions are free for the others at once.
CREATE FUNCTION @schema@.leave_group(group_name text, consumer text, token text)
RETURNS void LANGUAGE sql AS $$
  WITH gone AS (
    DELETE FROM @schema@.queue_event_group_members m
     WHERE m.group_name = leave_group.group_name AND m.consumer = leave_group.consumer
       AND m.token = leave_group.token
    RETURNING m.group_name, m.consumer)
  UPDATE @schema@.queue_event_checkpoints c SET consumer = NULL
    FROM gone
   WHERE c.group_name = gone.group_name AND c.consumer = gone.consumer
$$;

-- Writes the checkpoints of a member's partitions (arrays in step: the
-- partition, the epoch the member owns it with, its position, the last
-- event handled (0: none since, for an idle partition's position) and how
-- many were handled since the last checkpoint), each
-- only if the member still owns that partition with that epoch. Returns
-- the partitions it does not own any more (they went to another member).
CREATE FUNCTION @schema@.checkpoint_group(group_name text, consumer text,
                                          parts integer[], epochs bigint[],
                                          bases pg_snapshot[], targets pg_snapshot[],
                                          after_ids bigint[], last_ids bigint[],
                                          handled integer[])
RETURNS SETOF integer LANGUAGE sql AS $$
  -- A checkpoint lost in a crash of PostgreSQL itself only means events
  -- handled again (delivery is at least once anyway), so its transaction
  -- does not wait for the WAL flush: checkpoints of busy groups must not
  -- queue up behind the appends' commits.
  SELECT set_config('synchronous_commit', 'off', true);
  WITH input AS (
    SELECT * FROM unnest(parts, epochs, bases, targets, after_ids, last_ids, handled)
      AS i(part, epoch, base, target, after_id, last_id, handled)
  ), written AS (
    UPDATE @schema@.queue_event_checkpoints c
       SET base = i.base, target = i.target, after_id = coalesce(i.after_id, 0),
           last_id = coalesce(nullif(i.last_id, 0), c.last_id),
           handled = c.handled + coalesce(i.handled, 0), updated_at = now()
      FROM input i
     WHERE c.group_name = checkpoint_group.group_name AND c.partition = i.part
       AND c.consumer = checkpoint_group.consumer AND c.epoch = i.epoch
    RETURNING c.partition)
  SELECT i.part FROM input i WHERE i.part NOT IN (SELECT w.partition FROM written w)
$$;

-- Parks an event the member gave up on (its owner only); false when the
-- member no longer owns the partition.
CREATE FUNCTION @schema@.park_event(group_name text, part integer, consumer text,
                                    owned_epoch bigint, event_id bigint,
                                    attempts integer, error text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM FROM @schema@.queue_event_checkpoints c
   WHERE c.group_name = park_event.group_name AND c.partition = part
     AND c.consumer = park_event.consumer AND c.epoch = owned_epoch;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO @schema@.queue_event_parked AS p
    (group_name, event_id, partition, consumer, attempts, error)
  VALUES (park_event.group_name, event_id, part, park_event.consumer, attempts,
          left(error, 8000))
  ON CONFLICT ON CONSTRAINT queue_event_parked_pkey DO UPDATE
    SET attempts = p.attempts + excluded.attempts, error = excluded.error,
        consumer = excluded.consumer, parked_at = now(), replay = false;
  RETURN true;
END $$;

-- Marks parked events of a group (`ids`, or all of them when NULL) to be
-- handed to the group again; returns how many. The member owning each
-- event's partition picks them up at its next lease renewal.
CREATE FUNCTION @schema@.replay_parked(group_name text, ids bigint[] DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
BEGIN
  UPDATE @schema@.queue_event_parked p SET replay = true
   WHERE p.group_name = replay_parked.group_name AND NOT p.replay
     AND (ids IS NULL OR p.event_id = ANY(ids));
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- Parked events of a member's partitions marked for a replay, with the
-- events (oldest first, at most n). An event deleted by retention since
-- is dropped from the parked list.
CREATE FUNCTION @schema@.parked_replays(group_name text, consumer text, n integer)
RETURNS TABLE (part integer, owned_epoch bigint, attempts integer, id bigint,
               stream text, ts timestamptz, type text, run_id text,
               flow_name text, step_name text, step_id text, attempt integer,
               data jsonb)
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM @schema@.queue_event_parked p
   WHERE p.group_name = parked_replays.group_name AND p.replay
     AND NOT EXISTS (SELECT FROM @schema@.queue_events e WHERE e.id = p.event_id);
  RETURN QUERY
  SELECT p.partition, c.epoch, p.attempts, e.id, e.stream, e.ts, e.type, e.run_id,
         e.flow_name, e.step_name, e.step_id, e.attempt, e.data
    FROM @schema@.queue_event_parked p
    JOIN @schema@.queue_event_checkpoints c
      ON c.group_name = p.group_name AND c.partition = p.partition
    JOIN @schema@.queue_events e ON e.id = p.event_id
   WHERE p.group_name = parked_replays.group_name AND p.replay
     AND c.consumer = parked_replays.consumer
   ORDER BY p.event_id
   LIMIT n;
END $$;

-- Replayed events were handled: those still marked for a replay (not
-- parked again meanwhile) leave the parked list. The owner only.
CREATE FUNCTION @schema@.unpark_events(group_name text, part integer, consumer text,
                                       owned_epoch bigint, ids bigint[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
BEGIN
  DELETE FROM @schema@.queue_event_parked p
   USING @schema@.queue_event_checkpoints c
   WHERE p.group_name = unpark_events.group_name AND p.event_id = ANY(ids) AND p.replay
     AND c.group_name = p.group_name AND c.partition = part
     AND c.consumer = unpark_events.consumer AND c.epoch = owned_epoch;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- Each group (or the one named): its pattern, partitions, members (JSON:
-- consumer, process_id, lease_until, partitions), the last event handled,
-- events handled, lag (committed events of its pattern no checkpoint has
-- passed yet) and parked events.
CREATE FUNCTION @schema@.event_groups(only_group text DEFAULT NULL)
RETURNS TABLE (group_name text, pattern text, partitions integer, members jsonb,
               last_id bigint, handled bigint, lag bigint, parked bigint)
LANGUAGE sql STABLE AS $$
  SELECT g.group_name, g.pattern, g.partitions,
         coalesce((SELECT jsonb_agg(jsonb_build_object(
                     'consumer', m.consumer, 'process_id', m.process_id,
                     'lease_until', m.lease_until, 'live', m.lease_until >= now(),
                     'partitions', coalesce((SELECT jsonb_agg(c.partition ORDER BY c.partition)
                                               FROM @schema@.queue_event_checkpoints c
                                              WHERE c.group_name = g.group_name
                                                AND c.consumer = m.consumer), '[]'))
                     ORDER BY m.consumer)
                     FROM @schema@.queue_event_group_members m
                    WHERE m.group_name = g.group_name), '[]'),
         (SELECT max(c.last_id) FROM @schema@.queue_event_checkpoints c
           WHERE c.group_name = g.group_name),
         (SELECT coalesce(sum(c.handled), 0)::bigint FROM @schema@.queue_event_checkpoints c
           WHERE c.group_name = g.group_name),
         (SELECT count(*) FROM @schema@.queue_events e
            JOIN @schema@.queue_event_checkpoints c
              ON c.group_name = g.group_name
             AND c.partition = e.partition_key % g.partitions
           WHERE e.tx >= (SELECT min(pg_snapshot_xmin(k.base))
                            FROM @schema@.queue_event_checkpoints k
                           WHERE k.group_name = g.group_name)
             AND e.stream LIKE @schema@.stream_like(g.pattern)
             AND NOT pg_visible_in_snapshot(e.tx, c.base)
             AND NOT (c.target IS NOT NULL AND e.id <= c.after_id
                      AND pg_visible_in_snapshot(e.tx, c.target))),
         (SELECT count(*) FROM @schema@.queue_event_parked p
           WHERE p.group_name = g.group_name)
    FROM @schema@.queue_event_groups g
   WHERE only_group IS NULL OR g.group_name = only_group
   ORDER BY g.group_name
$$;

-- Parked events of a group, oldest first, with the events.
CREATE FUNCTION @schema@.parked_events(group_name text, n integer DEFAULT 1000)
RETURNS TABLE (event_id bigint, part integer, consumer text, attempts integer,
               error text, parked_at timestamptz, replay boolean, stream text,
               type text, ts timestamptz, data jsonb)
LANGUAGE sql STABLE AS $$
  SELECT p.event_id, p.partition, p.consumer, p.attempts, p.error, p.parked_at,
         p.replay, e.stream, e.type, e.ts, e.data
    FROM @schema@.queue_event_parked p
    LEFT JOIN @schema@.queue_events e ON e.id = p.event_id
   WHERE p.group_name = parked_events.group_name
   ORDER BY p.event_id
   LIMIT n
$$;
