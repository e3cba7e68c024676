-- The functions that take a batch (arrays, or a JSON array) run their
-- statements with the generic plan after a few calls on one connection, and
-- a generic plan cannot know how many elements an array holds: it assumes
-- about ten. A statement that joins a batch's arrays to a table, or to each
-- other, can then become a nested loop over both sides, whose work grows
-- with the square of the batch (sql/032_batch_plans.sql). These tests call
-- each function that a process calls with big batches on a batch of 1,000
-- (1,024 partitions for a consumer group), with the statistics of a big
-- database, and check that no plan node handles more than a few rows per
-- element.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

local N = 1000
local PARTS = 1024
local PROCESS = "00000000-0000-0000-0000-0000000000b2"

-- Runs `sql` (statements; "@." the schema) in a transaction that is rolled
-- back, with every plan logged; asserts that no plan node handled more than
-- 4 rows an element of a batch of `n` (H.assert_linear_plans) and that
-- psql printed the line `want` (when given).
local function check(sql, want, n)
  local out = H.assert_linear_plans(sql, n or N)
  if want then
    assert.truthy(out:find("\n" .. want .. "\n", 1, true), out:sub(-2000))
  end
end

describe("a batch of 1,000", function()
  setup(function()
    H.open()
    -- 50,000 other jobs, events and flow runs: with the statistics of big
    -- tables the planner expects a handful of rows from an array of ten.
    assert(H.psql(([[SET moonq.no_wake = on;
      SELECT count(*) FROM @.send_many('other', (SELECT jsonb_agg(jsonb_build_object('n', g))
                                                  FROM generate_series(1, 50000) g));
      SELECT count(*) FROM @.send_many('batch', (SELECT jsonb_agg(jsonb_build_object('n', g))
                                                  FROM generate_series(1, %d) g));
      SELECT count(*) FROM @.fetch_jobs('batch', %d, '%s');
      SELECT count(*) FROM generate_series(1, %d) g, @.send('q' || g, '{}');
      SELECT count(*) FROM @.append_events(
        (SELECT array_agg('other:' || g) FROM generate_series(1, 50000) g),
        array_fill('other.happened'::text, ARRAY[50000]),
        (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 50000) g), NULL);
      SELECT count(*) FROM generate_series(1, %d) g,
        @.put_schedule('s' || g, '@hourly', 'UTC', 'tick', '{}', '{}', NULL, 'api');
      SELECT count(*) FROM generate_series(1, 200) g,
        @.join_group('other' || g, 'other:*', 16, 'c', 't', 'p', 60, true, NULL);
      SELECT count(*) FROM @.join_group('g', 'batch:*', %d, 'c', 't', 'p', 60, true, NULL);
      SELECT @.store_flows('[{"flow": "one", "steps": [{"step": "a", "job": "one.a", "entry": true}]}]');
      SELECT count(*) FROM generate_series(1, %d) g, @.start_flow('one', jsonb_build_object('n', g));
      SELECT count(*) FROM @.fetch_jobs('one.a', %d, '%s');
      INSERT INTO @.queue_flow_index (flow_name, run_id, status, completed_at)
      SELECT 'one', 'past' || g, 'completed', now() FROM generate_series(1, 50000) g;
      ANALYZE;
      -- The batches, made here so that the statements under test read them
      -- from a one-row table.
      CREATE TABLE @.b AS SELECT
        (SELECT array_agg('q' || g ORDER BY g) FROM generate_series(1, %d) g) AS queues,
        (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, %d) g) AS data,
        (SELECT array_agg('batch:' || g) FROM generate_series(1, %d) g) AS streams,
        (SELECT array_agg(j.id ORDER BY j.id DESC) FROM @.job j
          WHERE j.queue = 'batch' AND j.state = 'active') AS active,
        (SELECT array_agg(s.id ORDER BY s.id DESC) FROM @.schedule s) AS schedules,
        (SELECT array_agg(j.id ORDER BY j.id DESC) FROM @.job j WHERE j.queue = 'one.a') AS steps,
        (SELECT array_agg(j.run_id) FROM @.job j WHERE j.queue = 'one.a') AS runs,
        c.parts, c.epochs FROM
        (SELECT array_agg(c.partition ORDER BY c.partition DESC) AS parts,
                array_agg(c.epoch ORDER BY c.partition DESC) AS epochs
           FROM @.queue_event_checkpoints c WHERE c.group_name = 'g') c;
      ANALYZE @.b;]]):format(N, N, PROCESS, N, N, PARTS, N, N, PROCESS, N, N, N):gsub("@%.", H.schema .. ".")))
  end)

  teardown(function() H.close() end)

  it("queues claimed in one fetch_jobs_many", function()
    check(([[SELECT count(*) FROM @.b, @.fetch_jobs_many(b.queues, array_fill(1, ARRAY[%d]), '%s', NULL, NULL)]])
      :format(N, PROCESS), tostring(N))
  end)

  it("queues claimed after a position (fetch_jobs_many)", function()
    check(([[SELECT count(*) FROM @.b, @.fetch_jobs_many(b.queues, array_fill(1, ARRAY[%d]), '%s',
      array_fill(2147483647, ARRAY[%d]), array_fill(0::bigint, ARRAY[%d]))]]):format(N, PROCESS, N, N), tostring(N))
  end)

  it("jobs sent by send_many", function()
    check("SELECT cardinality(@.send_many('sent', b.data)) FROM @.b", tostring(N))
  end)

  it("jobs sent by send_many with job events on", function()
    check([[UPDATE @.settings SET job_events = true;
      SELECT cardinality(@.send_many('sent', b.data)) FROM @.b]], tostring(N))
  end)

  it("jobs sent by send_enqueued", function()
    check([[SELECT cardinality(@.send_enqueued((SELECT jsonb_agg(jsonb_build_object('name', 'next', 'data', d))
                                                  FROM jsonb_array_elements(b.data) d))) FROM @.b]], tostring(N))
  end)

  it("events appended as JSON (append_events)", function()
    check([[SELECT count(*) FROM @.b, @.append_events((SELECT jsonb_agg(jsonb_build_object(
      'stream', s, 'type', 'x.happened', 'data', d, 'run_id', 'r')) FROM ROWS FROM (unnest(b.streams), jsonb_array_elements(b.data)) AS x(s, d)))]],
      tostring(N))
  end)

  it("events appended as arrays (append_events)", function()
    check([[SELECT cardinality(a.ids) FROM @.b, @.append_events(b.streams, array_fill('x.happened'::text, ARRAY[cardinality(b.streams)]),
                                                             b.data, b.streams) a]], tostring(N))
  end)

  it("partitions checkpointed by checkpoint_group", function()
    check(([[SELECT count(*) FROM @.b,
      @.checkpoint_group('g', 'c', b.parts, b.epochs, array_fill(pg_current_snapshot(), ARRAY[%d]),
                         array_fill(pg_current_snapshot(), ARRAY[%d]), b.parts::bigint[], b.parts::bigint[],
                         array_fill(1, ARRAY[%d]));
      SELECT count(*) FROM @.queue_event_checkpoints WHERE group_name = 'g' AND handled = 1]]):format(PARTS, PARTS, PARTS),
      tostring(PARTS), PARTS)
  end)

  -- (bases without transactions in progress: other tests' transactions
  -- would be rows of every base)
  it("partitions probed by probe_partitions", function()
    check(([[SELECT count(*) FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS x) t,
      @.probe_partitions('batch:*', %d, array_fill((t.x || ':' || t.x || ':')::pg_snapshot, ARRAY[%d]))]])
      :format(PARTS, PARTS), "0", PARTS)
  end)

  it("queues looked at by ready_queues", function()
    check("SELECT cardinality(@.ready_queues(b.queues)) FROM @.b", tostring(N))
  end)

  it("slots fired by fire_schedules", function()
    check([[SELECT @.fire_schedules(b.schedules,
                                    array_fill(extract(epoch FROM date_trunc('hour', now()))::float8, ARRAY[cardinality(b.schedules)]),
                                    array_fill(extract(epoch FROM date_trunc('hour', now()))::float8 + 3600, ARRAY[cardinality(b.schedules)]))
              FROM @.b]], tostring(N))
  end)

  it("next slots stored by store_schedule_next", function()
    check([[SELECT @.store_schedule_next(b.schedules,
                                         array_fill(extract(epoch FROM now())::float8 + 3600, ARRAY[cardinality(b.schedules)]),
                                         ARRAY(SELECT CASE WHEN i % 10 = 0 THEN 'bad' END FROM generate_series(1, cardinality(b.schedules)) i))
              FROM @.b;
            SELECT count(*) FROM @.schedule WHERE NOT enabled]], tostring(N // 10))
  end)

  it("jobs released by release_jobs", function()
    check(("SELECT @.release_jobs(b.active, '%s') FROM @.b"):format(PROCESS), tostring(N))
  end)

  it("schedules stored from config (sync_config_schedules)", function()
    check(([[SELECT @.sync_config_schedules((SELECT jsonb_agg(jsonb_build_object(
      'name', 'c' || g, 'cron', '@hourly', 'job', 'tick')) FROM generate_series(1, %d) g)) ->> 'stored']]):format(N),
      tostring(N))
  end)

  -- The archive of the step jobs by hand (as archive() does it), so that
  -- only the trigger's statements are measured.
  local function archive_steps(state, error)
    return ([[WITH gone AS (DELETE FROM @.job j USING @.b WHERE j.id = ANY(b.steps) RETURNING j.*)
      INSERT INTO @.job_archive (id, queue, name, data, state, priority, retry_limit, attempt,
                                 retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
                                 start_after, created_at, started_at, singleton_key, dead_letter,
                                 run_id, process_id, error, output, completed_at, keep_until)
      SELECT id, queue, name, data, '%s', priority, retry_limit, attempt, retry_delay, retry_backoff,
             retry_delay_max, expire_in, retention, start_after, created_at, started_at, singleton_key,
             dead_letter, run_id, process_id, %s, '{}', now(), now() + make_interval(secs => retention)
        FROM gone]]):format(state, error)
  end

  it("flow runs ended by their last steps' completion (flow_steps_archived)", function()
    check(archive_steps("completed", "NULL") .. [[;
      SELECT count(*) FROM @.b, @.queue_flow_index f
       WHERE f.run_id = ANY(b.runs) AND f.status = 'completed' AND f.error IS NULL]], tostring(N))
  end)

  it("flow runs ended by their steps' failure (flow_steps_archived)", function()
    check(archive_steps("failed", [['{"message": "no"}']]) .. [[;
      SELECT count(*) FROM @.b, @.queue_flow_index f
       WHERE f.run_id = ANY(b.runs) AND f.status = 'failed' AND f.failed_step = 'a'
         AND f.error ->> 'message' = 'no']], tostring(N))
  end)

  it("flows stored by store_flows", function()
    check(([[SELECT @.store_flows((SELECT jsonb_agg(jsonb_build_object('flow', 'f' || g, 'steps',
      jsonb_build_array(jsonb_build_object('step', 'a', 'job', 'f' || g || '.a', 'entry', true),
                        jsonb_build_object('step', 'b', 'job', 'f' || g || '.b', 'subscribes', jsonb_build_array('x.done')))))
      FROM generate_series(1, %d) g));
      SELECT count(*) FROM @.queue_flow_steps WHERE flow_name <> 'one']]):format(N), tostring(2 * N))
  end)
end)
