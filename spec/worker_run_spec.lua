-- `moonq run` end to end against the real PostgreSQL: the executable
-- ($MOONQ_BIN) runs a config's handlers for jobs this spec sends; SIGHUP
-- re-reads the handler files (hot_reload = false here, so only the signal
-- does); SIGTERM during slow jobs exits 0 within shutdown_grace + 2 s and
-- gives the unfinished jobs back to the queue (waiting, fetchable at once).
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local GRACE = 1

describe("moonq run", function()
  local dir, pid, log, rc

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    -- this process only sends and inspects jobs: it starts no workers
    W.open({ hot_reload = false })
    dir = W.handlers_dir({
      ["echo.lua"] = [[return function(job, ctx) return { echo = job.data } end]],
      ["slow.lua"] = [[return { concurrency = 5, handler = function(job, ctx) ctx.sleep(3) return "slept" end }]],
      ["hup.lua"] = [[return function(job) return "v1" end]],
    })
    local config = W.config_file({
      schema = W.schema, handlers = dir, hot_reload = false, shutdown_grace = GRACE,
      queue = { retry_limit = 0, poll_interval = 1 }, log = { level = "info" },
    })
    pid, log, rc = W.moonq_run(config)
    -- wait until it serves: a job completes
    local id = assert(Q.send("echo", { ping = true }))
    local job = W.wait_job(id, nil, 15)
    assert.equal("completed", job and job.state, "moonq run did not start serving:\n" .. (W.read(log) or ""))
  end)

  teardown(W.close)

  local function log_text() return W.read(log) or "" end

  it("processes jobs sent with moonq.queue.send", function()
    local list = {}
    for i = 1, 50 do list[i] = { i = i } end
    local ids = assert(Q.send_many("echo", list))
    assert.is_true(W.wait_all(ids, 10), "jobs not processed:\n" .. log_text())
    local rows = W.sql("SELECT id, state::text AS state, output, process_id::text AS process_id FROM @.job_archive "
      .. "WHERE id = ANY($1::bigint[]) ORDER BY id", "{" .. table.concat(ids, ",") .. "}")
    assert.equal(50, #rows)
    for i, r in ipairs(rows) do
      assert.equal("completed", r.state)
      assert.same({ echo = { i = i } }, r.output)
      assert.are_not.equal(Q.process_id(), r.process_id)
    end
    -- the worker registered its own process row
    assert.equal(1, W.row("SELECT count(DISTINCT process_id) AS n FROM @.job_archive WHERE id = ANY($1::bigint[])",
      "{" .. table.concat(ids, ",") .. "}").n)
  end)

  it("SIGHUP re-reads the handler files", function()
    local a = assert(Q.send("hup", {}))
    assert.equal("v1", W.wait_job(a, nil, 5).output)
    W.write(dir .. "/hup.lua", [[return function(job) return "v2 after SIGHUP" end]])
    -- hot_reload is off: the change is not seen by itself
    W.run_for(1.2)
    local b = assert(Q.send("hup", {}))
    assert.equal("v1", W.wait_job(b, nil, 5).output)
    assert.is_truthy(W.signal(pid, "HUP"))
    W.run_for(0.5)
    local c = assert(Q.send("hup", {}))
    assert.equal("v2 after SIGHUP", W.wait_job(c, nil, 5).output, log_text())
    assert.is_true(W.alive(pid), "SIGHUP ended the process")
  end)

  it("SIGTERM during slow jobs: exit 0 within the grace period, unfinished jobs back to waiting", function()
    local list = {}
    for i = 1, 8 do list[i] = { i = i } end
    local ids = assert(Q.send_many("slow", list))
    local active = moonq.run_until(function() return Q.counts("slow").active == 5 end, 5)
    assert.is_true(active, "5 slow jobs did not start")
    W.run_for(0.3)
    assert.same({ waiting = 3, paused = 0, delayed = 0, active = 5, completed = 0, failed = 0, cancelled = 0 },
      Q.counts("slow"))

    local t0 = W.now()
    assert.is_truthy(W.signal(pid, "TERM"))
    local gone = W.poll(function() return not W.alive(pid) end, GRACE + 10, 0.05)
    local took = W.now() - t0
    assert.is_truthy(gone, "moonq run still runs after SIGTERM:\n" .. log_text())
    assert.is_true(took < GRACE + 6, ("moonq run took %.2f s to stop (grace %d s)"):format(took, GRACE))
    assert.is_true(took >= GRACE - 0.2, ("moonq run stopped after %.2f s without waiting for the grace period"):format(took))
    local code = W.poll(rc, 3)
    assert.equal(0, code, "exit status; log:\n" .. log_text())

    -- nothing was completed, nothing is left active: all 8 wait again
    assert.same({ waiting = 8, paused = 0, delayed = 0, active = 0, completed = 0, failed = 0, cancelled = 0 },
      Q.counts("slow"))
    local rows = W.sql("SELECT state::text AS state, process_id, attempt FROM @.job WHERE id = ANY($1::bigint[])",
      "{" .. table.concat(ids, ",") .. "}")
    assert.equal(8, #rows)
    for _, r in ipairs(rows) do
      assert.equal("created", r.state)
      assert.equal(moonq.null, r.process_id)
      assert.equal(0, r.attempt)
    end
    -- fetchable at once, and the interrupted attempt did not count
    local got = assert(Q.fetch("slow", 10))
    assert.equal(8, #got)
    for _, j in ipairs(got) do
      assert.equal(1, j.attempt)
      assert.is_true(Q.complete(j.id, "done here"))
    end
    assert.matches("stopping", log_text(), 1, true)
  end)
end)
