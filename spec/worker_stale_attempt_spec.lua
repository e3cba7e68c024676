-- An attempt that runs past its expiry while the job is started again:
-- its completion (or failure) is not the new attempt's. The job ends with
-- what the attempt running it at the time returned.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local HANDLERS = {
  ["slow_first.lua"] = [[
local moonq = require "moonq"
return {
  concurrency = 2, timeout = 30,
  handler = function(job, ctx)
    if job.attempt == 1 then
      moonq.sleep(job.data.first)      -- expires meanwhile; attempt 2 starts
      if job.data.fail then error("attempt 1 fails late") end
      return { attempt = 1 }
    end
    moonq.sleep(job.data.second)
    return { attempt = job.attempt }
  end,
}
]],
}

describe("a stale attempt", function()
  setup(function()
    W.open({ handlers = W.handlers_dir(HANDLERS), hot_reload = false })
    assert(moonq.start())
  end)
  teardown(W.close)

  for _, fail in ipairs({ false, true }) do
    it(("does not %s the attempt that runs the job now"):format(fail and "fail" or "complete"), function()
      local id = assert(Q.send("slow_first", { first = 2, second = 3, fail = fail },
        { expire_in = 0.5, retry_limit = 1, retry_delay = 0 }))
      -- attempt 1 is active; past its expiry, maintenance gives the job a retry
      assert.is_truthy(moonq.run_until(function() return Q.get(id).state == "active" end, 10))
      moonq.run_until(function() return false end, 1)
      assert.equal(1, assert(Q.maintain()).expired)
      assert.is_truthy(moonq.run_until(function()
        local j = Q.get(id)
        return j.state == "active" and j.attempt == 2
      end, 10), "attempt 2 did not start")
      -- attempt 1 ends (about 1 s later) while attempt 2 runs: nothing changes
      moonq.run_until(function() return false end, 1.5)
      local j = Q.get(id)
      assert.equal("active", j.state)
      assert.equal(2, j.attempt)
      local done = W.wait_job(id)
      assert.equal("completed", done.state)
      assert.same({ attempt = 2 }, done.output)
    end)
  end
end)
