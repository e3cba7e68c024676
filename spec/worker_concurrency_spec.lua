-- Concurrency of Lua workers against the real PostgreSQL: a handler's
-- `concurrency` caps how many of its jobs overlap, jobs that wait
-- (ctx.sleep, moonq.db.query) yield so others run meanwhile, and one
-- queue's sleeping jobs never hold up another queue.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- Returns { s = start, e = end } of its own run, both from the database
-- clock (each query yields the job's coroutine).
local TIMED = [[
local moonq = require "moonq"
local function now()
  return assert(moonq.db.query("SELECT extract(epoch FROM clock_timestamp())::float8 AS t"))[1].t
end
return {
  concurrency = %d,
  handler = function(job, ctx)
    local s = now()
    ctx.sleep(%s)
    return { s = s, e = now() }
  end,
}
]]

-- Largest number of intervals ({s, e}) open at one time.
local function max_overlap(intervals)
  local ev = {}
  for _, iv in ipairs(intervals) do
    ev[#ev + 1] = { iv.s, 1 }
    ev[#ev + 1] = { iv.e, -1 }
  end
  table.sort(ev, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2] -- an end before a start at the same instant
  end)
  local cur, best = 0, 0
  for _, e in ipairs(ev) do
    cur = cur + e[2]
    if cur > best then best = cur end
  end
  return best
end

describe("worker concurrency", function()
  setup(function()
    local dir = W.handlers_dir({
      ["three.lua"] = TIMED:format(3, "0.2"),
      ["hundred.lua"] = TIMED:format(100, "0.5"),
      ["slow_one.lua"] = TIMED:format(1, "1.0"),
      ["fast.lua"] = TIMED:format(1, "0"),
    })
    W.open({ handlers = dir, hot_reload = false, queue = { retry_limit = 0 } })
    assert(moonq.start())
  end)
  teardown(W.close)

  local function outputs(name)
    return W.sql("SELECT id, state::text AS state, output FROM @.job_archive WHERE name = $1 ORDER BY id", name)
  end

  it("concurrency = 3: never more than 3 overlap; 30 jobs of 0.2 s take about 2 s", function()
    local list = {}
    for i = 1, 30 do list[i] = { i = i } end
    local t0 = W.now()
    local ids = assert(Q.send_many("three", list))
    assert.equal(30, #ids)
    assert.is_true(W.wait_all(ids, 10), "30 jobs did not finish within 10 s")
    local wall = W.now() - t0
    local rows = outputs("three")
    assert.equal(30, #rows)
    local intervals, first, last = {}, math.huge, -math.huge
    for i, r in ipairs(rows) do
      assert.equal("completed", r.state)
      intervals[i] = r.output
      assert.is_true(r.output.e - r.output.s >= 0.19, "a job slept less than 0.2 s")
      first, last = math.min(first, r.output.s), math.max(last, r.output.e)
    end
    local overlap = max_overlap(intervals)
    assert.is_true(overlap <= 3, ("%d jobs ran at once (concurrency = 3)"):format(overlap))
    assert.equal(3, overlap, "the three slots were never used together")
    -- 30 jobs x 0.2 s / 3 slots = 2 s at the very least; serial would be 6 s
    assert.is_true(last - first >= 1.9, ("30 jobs ran in %.2f s: more than 3 at once?"):format(last - first))
    assert.is_true(wall < 4, ("30 jobs took %.2f s (expected about 2 s)"):format(wall))
    assert.is_true(wall > 1.8, ("30 jobs took only %.2f s"):format(wall))
  end)

  it("ctx.sleep does not block the loop: 100 jobs sleeping 0.5 s finish in < 2.5 s", function()
    local list = {}
    for i = 1, 100 do list[i] = { i = i } end
    local t0 = W.now()
    local ids = assert(Q.send_many("hundred", list))
    assert.is_true(W.wait_all(ids, 10), "100 jobs did not finish within 10 s")
    local wall = W.now() - t0
    assert.is_true(wall < 2.5, ("100 sleeping jobs took %.2f s"):format(wall))
    local rows = outputs("hundred")
    assert.equal(100, #rows)
    local intervals = {}
    for i, r in ipairs(rows) do
      assert.equal("completed", r.state)
      assert.is_true(r.output.e - r.output.s >= 0.49, "a job slept less than 0.5 s")
      intervals[i] = r.output
    end
    local overlap = max_overlap(intervals)
    assert.is_true(overlap <= 100)
    assert.is_true(overlap >= 50, ("only %d of 100 jobs slept at once"):format(overlap))
  end)

  it("a queue whose one slot sleeps does not hold up another queue", function()
    local slow = assert(Q.send("slow_one", {}))
    -- let the slow job start first
    assert.is_truthy(W.wait_job(slow, "active", 5))
    local t0 = W.now()
    local fast = {}
    for i = 1, 5 do fast[i] = assert(Q.send("fast", { i = i })) end
    assert.is_true(W.wait_all(fast, 5))
    local took = W.now() - t0
    assert.is_true(took < 0.8, ("fast jobs waited %.2f s behind a sleeping queue"):format(took))
    local s = Q.get(slow)
    assert.equal("active", s.state, "the slow job should still be sleeping")
    assert.equal("completed", W.wait_job(slow, nil, 5).state)
  end)
end)
