-- A step's completion (sql/019_steps_latency.sql): its successors are sent
-- once, by the statement that deletes its job, however often the
-- completion is sent; moonq's processes are told which queues got jobs
-- (complete_jobs_sent) and fetch those they consume themselves, with no
-- wake-up, and wake the others; complete_jobs_with called from SQL wakes
-- them as before.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local Q, F = moonq.queue, moonq.flow

-- Steps of flow "chain" (a -> b -> c) run by this process; "ping" enqueues
-- a "pong", which only the `moonq run` child below consumes.
local HANDLERS = {
  ["chain/a.lua"] = [[
return {
  flow = { name = "chain", step = "a", entry = true, emits = { "a.done" } },
  handler = function(job, ctx) ctx.emit("a.done", { n = 1 }) end,
}
]],
  ["chain/b.lua"] = [[
return {
  flow = { name = "chain", step = "b", subscribes = { "a.done" }, emits = { "b.done" } },
  handler = function(job, ctx) ctx.emit("b.done", { n = job.data.n + 1 }) end,
}
]],
  ["chain/c.lua"] = [[
return {
  concurrency = 1, -- its one free slot is room enough to fetch its job
  flow = { name = "chain", step = "c", subscribes = { "b.done" } },
  handler = function(job, ctx) ctx.state.set("n", job.data.n) end,
}
]],
  ["ping.lua"] = [[
return function(job, ctx) assert(ctx.enqueue("pong", {})) end
]],
}

-- Flow "sqlflow", stored with SQL: no process consumes its queues, so its
-- jobs are fetched and completed by the tests. "go" starts x and y at once.
local SQL_FLOWS = [[
[{"flow": "sqlflow", "steps": [
   {"step": "a", "job": "sqlflow.a", "entry": true, "emits": ["a.done"]},
   {"step": "b", "job": "sqlflow.b", "subscribes": ["a.done"]}]},
 {"flow": "fork", "steps": [
   {"step": "e", "job": "fork.e", "entry": true, "emits": ["go"]},
   {"step": "x", "job": "fork.x", "subscribes": ["go"]},
   {"step": "y", "job": "fork.y", "subscribes": ["go"]}]}]
]]

-- Fetches the one job of `queue` for this process: id, attempt.
local function fetch(queue)
  local r = V.row("SELECT id, attempt FROM @.fetch_jobs($1, 1, $2::uuid)", queue, Q.process_id())
  assert(r, "no job in " .. queue)
  return r.id, r.attempt
end

-- complete_jobs_sent for job `id` at `attempt` with `effects` (JSON text of
-- one job's effects): its rows, {id = ...} or {queue = ..., jobs = ...}.
local function complete_sent(id, attempt, effects)
  local rows = V.sql([[SELECT c.id, c.queue, c.jobs FROM @.complete_jobs_sent(ARRAY[$1]::bigint[],
                         '[null]', $2::uuid, jsonb_build_array($3::jsonb), ARRAY[$4]::integer[]) AS c]],
                     id, Q.process_id(), effects, attempt)
  for _, r in ipairs(rows) do
    for k, v in pairs(r) do if v == moonq.null then r[k] = nil end end
  end
  return rows
end

-- The types of the events of run `rid`, in order.
local function history(rid)
  local out = {}
  for i, r in ipairs(V.sql("SELECT type FROM @.queue_events WHERE run_id = $1 ORDER BY id", rid)) do
    out[i] = r.type
  end
  return out
end

describe("a step's completion", function()
  setup(function()
    V.open({ handlers = V.handlers_dir(HANDLERS), hot_reload = false,
             queue = { retry_limit = 0, poll_interval = 30 } })
    V.sql("SELECT @.store_flows($1::jsonb)", SQL_FLOWS)
    assert(moonq.start())
    assert(moonq.run_until(function()
      return #V.sql("SELECT 1 FROM @.queue_flow_steps WHERE flow_name = 'chain'") == 3
    end, 10), "the flows were not stored")
  end)
  teardown(V.close)

  it("sent again (a lost connection's retry) sends the step's successors once", function()
    local rid = V.row("SELECT @.start_flow('sqlflow', '{}') AS r").r
    local id, attempt = fetch("sqlflow.a")
    local effects = '{"events": [{"type": "a.done", "data": {"k": 7}}]}'
    local rows = complete_sent(id, attempt, effects)
    assert.same({ { id = id }, { queue = "sqlflow.b", jobs = 1 } }, rows)
    assert.same({}, complete_sent(id, attempt, effects)) -- no longer active: nothing
    local sent = V.sql("SELECT name, data FROM @.job WHERE run_id = $1", rid)
    assert.same({ { name = "sqlflow.b", data = { k = 7 } } }, sent)
    assert.same({ "flow.started", "step.started", "a.done", "step.completed" },
                history(rid))
    assert.equal("running", F.get(rid).status)
  end)

  it("of an attempt that is not the job's any more completes and sends nothing", function()
    local rid = V.row("SELECT @.start_flow('sqlflow', '{}') AS r").r
    local id, attempt = fetch("sqlflow.a")
    -- expired and started again meanwhile
    V.sql("UPDATE @.job SET attempt = attempt + 1 WHERE id = $1", id)
    assert.same({}, complete_sent(id, attempt, '{"events": [{"type": "a.done"}]}'))
    assert.equal(0, V.row("SELECT count(*) AS n FROM @.job WHERE run_id = $1 AND name = 'sqlflow.b'",
                          rid).n)
    assert.equal("active", Q.get(id).state)
  end)

  it("ends its run when nothing of the run is left, not before", function()
    local rid = V.row("SELECT @.start_flow('fork', '{}') AS r").r
    local id, attempt = fetch("fork.e")
    assert.same({ { id = id }, { queue = "fork.x", jobs = 1 }, { queue = "fork.y", jobs = 1 } },
                complete_sent(id, attempt, '{"events": [{"type": "go"}]}'))
    id, attempt = fetch("fork.x")
    assert.same({ { id = id } }, complete_sent(id, attempt, '{"state": {"x": 1}}'))
    assert.equal("running", F.get(rid).status)
    id, attempt = fetch("fork.y")
    assert.same({ { id = id } }, complete_sent(id, attempt, '{"state": {"y": 2, "x": null}}'))
    local run = F.get(rid)
    assert.equal("completed", run.status)
    assert.same({ { key = "y", value = 2 } },
                V.sql("SELECT key, value FROM @.queue_flow_state WHERE run_id = $1", rid))
    assert.same({ "flow.started", "step.started", "go", "step.completed",
                  "step.started", "step.completed", "step.started", "step.completed",
                  "flow.completed" }, history(rid))
  end)

  it("wakes the successors' queue when called from SQL, and not through complete_jobs_sent", function()
    local pid = Q.process_id()
    local function step(fn)
      return ([[
SELECT @.start_flow('sqlflow', '{}') \gset
SELECT id AS j, attempt AS t FROM @.fetch_jobs('sqlflow.a', 1, '%s') \gset
SELECT count(*) FROM @.%s(ARRAY[:j]::bigint[], '[null]', '%s',
                          '[{"events": [{"type": "a.done"}]}]', ARRAY[:t]);
]]):format(pid, fn, pid)
    end
    local out, ok = V.psql(([[
LISTEN "%s_wake";
%s
SELECT 'between';
%s
]]):format(V.schema, step("complete_jobs_sent"), step("complete_jobs_with")):gsub("@%.", V.schema .. "."))
    assert(ok, out)
    local before, after = out:match("^(.*)\nbetween\n(.*)$")
    assert(before, out)
    assert.is_nil(before:find('payload "sqlflow.b"', 1, true), out)
    assert.truthy(after:find('payload "sqlflow.b"', 1, true), out)
  end)

  it("is followed by this process fetching the successors at once, with no wake-up", function()
    local rid
    local listened = V.notifications_during(V.schema .. "_wake", 4, function()
      rid = assert(F.start("chain", {}))
      -- queue.poll_interval is 30 s: only a fetch on the completion's
      -- reply (or a wake-up) starts b and c this soon
      assert(moonq.run_until(function() return F.get(rid).status ~= "running" end, 3.5))
    end)
    assert.equal("completed", F.get(rid).status)
    assert.equal(2, V.row("SELECT value FROM @.queue_flow_state WHERE run_id = $1 AND key = 'n'",
                          rid).value)
    assert.is_nil(listened:find('payload "chain.b"', 1, true), listened)
    assert.is_nil(listened:find('payload "chain.c"', 1, true), listened)
  end)

  it("wakes a queue this process does not consume, for the process that does", function()
    local config = V.config_file({ schema = V.schema, handlers = V.handlers_dir({
      ["pong.lua"] = "return function(job) return 'pong' end",
    }), hot_reload = false, queue = { poll_interval = 30 }, log = { level = "info" } })
    local child, log = V.moonq_run(config)
    assert(V.poll(function()
      return V.row("SELECT count(*) AS n FROM @.process WHERE pid = $1", child).n == 1
    end, 20, 0.1), "moonq run did not start: " .. (V.read(log) or ""))
    V.run_for(1) -- its first fetch of pong found nothing: it waits for a wake-up
    local ping = assert(Q.send("ping", {}))
    assert.equal("completed", V.wait_job(ping, nil, 5).state)
    local pong
    assert(moonq.run_until(function()
      pong = V.row("SELECT state FROM @.all_jobs WHERE name = 'pong'")
      return pong and pong.state == "completed"
    end, 8), "pong did not run within 8 s (the poll interval is 30 s): " .. (V.read(log) or ""))
  end)
end)

describe("storing flows", function()
  local flows = require "moonq.flows"
  setup(function() V.open({}) end)
  teardown(V.close)

  local ONE = [[{"flows": [{"flow": "st", "steps": [
    {"step": "a", "job": "st.a", "entry": true, "emits": ["x"]},
    {"step": "b", "job": "st.b", "subscribes": ["x"]}]}], "dropped": []}]]

  it("by two sessions at once: the second waits for the first and both succeed", function()
    local pid = V.bg(('psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -c %s'):format(V.shq(
      "BEGIN; SELECT " .. V.schema .. ".store_flows('" .. ONE:gsub("\n", " ") ..
      "'::jsonb); SELECT pg_sleep(1.5); COMMIT;")))
    assert(V.wait_for(function()
      return V.row("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()").n > 0
    end, 10), "the first session did not start")
    V.sleep(0.2)
    -- without a lock this failed: duplicate key on the steps' primary key
    V.sql("SELECT @.store_flows($1::jsonb)", ONE)
    V.wait_for(function() return not V.alive(pid) end, 10)
    assert.equal(2, V.row("SELECT count(*) AS n FROM @.queue_flow_steps WHERE flow_name = 'st'").n)
  end)

  it("removes the dropped flows, which can then no longer be started", function()
    V.sql("SELECT @.store_flows($1::jsonb)", ONE)
    assert.is_string(V.row("SELECT @.start_flow('st', '{}') AS r").r)
    V.sql([[SELECT @.store_flows('{"flows": [], "dropped": ["st"]}'::jsonb)]])
    assert.equal(0, V.row("SELECT count(*) AS n FROM @.queue_flow_steps WHERE flow_name = 'st'").n)
    local ok, err = pcall(V.row, "SELECT @.start_flow('st', '{}') AS r")
    assert.is_false(ok)
    assert.matches('st', tostring(err))
  end)

  it("to_store names the flows this process stored before and declares no more", function()
    local function has(list, name)
      for _, x in ipairs(list) do if (x.flow or x) == name then return true end end
      return false
    end
    local f = flows.normalise("gone.a", { name = "gone", entry = true }, "gone/a.lua")
    flows.set("gone.a", "gone/a.lua", f)
    local first = flows.to_store()
    assert.is_true(has(first.flows, "gone"))
    assert.is_false(has(first.dropped, "gone"))
    flows.remove("gone.a")
    local second = flows.to_store()
    assert.is_false(has(second.flows, "gone"))
    assert.same({ "gone" }, second.dropped)
    local third = flows.to_store() -- dropped once only
    assert.is_true(third == nil or not has(third.dropped, "gone"))
  end)
end)
