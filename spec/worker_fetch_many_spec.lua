-- Fetches for many queues in one statement (sql/027_fetch_many.sql,
-- gather_cb in src/worker.c): the consumers that want jobs in one loop
-- turn claim them with one fetch_jobs_many instead of a fetch_jobs each.
-- The claim per queue is fetch_jobs' (priority order, a position, paused
-- queues left alone), every job runs once, and a batched fetch whose reply
-- a lost connection took has its jobs given back like a fetch of one.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- True when job `id` waits to be claimed.
local function waits(id)
  return W.row("SELECT state < 'active' AS w FROM @.job WHERE id = $1", id).w
end

-- A handlers directory with a handler for each of queues m1..m<n>, which
-- returns its own name and the job's data.n ("m2 m2/1").
local function many_handlers(n)
  local files = {}
  for i = 1, n do
    files[("m%d.lua"):format(i)] = ("return function(job) return 'm%d ' .. job.data.n end"):format(i)
  end
  return W.handlers_dir(files)
end

-- Opens moonq with handlers for queues m1..m<n>; returns the calls so far
-- of fetch_jobs_many and of fetch_jobs, or nil (the test is then pending)
-- when pg_stat_statements cannot be had.
local function open_many(n)
  W.open({ handlers = many_handlers(n), hot_reload = false, queue = { retry_limit = 0 } })
  local many, one = W.statement_calls("fetch_jobs_many"), W.statement_calls("fetch_jobs")
  if many == nil then
    pending("pg_stat_statements is not loaded (scripts/pg.sh loads it)")
  end
  return many, one
end

-- Sends `per` jobs to each of queues m1..m<n> (data.n = "<queue>/<k>");
-- returns their ids and the queue of each id.
local function send_each(n, per)
  local ids, queue_of = {}, {}
  for i = 1, n do
    local list = {}
    for k = 1, per do list[k] = { n = ("m%d/%d"):format(i, k) } end
    for _, id in ipairs(assert(Q.send_many("m" .. i, list))) do
      ids[#ids + 1] = id
      queue_of[id] = "m" .. i
    end
  end
  return ids, queue_of
end

-- Asserts that every job of ids completed at its first attempt, in the
-- queue it was sent to, run by that queue's handler.
local function ran_once(ids, queue_of)
  local rows = W.sql("SELECT id, queue, state, attempt, output #>> '{}' AS output, data->>'n' AS n"
    .. " FROM @.job_archive WHERE id = ANY($1::bigint[]) ORDER BY id", "{" .. table.concat(ids, ",") .. "}")
  assert.equal(#ids, #rows)
  for _, r in ipairs(rows) do
    assert.equal("completed", r.state)
    assert.equal(1, r.attempt)
    assert.equal(queue_of[r.id] .. " " .. r.n, r.output)
    assert.equal(queue_of[r.id], r.queue)
  end
end

describe("fetch_jobs_many", function()
  after_each(W.close)

  it("claims each queue's jobs as fetch_jobs does, grouped in the order of the queues", function()
    W.open({ hot_reload = false })
    local function send(q, p) return assert(Q.send(q, {}, { priority = p })) end
    local a1, a2, a3, a4 = send("fa", 0), send("fa", 5), send("fa", 0), send("fa", 0)
    local b1, b2 = send("fb", 0), send("fb", 0)
    local c1 = send("fc", 0)
    assert(Q.pause("fc"))
    local pid = Q.process_id()
    -- fb from its head (at most 1), fa past (0, a1), fc paused, fd empty.
    local rows = W.sql([[SELECT queue, id, attempt, claim_took >= 0 AS timed
      FROM @.fetch_jobs_many(ARRAY['fb', 'fa', 'fc', 'fd'], ARRAY[1, 10, 10, 10], $1::uuid,
                             ARRAY[NULL, 0, NULL, NULL]::int[], ARRAY[NULL, $2, NULL, NULL]::bigint[])]],
      pid, a1)
    local got = {}
    for i, r in ipairs(rows) do
      got[i] = r.queue .. ":" .. r.id
      assert.equal(1, r.attempt)
      assert.is_true(r.timed)
    end
    assert.same({ "fb:" .. b1, "fa:" .. a2, "fa:" .. a3, "fa:" .. a4 }, got)
    -- The claimed jobs run for this process; a1 (behind the position), b2
    -- (past n) and the paused queue's job still wait.
    assert.equal(4, W.row("SELECT count(*)::int AS n FROM @.job WHERE state = 'active' AND process_id = $1::uuid", pid).n)
    for _, id in ipairs({ a1, b2, c1 }) do assert.is_true(waits(id)) end
  end)

  it("refuses arrays of different lengths, a queue named twice and no process", function()
    W.open({ hot_reload = false })
    local pid = Q.process_id()
    local cases = {
      { "ARRAY['x', 'y'], ARRAY[1], $1::uuid, NULL, NULL", "one element per queue" },
      { "ARRAY['x', 'y'], ARRAY[1, 1], $1::uuid, ARRAY[1]::int[], NULL", "one element per queue" },
      { "ARRAY['x', 'x'], ARRAY[1, 1], $1::uuid, NULL, NULL", "named once" },
      { "ARRAY['x', NULL], ARRAY[1, 1], $1::uuid, NULL, NULL", "named once" },
      { "ARRAY['x'], ARRAY[1], nullif($1::uuid, $1::uuid), NULL, NULL", "process_id is required" },
    }
    Q.send("x", {})
    for _, c in ipairs(cases) do
      local ok, err = pcall(W.sql, "SELECT * FROM @.fetch_jobs_many(" .. c[1] .. ")", pid)
      assert.is_false(ok, c[1])
      assert.matches(c[2], tostring(err), 1, true)
    end
    assert.equal(1, W.row("SELECT count(*)::int AS n FROM @.job WHERE state < 'active'").n)
  end)

  it("writes job.active with each job's queue when job events are on", function()
    W.open({ hot_reload = false, events = { enabled = true, job_events = true } })
    local x = assert(Q.send("ex", {}))
    local y = assert(Q.send("ey", {}))
    W.sql("SELECT count(*) FROM @.fetch_jobs_many(ARRAY['ex', 'ey'], ARRAY[1, 1], $1::uuid, NULL, NULL)",
      Q.process_id())
    local rows = W.sql("SELECT stream, data->>'queue' AS queue FROM @.queue_events"
      .. " WHERE type = 'job.active' ORDER BY id")
    assert.same({ { stream = "job:ex:" .. x, queue = "ex" }, { stream = "job:ey:" .. y, queue = "ey" } }, rows)
  end)
end)

describe("a worker of many queues", function()
  after_each(W.close)

  it("runs every job once and claims for many queues in one statement", function()
    local n = 40
    local before, one = open_many(n)
    if before == nil then return end
    local ids, queue_of = send_each(n, 15)
    assert(moonq.start())
    assert(W.wait_all(ids, 60))
    ran_once(ids, queue_of)
    local many = W.statement_calls("fetch_jobs_many") - before
    local single = W.statement_calls("fetch_jobs") - one
    assert.is_true(many >= 1, "no fetch claimed for many queues")
    -- Each queue needs two claims at least (10 slots, 15 jobs); one
    -- statement each would be 80.
    assert.is_true(many + single < n, ("%d statements for many queues and %d for one claimed %d queues' jobs")
      :format(many, single, n))
  end)

  it("leaves a paused queue's jobs waiting within a batch, and runs them once resumed", function()
    local n = 8
    local before = open_many(n)
    if before == nil then return end
    assert(Q.pause("m3"))
    local ids, queue_of = send_each(n, 4)
    local running, paused = {}, {}
    for _, id in ipairs(ids) do
      table.insert(queue_of[id] == "m3" and paused or running, id)
    end
    assert(moonq.start())
    assert(W.wait_all(running, 30))
    assert.is_true(W.statement_calls("fetch_jobs_many") - before >= 1, "no fetch claimed for many queues")
    W.run_for(0.5)
    for _, id in ipairs(paused) do assert.is_true(waits(id)) end
    assert(Q.resume("m3"))
    assert(W.wait_all(paused, 30))
    ran_once(ids, queue_of)
  end)
end)

describe("delayed jobs of many queues", function()
  after_each(W.close)

  it("wake their queues when due, looked up in one statement", function()
    local n = 8
    W.open({ handlers = many_handlers(n), hot_reload = false,
             queue = { retry_limit = 0, poll_interval = 60 } })
    local before = W.statement_calls("next_due")
    if before == nil then
      pending("pg_stat_statements is not loaded (scripts/pg.sh loads it)")
      return
    end
    assert(moonq.start())
    W.run_for(0.5) -- the first fetches found nothing
    before = W.statement_calls("next_due")
    -- One transaction: one wake-up names every queue, their fetches go out
    -- together and find nothing runnable, and each queue asks when its
    -- delayed job is due.
    -- (From psql: moonq's own connections send no wake-up.)
    assert(W.psql(([[SELECT @.send('m' || i, jsonb_build_object('n', 'd'), '{"delay": 1}')
                       FROM generate_series(1, %d) i;]]):format(n):gsub("@%.", W.schema .. ".")))
    local rows = W.sql("SELECT id FROM @.job ORDER BY id")
    assert.equal(n, #rows)
    local ids, queue_of = {}, {}
    for i, r in ipairs(rows) do
      ids[i] = r.id
      queue_of[r.id] = "m" .. i
    end
    local t0 = W.now()
    assert(W.wait_all(ids, 20))
    -- without the look-up they would wait for the 60 s poll
    assert.is_true(W.now() - t0 < 15, ("delayed jobs ran after %.1f s"):format(W.now() - t0))
    ran_once(ids, queue_of)
    local asked = W.statement_calls("next_due") - before
    assert.is_true(asked >= 1 and asked < n, ("%d look-ups for %d queues"):format(asked, n))
  end)
end)

describe("a batched fetch whose reply was lost", function()
  teardown(W.close)

  it("gives back the jobs it may have claimed, and every job runs once", function()
    local dir = many_handlers(3)
    local schema = W.open({ hot_reload = false, log = { level = "warn" } })
    local config = W.config_file({ schema = schema, handlers = dir, hot_reload = false,
                                   shutdown_grace = 1, log = { level = "info" },
                                   queue = { poll_interval = 0.3, retry_limit = 0 } })
    local pid, log = W.moonq_run(config)
    assert.is_truthy(W.poll(function()
      return W.row("SELECT count(*) AS n FROM @.process WHERE pid = $1", pid).n == 1
    end, 20, 0.1), "moonq run did not start: " .. (W.read(log) or ""))
    -- A job claimed for the running process by a fetch whose reply never
    -- arrived, as a lost connection leaves it.
    local lost = assert(Q.send("m1", { n = "lost" }, { delay = 3600 }))
    W.sql([[UPDATE @.job SET state = 'active', started_at = now(), start_after = now(),
              attempt = 1, process_id = (SELECT id FROM @.process WHERE pid = $2)
            WHERE id = $1]], lost, pid)
    -- While the queue table is locked, a job arrives in each queue
    -- (inserted as a send would, without the send's read of that table):
    -- the polls find them together, and their one fetch waits on the lock.
    W.own(W.bg(("psql \"$DATABASE_URL\" -X -q -v ON_ERROR_STOP=1 -c %s"):format(W.shq(
      ("BEGIN; LOCK TABLE %s.queue IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;"):format(schema)))))
    assert.is_truthy(W.poll(function()
      return W.row("SELECT count(*)::int AS n FROM pg_locks WHERE relation = $1::regclass AND granted"
        .. " AND mode = 'AccessExclusiveLock'", schema .. ".queue").n == 1
    end, 10, 0.05), "the queue table was not locked")
    W.sql([[INSERT INTO @.job (queue, name, data, retry_limit, retry_delay, retry_backoff,
                               expire_in, retention)
            SELECT q, q, jsonb_build_object('n', q || '/1'), 0, 0, false, 900, 3600
              FROM unnest(ARRAY['m1', 'm2', 'm3']) q]])
    local terminated = W.poll(function()
      local r = W.row(("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
        .. " WHERE wait_event_type = 'Lock' AND query LIKE '%%%s%%.fetch_jobs_many(%%'"
        .. " AND pid <> pg_backend_pid()"):format(schema))
      return r.n > 0
    end, 10, 0.05)
    assert.is_truthy(terminated, "no fetch for many queues waited on the lock: " .. (W.read(log) or ""))
    local job = W.wait_job(lost, nil, 20)
    assert.equal("completed", job.state, W.read(log))
    assert.equal(1, job.attempt) -- the lost claim's attempt did not count
    assert.matches("gave back jobs claimed by a fetch whose reply was lost count=1", W.read(log), 1, true)
    local rows = {}
    assert.is_truthy(W.poll(function()
      rows = W.sql("SELECT queue, state, attempt FROM @.job_archive WHERE queue IN ('m2', 'm3')"
        .. " OR data->>'n' = 'm1/1' ORDER BY queue")
      return #rows == 3
    end, 20, 0.1), "the jobs sent meanwhile did not all run: " .. (W.read(log) or ""))
    for _, r in ipairs(rows) do
      assert.equal("completed", r.state)
      assert.equal(1, r.attempt)
    end
  end)
end)
