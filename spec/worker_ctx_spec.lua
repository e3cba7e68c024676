-- The handler's ctx against the real PostgreSQL: ctx.job, ctx.enqueue (a job
-- sent with the job's completion, propagating the run id; at once with
-- now = true), ctx.emit (recorded in ctx.emitted),
-- ctx.log (lines on stderr tagged with the job), each handler file's own
-- environment, and moonq calls from a handler's own coroutines.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local HANDLERS = {
  ["whoami.lua"] = [[
return function(job, ctx)
  local j = ctx.job
  return { id = j.id, name = j.name, queue = j.queue, data = j.data, attempt = j.attempt,
           run_id = j.run_id, same = (j == job) }
end
]],
  ["parent.lua"] = [[
local moonq = require "moonq"
return function(job, ctx)
  local data = { from = job.id, kind = "a" }
  assert(ctx.enqueue("child", data))
  data.kind = "changed later" -- what was given at the call is sent
  assert(ctx.enqueue("child", { from = job.id, kind = "b" }, { run_id = "own-run" }))
  assert(ctx.enqueue("child", { from = job.id, kind = "c" }, { delay = 60, priority = 3 }))
  local now = assert(ctx.enqueue("child", { from = job.id, kind = "now" }, { now = true }))
  -- the job sent at once exists already; the others wait for completion
  local rows = assert(moonq.db.query(
    "SELECT count(*) AS n FROM " .. job.data.schema .. ".job WHERE name = 'child' AND (data->>'from')::bigint = $1", job.id))
  local ok1, bad_name = pcall(ctx.enqueue, "", {})
  local ok2, bad_data = pcall(ctx.enqueue, "child", { f = function() end })
  return { now = now, seen_while_running = rows[1].n, queued = #ctx.enqueued,
           bad_name = not ok1 and tostring(bad_name), bad_data = not ok2 and tostring(bad_data) }
end
]],
  ["flaky_parent.lua"] = [[
return {
  retry = { limit = 1, delay = 0 },
  handler = function(job, ctx)
    assert(ctx.enqueue("child", { from = job.id, attempt = job.attempt }))
    if job.attempt == 1 then error("first attempt fails after enqueueing") end
    return true
  end,
}
]],
  ["nul_result.lua"] = [[
return function(job, ctx)
  ctx.sleep(0.2) -- the jobs of one send end together: one batch of completions
  if job.data.where == "output" then return { s = "a\0b" } end
  if job.data.where == "enqueue" then assert(ctx.enqueue("child", { s = "a\0b" })) end
  return job.data
end
]],
  ["bad_enqueue.lua"] = [[
return function(job, ctx)
  assert(ctx.enqueue("child", { from = job.id }))
  assert(ctx.enqueue("child", { from = job.id }, { no_such_option = 1 }))
  return true
end
]],
  ["child.lua"] = [[
return function(job, ctx) return { from = job.data.from, run_id = job.run_id or "none" } end
]],
  ["emitter.lua"] = [[
return function(job, ctx)
  assert(ctx.emit("order.paid", { order = job.data.order, total = 12.5 }))
  assert(ctx.emit("order.noted"))
  local ok, err = pcall(ctx.emit, "", {})
  local ok2, err2 = pcall(ctx.emit, 42)
  return { emitted = ctx.emitted, bad = not ok and tostring(err), bad2 = not ok2 and tostring(err2) }
end
]],
  ["logger.lua"] = [[
return function(job, ctx)
  ctx.log.info("hello from the handler", { user = "u-17", n = 3 })
  ctx.log.warn("careful now")
  ctx.log.error("an error line", { code = "E1" })
  ctx.log.debug("a debug line")
  return true
end
]],
  ["global.lua"] = [[
return function(job, ctx)
  leaked = job.id   -- writing a global is an error
  return "not reached"
end
]],
  ["env_a.lua"] = [[
local counter = 0
return function(job, ctx)
  counter = counter + 1
  return { counter = counter, sees_b = rawget(_ENV, "secret_b") ~= nil, print_ok = type(print) == "function" }
end
]],
  ["generator.lua"] = [[
local moonq = require "moonq"
return function(job, ctx)
  local gen = coroutine.wrap(function()
    for i = 1, 3 do
      local rows = assert(moonq.db.query("SELECT $1::int * 2 AS v", i))
      ctx.sleep(0.01)
      coroutine.yield(rows[1].v)
    end
  end)
  local out = {}
  for i = 1, 3 do out[i] = gen() end
  return out
end
]],
}

describe("worker ctx", function()
  local dir

  setup(function()
    dir = W.handlers_dir(HANDLERS)
    W.open({ handlers = dir, hot_reload = false, queue = { retry_limit = 0 } })
    assert(moonq.start())
  end)
  teardown(W.close)

  it("ctx.job is the job: id, name, queue, data, attempt, run_id", function()
    local id = assert(Q.send("whoami", { k = "v", list = { 1, 2 } }, { run_id = "run-9" }))
    local job = W.wait_job(id)
    assert.equal("completed", job.state)
    assert.same({ id = id, name = "whoami", queue = "whoami", data = { k = "v", list = { 1, 2 } },
                  attempt = 1, run_id = "run-9", same = true }, job.output)
    local plain = assert(Q.send("whoami", {}))
    assert.is_nil(W.wait_job(plain).output.run_id)
  end)

  -- The child jobs of parent `id`, by kind: {id, state, run_id, priority}.
  local function children(id)
    local out = {}
    for _, r in ipairs(W.sql([[SELECT id, state::text AS state, run_id, priority, data->>'kind' AS kind
                                 FROM @.all_jobs WHERE name = 'child' AND (data->>'from')::bigint = $1]], id)) do
      out[r.kind or "?"] = r
    end
    return out
  end

  it("ctx.enqueue sends jobs with the completion; the run id goes along unless given", function()
    local id = assert(Q.send("parent", { schema = W.schema }, { run_id = "run-1" }))
    local job = W.wait_job(id)
    assert.equal("completed", job.state)
    local out = job.output
    assert.equal(1, out.seen_while_running) -- only the one sent with now = true
    assert.equal(3, out.queued)
    assert.matches("non%-empty string", out.bad_name)
    assert.matches("ctx.enqueue", out.bad_data, 1, true)
    local kids = children(id)
    assert.same({ "a", "b", "c", "now" }, (function()
      local k = {}
      for kind in pairs(kids) do k[#k + 1] = kind end
      table.sort(k)
      return k
    end)())
    assert.equal(out.now, kids.now.id)
    local a = W.wait_job(kids.a.id)
    assert.equal("completed", a.state)
    assert.same({ from = id, run_id = "run-1" }, a.output)
    assert.equal("a", a.data.kind)
    assert.equal("own-run", W.wait_job(kids.b.id).output.run_id)
    -- send options pass through
    local c = Q.get(kids.c.id)
    assert.equal("delayed", c.state)
    assert.equal(3, c.priority)
    assert.equal("run-1", c.run_id)
    assert.is_true(Q.cancel(kids.c.id))
  end)

  it("ctx.enqueue from a job without a run id sends jobs without one", function()
    local id = assert(Q.send("parent", { schema = W.schema }))
    assert.equal("completed", W.wait_job(id).state)
    local kids = children(id)
    assert.same({ from = id, run_id = "none" }, W.wait_job(kids.a.id).output)
    assert.same({ from = id, run_id = "own-run" }, W.wait_job(kids.b.id).output)
    assert.is_true(Q.cancel(kids.c.id))
  end)

  it("a failed attempt sends none of its jobs; the retry that succeeds sends them once", function()
    local id = assert(Q.send("flaky_parent", {}))
    local job = W.wait_job(id)
    assert.equal("completed", job.state)
    assert.equal(2, job.attempt)
    local rows = W.sql([[SELECT (data->>'attempt')::int AS attempt FROM @.all_jobs
                          WHERE name = 'child' AND (data->>'from')::bigint = $1]], id)
    assert.same({ { attempt = 2 } }, rows)
  end)

  it("a result with a NUL character fails its job alone; the rest of its batch completes", function()
    local ids = assert(Q.send_many("nul_result", { { i = 1 }, { where = "output" }, { i = 2 },
                                                   { where = "enqueue" }, { i = 3 } }))
    local states = {}
    for i, id in ipairs(ids) do
      local j = W.wait_job(id)
      states[i] = j.state
      if j.state == "failed" then
        assert.matches("holds a NUL character", j.error.message, 1, true)
      end
    end
    assert.same({ "completed", "failed", "completed", "failed", "completed" }, states)
  end)

  it("jobs PostgreSQL refuses fail the job that enqueued them; the rest of the batch completes", function()
    local bad = assert(Q.send("bad_enqueue", {}))
    local good = assert(Q.send("whoami", {}))
    local job = W.wait_job(bad)
    assert.equal("failed", job.state)
    assert.matches("ctx.enqueue: .*no_such_option", job.error.message)
    assert.equal(0, #W.sql([[SELECT id FROM @.all_jobs WHERE name = 'child'
                              AND (data->>'from')::bigint = $1]], bad))
    assert.equal("completed", W.wait_job(good).state)
  end)

  it("ctx.emit records events in ctx.emitted and checks the type", function()
    local id = assert(Q.send("emitter", { order = 77 }))
    local job = W.wait_job(id)
    assert.equal("completed", job.state)
    local out = job.output
    assert.equal(2, #out.emitted)
    assert.same({ type = "order.paid", data = { order = 77, total = 12.5 } }, out.emitted[1])
    assert.equal("order.noted", out.emitted[2].type)
    assert.matches("non%-empty string", out.bad)
    assert.matches("non%-empty string", out.bad2)
  end)

  it("writing a global fails the job; each file has its own environment", function()
    local id = assert(Q.send("global", {}))
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.matches('undeclared global "leaked"', job.error.message, 1, true)
    assert.matches("global.lua", job.error.traceback, 1, true)
    assert.is_nil(rawget(_G, "leaked"))

    local a1 = W.wait_job(assert(Q.send("env_a", {})))
    local a2 = W.wait_job(assert(Q.send("env_a", {})))
    assert.same({ counter = 1, sees_b = false, print_ok = true }, a1.output)
    assert.equal(2, a2.output.counter)
  end)

  it("moonq calls work from a handler's own coroutine (coroutine.wrap)", function()
    local id = assert(Q.send("generator", {}))
    local job = W.wait_job(id)
    assert.equal("completed", job.state, job.error and job.error.message)
    assert.same({ 2, 4, 6 }, job.output)
  end)

  it("ctx.log writes lines tagged with the job to stderr (a child process)", function()
    local log = W.tmpdir() .. "/child.log"
    local body = [[
      assert(moonq.open({ database = url, schema = schema, handlers = dir, hot_reload = false,
                          log = { level = "info" } }))
      local id = assert(moonq.queue.send("logger", {}))
      io.stderr:write("SENT ", id, "\n")
      assert(moonq.start())
      assert(moonq.run_until(function() return moonq.queue.get(id).state == "completed" end, 10))
      io.stderr:write("DONE ", id, "\n")
      moonq.stop()
      moonq.close()
    ]]
    local path = W.script(body, { url = W.url, schema = W.schema, dir = dir })
    local ok = os.execute(("lua5.4 %s >%s 2>&1"):format(W.shq(path), W.shq(log)))
    os.remove(path)
    local out = W.read(log) or ""
    local id = out:match("SENT (%d+)")
    assert.is_string(id, out)
    assert.matches("DONE " .. id, out, 1, true)
    local function line(pat)
      for l in out:gmatch("[^\n]+") do
        if l:find(pat, 1, true) then return l end
      end
    end
    local info = line("hello from the handler")
    assert.is_string(info, out)
    assert.matches("INFO", info, 1, true)
    assert.matches("job_id=" .. id, info, 1, true)
    assert.matches("job=logger", info, 1, true)
    assert.matches("user=u-17", info, 1, true)
    assert.matches("n=3", info, 1, true)
    local warn = line("careful now")
    assert.is_string(warn, out)
    assert.matches("WARN", warn, 1, true)
    local err = line("an error line")
    assert.is_string(err, out)
    assert.matches("ERROR", err, 1, true)
    assert.matches("code=E1", err, 1, true)
    assert.is_nil(line("a debug line"), "a debug line was written at level info")
    assert.is_truthy(ok, "the child process failed:\n" .. out)
  end)
end)
