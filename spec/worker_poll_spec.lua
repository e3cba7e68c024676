-- The fallback poll of idle queues against the real PostgreSQL: with 40
-- queues (one per job name), jobs sent with no wake-up (as when a NOTIFY is lost) are found
-- by the poll, the idle queues being checked together in one statement
-- per poll interval; a queue busy with a backlog keeps fetching on its own.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

local QUEUES = 40

describe("the poll of idle queues", function()
  setup(function()
    local files = {}
    for i = 1, QUEUES do
      files[("h%02d.lua"):format(i)] = [[
local moonq = require "moonq"
return function(job)
  assert(moonq.db.query("INSERT INTO " .. job.data.schema .. ".seen VALUES ($1)", job.id))
end]]
    end
    W.open({ handlers = W.handlers_dir(files), queue = { poll_interval = 0.5 } })
    W.sql("CREATE TABLE @.seen (job_id bigint PRIMARY KEY)")
    moonq.start()
  end)

  teardown(function()
    moonq.stop()
    W.close()
  end)

  -- Sends n jobs of job h<i> with SQL on moonq's own pool, whose sessions
  -- set moonq.no_wake (no NOTIFY: the poll must find them); returns their
  -- ids.
  local function send_silently(i, n)
    assert.equal("on", W.row("SELECT current_setting('moonq.no_wake', true) AS v").v)
    local rows = W.sql(([[SELECT @.send('h%02d', jsonb_build_object('schema', $1::text, 'k', g)) AS id
                            FROM generate_series(1, %d) g]]):format(i, n), W.schema)
    local ids = {}
    for _, r in ipairs(rows) do ids[#ids + 1] = r.id end
    return ids
  end

  it("finds jobs sent without a wake-up in idle queues, each once", function()
    W.run_for(1) -- the consumers are idle and their polls have begun
    local ids = {}
    for _, i in ipairs({ 3, 17, 40 }) do
      for _, id in ipairs(send_silently(i, 5)) do ids[#ids + 1] = id end
    end
    assert.equal(15, #ids)
    local done = moonq.run_until(function()
      return W.row("SELECT count(*) AS n FROM @.seen").n >= #ids
    end, 20)
    assert.is_true(done, "only " .. W.row("SELECT count(*) AS n FROM @.seen").n .. " of 15 ran")
    W.wait_all(ids)
    for _, id in ipairs(ids) do
      assert.equal("completed", W.row("SELECT state FROM @.all_jobs WHERE id = $1", id).state)
    end
    assert.equal(15, W.row("SELECT count(DISTINCT job_id) AS n FROM @.seen").n)
  end)
end)
