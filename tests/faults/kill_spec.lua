-- Fault injection: kill -9 of workers, then of the supervisor, in a loop
-- while 3,000 short jobs drain (workers = 2, stale_after = 2). Every job
-- completes exactly once; a job runs again only when it was in flight in a
-- killed worker (those are counted at each kill: the active jobs of the
-- dead process); none is left active once recovery time has passed; the
-- only deaths are the kills; no password in any log.
local F = dofile(os.getenv("MOONQ_SOURCE_DIR") .. "/tests/faults/helper.lua")

local N = 3000

describe("kill -9 during a drain", function()
  local schema, dir
  setup(function()
    schema = F.open({ hot_reload = false })
    dir = F.handlers(0.05, 5)
  end)
  teardown(F.close)

  -- Process ids (uuid text) of the live moonq workers, by os pid.
  local function processes()
    local out = {}
    for line in F.psql(F.url, ("SELECT pid, id FROM %s.process"):format(schema)):gmatch("[^\n]+") do
      local pid, id = line:match("^(%d+)|(.+)$")
      out[tonumber(pid)] = id
    end
    return out
  end

  -- Kills os process pid (process row `id`) with SIGKILL; returns the ids
  -- of the jobs it had in flight (still active for it once it is dead).
  local function kill(pid, id)
    F.signal(pid, "KILL")
    F.poll(function() return not F.alive(pid) end, 5, 0.05)
    F.sleep(0.5) -- its last commits land or abort
    local ids = {}
    if id then
      for x in F.psql(F.url, ("SELECT id FROM %s.job WHERE state = 'active' AND process_id = '%s'")
          :format(schema, id)):gmatch("%d+") do
        ids[#ids + 1] = tonumber(x)
      end
    end
    return ids
  end

  it("completes every job once, re-running only what was in flight", function()
    local settings = { schema = schema, handlers = dir, hot_reload = false, workers = 2,
                       stale_after = 2, shutdown_grace = 2, log = { level = "info" },
                       queue = { poll_interval = 0.5, retry_limit = 5, retry_delay = 0 } }
    local pid = F.run(F.url, settings)
    F.send(F.url, schema, N)
    local in_flight, kills = {}, 0
    for round = 1, 5 do
      F.sleep(1 + math.random())
      local children = F.children(pid)
      if #children > 0 then
        local victim = children[math.random(#children)]
        for _, x in ipairs(kill(victim, processes()[victim])) do in_flight[x] = true end
        kills = kills + 1
      end
      if round == 3 then
        -- the supervisor: its workers stop gracefully (their jobs go back)
        local old = F.children(pid)
        F.signal(pid, "KILL")
        assert.is_truthy(F.poll(function()
          for _, c in ipairs(old) do if F.alive(c) then return false end end
          return true
        end, 20, 0.1), "workers outlived their supervisor")
        pid = F.run(F.url, settings)
      end
    end
    assert.is_truthy(F.drained(F.url, schema, 120), "the queue did not drain")
    local again = F.check_outcome(F.url, schema, "short", N)
    for _, x in ipairs(again) do
      assert.is_true(in_flight[x] ~= nil, ("job %d ran again but was in flight at no kill"):format(x))
    end
    print(("\n%d kills, %d jobs in flight at them, %d ran again"):format(kills, F.count(in_flight), #again))
    F.check_logs(kills)
  end)
end)
