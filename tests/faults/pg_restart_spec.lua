-- Fault injection: PostgreSQL restarted (fast shutdown, then start) three
-- times while 3,000 short jobs drain through `moonq run`, on a private
-- cluster (<build>/test-pg-faults) so that no other test is disturbed.
-- Every job completes exactly once, at its first attempt (completions cut
-- off by a restart are sent again, claims of a lost fetch given back);
-- none is left active; no crash; no password in the log.
local F = dofile(os.getenv("MOONQ_SOURCE_DIR") .. "/tests/faults/helper.lua")

local N = 3000
local pgdir = assert(os.getenv("MOONQ_BINARY_DIR")) .. "/test-pg-faults"
local pg = F.src .. "/scripts/pg.sh"

local sh = F.sh

describe("PostgreSQL restarts during a drain", function()
  local url, schema = nil, "t_faults_restart"
  setup(function()
    F.open({ hot_reload = false }) -- the helpers' clock and waits
    local out, ok = sh(("%s start %s"):format(F.shq(pg), F.shq(pgdir)))
    assert.is_truthy(ok, "cannot start the cluster: " .. out)
    url = out:match("([^\n]+)\n?$")
    F.psql(url, "DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")
  end)
  teardown(function()
    F.close()
    sh(("%s stop %s"):format(F.shq(pg), F.shq(pgdir)))
  end)

  it("completes every job once", function()
    local pid, log = F.run(url, { schema = schema, handlers = F.handlers(0.02, 10), hot_reload = false,
                                  log = { level = "info" }, queue = { poll_interval = 0.5 } })
    assert.is_truthy(F.poll(function()
      local out = sh(("psql %s -qAtX -c %s"):format(F.shq(url),
        F.shq("SELECT count(*) FROM " .. schema .. ".process")))
      return out:match("^1") ~= nil
    end, 30, 0.2), "moonq run did not start: " .. (F.read(log) or ""))
    F.send(url, schema, N)
    for _ = 1, 3 do
      F.sleep(1 + math.random())
      local out, ok = sh(("%s stop %s && %s start %s"):format(F.shq(pg), F.shq(pgdir), F.shq(pg), F.shq(pgdir)))
      assert.is_truthy(ok, out)
    end
    assert.is_truthy(F.drained(url, schema, 120), "the queue did not drain: " .. (F.read(log) or ""))
    local again = F.check_outcome(url, schema, "short", N)
    assert.same({}, again, "jobs that ran twice")
    local text = F.check_logs(0)
    assert.matches("connection lost", text, 1, true) -- the restarts were seen
    assert.is_true(F.alive(pid))
    F.signal(pid, "TERM")
  end)
end)
