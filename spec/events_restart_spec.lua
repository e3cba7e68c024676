-- A live subscription and a consumer group member across a PostgreSQL
-- restart: they reconnect, catch up from where they were and miss nothing;
-- the subscription delivers nothing twice, the group nothing beyond a batch
-- whose checkpoint the restart cut off. Runs
-- its own cluster (<build>/test-pg-events-restart), so stopping it disturbs
-- no other test; the subscriber is a child process whose DATABASE_URL
-- names that cluster.
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

local src = assert(os.getenv("MOONQ_SOURCE_DIR"), "MOONQ_SOURCE_DIR is not set")
local bin_dir = assert(os.getenv("MOONQ_BINARY_DIR"), "MOONQ_BINARY_DIR is not set")
local pgdir = bin_dir .. "/test-pg-events-restart"
local pg = src .. "/scripts/pg.sh"

local sh = W.sh

describe("a subscription across a PostgreSQL restart", function()
  local url, out, schema = nil, nil, "t_restart_" .. math.random(1, 1e9)

  local function append(from, to)
    local _, ok = sh(("psql %s -qAtX -v ON_ERROR_STOP=1 -c %s"):format(W.shq(url), W.shq(
      ("SELECT %s.append('r:' || (g %% 3), 'n', jsonb_build_object('g', g)) FROM generate_series(%d, %d) g")
        :format(schema, from, to))))
    assert.is_truthy(ok, "append failed")
  end

  local function delivered(path)
    local ids, dup = {}, 0
    for line in ((W.read(path or out) or "")):gmatch("[^\n]+") do
      local id = tonumber(line)
      if id then
        if ids[id] then dup = dup + 1 end
        ids[id] = true
      end
    end
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    return n, dup, ids
  end

  setup(function()
    W.open({ hot_reload = false }) -- the helpers' clock and waits
    local o, ok = sh(("%s start %s"):format(W.shq(pg), W.shq(pgdir)))
    assert.is_truthy(ok, "cannot start the cluster: " .. o)
    url = o:match("([^\n]+)\n?$")
    out = W.tmpdir() .. "/ids"
    local script = W.script([[
      assert(moonq.open({ schema = schema, log = { level = "warn" } }))
      local f = assert(io.open(out, "w"))
      moonq.events.subscribe("r:*", function(ev) f:write(ev.id, "\n") f:flush() end, { from = "start" })
      local g = assert(io.open(out .. ".group", "w"))
      assert(moonq.events.subscribe_group("r:*", "restart", "m", function(ev)
        g:write(ev.id, "\n") g:flush()
      end, { lease = 2 }))
      moonq.run_until(function() return false end, 120)
    ]], { schema = schema, out = out })
    W.own(W.bg(("DATABASE_URL=%s lua5.4 %s"):format(W.shq(url), W.shq(script)), out .. ".log"))
  end)

  teardown(function()
    W.close()
    sh(("%s stop %s"):format(W.shq(pg), W.shq(pgdir)))
  end)

  it("misses nothing and delivers nothing twice", function()
    -- the child has migrated the schema once its first events arrive
    assert.is_truthy(W.poll(function()
      local _, ok = sh(("psql %s -qAtX -c %s"):format(W.shq(url), W.shq("SELECT 1 FROM " .. schema .. ".queue_events LIMIT 0")))
      return ok
    end, 30, 0.2), "the subscriber did not start: " .. (W.read(out .. ".log") or ""))
    append(1, 300)
    assert.is_truthy(W.poll(function() return delivered() >= 300 and delivered(out .. ".group") >= 300 end, 30, 0.1),
      "before the restart: " .. delivered() .. "\n" .. (W.read(out .. ".log") or ""))

    local o, ok = sh(("%s stop %s"):format(W.shq(pg), W.shq(pgdir)))
    assert.is_truthy(ok, o)
    o, ok = sh(("%s start %s"):format(W.shq(pg), W.shq(pgdir)))
    assert.is_truthy(ok, o)
    append(301, 600)

    assert.is_truthy(W.poll(function() return delivered() >= 600 end, 60, 0.1),
      "after the restart: " .. delivered() .. "\n" .. (W.read(out .. ".log") or ""))
    local n, dup = delivered()
    assert.equal(600, n)
    assert.equal(0, dup)
    assert.is_truthy(W.poll(function() return delivered(out .. ".group") >= 600 end, 60, 0.1),
      "the group after the restart: " .. delivered(out .. ".group") .. "\n" .. (W.read(out .. ".log") or ""))
    n, dup = delivered(out .. ".group")
    assert.equal(600, n)
    assert.is_true(dup <= 100, dup .. " events handled twice by the group")
  end)
end)
