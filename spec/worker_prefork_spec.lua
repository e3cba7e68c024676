-- Prefork (`workers = 2`) end to end against the real PostgreSQL: `moonq run`
-- becomes a supervisor with two worker processes that share the work; a
-- worker killed with SIGKILL is restarted; its in-flight jobs are recovered
-- (stale_after) so every job completes, and only those jobs ran twice;
-- SIGTERM to the supervisor stops everything gracefully with exit status 0.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local N = 2000
local CONCURRENCY = 20
local STALE = 2

describe("moonq run with workers = 2", function()
  local pid, log, rc

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    local schema = W.open({ stale_after = STALE })
    W.sql("CREATE UNLOGGED TABLE @.runs (job_id bigint, pid int, attempt int)")
    -- every run records the worker process's pid (read once per process,
    -- after the fork: the local starts out nil in each child)
    local dir = W.handlers_dir({
      ["tick.lua"] = ([[
local moonq = require "moonq"
local pid
return {
  concurrency = %d,
  handler = function(job, ctx)
    if not pid then
      local f = assert(io.open("/proc/self/stat"))
      pid = f:read("n")
      f:close()
    end
    assert(moonq.db.query("INSERT INTO %s.runs VALUES ($1, $2, $3)", job.id, pid, job.attempt))
    ctx.sleep(0.005)
    return pid
  end,
}
]]):format(CONCURRENCY, schema),
    })
    local config = W.config_file({
      schema = schema, handlers = dir, workers = 2, stale_after = STALE, shutdown_grace = 2,
      hot_reload = false, queue = { retry_limit = 3, retry_delay = 0, retry_backoff = false, poll_interval = 1,
                                    -- no jobs claimed ahead: the killed worker's
                                    -- jobs are then only those it ran
                                    prefetch = 0 },
      log = { level = "info" },
    })
    pid, log, rc = W.moonq_run(config)
  end)

  teardown(W.close)

  local function log_text() return "moonq log:\n" .. (W.read(log) or "") end

  local function completed()
    return W.row("SELECT count(*) AS n FROM @.job_archive WHERE name = 'tick' AND state = 'completed'").n
  end

  it("runs 2 workers; a killed worker is restarted; all jobs complete; SIGTERM exits 0", function()
    -- a supervisor with two worker children
    local kids = W.poll(function()
      local k = W.children(pid)
      return #k == 2 and k
    end, 10, 0.1)
    assert.is_table(kids, "expected 2 worker processes under the supervisor " .. pid
      .. ", found: " .. table.concat(W.children(pid), " ") .. "\n" .. log_text())
    assert.is_true(W.alive(pid))

    local list = {}
    for i = 1, N do list[i] = { i = i } end
    local ids = assert(Q.send_many("tick", list))
    assert.equal(N, #ids)

    -- let ~300 jobs complete, then kill -9 one worker
    local started = W.poll(function() return completed() >= 300 end, 20, 0.01)
    assert.is_truthy(started, "300 jobs did not complete within 20 s\n" .. log_text())
    local victim = kids[1]
    assert.is_truthy(W.signal(victim, "KILL"))
    local killed_at = W.now()
    local done_before_kill = completed()
    assert.is_true(done_before_kill < N, "every job finished before the kill; the test proves nothing")

    -- a new worker replaces it
    local replaced = W.poll(function()
      local k = W.children(pid)
      if #k ~= 2 then return nil end
      for _, c in ipairs(k) do if c == victim then return nil end end
      return k
    end, 10, 0.05)
    assert.is_table(replaced, "the killed worker was not replaced\n" .. log_text())
    assert.is_true(W.alive(kids[2]), "the other worker died too")

    -- every job completes (the killed worker's jobs once stale_after passes)
    local all = W.poll(function()
      Q.maintain()
      return completed() == N
    end, 25, 0.2)
    local took = W.now() - killed_at
    assert.is_truthy(all, ("%d of %d jobs completed\n"):format(completed(), N) .. log_text())
    assert.equal(N, W.row("SELECT count(*) AS n FROM @.job_archive WHERE id = ANY($1::bigint[]) AND state = 'completed'",
      "{" .. table.concat(ids, ",") .. "}").n)
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.job").n)
    assert.is_true(took < STALE + 15, ("recovery took %.1f s"):format(took))

    -- both workers worked, under their own process ids (so one's death is
    -- not hidden by the other's heartbeat)
    local workers = W.sql("SELECT pid, count(*) AS n FROM @.runs GROUP BY pid ORDER BY pid")
    local pids = {}
    for _, r in ipairs(workers) do pids[r.pid] = r.n end
    assert.is_truthy(pids[victim], "the killed worker ran no job")
    assert.is_truthy(pids[kids[2]], "the second worker ran no job")
    assert.is_true(W.row("SELECT count(DISTINCT process_id) AS n FROM @.job_archive").n >= 2)

    -- duplicates: only jobs that were in flight in the killed worker
    local dupes = W.sql([[
      SELECT job_id, count(*) AS runs, bool_or(pid = $1) AS victim_ran
        FROM @.runs GROUP BY job_id HAVING count(*) > 1]], victim)
    for _, d in ipairs(dupes) do
      assert.is_true(d.victim_ran, ("job %d ran %d times without the killed worker"):format(d.job_id, d.runs))
      assert.equal(2, d.runs)
    end
    -- in flight: at most its slots plus completions not yet flushed
    assert.is_true(#dupes <= 2 * CONCURRENCY, ("%d jobs ran twice"):format(#dupes))
    -- every job ran; the retried ones are exactly the killed worker's
    -- recovered jobs (fetched by it: some may not have reached the handler)
    assert.equal(N, W.row("SELECT count(DISTINCT job_id) AS n FROM @.runs").n)
    local retried = W.sql("SELECT id, attempt, error FROM @.job_archive WHERE attempt > 1")
    assert.is_true(#retried >= #dupes)
    assert.is_true(#retried <= 2 * CONCURRENCY, ("%d jobs were retried"):format(#retried))
    for _, r in ipairs(retried) do
      assert.equal(2, r.attempt)
      assert.matches("stopped responding", r.error.message, 1, true)
    end

    -- SIGTERM to the supervisor: everything stops, exit 0
    local current = W.children(pid)
    local t0 = W.now()
    assert.is_truthy(W.signal(pid, "TERM"))
    local gone = W.poll(function() return not W.alive(pid) end, 10, 0.05)
    assert.is_truthy(gone, "the supervisor still runs 10 s after SIGTERM\n" .. log_text())
    assert.is_true(W.now() - t0 < 2 + 8, "stopping took longer than shutdown_grace + 8 s")
    assert.equal(0, W.poll(rc, 3), "exit status\n" .. log_text())
    for _, c in ipairs(current) do
      assert.is_falsy(W.alive(c), "worker " .. c .. " survived the supervisor")
    end
  end)
end)
