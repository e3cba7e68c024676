-- Lua workers run handlers in this process (moonq.start + run_until), against
-- the real PostgreSQL: a handler's result becomes the job's output, errors
-- (strings and tables) are stored with message and traceback and retried per
-- the handler's retry policy, handlers see the attempt number grow, and a job
-- nobody handles fails naming the known job names.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- Each handler records every attempt it sees in <schema>.seen (inserted
-- from inside the handler with moonq.db.query, which yields).
local RECORD = [[
local moonq = require "moonq"
local function record(job)
  assert(moonq.db.query("INSERT INTO " .. job.data.schema .. ".seen (job_id, name, attempt, at) "
    .. "VALUES ($1, $2, $3, clock_timestamp())", job.id, job.name, job.attempt))
end
]]

local HANDLERS = {
  ["echo.lua"] = [[
return function(job, ctx)
  return { data = job.data, attempt = job.attempt, name = job.name, queue = job.queue,
           id = job.id, ctx_id = ctx.job.id, list = { 1, 2, 3 }, big = 9007199254740993 }
end
]],
  ["scalar.lua"] = [[return function(job) return job.data.v end]],
  ["none.lua"] = [[return function(job) local x = job.data end]],
  ["explicit_nil.lua"] = [[return { handler = function() return nil end }]],
  ["bad_output.lua"] = [[return function() return { f = function() end } end]],
  -- fails with a string until attempt `ok_at` (never when absent)
  ["flaky.lua"] = RECORD .. [[
return {
  retry = { limit = 2, delay = 0.4, backoff = false },
  handler = function(job, ctx)
    record(job)
    if job.data.ok_at and job.attempt >= job.data.ok_at then
      return { attempt = job.attempt }
    end
    error("flaky failed on attempt " .. job.attempt)
  end,
}
]],
  -- fails with a table
  ["coded.lua"] = RECORD .. [[
return {
  retry = { limit = 1, delay = 0.1, backoff = false },
  handler = function(job, ctx)
    record(job)
    local function deeper() error({ code = "E_CARD", message = "card declined", amount = 12 }) end
    deeper()
  end,
}
]],
  -- a queue shared by two job names
  ["mail/welcome.lua"] = [[return { queue = "mail", handler = function(job) return "welcome " .. job.name end }]],
  ["mail/reset.lua"] = [[return { queue = "mail", handler = function(job) return "reset " .. job.name end }]],
  -- a file that does not load does not stop the others
  ["broken.lua"] = [[return function(job) return "never" ]],
}

describe("worker: handler results", function()
  local schema

  setup(function()
    local dir = W.handlers_dir(HANDLERS)
    schema = W.open({ handlers = dir, hot_reload = false,
                      queue = { retry_delay = 0.1, retry_backoff = false, poll_interval = 2 } })
    W.sql("CREATE TABLE @.seen (job_id bigint, name text, attempt int, at timestamptz)")
    assert(moonq.start())
  end)
  teardown(W.close)

  local function seen(id)
    local rows = W.sql("SELECT attempt, extract(epoch FROM at)::float8 AS at FROM @.seen WHERE job_id = $1 ORDER BY at", id)
    local attempts, times = {}, {}
    for i, r in ipairs(rows) do attempts[i], times[i] = r.attempt, r.at end
    return attempts, times
  end

  it("stores the handler's return value as the job's output", function()
    local id = assert(Q.send("echo", { to = "a@b.c", n = 7 }))
    local job = W.wait_job(id)
    assert.equal("completed", job.state)
    assert.same({ data = { to = "a@b.c", n = 7 }, attempt = 1, name = "echo", queue = "echo",
                  id = id, ctx_id = id, list = { 1, 2, 3 }, big = 9007199254740993 }, job.output)
    local row = W.row("SELECT state::text AS state, output FROM @.job_archive WHERE id = $1", id)
    assert.equal("completed", row.state)
    assert.equal(9007199254740993, row.output.big)
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.job WHERE id = $1", id).n)
  end)

  it("stores scalar results", function()
    local a = assert(Q.send("scalar", { v = "text" }))
    local b = assert(Q.send("scalar", { v = 42 }))
    local c = assert(Q.send("scalar", { v = false }))
    assert.equal("text", W.wait_job(a).output)
    assert.equal(42, W.wait_job(b).output)
    local jc = W.wait_job(c)
    assert.equal("completed", jc.state)
    assert.equal(false, jc.output)
  end)

  it("a handler returning nothing or nil completes with no output", function()
    local a = assert(Q.send("none", {}))
    local b = assert(Q.send("explicit_nil", {}))
    for _, id in ipairs({ a, b }) do
      local job = W.wait_job(id)
      assert.equal("completed", job.state)
      assert.is_nil(job.output)
      assert.is_nil(job.error)
      assert.equal(moonq.null, W.row("SELECT output FROM @.job_archive WHERE id = $1", id).output)
    end
  end)

  it("a result JSON cannot carry fails the job with a clear message", function()
    local id = assert(Q.send("bad_output", {}, { retry_limit = 0 }))
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.matches("cannot be stored", job.error.message)
  end)

  it("a string error is stored with message and traceback and retried until the limit", function()
    local id = assert(Q.send("flaky", { schema = schema }))
    local job = W.wait_job(id, "failed", 8)
    assert.equal("failed", job.state)
    -- retry.limit = 2: three attempts, each seen by the handler
    local attempts, times = seen(id)
    assert.same({ 1, 2, 3 }, attempts)
    assert.equal(3, job.attempt)
    assert.equal(2, job.retry_limit)
    assert.equal("flaky", job.name)
    assert.matches("flaky failed on attempt 3", job.error.message, 1, true)
    assert.matches("flaky.lua:%d+:", job.error.message)
    assert.is_string(job.error.traceback)
    assert.matches("stack traceback", job.error.traceback, 1, true)
    assert.matches("flaky.lua:%d+: in", job.error.traceback)
    -- retry.delay = 0.4 without backoff between attempts
    for i = 2, 3 do
      local gap = times[i] - times[i - 1]
      assert.is_true(gap >= 0.35, ("retry %d came after only %.2f s"):format(i - 1, gap))
      assert.is_true(gap < 2.0, ("retry %d came after %.2f s (retry.delay is 0.4)"):format(i - 1, gap))
    end
  end)

  it("a job that succeeds on a retry completes with the attempt it saw", function()
    local id = assert(Q.send("flaky", { schema = schema, ok_at = 2 }))
    local job = W.wait_job(id, { "completed", "failed" }, 8)
    assert.equal("completed", job.state)
    assert.same({ attempt = 2 }, job.output)
    assert.same({ 1, 2 }, (seen(id)))
    -- the failure of attempt 1 stays on the job
    assert.matches("flaky failed on attempt 1", job.error.message, 1, true)
  end)

  it("while waiting for a retry the job shows the error and a later start", function()
    local id = assert(Q.send("flaky", { schema = schema }, { retry_delay = 30 }))
    local job = W.wait_job(id, { "delayed", "failed" }, 5)
    assert.equal("delayed", job.state)
    assert.equal("retry", job.stored_state)
    assert.equal(1, job.attempt)
    assert.matches("flaky failed on attempt 1", job.error.message, 1, true)
    assert.matches("flaky.lua", job.error.traceback, 1, true)
    assert.is_true(Q.cancel(id))
  end)

  it("send's retry_limit overrides the handler's", function()
    local id = assert(Q.send("flaky", { schema = schema }, { retry_limit = 0 }))
    local job = W.wait_job(id, "failed", 5)
    assert.equal("failed", job.state)
    assert.same({ 1 }, (seen(id)))
    assert.equal(1, job.attempt)
  end)

  it("an error table keeps its fields, with message and traceback", function()
    local id = assert(Q.send("coded", { schema = schema }))
    local job = W.wait_job(id, "failed", 5)
    assert.equal("failed", job.state)
    assert.same({ 1, 2 }, (seen(id)))
    assert.equal("E_CARD", job.error.code)
    assert.equal(12, job.error.amount)
    assert.equal("card declined", job.error.message)
    assert.matches("coded.lua:%d+: in", job.error.traceback)
    assert.matches("deeper", job.error.traceback, 1, true)
    local row = W.row("SELECT error FROM @.job_archive WHERE id = $1", id)
    assert.equal("E_CARD", row.error.code)
  end)

  it("a queue shared by several job names runs each with its own handler", function()
    local a = assert(Q.send("mail.welcome", {}, { queue = "mail" }))
    local b = assert(Q.send("mail.reset", {}, { queue = "mail" }))
    assert.equal("welcome mail.welcome", W.wait_job(a).output)
    assert.equal("reset mail.reset", W.wait_job(b).output)
  end)

  it("a job whose name has no handler fails listing the known names", function()
    local id = assert(Q.send("nobody", { x = 1 }, { queue = "echo", retry_limit = 0 }))
    local job = W.wait_job(id, "failed", 5)
    assert.equal("failed", job.state)
    local msg = job.error.message
    assert.matches('no handler for job "nobody"', msg, 1, true)
    for _, name in ipairs({ "echo", "scalar", "none", "flaky", "coded", "mail.welcome", "mail.reset" }) do
      assert.matches(name, msg, 1, true)
    end
    assert.not_matches("broken", msg, 1, true)
    -- the consumer keeps working
    local ok = assert(Q.send("echo", { after = true }))
    assert.equal("completed", W.wait_job(ok).state)
  end)

  it("a file that fails to load is not a handler; a queue nobody consumes waits", function()
    local id = assert(Q.send("broken", {}))
    W.run_for(0.5)
    local job = Q.get(id)
    assert.equal("waiting", job.state)
    assert.is_true(Q.cancel(id))
  end)
end)
