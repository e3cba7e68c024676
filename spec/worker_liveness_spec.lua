-- A process's liveness does not depend on its event loop being free: a
-- handler computing for longer than stale_after (within its timeout)
-- keeps its process alive in the database, so none of its jobs runs twice;
-- a process stuck past every timeout (C code that never returns) stops
-- heartbeating and its jobs are recovered; workers stop when their
-- supervisor is killed; a second SIGTERM still gives running jobs back.
-- Maintenance runs in this spec's process (Q.maintain), as another host's
-- would.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

describe("liveness", function()
  local schema, dir

  -- Starts `moonq run` with `settings` over the spec's; waits until its
  -- processes are registered. Returns pid, log, exit status function.
  local function run(settings, nprocesses)
    local s = { schema = schema, handlers = dir, hot_reload = false, log = { level = "info" },
                queue = { poll_interval = 0.5, retry_limit = 2, retry_delay = 0 } }
    for k, v in pairs(settings) do s[k] = v end
    local pid, log, exit_code = W.moonq_run(W.config_file(s))
    assert.is_truthy(W.poll(function()
      return W.row("SELECT count(*) AS n FROM @.process WHERE id <> $1::uuid", Q.process_id()).n
        >= (nprocesses or 1)
    end, 20, 0.1), "moonq run did not start: " .. (W.read(log) or ""))
    return pid, log, exit_code
  end

  -- Calls Q.maintain() every 0.3 s for `s` seconds; returns the jobs
  -- recovered from stopped processes meanwhile.
  local function maintain_for(s)
    local recovered, t0 = 0, W.now()
    while W.now() - t0 < s do
      local r = Q.maintain()
      if r then recovered = recovered + r.recovered end
      W.sleep(0.3)
    end
    return recovered
  end

  -- Stops pid (SIGTERM), waits for its exit and empties the process table
-- (this process's row comes back with its next heartbeat).
  local function stop(pid, exit_code)
    W.signal(pid, "TERM")
    W.poll(exit_code, 30, 0.1)
    W.sql("DELETE FROM @.process")
  end

  setup(function()
    dir = W.handlers_dir({
      ["compute.lua"] = [[
return { timeout = 20, handler = function(job)
  local t0 = os.time()
  while os.time() - t0 < job.data.s do end
  return { computed = job.data.s }
end }
]],
      ["short.lua"] = [[return { concurrency = 10, handler = function(job, ctx) ctx.sleep(0.05) return true end }]],
      ["stuck.lua"] = [[return { timeout = 2, handler = function(job) os.execute("sleep " .. job.data.s) return true end }]],
      ["nap.lua"] = [[return { concurrency = 4, handler = function(job, ctx) ctx.sleep(job.data.s) return true end }]],
    })
    schema = W.open({ hot_reload = false, stale_after = 4 })
  end)
  teardown(W.close)

  it("keeps heartbeating while a handler computes past stale_after", function()
    local pid, log, exit_code = run({ stale_after = 4 })
    local list = {}
    for i = 1, 100 do list[i] = { i = i } end
    local short = assert(Q.send_many("short", list))
    local busy = assert(Q.send("compute", { s = 8 }))
    assert.equal("active", W.wait_job(busy, "active", 10).state)
    assert.equal(0, maintain_for(10), W.read(log))
    local job = W.wait_job(busy, nil, 20)
    assert.equal("completed", job.state, W.read(log))
    assert.equal(1, job.attempt)
    assert.is_true(W.wait_all(short, 30), W.read(log))
    local r = W.row("SELECT count(*) AS n, max(attempt) AS most FROM @.job_archive"
      .. " WHERE name = 'short' AND state = 'completed'")
    assert.equal(100, r.n)
    assert.equal(1, r.most) -- none ran twice
    stop(pid, exit_code)
  end)

  it("stops heartbeating when a handler holds the process past its timeout", function()
    -- os.execute blocks in C, where the timeout's hook cannot stop it
    local pid, log = run({ stale_after = 3 })
    local id = assert(Q.send("stuck", { s = 25 }))
    assert.equal("active", W.wait_job(id, "active", 10).state)
    local t0 = W.now()
    local recovered = 0
    W.poll(function()
      local r = Q.maintain()
      recovered = recovered + (r and r.recovered or 0)
      return recovered > 0
    end, 20, 0.3)
    local took = W.now() - t0
    assert.equal(1, recovered, W.read(log))
    -- timeout 2 s + stale_after 3 s of grace, then stale_after 3 s
    assert.is_true(took >= 7, ("recovered after only %.1f s"):format(took))
    assert.matches("the event loop has not run for", W.read(log), 1, true)
    W.signal(pid, "KILL")
    Q.cancel(id)
    W.sql("DELETE FROM @.process")
  end)

  it("stops the workers when their supervisor is killed", function()
    local pid, log = run({ workers = 2, shutdown_grace = 5 }, 2)
    local children = W.children(pid)
    assert.equal(2, #children)
    local id = assert(Q.send("nap", { s = 60 }))
    assert.equal("active", W.wait_job(id, "active", 10).state)
    W.signal(pid, "KILL")
    assert.is_truthy(W.poll(function()
      return not W.alive(children[1]) and not W.alive(children[2])
    end, 15, 0.1), "workers still run after their supervisor died: " .. (W.read(log) or ""))
    local job = Q.get(id)
    assert.equal("waiting", job.state, W.read(log)) -- given back, not left active
    assert.equal(0, job.attempt)
    Q.cancel(id)
    W.sql("DELETE FROM @.process")
  end)

  for _, workers in ipairs({ 1, 2 }) do
    it(("gives running jobs back on a second SIGTERM (workers = %d)"):format(workers), function()
      local pid, log, exit_code = run({ workers = workers, shutdown_grace = 60 }, workers)
      local a = assert(Q.send("nap", { s = 60 }))
      local b = assert(Q.send("compute", { s = 3 }))
      assert.equal("active", W.wait_job(a, "active", 10).state)
      assert.equal("active", W.wait_job(b, "active", 10).state)
      W.signal(pid, "TERM")
      W.sleep(0.5)
      W.signal(pid, "TERM")
      assert.is_truthy(W.poll(exit_code, 20, 0.1), "moonq run did not exit: " .. (W.read(log) or ""))
      assert.equal(0, exit_code())
      assert.equal("waiting", Q.get(a).state, W.read(log))
      -- the computing job either finished before the second signal was
      -- handled or went back: never left active
      assert.is_true(Q.get(b).state == "waiting" or Q.get(b).state == "completed")
      Q.cancel(a)
      Q.cancel(b)
      W.sql("DELETE FROM @.process")
    end)
  end
end)
