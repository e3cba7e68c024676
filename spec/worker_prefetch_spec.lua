-- Jobs claimed ahead of free slots (queue.prefetch) against the real
-- PostgreSQL. "auto" (the default) claims about 50 ms of work ahead, judged
-- by the queue's recent handler run times: short jobs are fetched in large
-- batches, long ones no more than the slots run; a number is exact.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local function handler(concurrency, seconds)
  return ([[
local moonq = require "moonq"
return {
  concurrency = %d,
  handler = function(job, ctx)
    local s = moonq.now()
    if %s > 0 then ctx.sleep(%s) end
    return { n = job.data.n, s = s }
  end,
}
]]):format(concurrency, seconds, seconds)
end

-- Largest number of jobs of `name` claimed by one fetch (a fetch sets one
-- started_at, its transaction's time, on every job it claims).
local function largest_claim(name)
  return W.row([[SELECT coalesce(max(n), 0) AS n FROM (SELECT count(*) AS n
    FROM @.job_archive WHERE name = $1 GROUP BY started_at) x]], name).n
end

local function send(name, n)
  local list = {}
  for i = 1, n do list[i] = { n = i } end
  return assert(Q.send_many(name, list))
end

local function check_once(name, ids)
  local r = W.row([[SELECT count(*) AS n, count(DISTINCT id) AS d,
      count(*) FILTER (WHERE state = 'completed' AND attempt = 1) AS ok
    FROM @.job_archive WHERE name = $1]], name)
  assert.equal(#ids, r.n)
  assert.equal(#ids, r.d)
  assert.equal(#ids, r.ok)
end

describe("worker prefetch", function()
  setup(function()
    local dir = W.handlers_dir({
      ["quick.lua"] = handler(2, 0),
      ["exact.lua"] = handler(2, 0),
      ["slow.lua"] = handler(2, 1.0),
      ["slow_ahead.lua"] = handler(2, 1.0),
    })
    W.open({ handlers = dir, hot_reload = false, queue = { retry_limit = 0 },
             queues = { exact = { prefetch = 0 }, slow_ahead = { prefetch = 2 } } })
    assert(moonq.start())
  end)
  teardown(W.close)

  it("auto: short jobs are claimed in batches far larger than the slots, each run once", function()
    local ids = send("quick", 3000)
    assert.is_true(W.wait_all(ids, 60), "3,000 short jobs did not finish within 60 s")
    check_once("quick", ids)
    local most = largest_claim("quick")
    assert.is_true(most >= 20, ("the largest fetch claimed %d jobs with 2 slots"):format(most))
  end)

  it("a number is exact: prefetch = 0 claims no more than the free slots", function()
    local ids = send("exact", 300)
    assert.is_true(W.wait_all(ids, 60), "300 jobs did not finish within 60 s")
    check_once("exact", ids)
    assert.is_true(largest_claim("exact") <= 2)
  end)

  -- seconds each job of `name` waited between its claim and its handler
  local function waits(name)
    local rows = W.sql([[SELECT (output->>'s')::float8 - extract(epoch FROM started_at) AS wait
      FROM @.job_archive WHERE name = $1]], name)
    local list = {}
    for i, r in ipairs(rows) do list[i] = r.wait end
    table.sort(list)
    return list
  end

  it("auto: long jobs are not claimed ahead of the slots that run them", function()
    local ids = send("slow", 6)
    assert.is_true(W.wait_all(ids, 60), "6 jobs of 1 s did not finish within 60 s")
    check_once("slow", ids)
    local w = waits("slow")
    assert.equal(6, #w)
    assert.is_true(w[6] < 0.5, ("a job waited %.2f s in the buffer"):format(w[6]))
  end)

  it("a number claims that many ahead even of long jobs", function()
    local ids = send("slow_ahead", 6)
    assert.is_true(W.wait_all(ids, 60), "6 jobs of 1 s did not finish within 60 s")
    check_once("slow_ahead", ids)
    local w = waits("slow_ahead")
    assert.is_true(w[6] >= 0.8, ("the longest wait was %.2f s"):format(w[6]))
  end)
end)
