-- The worker against PostgreSQL's limits (sql/014_limits.sql): job data Lua
-- cannot represent fails its job without retry; one job PostgreSQL refuses
-- to complete or fail does not hold back the rest of its batch; an error
-- table keeps its fields; a wake-up too long for NOTIFY still wakes.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local HANDLERS = {
  ["readback.lua"] = [[
return function(job) return { got = job.data } end
]],
  ["batch.lua"] = [[
return function(job, ctx)
  ctx.sleep(0.2) -- the jobs of one send end together: one batch
  if job.data.fail then error(job.data.fail) end
  return job.data
end
]],
  ["fails.lua"] = [[
return {
  retry = { limit = 2, delay = 3600 },
  handler = function(job, ctx)
    ctx.sleep(0.2)
    error(job.data.fail)
  end,
}
]],
  ["table_error.lua"] = [[
local co = coroutine.create(function() end)
return function(job)
  if job.data.final then error({ message = "cannot succeed", code = 7, retry = false }) end
  error({ code = 1, fn = print, detail = { when = "now", co = co }, list = { 1, 2 } })
end
]],
  -- fails with a NUL character in its error: as a field, in the message,
  -- in a key, nested
  ["nul_error.lua"] = [[
return function(job, ctx)
  ctx.sleep(0.2) -- the jobs of one send fail together: one batch
  local k = job.data.k
  if k == "field" then error({ detail = "resp\0bin" }) end
  if k == "message" then error("bad\0message") end
  if k == "key" then error({ ["a\0b"] = 1 }) end
  if k == "nested" then error({ deep = { list = { "x\0y" } } }) end
  if k == "latin1" then error("bad \xff byte") end
  if k == "tostring" then
    error(setmetatable({ code = 9 }, { __tostring = function() return "custom failure" end }))
  end
  if k == "latin1_field" then error({ message = "caf\xe9 down", detail = "caf\xe9" }) end
  error("plain failure")
end
]],
  ["woken.lua"] = [[
return function() return true end
]],
}

describe("worker limits", function()
  setup(function()
    local dir = W.handlers_dir(HANDLERS)
    W.open({ handlers = dir, hot_reload = false,
             queue = { retry_limit = 0, poll_interval = 60 },
             queues = { readback = { retry_limit = 3 }, table_error = { retry_limit = 3 } } })
    assert(moonq.start())
  end)
  teardown(W.close)

  -- Sends a job to a paused queue, then changes its data in the table (as
  -- data stored before such data was refused at send would be), then lets
  -- the worker have it.
  local function stored_job(data_sql)
    assert(Q.pause("readback"))
    local id = assert(Q.send("readback", {}))
    W.sql("UPDATE @.job SET data = " .. data_sql .. " WHERE id = $1", id)
    assert(Q.resume("readback"))
    return id
  end

  it("job data with a number Lua cannot represent fails its job without retry, naming the problem", function()
    local id = stored_job([['{"huge":1e400}'::jsonb]])
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.equal(1, job.attempt)
    assert.matches("job data cannot be read in Lua: number beyond a 64-bit float's range",
      job.error.message, 1, true)
    assert.matches("holds a number beyond", job.data_error, 1, true)
  end)

  it("job data nested deeper than 128 levels fails its job without retry", function()
    local id = stored_job("(repeat('[',129)||'1'||repeat(']',129))::jsonb")
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.equal(1, job.attempt)
    assert.matches("JSON nested deeper than 128 levels", job.error.message, 1, true)
  end)

  it("a completion PostgreSQL refuses fails its job alone; the rest of its batch completes", function()
    W.sql([[ALTER TABLE @.job_archive ADD CONSTRAINT poison_output
              CHECK (output IS DISTINCT FROM '{"poison":true}'::jsonb) NOT VALID]])
    local ids = assert(Q.send_many("batch", { { i = 1 }, { poison = true }, { i = 2 }, { i = 3 } }))
    local states = {}
    for i, id in ipairs(ids) do states[i] = W.wait_job(id).state end
    W.sql("ALTER TABLE @.job_archive DROP CONSTRAINT poison_output")
    assert.same({ "completed", "failed", "completed", "completed" }, states)
    local bad = Q.get(ids[2])
    assert.matches("storing the job's result failed: ", bad.error.message, 1, true)
    assert.matches("poison_output", bad.error.message, 1, true)
    assert.same({ i = 3 }, Q.get(ids[4]).output)
  end)

  it("a failure PostgreSQL refuses to store with a retry fails that job for good; the rest retry", function()
    W.sql([[ALTER TABLE @.job ADD CONSTRAINT poison_error
              CHECK (error IS NULL OR error->>'message' NOT LIKE '%poison%') NOT VALID]])
    local ids = assert(Q.send_many("fails", { { fail = "plain" }, { fail = "poison" },
                                              { fail = "plain" } }))
    local states = {}
    for i, id in ipairs(ids) do states[i] = W.wait_job(id, { "delayed", "failed" }).state end
    W.sql("ALTER TABLE @.job DROP CONSTRAINT poison_error")
    assert.same({ "delayed", "failed", "delayed" }, states)
    local bad = Q.get(ids[2])
    assert.matches("poison", bad.error.message, 1, true)
    assert.matches("storing this failure with a retry failed: ", bad.error.store_error, 1, true)
  end)

  it("an error with a NUL character fails its job; the other failures of its batch are stored too", function()
    local ids = assert(Q.send_many("nul_error", { { k = "plain" }, { k = "field" }, { k = "plain" },
                                                  { k = "message" }, { k = "key" }, { k = "nested" },
                                                  { k = "plain" } }))
    local states = {}
    for i, id in ipairs(ids) do states[i] = W.wait_job(id, { "failed" }, 30).state end
    assert.same({ "failed", "failed", "failed", "failed", "failed", "failed", "failed" }, states)
    assert.equal("resp\\u0000bin", Q.get(ids[2]).error.detail)
    assert.matches("nul_error.lua:%d+: bad", Q.get(ids[4]).error.message)
    assert.equal(1, Q.get(ids[5]).error["a\\u0000b"])
    assert.same({ list = { "x\\u0000y" } }, Q.get(ids[6]).error.deep)
    assert.matches("plain failure", Q.get(ids[7]).error.message, 1, true)
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.job WHERE state = 'active'").n)
  end)

  it("an error object with __tostring and no message is stored with what it says", function()
    local id = assert(Q.send("nul_error", { k = "tostring" }))
    local job = W.wait_job(id, { "failed" })
    assert.equal("custom failure", job.error.message)
    assert.equal(9, job.error.code)
    assert.matches("stack traceback", job.error.traceback, 1, true)
  end)

  it("an error whose text is not UTF-8 keeps its message, fields and traceback, the bytes as '?'", function()
    local ids = assert(Q.send_many("nul_error", { { k = "latin1" }, { k = "latin1_field" } }))
    local a, b = W.wait_job(ids[1], { "failed" }), W.wait_job(ids[2], { "failed" })
    assert.matches("bad ? byte", a.error.message, 1, true)
    assert.matches("stack traceback", a.error.traceback, 1, true)
    assert.equal("caf? down", b.error.message)
    assert.matches("^caf%? %(not stored", b.error.detail)
    assert.matches("stack traceback", b.error.traceback, 1, true)
  end)

  it("an error table keeps its fields; what JSON cannot carry is described; the traceback is there", function()
    local id = assert(Q.send("table_error", {}))
    local job = W.wait_job(id, { "delayed", "failed" })
    local e = job.error
    assert.equal(1, e.code)
    assert.matches("^function: ", e.fn)
    assert.matches("^table: .*%(not stored: .*co.*cannot encode", e.detail)
    assert.same({ 1, 2 }, e.list)
    assert.matches("stack traceback", e.traceback, 1, true)
    assert.equal("error", e.message)
  end)

  it("an error table with retry = false fails its job without retry", function()
    local id = assert(Q.send("table_error", { final = true }))
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.equal(1, job.attempt)
    assert.equal(7, job.error.code)
    assert.equal("cannot succeed", job.error.message)
  end)

  it("a wake-up whose queue names pass NOTIFY's 8,000 bytes still wakes the workers", function()
    local others = {}
    for i = 1, 40 do others[i] = ("%03d%s"):format(i, string.rep("€", 80)) end
    local sql = ([[BEGIN;
SET LOCAL moonq.no_wake = on;
SELECT @.send('woken', '{}');
SELECT @.wake(%s);
COMMIT;]]):format(W.shq(table.concat(others, ","))):gsub("@%.", W.schema .. ".")
    local t0 = W.now()
    local out, ok = W.psql(sql)
    assert(ok, out)
    local id = assert(math.tointeger(tonumber(out:match("(%d+)"))))
    local job = W.wait_job(id, nil, 20)
    assert.equal("completed", job.state)
    assert.is_true(W.now() - t0 < 15, "woken by the notification, not by the 60 s poll")
  end)
end)
