-- moonq calls that must wait, made where a handler's coroutine cannot yield
-- (a table.sort comparator, a metamethod reached from a C function, a
-- string.gsub callback): the call raises "cannot wait here: ..." instead of
-- running the event loop nested inside the job. The job then fails like any
-- other error (its stored error carries the message; retry_limit 0 here, so
-- it ends failed), other jobs keep running, and the process lives -- also
-- when the job's timeout falls while such a call would have waited (that
-- one used to reset and free the still-running coroutine).
--
-- Still supported: moonq calls inside a coroutine the handler made
-- (coroutine.wrap), inside pcall, and inside a metamethod that Lua code
-- invokes directly (Lua 5.4 can yield there).
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local CANNOT = "cannot wait here"

local HANDLERS = {
  -- ctx.enqueue (sent at once: it waits) in a table.sort comparator
  ["sort_enqueue.lua"] = [[
return function(job, ctx)
  local t = { 3, 1, 2 }
  table.sort(t, function(a, b)
    assert(ctx.enqueue("leaf", { from = "sort_enqueue" }, { now = true }))
    return a < b
  end)
  return t
end
]],
  -- ctx.sleep in an __index metamethod that ipairs (a C function) calls
  ["index_sleep.lua"] = [[
return function(job, ctx)
  local proxy = setmetatable({}, { __index = function(_, i)
    if i <= 3 then ctx.sleep(0.01) return i * 10 end
  end })
  local out = {}
  for _, v in ipairs(proxy) do out[#out + 1] = v end
  return out
end
]],
  -- ctx.sleep in __tostring, called by tostring
  ["tostring_sleep.lua"] = [[
return function(job, ctx)
  local obj = setmetatable({}, { __tostring = function() ctx.sleep(0.01) return "obj" end })
  return tostring(obj)
end
]],
  -- ctx.sleep in __lt, called by table.sort without a comparator
  ["lt_sleep.lua"] = [[
return function(job, ctx)
  local mt = { __lt = function(a, b) ctx.sleep(0.01) return a.v < b.v end }
  local t = {}
  for i, v in ipairs({ 3, 1, 2 }) do t[i] = setmetatable({ v = v }, mt) end
  table.sort(t)
  return { t[1].v, t[2].v, t[3].v }
end
]],
  -- moonq.db.query in a string.gsub callback
  ["gsub_query.lua"] = [[
local moonq = require "moonq"
return function(job, ctx)
  return (("a b c"):gsub("%a", function(c)
    return assert(moonq.db.query("SELECT upper($1::text) AS v", c))[1].v
  end))
end
]],
  -- moonq.queue.get in a string.gsub callback
  ["gsub_get.lua"] = [[
local moonq = require "moonq"
return function(job, ctx)
  return (("x"):gsub("x", function()
    return assert(moonq.queue.get(job.id)).state
  end))
end
]],
  -- still supported: waits inside the handler's own coroutine, inside
  -- pcall, and inside a metamethod Lua code invokes directly
  ["own_coroutine.lua"] = [[
local moonq = require "moonq"
return function(job, ctx)
  local gen = coroutine.wrap(function()
    for i = 1, 3 do
      ctx.sleep(0.01)
      local id = assert(ctx.enqueue("leaf", { from = "own_coroutine", i = i }, { now = true }))
      local rows = assert(moonq.db.query("SELECT $1::int * 10 AS v", i))
      coroutine.yield({ id = id, v = rows[1].v })
    end
  end)
  local ids, vs = {}, {}
  for r in gen do ids[#ids + 1] = r.id; vs[#vs + 1] = r.v end
  local ok, slept = pcall(function() ctx.sleep(0.01) return "slept" end)
  local proxy = setmetatable({}, { __index = function(_, k) ctx.sleep(0.01) return k .. "!" end })
  return { ids = ids, vs = vs, pcall = ok and slept, index = proxy.hi }
end
]],
  ["leaf.lua"] = [[return function(job, ctx) return job.data end]],
  ["quick.lua"] = [[return function(job, ctx) ctx.sleep(0.05) return { n = job.data.n } end]],
}

-- Waits from coroutines moonq cannot pass through: a library's own
-- coroutine.wrap (the standard one, as a required module sees it), and a
-- to-be-closed variable whose __close never finishes after a timeout.
HANDLERS["library_wrap.lua"] = [[
local raw = require("coroutine") -- what a library module sees
return function(job, ctx)
  local out = {}
  for v in raw.wrap(function() for i = 1, 3 do ctx.sleep(0.01) raw.yield(i) end end) do
    out[#out + 1] = v
  end
  return out
end
]]
HANDLERS["close_loops.lua"] = [[
return { timeout = 0.2, handler = function(job, ctx)
  local guard <close> = setmetatable({}, { __close = function() while true do end end })
  while true do end
end }
]]
HANDLERS["close_waits.lua"] = [[
return { timeout = 0.2, handler = function(job, ctx)
  local guard <close> = setmetatable({}, { __close = function() ctx.sleep(5) end })
  ctx.sleep(5)
end }
]]

-- The `moonq run` child's handlers: a wait in a comparator whose job times
-- out (0.2 s) long before the wait (1 s) would end.
local CHILD_HANDLERS = {
  ["sort_sleep.lua"] = [[
return {
  timeout = 0.2,
  handler = function(job, ctx)
    local t = { 3, 1, 2 }
    table.sort(t, function(a, b) ctx.sleep(1) return a < b end)
    return t
  end,
}
]],
  ["quick.lua"] = [[return function(job, ctx) ctx.sleep(0.05) return { n = job.data.n } end]],
}

-- Asserts that job `id` failed with a "cannot wait here" error.
local function assert_cannot_wait(id, what)
  local job = Q.get(id)
  assert.is_table(job, what .. ": job not found")
  assert.equal("failed", job.state, what .. ": state (error: " .. tostring(job.error and job.error.message)
    .. ", output: " .. moonq.json.encode(job.output == nil and moonq.null or job.output) .. ")")
  assert.is_table(job.error, what .. ": no stored error")
  assert.is_string(job.error.message, what .. ": no error message")
  assert.is_truthy(job.error.message:find(CANNOT, 1, true),
    what .. ": stored error is \"" .. job.error.message .. "\"")
  assert.is_nil(job.output)
end

describe("waits where the coroutine cannot yield (in-process workers)", function()
  setup(function()
    W.open({ handlers = W.handlers_dir(HANDLERS), hot_reload = false,
             queue = { retry_limit = 0, retry_delay = 0.1, retry_backoff = false } })
    assert(moonq.start())
  end)
  teardown(W.close)

  -- Sends job `name` with quick siblings around it; waits for all of them;
  -- the siblings must have completed.
  local function run_with_siblings(name)
    local quick = {}
    quick[1] = assert(Q.send("quick", { n = 1 }))
    local id = assert(Q.send(name, {}))
    quick[2] = assert(Q.send("quick", { n = 2 }))
    local ids = { id, quick[1], quick[2] }
    assert.is_true(W.wait_all(ids, 20), name .. ": jobs did not all finish")
    for i, q in ipairs(quick) do
      local job = Q.get(q)
      assert.equal("completed", job.state, name .. ": sibling " .. i)
      assert.same({ n = i }, job.output)
    end
    -- and work sent afterwards still runs
    local later = assert(Q.send("quick", { n = 3 }))
    local job = W.wait_job(later, nil, 20)
    assert.equal("completed", job and job.state, name .. ": a later job")
    return id
  end

  it("ctx.enqueue in a table.sort comparator raises; the job fails, others run", function()
    local id = run_with_siblings("sort_enqueue")
    assert_cannot_wait(id, "sort_enqueue")
  end)

  it("ctx.sleep in an __index metamethod called by ipairs raises", function()
    assert_cannot_wait(run_with_siblings("index_sleep"), "index_sleep")
  end)

  it("ctx.sleep in a __tostring metamethod called by tostring raises", function()
    assert_cannot_wait(run_with_siblings("tostring_sleep"), "tostring_sleep")
  end)

  it("ctx.sleep in an __lt metamethod called by table.sort raises", function()
    assert_cannot_wait(run_with_siblings("lt_sleep"), "lt_sleep")
  end)

  it("moonq.db.query in a string.gsub callback raises", function()
    assert_cannot_wait(run_with_siblings("gsub_query"), "gsub_query")
  end)

  it("moonq.queue.get in a string.gsub callback raises", function()
    assert_cannot_wait(run_with_siblings("gsub_get"), "gsub_get")
  end)

  it("ctx.sleep in a coroutine a library resumes itself raises; the process lives", function()
    assert_cannot_wait(run_with_siblings("library_wrap"), "library_wrap")
  end)

  it("a __close that loops after a timeout is stopped too; others run", function()
    local id = run_with_siblings("close_loops")
    local job = Q.get(id)
    assert.equal("failed", job.state)
    assert.is_truthy(job.error.message:find("timeout", 1, true), job.error.message)
  end)

  it("a __close that waits after a timeout raises instead of running the loop", function()
    local id = run_with_siblings("close_waits")
    local job = Q.get(id)
    assert.equal("failed", job.state)
    assert.is_truthy(job.error.message:find("timeout", 1, true), job.error.message)
  end)

  it("still waits inside the handler's own coroutine, pcall, and a metamethod Lua calls", function()
    local id = run_with_siblings("own_coroutine")
    local job = Q.get(id)
    assert.equal("completed", job.state, "error: " .. tostring(job.error and job.error.message))
    local out = job.output
    assert.same({ 10, 20, 30 }, out.vs)
    assert.equal("slept", out.pcall)
    assert.equal("hi!", out.index)
    assert.equal(3, #out.ids)
    for i, leaf in ipairs(out.ids) do
      local l = W.wait_job(leaf, nil, 20)
      assert.equal("completed", l and l.state)
      assert.same({ from = "own_coroutine", i = i }, l.output)
    end
  end)
end)

describe("a job timing out while waiting where it cannot yield (moonq run)", function()
  local pid, log

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    W.open({ hot_reload = false }) -- sends and inspects only
    local config = W.config_file({
      schema = W.schema, handlers = W.handlers_dir(CHILD_HANDLERS), hot_reload = false,
      queue = { retry_limit = 0, poll_interval = 0.5 }, log = { level = "info" },
    })
    pid, log = W.moonq_run(config)
    local id = assert(Q.send("quick", { n = 0 }))
    local job = W.wait_job(id, nil, 20)
    assert.equal("completed", job and job.state, "moonq run did not start serving:\n" .. (W.read(log) or ""))
  end)
  teardown(W.close)

  it("fails the job with \"cannot wait here\"; other jobs complete; the process lives", function()
    local function log_text() return "\nmoonq run log:\n" .. (W.read(log) or "") end
    local id = assert(Q.send("sort_sleep", {}))
    local sib = assert(Q.send("quick", { n = 1 }))
    local job = W.wait_job(id, nil, 20)
    assert.is_table(job, "job not found" .. log_text())
    assert.equal("failed", job.state, "state" .. log_text())
    local s = W.wait_job(sib, nil, 20)
    -- past the end of the 1 s wait the comparator was in
    W.run_for(1.5)
    assert.is_true(W.alive(pid), "moonq run died" .. log_text())
    -- the sibling sent with it, and one sent afterwards, complete
    assert.equal("completed", s and s.state, "sibling" .. log_text())
    local later = assert(Q.send("quick", { n = 2 }))
    local l = W.wait_job(later, nil, 20)
    assert.equal("completed", l and l.state, "a later job" .. log_text())
    assert.same({ n = 2 }, l.output)
    assert.is_truthy(job.error.message:find(CANNOT, 1, true),
      "stored error is \"" .. tostring(job.error.message) .. "\"" .. log_text())
    assert.is_true(W.alive(pid), "moonq run died" .. log_text())
  end)
end)
