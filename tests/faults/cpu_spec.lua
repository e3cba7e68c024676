-- Fault injection: CPU-bound handlers beside short jobs. Two `moonq run`
-- processes (stale_after = 3, so maintenance looks every 1.5 s) drain
-- 1,500 short jobs while four jobs each hold their process's loop for 6 s
-- (twice stale_after, within their 30 s timeout). No process is declared
-- dead: every job completes exactly once, at its first attempt.
local F = dofile(os.getenv("MOONQ_SOURCE_DIR") .. "/tests/faults/helper.lua")

local N = 1500

describe("CPU-bound handlers beside short jobs", function()
  teardown(F.close)

  it("runs every job once", function()
    local schema = F.open({ hot_reload = false })
    local settings = { schema = schema, handlers = F.handlers(0.02, 10), hot_reload = false,
                       stale_after = 3, log = { level = "info" }, queue = { poll_interval = 0.5 } }
    local pids = F.start(schema, { settings, settings }, 2)
    F.psql(F.url, ("SELECT %s.send('compute', '{\"s\": 6}', '{}') FROM generate_series(1, 4)"):format(schema))
    F.send(F.url, schema, N)
    assert.is_truthy(F.drained(F.url, schema, 150), "the queue did not drain")
    assert.same({}, F.check_outcome(F.url, schema, "short", N), "short jobs that ran twice")
    assert.same({}, F.check_outcome(F.url, schema, "compute", 4), "compute jobs that ran twice")
    local text = F.check_logs(0)
    assert.is_nil(text:find("stopped responding", 1, true))
    for _, pid in ipairs(pids) do F.signal(pid, "TERM") end
  end)
end)
