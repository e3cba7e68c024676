-- Handler timeouts against the real PostgreSQL: a handler waiting in a
-- yield (ctx.sleep, a query) and one stuck in Lua code (a busy loop, even
-- one wrapped in pcall or run in a coroutine of its own) are stopped at
-- their timeout; the job fails with "timeout after <t> s" (worker.c
-- fail_job) and is retried per its policy; other jobs keep running.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local HANDLERS = {
  ["sleepy.lua"] = [[
return { timeout = 0.5, handler = function(job, ctx) ctx.sleep(5) return "woke up" end }
]],
  ["spin.lua"] = [[
return { timeout = 0.5, handler = function(job, ctx) local n = 0 while true do n = n + 1 end end }
]],
  ["spin_pcall.lua"] = [[
return {
  timeout = 0.5,
  handler = function(job, ctx)
    local caught = 0
    while true do
      local ok, err = pcall(function() while true do end end)
      caught = caught + 1
      if caught > 1e6 then return "escaped after " .. caught .. ": " .. tostring(err) end
    end
  end,
}
]],
  ["spin_once_pcall.lua"] = [[
return {
  timeout = 0.5,
  handler = function(job, ctx)
    local ok, err = pcall(function() while true do end end)
    return { escaped = true, err = tostring(err) }
  end,
}
]],
  ["spin_coroutine.lua"] = [[
return {
  timeout = 0.5,
  handler = function(job, ctx)
    while true do
      coroutine.resume(coroutine.create(function() while true do end end))
    end
  end,
}
]],
  ["slow_query.lua"] = [[
local moonq = require "moonq"
return {
  timeout = 0.5,
  handler = function(job, ctx)
    moonq.db.query("SELECT pg_sleep(3)")
    return "query finished"
  end,
}
]],
  -- no timeout of its own: the queue's (config queues.cfg_timeout.timeout)
  ["cfg_timeout.lua"] = [[return function(job, ctx) ctx.sleep(5) return "woke up" end]],
  ["querying.lua"] = [[
local moonq = require "moonq"
return function(job, ctx)
  return assert(moonq.db.query("SELECT $1::int AS n", job.data.n))[1].n
end
]],
  ["normal.lua"] = [[return function(job, ctx) ctx.sleep(0.05) return { ok = job.data.n } end]],
}

describe("worker timeouts", function()
  setup(function()
    local dir = W.handlers_dir(HANDLERS)
    W.open({ handlers = dir, hot_reload = false,
             queue = { retry_limit = 0, retry_delay = 0.1, retry_backoff = false },
             queues = { cfg_timeout = { timeout = 0.5 } } })
    assert(moonq.start())
  end)
  teardown(W.close)

  -- Runs job `name` to its end; returns the job and the seconds from its
  -- start to its end (database times).
  local function run(name, opts, wait)
    local id = assert(Q.send(name, {}, opts))
    local job = W.wait_job(id, nil, wait or 5)
    local row = W.row("SELECT extract(epoch FROM completed_at - started_at)::float8 AS took FROM @.job_archive WHERE id = $1", id)
    return job, row and row.took
  end

  -- A later job of a normal handler still runs, promptly.
  local function still_works(n)
    local t0 = W.now()
    local id = assert(Q.send("normal", { n = n }))
    local job = W.wait_job(id, nil, 5)
    assert.equal("completed", job.state)
    assert.same({ ok = n }, job.output)
    local took = W.now() - t0
    assert.is_true(took < 1.5, ("a normal job took %.2f s after a timed-out one"):format(took))
  end

  local function assert_timed_out(job, took)
    assert.equal("failed", job.state)
    assert.is_table(job.error)
    assert.equal("timeout after 0.5 s", job.error.message)
    assert.is_nil(job.output)
    assert.is_number(took)
    assert.is_true(took >= 0.45, ("stopped after only %.2f s"):format(took))
    assert.is_true(took < 1.5, ("stopped after %.2f s (timeout 0.5 s)"):format(took))
  end

  it("stops a handler sleeping in ctx.sleep", function()
    assert_timed_out(run("sleepy"))
    still_works(1)
  end)

  it("stops a handler stuck in a busy loop", function()
    assert_timed_out(run("spin"))
    still_works(2)
  end)

  it("stops a busy loop wrapped in pcall (the timeout cannot be caught)", function()
    assert_timed_out(run("spin_pcall"))
    local job, took = run("spin_once_pcall")
    assert_timed_out(job, took)
    still_works(3)
  end)

  it("stops a busy loop inside a coroutine of the handler", function()
    assert_timed_out(run("spin_coroutine"))
    still_works(4)
  end)

  it("stops a handler waiting for a query; the query holds up no other work", function()
    assert_timed_out(run("slow_query"))
    -- the query (pg_sleep(3)) would run 2.5 s longer: statements of other
    -- jobs must not wait behind it
    local t0 = W.now()
    local list = {}
    for i = 1, 12 do list[i] = { n = i } end
    local ids = assert(Q.send_many("querying", list))
    assert.is_true(W.wait_all(ids, 6))
    local took = W.now() - t0
    for i, id in ipairs(ids) do
      local job = Q.get(id)
      assert.equal("completed", job.state)
      assert.equal(i, job.output)
    end
    assert.is_true(took < 1.5, ("12 quick query jobs took %.2f s after a timed-out query"):format(took))
    still_works(5)
  end)

  it("uses the queue's configured timeout when the handler gives none", function()
    assert_timed_out(run("cfg_timeout"))
  end)

  it("a timed-out job is retried per its policy", function()
    local id = assert(Q.send("spin", {}, { retry_limit = 1 }))
    local job = W.wait_job(id, "failed", 6)
    assert.equal("failed", job.state)
    assert.equal(2, job.attempt)
    assert.equal("timeout after 0.5 s", job.error.message)
  end)

  it("several jobs stuck at once are all stopped; the loop carries on", function()
    local ids = {}
    for i = 1, 3 do ids[#ids + 1] = assert(Q.send("sleepy", { i = i })) end
    for i = 1, 2 do ids[#ids + 1] = assert(Q.send("spin", { i = i })) end
    local t0 = W.now()
    assert.is_true(W.wait_all(ids, 8), "stuck jobs were not all stopped")
    -- the two busy loops run one after another (each holds the loop for 0.5 s)
    assert.is_true(W.now() - t0 < 3.5, "stopping stuck jobs took too long")
    for _, id in ipairs(ids) do
      local job = Q.get(id)
      assert.equal("failed", job.state)
      assert.equal("timeout after 0.5 s", job.error.message)
    end
    still_works(6)
  end)
end)
