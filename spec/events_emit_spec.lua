-- Events a handler emits (ctx.emit) are stored with the job's completion, in
-- its transaction: a failed attempt leaves none, a retried job emits once;
-- { now = true } appends at once; { stream = ... } chooses the stream.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q, E = moonq.queue, moonq.events

local HANDLERS = {
  -- emits, then fails: nothing may be stored
  ["emit_then_fail.lua"] = [[
return function(job, ctx)
  ctx.emit("step.done", { n = 1 })
  error("after emitting")
end
]],
  -- attempt 1 emits and fails; attempt 2 emits and succeeds
  ["flaky_emit.lua"] = [[
return { retry = { limit = 2, delay = 0, backoff = false }, handler = function(job, ctx)
  ctx.emit("tried", { attempt = job.attempt })
  if job.attempt == 1 then error("first attempt fails") end
  return "ok"
end }
]],
  -- progress at once, then failure
  ["progress_now.lua"] = [[
return function(job, ctx)
  ctx.emit("progress", { pct = 50 }, { now = true })
  error("failed after progress")
end
]],
  -- a chosen stream; the job's run_id is carried
  ["to_stream.lua"] = [[
return function(job, ctx)
  ctx.emit("order.paid", { order = job.data.order }, { stream = "orders:" .. job.data.order })
  ctx.emit("noted")
  return true
end
]],
  -- bad events are refused where they are emitted
  ["bad_emit.lua"] = [[
return function(job, ctx)
  local results = {}
  for i, case in ipairs({ { "t\0x" }, { "" }, { "ok", { f = "a\0b" } } }) do
    local ok, err = pcall(ctx.emit, case[1], case[2])
    results[i] = not ok and tostring(err) or "accepted"
  end
  return results
end
]],
  -- the handler changes what it emitted, or the list itself
  ["mutate_after.lua"] = [[
return function(job, ctx)
  local d = { v = 1 }
  ctx.emit("snap", d)
  d.v = string.rep("x", 100)
  return true
end
]],
  ["tamper.lua"] = [[
return function(job, ctx)
  ctx.emitted[#ctx.emitted + 1] = { type = "" }
  return true
end
]],
  ["bad_stream_option.lua"] = [[
return function(job, ctx)
  local ok, err = pcall(ctx.emit, "t", {}, { stream = 42 })
  return not ok and tostring(err) or "accepted"
end
]],
}

local function job_stream(name, id) return ("job:%s:%d"):format(name, id) end

describe("ctx.emit", function()
  setup(function()
    W.open({ handlers = W.handlers_dir(HANDLERS), hot_reload = false,
             queue = { retry_limit = 0, retry_delay = 0, retry_backoff = false } })
    assert(moonq.start())
  end)
  teardown(W.close)

  it("stores nothing when the attempt fails", function()
    local id = assert(Q.send("emit_then_fail", {}))
    local job = W.wait_job(id, "failed", 20)
    assert.equal("failed", job.state)
    moonq.sleep(0.3) -- a late write would show now
    assert.same({}, assert(E.query(job_stream("emit_then_fail", id))))
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.queue_events").n)
  end)

  it("stores the events of the attempt that succeeds, once", function()
    local id = assert(Q.send("flaky_emit", {}))
    local job = W.wait_job(id, "completed", 20)
    assert.equal("completed", job.state)
    assert.equal(2, job.attempt)
    local list = assert(E.query(job_stream("flaky_emit", id)))
    assert.equal(1, #list)
    assert.equal("tried", list[1].type)
    assert.same({ attempt = 2 }, list[1].data)
    assert.equal(2, list[1].attempt)
  end)

  it("appends at once with { now = true }, even when the job then fails", function()
    local id = assert(Q.send("progress_now", {}))
    W.wait_job(id, "failed", 20)
    local list = assert(E.query(job_stream("progress_now", id)))
    assert.equal(1, #list)
    assert.equal("progress", list[1].type)
    assert.same({ pct = 50 }, list[1].data)
  end)

  it("goes to a chosen stream, carries the run_id, and reaches subscribers", function()
    local seen = {}
    local sub = E.subscribe("orders:*", function(ev) seen[#seen + 1] = ev end, { from = "end" })
    moonq.sleep(0.2)
    local id = assert(Q.send("to_stream", { order = 9 }, { run_id = "run-9" }))
    W.wait_job(id, "completed", 20)
    assert.is_true(moonq.run_until(function() return #seen >= 1 end, 10))
    sub:close()
    assert.equal("orders:9", seen[1].stream)
    assert.equal("order.paid", seen[1].type)
    assert.equal("run-9", seen[1].run_id)
    local own = assert(E.query(job_stream("to_stream", id)))
    assert.equal(1, #own)
    assert.equal("noted", own[1].type)
    assert.equal("run-9", own[1].run_id)
  end)

  it("stores the data as it was when emitted", function()
    local id = assert(Q.send("mutate_after", {}))
    W.wait_job(id, "completed", 20)
    local list = assert(E.query(job_stream("mutate_after", id)))
    assert.same({ v = 1 }, list[1].data)
  end)

  it("fails the job, not its completion, when ctx.emitted was tampered with", function()
    local id = assert(Q.send("tamper", {}))
    local job = W.wait_job(id, { "failed", "completed" }, 20)
    assert.equal("failed", job and job.state)
    assert.matches("ctx.emitted[1]", job.error.message, 1, true)
    assert.same({}, assert(E.query(job_stream("tamper", id))))
  end)

  it("refuses a stream option that is not a string", function()
    local id = assert(Q.send("bad_stream_option", {}))
    local job = W.wait_job(id, "completed", 20)
    assert.matches("stream must be a string", job.output, 1, true)
  end)

  it("refuses a bad event where it is emitted, naming the problem", function()
    local id = assert(Q.send("bad_emit", {}))
    local job = W.wait_job(id, "completed", 20)
    local r = job.output
    assert.matches("type holds a NUL byte", r[1], 1, true)
    assert.matches("non%-empty", r[2])
    assert.matches("NUL character", r[3], 1, true)
    assert.same({}, assert(E.query(job_stream("bad_emit", id))))
  end)
end)
