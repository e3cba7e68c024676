-- Ending a process while its workers are busy leaves the database
-- consistent and the process clean:
--  * a script that starts workers and ends without moonq.close() (the Lua
--    state's __gc frees the runtime, with handlers in the middle of
--    ctx.enqueue(..., {now = true}) calls): exit status 0, no sanitizer
--    report, no job left active, every job such a call returned an id for
--    exists;
--  * `moonq run` getting SIGINT twice in quick succession while jobs run:
--    the second signal does not skip the stop sequence, so it exits 0 and
--    no job of the run is left active (released back to the queue, or
--    completed).
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- Lines a sanitizer or glibc's allocator checks write when memory goes wrong.
local BAD_STDERR = {
  "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
  "double free", "free(): ", "realloc(): ", "malloc(): ", "corrupted", "Segmentation fault",
}

local function assert_clean_stderr(text, what)
  for _, p in ipairs(BAD_STDERR) do
    assert.is_falsy(text:find(p, 1, true), ("%s: stderr has %q:\n%s"):format(what, p, text))
  end
end

-- A list literal for $1::bigint[].
local function id_list(ids)
  return "{" .. table.concat(ids, ",") .. "}"
end

describe("a script that ends without moonq.close()", function()
  local dir

  setup(function()
    W.open({ hot_reload = false }) -- migrates the schema; inspects only
    dir = W.handlers_dir({
      -- sends leaf jobs one after another, reporting each id on stdout
      ["spawner.lua"] = [[
return {
  concurrency = 4,
  handler = function(job, ctx)
    for i = 1, 5000 do
      local id = assert(ctx.enqueue("leaf", { from = job.id, i = i }, { now = true }))
      io.stdout:write("ID ", id, "\n")
      io.stdout:flush()
    end
    return "sent all"
  end,
}
]],
      ["leaf.lua"] = [[
return { concurrency = 8, handler = function(job, ctx) ctx.sleep(2) return job.data.i end }
]],
    })
  end)
  teardown(W.close)

  -- Runs the script to its end (at most `limit` s); returns exit status,
  -- stdout, stderr.
  local function run_script(body, vars, limit)
    local path = W.script(body, vars)
    local d = W.tmpdir()
    local out, err = d .. "/out", d .. "/err"
    local p = assert(io.popen(("timeout -s KILL %d lua5.4 %s >%s 2>%s </dev/null; echo $?")
      :format(limit, W.shq(path), W.shq(out), W.shq(err))))
    local rc = tonumber(p:read("a"):match("%d+"))
    p:close()
    os.remove(path)
    return rc, W.read(out) or "", W.read(err) or ""
  end

  it("exits 0 cleanly; no job left active; every reported id exists", function()
    local rc, out, err = run_script([[
assert(moonq.open({ database = url, schema = schema, handlers = dir, hot_reload = false,
                    shutdown_grace = 0.5, queue = { retry_limit = 0 } }))
assert(moonq.start())
local Q = moonq.queue
io.stdout:write("PROCESS ", Q.process_id(), "\n")
io.stdout:flush()
for i = 1, 4 do assert(Q.send("spawner", { n = i })) end
-- until leaves run and the spawners have sent a good many
assert(moonq.run_until(function()
  local c = Q.counts("leaf")
  return c.active >= 4 and c.waiting >= 20
end, 30), "the workers did not get going")
moonq.run_until(function() return false end, 0.2)
io.stdout:write("END\n")
io.stdout:flush()
-- no moonq.close(): the runtime is freed by the Lua state's __gc at exit,
-- with spawners waiting for their ctx.enqueue and leaves sleeping
]], { url = W.url, schema = W.schema, dir = dir }, 60)
    local what = ("script (exit status %s)"):format(tostring(rc))
    local ctx_text = "\nstderr:\n" .. err
    assert.is_truthy(out:find("END\n", 1, true), what .. " did not reach its end" .. ctx_text)
    assert.equal(0, rc, what .. ctx_text)
    assert_clean_stderr(err, what)

    local process = out:match("PROCESS (%S+)")
    assert.is_string(process)
    local ids = {}
    for id in out:gmatch("ID (%d+)") do ids[#ids + 1] = tonumber(id) end
    assert.is_true(#ids >= 20, "only " .. #ids .. " ids reported")

    -- nothing is left active (neither by that process nor at all)
    local active = W.sql("SELECT id, name, process_id::text AS process_id FROM @.job WHERE state = 'active' ORDER BY id")
    local list = {}
    for _, r in ipairs(active) do list[#list + 1] = ("%d %s"):format(r.id, r.name) end
    assert.equal(0, #active, ("%d job(s) left active: %s"):format(#active, table.concat(list, ", ")) .. ctx_text)
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.job WHERE process_id = $1::uuid", process).n)
    -- every job is completed or waits again
    local states = W.sql([[
      SELECT state::text AS state, count(*) AS n FROM (
        SELECT state FROM @.job UNION ALL SELECT state FROM @.job_archive) s
      GROUP BY state ORDER BY state]])
    for _, r in ipairs(states) do
      assert.is_truthy(r.state == "created" or r.state == "retry" or r.state == "completed",
        ("%d job(s) %s"):format(r.n, r.state))
    end
    -- every id a ctx.enqueue returned exists
    local found = W.row([[
      SELECT count(*) AS n FROM (SELECT id FROM @.job UNION ALL SELECT id FROM @.job_archive) j
      WHERE id = ANY($1::bigint[])]], id_list(ids)).n
    assert.equal(#ids, found, "jobs whose ids ctx.enqueue returned are missing")
  end)
end)

describe("moonq run stopped by two SIGINTs in quick succession", function()
  local pid, log, rc

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    W.open({ hot_reload = false }) -- sends and inspects only
    local dir = W.handlers_dir({
      ["nap.lua"] = [[return { concurrency = 12, handler = function(job, ctx) ctx.sleep(2) return "slept" end }]],
      ["echo.lua"] = [[return function(job, ctx) return job.data end]],
    })
    local config = W.config_file({
      schema = W.schema, handlers = dir, hot_reload = false, shutdown_grace = 0.5,
      queue = { retry_limit = 0, poll_interval = 0.5 }, log = { level = "info" },
    })
    pid, log, rc = W.moonq_run(config)
    local id = assert(Q.send("echo", { ping = true }))
    local job = W.wait_job(id, nil, 20)
    assert.equal("completed", job and job.state, "moonq run did not start serving:\n" .. (W.read(log) or ""))
  end)
  teardown(W.close)

  it("exits 0 and leaves no job active", function()
    local function log_text() return "\nmoonq run log:\n" .. (W.read(log) or "") end
    local list = {}
    for i = 1, 15 do list[i] = { i = i } end
    local ids = assert(Q.send_many("nap", list))
    assert.is_true(moonq.run_until(function() return Q.counts("nap").active == 12 end, 20),
      "12 jobs did not start" .. log_text())

    assert.is_truthy(W.signal(pid, "INT"))
    -- the second once the first has been taken (two signals sent before
    -- the loop sees the first may count as one): its log line says so
    W.poll(function() return (W.read(log) or ""):find("stopping", 1, true) end, 3, 0.01)
    assert.is_truthy(W.signal(pid, "INT"))

    local gone = W.poll(function() return not W.alive(pid) end, 20, 0.05)
    assert.is_truthy(gone, "moonq run still runs after two SIGINTs" .. log_text())
    local code = W.poll(rc, 5)
    assert.equal(0, code, "exit status" .. log_text())
    assert_clean_stderr(W.read(log) or "", "moonq run")

    -- no job of the run is left active: each completed or waits again
    local rows = W.sql([[
      SELECT id, state::text AS state, process_id::text AS process_id FROM @.job WHERE id = ANY($1::bigint[])
      UNION ALL
      SELECT id, state::text, process_id::text FROM @.job_archive WHERE id = ANY($1::bigint[])
      ORDER BY id]], id_list(ids))
    assert.equal(15, #rows)
    local bad = {}
    for _, r in ipairs(rows) do
      if r.state == "created" or r.state == "retry" then
        if r.process_id ~= moonq.null then bad[#bad + 1] = ("%d %s owned by %s"):format(r.id, r.state, r.process_id) end
      elseif r.state ~= "completed" then
        bad[#bad + 1] = ("%d %s"):format(r.id, r.state)
      end
    end
    assert.equal(0, #bad, ("%d job(s) not released or completed: %s"):format(#bad, table.concat(bad, ", ")) .. log_text())
    local c = Q.counts("nap")
    assert.equal(0, c.active)
    assert.equal(15, c.waiting + c.completed)
  end)
end)

describe("moonq run with workers = 2 and a terminal's Ctrl-C", function()
  local pid, log, rc

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    W.open({ hot_reload = false }) -- sends and inspects only
    local dir = W.handlers_dir({
      ["doze.lua"] = [[return { concurrency = 4, handler = function(job, ctx) ctx.sleep(1.5) return "slept" end }]],
    })
    local config = W.config_file({
      schema = W.schema, handlers = dir, hot_reload = false, workers = 2,
      shutdown_grace = 20, queue = { retry_limit = 0, poll_interval = 0.5 },
      log = { level = "info" },
    })
    pid, log, rc = W.moonq_run(config)
  end)
  teardown(W.close)

  -- Ctrl-C reaches the supervisor and both workers at once; the supervisor
  -- then forwards SIGTERM. That is one stop, not two: running jobs get the
  -- grace period and finish.
  it("gives running jobs the grace period", function()
    local function log_text() return "\nmoonq run log:\n" .. (W.read(log) or "") end
    local list = {}
    for i = 1, 6 do list[i] = { i = i } end
    assert(Q.send_many("doze", list))
    assert.is_true(moonq.run_until(function() return Q.counts("doze").active >= 2 end, 30),
      "no job started" .. log_text())
    local group = { pid }
    for _, c in ipairs(W.children(pid)) do group[#group + 1] = c end
    assert.is_true(#group >= 3, "expected a supervisor and two workers" .. log_text())
    for _, p in ipairs(group) do W.signal(p, "INT") end
    assert.is_truthy(W.poll(function() return not W.alive(pid) end, 40, 0.05),
      "moonq run still runs" .. log_text())
    assert.equal(0, W.poll(rc, 5), "exit status" .. log_text())
    local c = Q.counts("doze")
    assert.equal(0, c.active)
    -- the jobs that were running finished instead of going back
    assert.is_true(c.completed >= 2, ("completed %d"):format(c.completed) .. log_text())
    assert.is_nil((W.read(log) or ""):find("not waiting for running jobs", 1, true), log_text())
  end)
end)
