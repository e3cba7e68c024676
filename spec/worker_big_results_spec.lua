-- Big job results against the real PostgreSQL: outputs (and failures'
-- errors) that end in one loop turn and add up past 1 MiB are stored by
-- several statements of at most 1 MiB each (a larger one goes alone), so
-- no connection's libpq buffer grows to the whole turn's size; every job
-- is stored with its whole output or error.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local N = 6              -- jobs ending in one loop turn
local SIZE = 400 * 1024  -- bytes of each one's output: 2.4 MB together
local HUGE = 1536 * 1024 -- past the 1 MiB a statement carries

local calls = W.statement_calls

-- The n jobs sent, each with its own letter; the worker starts only after
-- all are waiting, so one fetch claims them and they end in one turn.
local function send_all(name, n, size)
  local list = {}
  for i = 1, n do list[i] = { c = string.char(96 + i), bytes = size } end
  return assert(Q.send_many(name, list))
end

describe("big job results", function()
  setup(function()
    local dir = W.handlers_dir({
      ["big.lua"] = [[return function(job) return job.data.c:rep(job.data.bytes) end]],
      ["bad.lua"] = [[return function(job)
  error({ message = "too big", blob = job.data.c:rep(job.data.bytes) })
end]],
    })
    W.open({ handlers = dir, hot_reload = false, queue = { concurrency = 10, retry_limit = 0 } })
  end)
  teardown(W.close)

  it("outputs past 1 MiB in one turn: several statements, every output whole", function()
    local before = calls("complete_jobs_guarded")
    if before == nil then
      pending("pg_stat_statements is not loaded (scripts/pg.sh loads it)")
      return
    end
    local ids = send_all("big", N, SIZE)
    -- and one output larger than a statement's share
    local huge = assert(Q.send("big", { c = "z", bytes = HUGE }))
    assert(moonq.start())
    assert(W.wait_all(ids, 30))
    for i, id in ipairs(ids) do
      local job = Q.get(id)
      assert.equal("completed", job.state)
      assert(job.output == string.char(96 + i):rep(SIZE),
             ("job %d: output of %d bytes, not %d %s"):format(id, #tostring(job.output), SIZE,
                                                          string.char(96 + i)))
    end
    local job = W.wait_job(huge, nil, 30)
    assert.equal("completed", job.state)
    assert(job.output == ("z"):rep(HUGE), "the output larger than 1 MiB is not whole")
    -- at most two 400 KB outputs share a statement: 3 at least for the six,
    -- the huge one alone
    local statements = calls("complete_jobs_guarded") - before
    assert(statements >= 4, ("%d statements stored %d outputs of 2.4 MB and one of 1.5 MB")
      :format(statements, N))
  end)

  it("errors past 1 MiB in one turn: several statements, every error whole", function()
    local before = calls("fail_jobs_at")
    if before == nil then
      pending("pg_stat_statements is not loaded (scripts/pg.sh loads it)")
      return
    end
    moonq.stop()
    local ids = send_all("bad", N, SIZE)
    assert(moonq.start())
    assert(W.wait_all(ids, 30))
    for i, id in ipairs(ids) do
      local job = Q.get(id)
      assert.equal("failed", job.state)
      assert.equal("too big", job.error.message)
      assert(job.error.blob == string.char(96 + i):rep(SIZE),
             ("job %d: error blob of %d bytes, not %d"):format(id, #tostring(job.error.blob), SIZE))
    end
    local statements = calls("fail_jobs_at") - before
    assert(statements >= 3, ("%d statements stored %d errors of 2.4 MB"):format(statements, N))
  end)
end)
