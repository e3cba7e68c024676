-- A schedule firing every second across a PostgreSQL outage longer than
-- the pool waits for a connection (30 s): the fires that failed are not
-- lost. Once the database is back the process starts again from what it
-- holds as fired, and every slot at most 60 s late by then fires, once.
-- Runs its own cluster (<build>/test-pg-schedule-outage), so stopping it
-- disturbs no other test; `moonq run` is a child whose DATABASE_URL
-- names that cluster.
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

local src = assert(os.getenv("MOONQ_SOURCE_DIR"), "MOONQ_SOURCE_DIR is not set")
local bin_dir = assert(os.getenv("MOONQ_BINARY_DIR"), "MOONQ_BINARY_DIR is not set")
local pgdir = bin_dir .. "/test-pg-schedule-outage"
local pg = src .. "/scripts/pg.sh"
local OUTAGE = 40 -- seconds; more than the pool's 30 s wait for a connection

local sh = W.sh

describe("a schedule across a PostgreSQL outage", function()
  local url, schema, log = nil, "t_outage_" .. math.random(1, 1e9), nil

  local function query(sql)
    local out, ok = sh(("psql %s -qAtX -v ON_ERROR_STOP=1 -c %s"):format(W.shq(url), W.shq(sql)))
    return ok and out or nil
  end

  setup(function()
    W.open({ hot_reload = false }) -- the helpers' clock and waits
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    local o, ok = sh(("%s start %s"):format(W.shq(pg), W.shq(pgdir)))
    assert.is_truthy(ok, "cannot start the cluster: " .. o)
    url = o:match("([^\n]+)\n?$")
    local handlers = W.handlers_dir({ ["tick.lua"] = "return function(job) return job.run_id end" })
    local config = W.tmpdir() .. "/config.lua"
    W.write(config, ([[
return {
  schema = %q, handlers = %q, hot_reload = false,
  log = { level = "info" },
  schedules = { { name = "every-second", cron = "* * * * * *", job = "tick" } },
}
]]):format(schema, handlers))
    log = W.tmpdir() .. "/run.log"
    W.own(W.bg(("DATABASE_URL=%s %s --config %s run"):format(W.shq(url), W.shq(W.bin), W.shq(config)), log))
  end)

  teardown(function()
    W.close()
    sh(("%s stop %s"):format(W.shq(pg), W.shq(pgdir)))
  end)

  it("loses no slot that is at most 60 s late when the database is back", function()
    local fired = function()
      return tonumber(query("SELECT count(*) FROM " .. schema .. ".schedule_fire") or "")
    end
    assert.is_truthy(W.poll(function() return (fired() or 0) >= 3 end, 30, 0.2),
      "the schedule did not fire: " .. (W.read(log) or ""))
    local o, ok = sh(("%s stop %s"):format(W.shq(pg), W.shq(pgdir)))
    assert.is_truthy(ok, o)
    local down = os.time()
    while os.time() - down < OUTAGE do os.execute("sleep 1") end
    o, ok = sh(("%s start %s"):format(W.shq(pg), W.shq(pgdir)))
    assert.is_truthy(ok, o)
    local back = os.time()
    -- fires resume and catch up: a slot fired after the restart
    assert.is_truthy(W.poll(function()
      local n = tonumber(query(([[SELECT count(*) FROM %s.schedule_fire
                                   WHERE slot >= to_timestamp(%d)]]):format(schema, back + 3)) or "")
      return n and n >= 1
    end, 90, 0.5), "no fire after the restart:\n" .. (W.read(log) or ""))
    os.execute("sleep 3")
    -- every second from the first fire to the latest has fired, once
    local gaps = query(([[SELECT count(*) FROM generate_series(
                            (SELECT min(slot) FROM %s.schedule_fire),
                            (SELECT max(slot) FROM %s.schedule_fire), interval '1 second') g(t)
                          WHERE NOT EXISTS (SELECT 1 FROM %s.schedule_fire f WHERE f.slot = g.t)]])
      :format(schema, schema, schema))
    local text = W.read(log) or ""
    assert.equal("0", (gaps or ""):match("%d+"), "slots lost across the outage:\n" .. text)
    assert.equal("0", (query(([[SELECT count(*) FROM (SELECT run_id FROM %s.all_jobs
                                GROUP BY run_id HAVING count(*) > 1) d]]):format(schema)) or ""):match("%d+"))
  end)
end)
