-- In-flight writes across a lost connection: a `moonq run` child's
-- completion, failure, release and fetch statements are each held on a
-- lock in the database, and their backend is then terminated
-- (pg_terminate_backend), so the statement's outcome is unknown to moonq.
-- Those safe to run twice are sent again after the reconnect: the job ends
-- completed, failed or waiting, never left active by a live process. A
-- fetch cannot run twice: the jobs it may have claimed are given back. An
-- append, not safe to run twice either, is reported plainly.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

describe("in-flight writes across a lost connection", function()
  local schema, config, pid, log, exit_code

  -- Holds `lock_sql` for `hold` seconds in a background session.
  local function hold_lock(lock_sql, hold)
    W.own(W.bg(("psql \"$DATABASE_URL\" -X -q -v ON_ERROR_STOP=1 -c %s"):format(W.shq(
      ("BEGIN; %s; SELECT pg_sleep(%g); COMMIT;"):format(lock_sql:gsub("@%.", schema .. "."), hold)))))
  end

  -- Terminates the backend that waits on a lock running `fn` of the
  -- schema; true once one was terminated (within 10 s).
  local function terminate_waiting(fn)
    return W.poll(function()
      local r = W.row(("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
        .. " WHERE wait_event_type = 'Lock' AND query LIKE '%%%s%%.%s(%%' AND pid <> pg_backend_pid()")
        :format(schema, fn))
      return r.n > 0
    end, 10, 0.05)
  end

  setup(function()
    local dir = W.handlers_dir({
      ["recon.lua"] = [[
return function(job, ctx)
  ctx.sleep(job.data.sleep or 0)
  if job.data.fail then error("boom") end
  return { ok = true }
end
]],
    })
    schema = W.open({ hot_reload = false, log = { level = "warn" } })
    config = W.config_file({ schema = schema, handlers = dir, hot_reload = false,
                             shutdown_grace = 1, log = { level = "info" },
                             queue = { poll_interval = 0.3, retry_limit = 0 } })
    pid, log, exit_code = W.moonq_run(config)
    assert.is_truthy(W.poll(function()
      return W.row("SELECT count(*) AS n FROM @.process WHERE pid = $1", pid).n == 1
    end, 20, 0.1), "moonq run did not start: " .. (W.read(log) or ""))
  end)
  teardown(W.close)

  -- Runs a job with `data` whose result statement (SQL function `fn`)
  -- waits on the job's row lock and loses its connection; returns the job
  -- once finished (or after 20 s).
  local function result_cut_off(data, fn)
    local id = assert(Q.send("recon", data))
    assert.equal("active", W.wait_job(id, "active", 10).state)
    hold_lock("SELECT 1 FROM @.job WHERE id = " .. id .. " FOR UPDATE", 3)
    assert.is_truthy(terminate_waiting(fn), "no " .. fn .. " waited on the lock: " .. (W.read(log) or ""))
    return W.wait_job(id, nil, 20)
  end

  it("retries a completion whose connection was lost", function()
    local job = result_cut_off({ sleep = 1.5 }, "complete_jobs_guarded")
    assert.equal("completed", job.state, W.read(log))
    assert.same({ ok = true }, job.output)
  end)

  it("retries a failure whose connection was lost", function()
    local job = result_cut_off({ sleep = 1.5, fail = true }, "fail_jobs_at")
    assert.equal("failed", job.state, W.read(log))
    assert.equal(1, job.attempt)
  end)

  it("gives back the jobs a fetch claimed when its reply was lost", function()
    -- A job claimed for the running process by a fetch whose reply never
    -- arrived, as a lost connection leaves it.
    local id = assert(Q.send("recon", {}, { delay = 3600 }))
    W.sql([[UPDATE @.job SET state = 'active', started_at = now(), start_after = now(),
              attempt = 1, process_id = (SELECT id FROM @.process WHERE pid = $2)
            WHERE id = $1]], id, pid)
    hold_lock("LOCK TABLE @.queue IN ACCESS EXCLUSIVE MODE", 3)
    assert.is_truthy(terminate_waiting("fetch_jobs"),
      "no fetch waited on the lock: " .. (W.read(log) or ""))
    local job = W.wait_job(id, nil, 20)
    assert.equal("completed", job.state, W.read(log))
    assert.equal(1, job.attempt) -- the lost claim's attempt did not count
    assert.matches("gave back jobs claimed by a fetch whose reply was lost count=1", W.read(log), 1, true)
  end)

  it("tells an append whose connection was lost that it may or may not be stored", function()
    -- The in-process runtime's append waits on the lock; a background
    -- session terminates it.
    local term = ("sleep 1; psql \"$DATABASE_URL\" -X -q -c %s"):format(W.shq(
      ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        .. " AND query LIKE '%%%s%%.append_events(%%'"):format(schema)))
    hold_lock("LOCK TABLE @.queue_events IN ACCESS EXCLUSIVE MODE", 3)
    W.sleep(0.3)
    W.own(W.bg(term))
    local ev, err = moonq.events.append("recon:1", { type = "t", data = {} })
    assert.is_nil(ev)
    assert.matches("the events may or may not be stored", err, 1, true)
  end)

  it("retries a release whose connection was lost, at a graceful stop", function()
    local id = assert(Q.send("recon", { sleep = 60 }))
    assert.equal("active", W.wait_job(id, "active", 10).state)
    hold_lock("SELECT 1 FROM @.job WHERE id = " .. id .. " FOR UPDATE", 4)
    W.sleep(0.3)
    W.signal(pid, "TERM") -- shutdown_grace = 1, then the job goes back
    assert.is_truthy(terminate_waiting("release_jobs_guarded"),
      "no release waited on the lock: " .. (W.read(log) or ""))
    assert.is_truthy(W.poll(exit_code, 30, 0.1), "moonq run did not exit")
    assert.equal(0, exit_code())
    local job = Q.get(id)
    assert.equal("waiting", job.state, W.read(log))
    assert.equal(0, job.attempt)
  end)
end)
