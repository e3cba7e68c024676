-- Flows against the real PostgreSQL: an order flow (validate -> charge ->
-- ship, or notify on a declined payment) runs end to end; a retried step
-- triggers its successor once; a step failing for good fails the run with
-- the step and the error; runs keep their state apart; a run's stream is
-- its history; cancel stops the pending steps; start from SQL.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local F = moonq.flow

local HANDLERS = {
  ["order/validate.lua"] = [[
return {
  flow = { name = "order", step = "validate", entry = true,
           emits = { "order.validated", "order.invalid" } },
  handler = function(job, ctx)
    ctx.state.set("customer", job.data.customer)
    if (job.data.amount or 0) <= 0 then
      ctx.emit("order.invalid", { reason = "amount" })
      return "invalid"
    end
    ctx.emit("order.validated", { amount = job.data.amount, flaky = job.data.flaky,
                                  explode = job.data.explode })
    return "ok"
  end,
}
]],
  ["order/charge.lua"] = [[
return {
  queue = "billing", -- a step on a queue of its own: its jobs go there
  flow = { name = "order", step = "charge", subscribes = { "order.validated" },
           emits = { "order.charged", "payment.declined" } },
  retry = { limit = 1, delay = 0 },
  handler = function(job, ctx)
    ctx.emit("charge.attempted", { attempt = job.attempt })
    if job.data.flaky and job.attempt == 1 then error("card network hiccup") end
    if job.data.explode then error("charge exploded") end
    if job.data.amount > 1000 then
      ctx.emit("payment.declined", { amount = job.data.amount })
    else
      ctx.state.set("charged", job.data.amount)
      ctx.emit("order.charged", { amount = job.data.amount })
    end
  end,
}
]],
  ["order/ship.lua"] = [[
return {
  flow = { name = "order", step = "ship", subscribes = { "order.charged" },
           emits = { "order.shipped" } },
  handler = function(job, ctx)
    ctx.emit("order.shipped", { to = ctx.state.get("customer"), charged = ctx.state.get("charged"),
                                run = ctx.flow.run_id, flow = ctx.flow.name, step = ctx.flow.step })
  end,
}
]],
  ["order/notify.lua"] = [[
return {
  flow = { name = "order", step = "notify", subscribes = { "payment.declined" } },
  handler = function(job, ctx) ctx.state.del("customer") end,
}
]],
  ["slow/begin.lua"] = [[
return {
  flow = { name = "slow", step = "begin", entry = true, emits = { "slow.next" } },
  handler = function(job, ctx) ctx.emit("slow.next", {}) end,
}
]],
  ["poll/p.lua"] = [[
return {
  flow = { name = "poll", step = "p", entry = true },
  handler = function(job, ctx)
    ctx.sleep(0.3)
    ctx.state.set("n", (job.data.n or 0) + 1)
    if (job.data.n or 0) < 15 then assert(ctx.enqueue("poll.p", { n = (job.data.n or 0) + 1 })) end
  end,
}
]],
  ["slow/later.lua"] = [[
return {
  flow = { name = "slow", step = "later", subscribes = { "slow.next" } },
  handler = function(job, ctx) end,
}
]],
}

-- Waits until run `id` is no longer running; returns it.
local function wait_run(id, timeout)
  local run
  moonq.run_until(function()
    run = assert(F.get(id))
    return run.status ~= "running"
  end, timeout or 20)
  return run
end

-- The types of the run's stream, in order.
local function history(run)
  local out = {}
  for i, e in ipairs(assert(moonq.events.query("flow:" .. run.flow .. ":" .. run.run_id))) do
    out[i] = e.type
  end
  return out
end

local function steps_named(run, step)
  local n = 0
  for _, s in ipairs(run.steps) do if s.step == step then n = n + 1 end end
  return n
end

describe("flows", function()
  setup(function()
    -- billing keeps no finished job (retention 0): its steps are archived
    -- all the same, since their archive rows end the runs
    W.open({ handlers = W.handlers_dir(HANDLERS), hot_reload = false, queue = { retry_limit = 0 },
             queues = { billing = { retention = 0 } } })
    assert(moonq.start())
    -- the worker stores the flows' steps as it starts
    assert(moonq.run_until(function()
      return #W.sql("SELECT 1 FROM @.queue_flow_steps WHERE flow_name = 'order'") == 4
    end, 10), "the flows were not stored")
  end)
  teardown(W.close)

  it("runs validate -> charge -> ship to completion, with the run's state and history", function()
    local id = assert(F.start("order", { amount = 40, customer = "ada" }))
    local run = wait_run(id)
    assert.equal("completed", run.status)
    assert.equal("order", run.flow)
    assert.is_string(run.completed_at)
    assert.same({ "validate", "charge", "ship" }, (function()
      local s = {}
      for i, step in ipairs(run.steps) do s[i] = step.step end
      return s
    end)())
    for _, step in ipairs(run.steps) do assert.equal("completed", step.state) end
    assert.equal("billing", assert(moonq.queue.get(run.steps[2].id)).queue)
    assert.equal(0, W.row("SELECT retention FROM @.job_archive WHERE id = $1", run.steps[2].id).retention)
    assert.same({ "flow.started",
                  "step.started", "order.validated", "step.completed",
                  "step.started", "charge.attempted", "order.charged", "step.completed",
                  "step.started", "order.shipped", "step.completed",
                  "flow.completed" }, history(run))
    local shipped = assert(moonq.events.query("flow:order:" .. id, { types = { "order.shipped" } }))[1]
    assert.same({ to = "ada", charged = 40, run = id, flow = "order", step = "ship" }, shipped.data)
    assert.equal("ship", shipped.step_name)
    assert.equal("order", shipped.flow_name)
    assert.equal(id, shipped.run_id)
  end)

  it("a step's job sent outside a run fails saying it has no run", function()
    local id = assert(moonq.queue.send("order.notify", {}))
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.matches('step "notify" of flow "order" has no run', job.error.message, 1, true)
  end)

  it("refuses a flow name over 200 bytes naming the limit, without echoing it", function()
    local id, err = F.start(string.rep("x", 300), {})
    assert.is_nil(id)
    assert.matches("flow name is 300 bytes, the limit is 200", err, 1, true)
    assert.is_true(#err < 300, err)
  end)

  it("lists runs refusing a status or limit it does not know, naming it", function()
    local rows, err = F.list("order", { status = "bogus" })
    assert.is_nil(rows)
    assert.matches('status must be running, completed, failed or cancelled, got "bogus"', err, 1, true)
    rows, err = F.list("order", { limit = -1 })
    assert.is_nil(rows)
    assert.matches("limit must be an integer from 1 to 10000, got -1", err, 1, true)
    assert.is_table(F.list("order", { status = "completed", limit = 1 }))
  end)

  it("takes the other branch on a declined payment", function()
    local run = wait_run(assert(F.start("order", { amount = 5000, customer = "bob" })))
    assert.equal("completed", run.status)
    assert.equal(1, steps_named(run, "notify"))
    assert.equal(0, steps_named(run, "ship"))
    assert.equal(0, #W.sql("SELECT 1 FROM @.queue_flow_state WHERE run_id = $1 AND key = 'customer'", run.run_id))
  end)

  it("a retried step triggers its successor once", function()
    local run = wait_run(assert(F.start("order", { amount = 10, flaky = true })))
    assert.equal("completed", run.status)
    assert.equal(1, steps_named(run, "charge"))
    assert.equal(1, steps_named(run, "ship"))
    local charge
    for _, s in ipairs(run.steps) do if s.step == "charge" then charge = s end end
    assert.equal(2, charge.attempt)
    -- the failed attempt's events are not stored; the retry is on the stream
    local h = history(run)
    local attempted, retrying = 0, 0
    for _, t in ipairs(h) do
      if t == "charge.attempted" then attempted = attempted + 1 end
      if t == "step.retrying" then retrying = retrying + 1 end
    end
    assert.equal(1, attempted)
    assert.equal(1, retrying)
  end)

  it("a step failing for good fails the run with the step and its error", function()
    local run = wait_run(assert(F.start("order", { amount = 10, explode = true })))
    assert.equal("failed", run.status)
    assert.equal("charge", run.failed_step)
    assert.matches("charge exploded", run.error.message)
    assert.equal(0, steps_named(run, "ship"))
    local h = history(run)
    assert.equal("flow.failed", h[#h])
  end)

  it("two runs at once keep their state apart", function()
    local a = assert(F.start("order", { amount = 1, customer = "a" }))
    local b = assert(F.start("order", { amount = 2, customer = "b" }))
    wait_run(a)
    wait_run(b)
    local function shipped(id)
      return assert(moonq.events.query("flow:order:" .. id, { types = { "order.shipped" } }))[1].data
    end
    assert.same({ "a", 1 }, { shipped(a).to, shipped(a).charged })
    assert.same({ "b", 2 }, { shipped(b).to, shipped(b).charged })
  end)

  it("starts from SQL in the caller's transaction, and not when it rolls back", function()
    local out, ok = W.psql(("BEGIN; SELECT %s.start_flow('order', '{\"amount\": 3}', '{\"run_id\": \"sql-rolled\"}'); ROLLBACK;")
      :format(W.schema))
    assert(ok, out)
    assert.is_nil(F.get("sql-rolled"))
    out, ok = W.psql(("SELECT %s.start_flow('order', '{\"amount\": 3}', '{\"run_id\": \"sql-1\"}');")
      :format(W.schema))
    assert(ok, out)
    assert.equal("completed", wait_run("sql-1").status)
    local again, err = F.start("order", {}, { run_id = "sql-1" })
    assert.is_nil(again)
    assert.matches('a run "sql%-1" exists already', err)
    local none, err2 = F.start("nope", {})
    assert.is_nil(none)
    assert.matches('unknown flow "nope"', err2)
  end)

  it("does not start a run whose entry job a taken singleton_key keeps from being created", function()
    -- the first run's entry job waits (delayed) and holds the key
    assert(F.start("order", { amount = 1 }, { run_id = "single-a", singleton_key = "k1", delay = 100 }))
    local none, err = F.start("order", { amount = 2 }, { run_id = "single-b", singleton_key = "k1" })
    assert.is_nil(none)
    assert.matches('the singleton_key is taken: run "single%-b" was not started', err)
    assert.is_nil(F.get("single-b"))
    assert.equal(0, W.row("SELECT count(*)::int AS n FROM @.queue_events WHERE run_id = 'single-b'").n)
    assert.equal(0, W.row("SELECT count(*)::int AS n FROM @.job WHERE run_id = 'single-b'").n)
    assert.equal("running", F.get("single-a").status)
  end)

  it("sending the entry job directly starts a run", function()
    local id = assert(moonq.queue.send("order.validate", { amount = 7, customer = "cy" }))
    local job = W.wait_job(id)
    assert.is_string(job.run_id)
    local run = wait_run(job.run_id)
    assert.equal("completed", run.status)
    assert.equal(3, #run.steps)
    assert.same({ amount = 7, customer = "cy" }, run.data)
    -- with a run id of its own it is a step of that run, not a new run
    local other = assert(moonq.queue.send("order.validate", { amount = 1 }, { run_id = "not-a-run" }))
    assert.equal("completed", W.wait_job(other).state)
    assert.is_nil(F.get("not-a-run"))
  end)

  it("a step running when its run is cancelled sends and writes nothing", function()
    local id = assert(F.start("poll", {}, { run_id = "poll-1" }))
    assert.is_truthy(moonq.run_until(function() return #assert(F.get(id)).steps >= 2 end, 10))
    assert.is_true(F.cancel(id))
    moonq.run_until(function() return false end, 1.5)
    local n = #assert(F.get(id)).steps
    moonq.run_until(function() return false end, 1)
    local run = assert(F.get(id))
    assert.equal("cancelled", run.status)
    assert.equal(n, #run.steps, "steps went on after the cancel")
    assert.is_true(n <= 3)
    local rows = W.sql("SELECT value FROM @.queue_flow_state WHERE run_id = $1 AND key = 'n'", id)
    assert.is_true(#rows == 0 or rows[1].value < n, "state written after the cancel")
  end)

  it("cancel stops the pending steps", function()
    local id = assert(F.start("slow", {}, { delay = 60 }))
    assert.is_true(F.cancel(id))
    local run = assert(F.get(id))
    assert.equal("cancelled", run.status)
    assert.equal(1, #run.steps)
    assert.equal("cancelled", run.steps[1].state)
    assert.is_false(F.cancel(id))
    local h = history(run)
    assert.equal("flow.cancelled", h[#h])
    assert.equal(1, #assert(F.list("slow", { status = "cancelled" })))
  end)
end)

describe("flow graphs", function()
  local flows = require "moonq.flows"
  local function step(job, file, flow)
    local f = flows.normalise(job, flow, file)
    local errors, warnings = flows.check(job, file, f)
    if #errors == 0 then flows.set(job, file, f) end
    return errors, warnings
  end
  after_each(function()
    for _, j in ipairs({ "g.a", "g.b", "g.c", "g.d", "h.e", "h.up", "h.l1", "h.l2" }) do flows.remove(j) end
  end)

  it("reports two entry steps, no entry, dangling subscriptions and cycles, naming files", function()
    local e, w = step("g.a", "g/a.lua", { name = "g", entry = true, emits = { "x" } })
    assert.same({}, e)
    e = step("g.b", "g/b.lua", { name = "g", entry = true })
    assert.same({ 'flow "g": two entry steps (g/a.lua, g/b.lua)' }, e)
    e, w = step("g.c", "g/c.lua", { name = "g", subscribes = { "nobody" } })
    assert.same({}, e)
    assert.same({ 'flow "g": g/c.lua subscribes to "nobody", which no step emits' }, w)
    e, w = step("g.d", "g/d.lua", { name = "g", subscribes = { "x" }, emits = { "x" } })
    assert.same({}, e)
    -- a.lua leads into d's cycle but is not on it: only d is named
    assert.same({ 'flow "g": g/c.lua subscribes to "nobody", which no step emits',
                  'flow "g": g/d.lua is in a cycle with no way out' }, w)
  end)

  it("names only the steps on a cycle with no way out, not those leading into it", function()
    step("h.e", "h/e.lua", { name = "h", entry = true, emits = { "go" } })
    step("h.up", "h/up.lua", { name = "h", subscribes = { "go" }, emits = { "loop" } })
    step("h.l1", "h/l1.lua", { name = "h", subscribes = { "loop", "l2.done" }, emits = { "l1.done" } })
    local e, w = step("h.l2", "h/l2.lua", { name = "h", subscribes = { "l1.done" }, emits = { "l2.done" } })
    assert.same({}, e)
    assert.same({ 'flow "h": h/l1.lua is in a cycle with no way out',
                  'flow "h": h/l2.lua is in a cycle with no way out' }, w)
    -- a way out (l2 also emits a final event) ends the warning
    e, w = step("h.l2", "h/l2.lua", { name = "h", subscribes = { "l1.done" }, emits = { "l2.done", "h.end" } })
    assert.same({}, w)
  end)

  it("a whole flow loaded file by file has no warnings once all of it is in", function()
    -- the successor first: checked alone, it would warn
    local _, w = step("g.b", "g/b.lua", { name = "g", subscribes = { "x" } })
    assert.is_true(#w > 0)
    step("g.a", "g/a.lua", { name = "g", entry = true, emits = { "x" } })
    local all = flows.warnings()
    for _, m in ipairs(all) do assert.is_nil(m:find('flow "g"', 1, true), m) end
  end)

  it("refuses a malformed flow table naming the file and the key", function()
    assert.has_error(function() flows.normalise("g.a", { name = "" }, "g/a.lua") end,
      "g/a.lua: flow.name must be 1 to 200 bytes without ':' or '*'")
    assert.has_error(function() flows.normalise("g.a", { name = "g", emit = {} }, "g/a.lua") end,
      'g/a.lua: flow: unknown key "emit" (known: name, step, entry, subscribes, emits)')
    assert.has_error(function() flows.normalise("g.a", { name = "g", subscribes = { 1 } }, "g/a.lua") end,
      "g/a.lua: flow.subscribes[1] must be an event type (1 to 200 bytes)")
  end)
end)
