-- moonq.testing against the real PostgreSQL: t.run runs one handler file
-- as a worker does (its result, failure, timeout, environment rules,
-- waits, ctx) and stores none of what the job's completion would store;
-- flow steps get ctx.flow and seeded state; t.run_flow runs a flow to its
-- end; t.open / t.close make and drop a private schema, and the first
-- t.run opens on config.lua by itself.
local moonq = require "moonq"
local t = require "moonq.testing"

local dirs = {}

local function write(path, text)
  os.execute("mkdir -p '" .. path:match("^(.*)/[^/]+$") .. "'")
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function handlers_dir(files)
  local dir = os.tmpname()
  os.remove(dir)
  dirs[#dirs + 1] = dir
  for name, text in pairs(files) do write(dir .. "/" .. name, text) end
  return dir
end

local function schema_exists(schema)
  local p = assert(io.popen(("psql \"$DATABASE_URL\" -qAtX -c \"SELECT count(*) FROM pg_namespace WHERE nspname = '%s'\"")
    :format(schema)))
  local n = p:read("a")
  p:close()
  return tonumber(n) == 1
end

local HANDLERS = {
  ["charge.lua"] = [[
local moonq = require "moonq"
return {
  retry = { limit = 4 },
  handler = function(job, ctx)
    ctx.log.info("charging", { amount = job.data.amount })
    ctx.log.debug("details", { card = "visa" })
    local rows = assert(moonq.db.query("SELECT $1::int * 2 AS doubled", job.data.amount))
    ctx.emit("payment.charged", { amount = job.data.amount })
    ctx.emit("audit", { who = "charge" }, { stream = "audit:payments" })
    ctx.enqueue("receipt", { amount = job.data.amount }, { delay = 5 })
    return { doubled = rows[1].doubled, attempt = job.attempt, yieldable = coroutine.isyieldable() }
  end,
}
]],
  ["billing/fail.lua"] = [[
return function(job, ctx)
  ctx.emit("never.stored", {})
  if job.data.table then error({ code = 42, message = "card declined" }) end
  error("boom at attempt " .. job.attempt)
end
]],
  ["slow.lua"] = [[
return {
  timeout = 0.3,
  handler = function(job, ctx)
    if job.data.spin then while true do end end
    ctx.sleep(30)
  end,
}
]],
  ["global.lua"] = [[
return function(job, ctx) leaked = 1 end
]],
  ["unstorable.lua"] = [[
return function(job, ctx) return { f = print } end
]],
  ["nested.lua"] = [[
-- a query from a coroutine the handler made yields through it
local moonq = require "moonq"
return function(job, ctx)
  local gen = coroutine.wrap(function()
    for i = 1, 2 do coroutine.yield(moonq.db.query("SELECT $1::int AS i", i)[1].i) end
  end)
  return { gen(), gen() }
end
]],
  ["pay/start.lua"] = [[
return {
  flow = { name = "pay", step = "start", entry = true, emits = { "pay.ready" } },
  handler = function(job, ctx)
    ctx.state.set("amount", job.data.amount)
    ctx.emit("pay.ready", { amount = job.data.amount })
  end,
}
]],
  ["pay/finish.lua"] = [[
return {
  flow = { name = "pay", step = "finish", subscribes = { "pay.ready" }, emits = { "pay.done" } },
  handler = function(job, ctx)
    local customer = ctx.state.get("customer")
    ctx.state.del("customer")
    ctx.state.set("paid", true)
    ctx.emit("pay.done", { customer = customer, amount = ctx.state.get("amount") })
    return { run = ctx.flow.run_id, flow = ctx.flow.name, step = ctx.flow.step }
  end,
}
]],
}

describe("moonq.testing", function()
  local dir
  setup(function()
    dir = handlers_dir(HANDLERS)
    t.open({ handlers = dir })
  end)
  teardown(function()
    t.close()
    for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d .. "'") end
  end)

  it("t.run returns the output, events, jobs and logs, and stores none of them", function()
    local res = t.run(dir .. "/charge.lua", { data = { amount = 21 }, attempt = 2 })
    assert.is_true(res.ok, res.error and res.error.message)
    assert.is_nil(res.error)
    assert.same({ doubled = 42, attempt = 2, yieldable = true }, res.output)
    local job = res.job
    assert.equal("charge", job.name)
    assert.equal("charge", job.queue)
    assert.equal(2, job.attempt)
    assert.equal(4, job.retry_limit) -- the handler's retry.limit
    assert.same({ amount = 21 }, job.data)
    assert.is_nil(job.run_id)
    assert.same({
      { stream = "job:charge:" .. job.id, type = "payment.charged", data = { amount = 21 } },
      { stream = "audit:payments", type = "audit", data = { who = "charge" } },
    }, res.emitted)
    assert.same({ { name = "receipt", data = { amount = 21 }, options = { delay = 5 } } }, res.enqueued)
    assert.same({
      { level = "info", msg = "charging", fields = { amount = 21 } },
      { level = "debug", msg = "details", fields = { card = "visa" } },
    }, res.logs)
    -- nothing reached the database: no job row, no events, no receipt
    assert.equal(0, #t.sql("SELECT 1 FROM @.all_jobs"))
    assert.equal(0, #t.sql("SELECT 1 FROM @.queue_events"))
    -- each run is a new job id
    assert.is_true(t.run(dir .. "/charge.lua", { data = { amount = 1 } }).job.id > job.id)
  end)

  it("a raised error is the failed job's error; effects of a failed attempt are dropped", function()
    local res = t.run(dir .. "/billing/fail.lua", { attempt = 3 })
    assert.is_false(res.ok)
    assert.equal("billing.fail", res.job.name)
    assert.matches("billing/fail%.lua:4: boom at attempt 3$", res.error.message)
    assert.matches("stack traceback", res.error.traceback)
    assert.same({}, res.emitted)
    res = t.run(dir .. "/billing/fail.lua", { data = { table = true } })
    assert.equal("card declined", res.error.message)
    assert.equal(42, res.error.code)
  end)

  it("times out like a worker: a wait is cancelled, a busy loop stopped", function()
    local t0 = os.time()
    local res = t.run(dir .. "/slow.lua")
    assert.is_false(res.ok)
    assert.equal("timeout after 0.3 s", res.error.message)
    res = t.run(dir .. "/slow.lua", { data = { spin = true }, timeout = 0.2 })
    assert.equal("timeout after 0.2 s", res.error.message)
    local t1 = os.time()
    assert.is_true(t1 - t0 < 5)
  end)

  it("keeps the worker's rules: no globals, results JSON can carry, waits inside coroutines", function()
    local res = t.run(dir .. "/global.lua")
    assert.is_false(res.ok)
    assert.matches('assignment to undeclared global "leaked"', res.error.message)
    res = t.run(dir .. "/unstorable.lua")
    assert.is_false(res.ok)
    assert.matches("the handler's result cannot be stored", res.error.message)
    res = t.run(dir .. "/nested.lua")
    assert.is_true(res.ok)
    assert.same({ 1, 2 }, res.output)
  end)

  it("gives a flow step ctx.flow and a run's state, and returns its writes", function()
    local res = t.run(dir .. "/pay/finish.lua", {
      data = { amount = 5 }, run_id = "r-1", state = { customer = "ada", amount = 5 } })
    assert.is_true(res.ok, res.error and res.error.message)
    assert.same({ run = "r-1", flow = "pay", step = "finish" }, res.output)
    assert.same({ { stream = "flow:pay:r-1", type = "pay.done", data = { customer = "ada", amount = 5 } } },
      res.emitted)
    assert.same({ customer = moonq.null, paid = true }, res.state)
    -- the seeded state is there; the step's writes are not stored
    local rows = t.sql("SELECT key, value FROM @.queue_flow_state WHERE run_id = 'r-1' ORDER BY key")
    assert.same({ { key = "amount", value = 5 }, { key = "customer", value = "ada" } }, rows)
    -- without a run id a step gets one
    res = t.run(dir .. "/pay/start.lua", { data = { amount = 9 } })
    assert.is_true(res.ok)
    assert.is_string(res.job.run_id)
    assert.equal("flow:pay:" .. res.job.run_id, res.emitted[1].stream)
    assert.same({ amount = 9 }, res.state)
  end)

  it("t.run_flow runs a flow to its end and returns the run with its history", function()
    local run, history = t.run_flow("pay", { amount = 3 })
    assert.equal("completed", run.status)
    assert.equal(2, #run.steps)
    assert.equal(history, run.history)
    local types = {}
    for i, e in ipairs(history) do types[i] = e.type end
    assert.same({ "flow.started", "step.started", "pay.ready", "step.completed",
                  "step.started", "pay.done", "step.completed", "flow.completed" }, types)
    -- the run's state was stored by its steps
    assert.same({ { key = "amount", value = 3 }, { key = "paid", value = true } },
      t.sql("SELECT key, value FROM @.queue_flow_state WHERE run_id = $1 ORDER BY key", run.run_id))
    -- the workers are stopped again: t.run works after a run
    assert.is_true(t.run(dir .. "/charge.lua", { data = { amount = 1 } }).ok)
    local ok, err = pcall(t.run_flow, "nope", {})
    assert.is_false(ok)
    assert.matches('no flow "nope" among the handlers of .* %(flows: pay%)', err)
    run = t.run_flow("pay", { amount = 4 }, { run_id = "mine" })
    assert.equal("mine", run.run_id)
  end)
end)

describe("moonq.testing's schema", function()
  it("t.run raises for a file that does not load or is not a handler of the app", function()
    local dir = handlers_dir({ ["broken.lua"] = "return function(job, ctx) this is not lua end\n" })
    t.open({ handlers = dir })
    finally(t.close)
    local ok, err = pcall(t.run, dir .. "/broken.lua")
    assert.is_false(ok)
    assert.matches("^t%.run: .*broken%.lua:1: syntax error near 'is'$", err)
    ok, err = pcall(t.run, dir .. "/missing.lua")
    assert.matches("no handler file .*missing%.lua", err)
    ok, err = pcall(t.run, "config.lua")
    assert.matches("config%.lua is not a %.lua file in the handlers directory", err)
  end)

  it("t.close drops the private schema; the first t.run opens on config.lua", function()
    local dir = handlers_dir({ ["x.lua"] = "return function() return 1 end\n" })
    local schema = t.open({ handlers = dir })
    assert.matches("^test_", schema)
    assert.is_true(schema_exists(schema))
    assert.equal(1, t.run(dir .. "/x.lua").output)
    t.close()
    assert.is_false(schema_exists(schema))
    assert.is_false(moonq.is_open())
    -- the repository's own config.lua and handlers/, opened by t.run
    local res = t.run("handlers/send-email.lua", { data = { to = "ada@example.com" } })
    assert.same({ sent = true, to = "ada@example.com" }, res.output)
    assert.is_not.equal(schema, t.schema)
    assert.is_true(schema_exists(t.schema))
    -- busted closes it at the end of the file (see tests/cli_test.sh)
  end)
end)
