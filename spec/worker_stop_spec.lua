-- moonq.stop() in a script against the real PostgreSQL: stopping lets
-- running jobs finish within shutdown_grace, gives the rest back to the
-- queue (waiting at once, the attempt not counted), fetches nothing more,
-- and moonq.start() afterwards picks the work up again.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local GRACE = 0.6

describe("worker stop", function()
  setup(function()
    local dir = W.handlers_dir({
      ["nap.lua"] = [[
return { concurrency = 1, handler = function(job, ctx) ctx.sleep(job.data.s) return { slept = job.data.s } end }
]],
    })
    W.open({ handlers = dir, hot_reload = false, shutdown_grace = GRACE, queue = { retry_limit = 0 } })
  end)
  teardown(W.close)

  it("waits for a job that ends within the grace period", function()
    assert(moonq.start())
    local id = assert(Q.send("nap", { s = 0.3 }))
    assert.equal("active", W.wait_job(id, "active", 5).state)
    local t0 = W.now()
    moonq.stop()
    local took = W.now() - t0
    assert.is_true(took < GRACE, ("stop took %.2f s"):format(took))
    -- the result was handed to the queue before stop returned; its
    -- (batched) statement may still be in flight for a moment
    local job
    moonq.run_until(function()
      job = Q.get(id)
      return job.state ~= "active"
    end, 1)
    assert.equal("completed", job.state)
    assert.same({ slept = 0.3 }, job.output)
  end)

  it("gives a longer job back after the grace period; nothing more is fetched", function()
    assert(moonq.start())
    local id = assert(Q.send("nap", { s = 5 }))
    local queued = assert(Q.send("nap", { s = 0 }))
    assert.equal("active", W.wait_job(id, "active", 5).state)
    local t0 = W.now()
    moonq.stop()
    local took = W.now() - t0
    assert.is_true(took >= GRACE - 0.05, ("stop returned after %.2f s, before the grace period"):format(took))
    assert.is_true(took < GRACE + 1, ("stop took %.2f s (grace %.1f s)"):format(took, GRACE))
    -- the release may still be in flight: drive the loop briefly
    local job
    moonq.run_until(function()
      job = Q.get(id)
      return job.state == "waiting"
    end, 2)
    assert.equal("waiting", job.state)
    assert.equal("created", job.stored_state)
    assert.equal(0, job.attempt)
    assert.equal("waiting", Q.get(queued).state)
    -- stopped: running the loop starts nothing
    W.run_for(0.5)
    assert.equal("waiting", Q.get(id).state)
    assert.equal("waiting", Q.get(queued).state)

    -- started again, both run (the long one in full this time)
    assert(moonq.start())
    local q = W.wait_job(queued, nil, 8)
    assert.equal("completed", q.state)
    local j = W.wait_job(id, nil, 8)
    assert.equal("completed", j.state)
    assert.same({ slept = 5 }, j.output)
    assert.equal(1, j.attempt)
  end)
end)
