-- Jobs a worker has claimed ahead of its free slots (queue.prefetch) when
-- a reload takes their queue's last handler away, against the real
-- PostgreSQL: a removed file, or a file that now names another queue. The
-- claimed jobs go back to the queue at once instead of staying active in
-- the process until expire_in: they run when a handler of the queue comes
-- back, or move with the handler to its new queue, each once (attempt 1).
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- A change is live after at most ~0.7 s (see worker_reload_spec.lua).
local SETTLE = 1.2

-- concurrency 1 and a job of 1 s: the rest of a batch waits in the buffer
local function slow(queue, output)
  return string.format([[
return { queue = %q, concurrency = 1,
         handler = function(job, ctx) ctx.sleep(1) return %q end }
]], queue, output)
end

local function fast(queue, output)
  return string.format([[
return { queue = %q, handler = function(job) return %q end }
]], queue, output)
end

-- Jobs of `ids` in state "active".
local function active(ids)
  local n = 0
  for _, id in ipairs(ids) do
    if Q.get(id).state == "active" then n = n + 1 end
  end
  return n
end

-- Sends `n` jobs named `name` (one statement, so that one fetch claims
-- them all) and runs the loop until one runs and the
-- rest are claimed (all active); returns their ids.
local function send_claimed(name, n)
  local list = {}
  for i = 1, n do list[i] = { i = i } end
  local ids = assert(Q.send_many(name, list))
  moonq.run_until(function() return active(ids) == n end, 5)
  assert.equal(n, active(ids), "the batch was not claimed ahead")
  return ids
end

describe("worker reload with claimed jobs", function()
  local dir

  setup(function()
    dir = W.handlers_dir({
      ["held.lua"] = slow("held", "v1"),
      ["moving.lua"] = slow("moving", "old queue"),
    })
    W.open({ handlers = dir, hot_reload = true,
             queue = { retry_limit = 0, expire_in = 600 },
             queues = { held = { prefetch = 10 }, moving = { prefetch = 10 } } })
    assert(moonq.start())
  end)
  teardown(W.close)

  it("a removed file's claimed jobs go back to the queue and run once it is back", function()
    local ids = send_claimed("held", 8)
    os.remove(dir .. "/held.lua")
    W.run_for(SETTLE + 1.5) -- the running job ends (1 s)
    assert.equal(0, active(ids), "claimed jobs stayed active after their handler was removed")
    W.write(dir .. "/held.lua", fast("held", "v2"))
    assert.is_true(W.wait_all(ids, 10), "the jobs did not run after the handler came back")
    local v1 = 0
    for _, id in ipairs(ids) do
      local job = Q.get(id)
      assert.equal("completed", job.state)
      assert.equal(1, job.attempt)
      if job.output == "v1" then v1 = v1 + 1 end
    end
    -- the job running at the removal, and the next if the first ended
    -- before the removal took effect
    assert.is_true(v1 >= 1 and v1 <= 2, v1 .. " jobs ran with the removed code")
  end)

  it("a file that names another queue takes its claimed jobs along", function()
    local ids = send_claimed("moving", 8)
    W.write(dir .. "/moving.lua", fast("moved", "new queue"))
    -- the jobs given back move at the next maintenance pass, which only
    -- `moonq run` makes (every stale_after / 2 s): here the spec makes them
    local list = "{" .. table.concat(ids, ",") .. "}"
    moonq.run_until(function()
      W.sql("SELECT @.move_handler_jobs()")
      return W.row("SELECT count(*) AS n FROM @.job_archive WHERE id = ANY($1::bigint[])",
                   list).n == #ids
    end, 15)
    if not W.wait_all(ids, 1) then
      local states = {}
      for _, id in ipairs(ids) do
        local job = Q.get(id)
        states[#states + 1] = job.queue .. ":" .. job.state .. ":" .. job.attempt
      end
      error("claimed jobs stayed in the old queue's consumer after the handler moved: "
            .. table.concat(states, " "))
    end
    local moved = 0
    for _, id in ipairs(ids) do
      local job = Q.get(id)
      assert.equal("completed", job.state)
      assert.equal(1, job.attempt)
      if job.queue == "moved" then
        moved = moved + 1
        assert.equal("new queue", job.output)
      end
    end
    assert.equal(7, moved, "the jobs claimed ahead did not move to the new queue")
  end)
end)
