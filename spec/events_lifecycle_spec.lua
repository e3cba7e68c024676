-- Job lifecycle events (events.job_events): every change of a job's state
-- writes an event in the job's stream, job:<name>:<id>, by the statement
-- that makes the change, whoever makes it (a worker, the SQL functions,
-- maintenance); each such statement wakes subscribers; with job events
-- off nothing is written.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local Q, E = moonq.queue, moonq.events

local HANDLERS = {
  ["ok.lua"] = [[
return function(job, ctx)
  ctx.emit("step.done", { n = job.data.n })
  return { n = job.data.n }
end
]],
  ["flaky.lua"] = [[
return { retry = { limit = 1, delay = 0, backoff = false }, handler = function(job)
  if job.attempt == 1 then error("first attempt fails") end
  return "second"
end }
]],
  ["doomed.lua"] = [[
return function() error("always fails") end
]],
  ["big.lua"] = [[
return function() return string.rep("x", 2000) end
]],
}

local function stream(name, id) return ("job:%s:%d"):format(name, id) end

-- The events of job `id` of job `name`, oldest first.
local function events_of(name, id)
  return assert(E.query(stream(name, id)))
end

local function types(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = e.type end
  return out
end

-- Runs the loop until job `id` has `n` events (or 10 s pass); returns them.
local function wait_events(name, id, n)
  local list
  moonq.run_until(function()
    list = events_of(name, id)
    return #list >= n
  end, 10)
  return list
end

-- The number of "<schema>_events" notifications a LISTEN session gets
-- while fn() runs (fn must finish within 3 s).
local function wakes_during(fn)
  local n = 0
  for _ in V.notifications_during(V.schema .. "_events", 3, fn)
             :gmatch('Asynchronous notification "[%w_]+_events"') do
    n = n + 1
  end
  return n
end

describe("job lifecycle events", function()
  setup(function()
    V.open({ handlers = V.handlers_dir(HANDLERS), hot_reload = false,
             queue = { retry_limit = 0, retry_delay = 0, retry_backoff = false },
             events = { job_events = true } })
    assert(moonq.start())
  end)
  teardown(V.close)

  it("are stored in the database's settings by the process that runs handlers", function()
    finally(function() V.sql("SELECT @.store_job_events(true)") end)
    -- a process that runs no handlers, with job events off
    local function open_elsewhere()
      local out, ok = V.run([[
assert(moonq.open({ database = url, schema = schema, events = { job_events = false } }))
moonq.close()
]], { url = V.url, schema = V.schema })
      assert(ok, out)
    end
    assert.is_true(V.row("SELECT job_events FROM @.settings").job_events)
    open_elsewhere() -- does not undo it
    assert.is_true(V.row("SELECT job_events FROM @.settings").job_events)
    V.sql("UPDATE @.settings SET job_events = NULL")
    open_elsewhere() -- stores its own over an unset value
    assert.is_false(V.row("SELECT job_events FROM @.settings").job_events)
  end)

  it("record send, fetch and completion in order, after the handler's own events", function()
    local id = assert(Q.send("ok", { n = 7 }, { run_id = "run-7" }))
    local list = wait_events("ok", id, 4)
    assert.same({ "job.created", "job.active", "step.done", "job.completed" }, types(list))
    for i = 2, #list do assert.is_true(list[i].id > list[i - 1].id) end
    local job = Q.get(id)
    assert.is_string(list[1].data.start_after)
    assert.same({ queue = "ok", attempt = 0, start_after = list[1].data.start_after }, list[1].data)
    assert.equal(0, list[1].attempt)
    assert.same({ queue = "ok", attempt = 1, process_id = Q.process_id() }, list[2].data)
    assert.same({ queue = "ok", attempt = 1, output = { n = 7 } }, list[4].data)
    for i = 2, 4 do assert.equal(1, list[i].attempt) end
    for _, e in ipairs(list) do assert.equal("run-7", e.run_id) end
    assert.equal(job.attempt, list[4].attempt)
  end)

  -- A flow step's claim and completion fire triggers that write the step's
  -- events (step.started; step.completed and flow.completed) at the end
  -- of the statement that changes its job. The job's own events come
  -- first (sql/039), whichever function claims and completes it.
  it("come before a flow step's and its run's events, in a run's history", function()
    V.sql("SELECT @.store_flows($1::jsonb)",
      '[{"flow": "solo", "steps": [{"step": "only", "job": "solo.only", "entry": true}]}]')
    local pid = Q.process_id()
    local function history(rid)
      return types(V.sql("SELECT type FROM @.queue_events WHERE run_id = $1 ORDER BY id", rid))
    end
    -- fetch_jobs, then complete_jobs with events the handler emitted
    local first = V.row("SELECT @.start_flow('solo', '{}') AS r").r
    local id = V.row("SELECT id FROM @.fetch_jobs('solo.only', 1, $1::uuid)", pid).id
    V.sql([=[SELECT @.complete_jobs(ARRAY[$1]::bigint[], '[{"k": 1}]', $2::uuid,
                                    '[[{"type": "solo.note"}]]')]=], id, pid)
    -- a worker's calls: fetch_jobs_many, complete_jobs_guarded without effects
    local second = V.row("SELECT @.start_flow('solo', '{}') AS r").r
    id = V.row([[SELECT id FROM @.fetch_jobs_many(ARRAY['solo.only'], ARRAY[1], $1::uuid,
                                                   NULL, NULL)]], pid).id
    V.sql("SELECT @.complete_jobs_guarded(ARRAY[$1]::bigint[], '[null]', $2::uuid)", id, pid)
    assert.same({ "flow.started", "job.created", "job.active", "step.started", "solo.note",
                  "job.completed", "step.completed", "flow.completed" }, history(first))
    assert.same({ "flow.started", "job.created", "job.active", "step.started",
                  "job.completed", "step.completed", "flow.completed" }, history(second))
  end)

  it("leave a big output out of job.completed and give its size", function()
    local id = assert(Q.send("big", {}))
    local list = wait_events("big", id, 3)
    assert.same({ "job.created", "job.active", "job.completed" }, types(list))
    assert.same({ queue = "big", attempt = 1, output_size = 2002 }, list[3].data)
  end)

  it("record a retry: active, retrying with the error, active, completed", function()
    local id = assert(Q.send("flaky", {}))
    local list = wait_events("flaky", id, 5)
    assert.same({ "job.created", "job.active", "job.retrying", "job.active", "job.completed" },
                types(list))
    local retrying = list[3]
    assert.equal(1, retrying.attempt)
    assert.equal("flaky", retrying.data.queue)
    assert.matches("first attempt fails", retrying.data.error.message, 1, true)
    assert.is_string(retrying.data.start_after)
    assert.equal(2, list[4].attempt)
    assert.same({ queue = "flaky", attempt = 2, output = "second" }, list[5].data)
  end)

  it("record a final failure with the error as stored, and the dead-letter copy", function()
    local id = assert(Q.send("doomed", {}, { dead_letter = "doomed_dead" }))
    local list = wait_events("doomed", id, 3)
    assert.same({ "job.created", "job.active", "job.failed" }, types(list))
    local job = Q.get(id)
    assert.equal("failed", job.state)
    assert.same({ queue = "doomed", attempt = 1, error = job.error }, list[3].data)
    assert.matches("always fails", list[3].data.error.message, 1, true)
    local copies = assert(Q.list("doomed_dead"))
    assert.equal(1, #copies)
    local copy = events_of("doomed", copies[1].id)
    assert.same({ "job.created" }, types(copy))
    assert.same({ queue = "doomed_dead", attempt = 0, dead_letter_of = id }, copy[1].data)
  end)

  it("are written by the SQL functions: cancel, retry, release and purge", function()
    local a = V.row("SELECT @.send('idle', '{}') AS id").id
    assert.is_true(V.row("SELECT @.cancel($1) AS ok", a).ok)
    assert.is_true(V.row("SELECT @.retry($1) AS ok", a).ok)
    local list = events_of("idle", a)
    assert.same({ "job.created", "job.cancelled", "job.retried" }, types(list))
    assert.same({ queue = "idle", attempt = 0 }, list[2].data)
    assert.equal("cancelled", list[3].data.previous_state)
    assert.equal(0, list[3].attempt)
    -- claimed, then given back by a graceful stop's release_jobs
    local jobs = assert(Q.fetch("idle", 1))
    assert.equal(a, jobs[1].id)
    assert.equal(1, V.row("SELECT @.release_jobs(ARRAY[$1::bigint], $2::uuid) AS n",
                          a, Q.process_id()).n)
    assert.equal(1, V.row("SELECT @.purge('idle', 'waiting') AS n").n)
    list = events_of("idle", a)
    assert.same({ "job.created", "job.cancelled", "job.retried", "job.active",
                  "job.released", "job.purged" }, types(list))
    assert.same({ queue = "idle", attempt = 0 }, list[5].data)
    assert.equal(0, list[6].attempt)
    -- a finished job's purge writes nothing: it had its last event
    local b = V.row("SELECT @.send('idle', '{}') AS id").id
    assert.is_true(Q.cancel(b))
    assert.equal(1, V.row("SELECT @.purge('idle', 'cancelled') AS n").n)
    assert.same({ "job.created", "job.cancelled" }, types(events_of("idle", b)))
  end)

  it("are written by maintenance's expiry: retrying, then failed", function()
    local id = assert(Q.send("idle_exp", {}, { expire_in = 0.2, retry_limit = 1 }))
    assert.equal(id, assert(Q.fetch("idle_exp", 1))[1].id)
    moonq.sleep(0.4)
    assert.equal(1, assert(Q.maintain()).expired)
    assert.equal(id, assert(Q.fetch("idle_exp", 1))[1].id)
    moonq.sleep(0.4)
    assert.equal(1, assert(Q.maintain()).expired)
    local list = events_of("idle_exp", id)
    assert.same({ "job.created", "job.active", "job.retrying", "job.active", "job.failed" },
                types(list))
    assert.equal("expired: still active after expire_in", list[3].data.error.message)
    assert.equal("expired: still active after expire_in", list[5].data.error.message)
    assert.equal(2, list[5].attempt)
  end)

  it("commit with the state change: a rolled-back cancel leaves no event", function()
    local id = V.row("SELECT @.send('idle_tx', '{}') AS id").id
    local out, ok = V.psql(("BEGIN; SELECT %s.cancel(%d); ROLLBACK;"):format(V.schema, id))
    assert(ok, out)
    assert.same({ "job.created" }, types(events_of("idle_tx", id)))
    assert.equal("waiting", Q.get(id).state)
  end)

  it("wake subscribers once per statement that writes them", function()
    local n = wakes_during(function()
      local id = V.row("SELECT (@.send_many('idle_wake', '[1, 2, 3]'))[1] AS id").id
      V.sql("SELECT @.cancel($1)", id)
      V.sql("SELECT count(*) FROM @.fetch_jobs('idle_wake', 10, $1::uuid)", Q.process_id())
      V.sql("SELECT count(*) FROM @.fail_jobs(ARRAY[$1::bigint + 1], ARRAY['{}'::jsonb])", id)
      -- writes nothing, so wakes nobody
      V.sql("SELECT count(*) FROM @.fetch_jobs('idle_wake_empty', 10, $1::uuid)", Q.process_id())
    end)
    assert.equal(4, n)
  end)

  it("reach a live subscriber", function()
    local rec = V.live("job:*", "job:marker:0")
    local id = V.row("SELECT @.send('idle_live', '{}') AS id").id
    assert.is_true(V.wait_events(rec, 1, 10))
    rec.sub:close()
    assert.equal(stream("idle_live", id), rec.events[1].stream)
    assert.equal("job.created", rec.events[1].type)
  end)
end)

describe("job lifecycle events, off (the default)", function()
  setup(function()
    V.open({ handlers = V.handlers_dir(HANDLERS), hot_reload = false,
             queue = { retry_limit = 0, retry_delay = 0, retry_backoff = false } })
    assert(moonq.start())
  end)
  teardown(V.close)

  it("write nothing on any path, and wake nobody", function()
    assert.is_false(V.row("SELECT job_events FROM @.settings").job_events)
    local n = wakes_during(function()
      local ok = assert(Q.send("ok", { n = 1 }))
      local flaky = assert(Q.send("flaky", {}))
      local doomed = assert(Q.send("doomed", {}, { dead_letter = "doomed_dead" }))
      assert.is_true(V.wait_all({ ok, flaky, doomed }, 2.5))
      local idle = V.row("SELECT @.send('idle', '{}') AS id").id
      V.sql("SELECT @.cancel($1)", idle)
      V.sql("SELECT @.retry($1)", idle)
      V.sql("SELECT @.purge('idle', NULL)")
    end)
    -- only the handler's own ctx.emit event of "ok" is stored
    assert.same({ "step.done" }, types(assert(E.query("job:*"))))
    assert.equal(1, V.row("SELECT count(*) AS n FROM @.queue_events").n)
    assert.equal(1, n)
  end)
end)
