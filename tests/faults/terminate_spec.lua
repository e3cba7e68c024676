-- Fault injection: every backend of a `moonq run` child (workers = 2) is
-- terminated with pg_terminate_backend, six times, while 3,000 short jobs
-- drain. Every job completes exactly once, at its first attempt; none is
-- left active; no crash; no password in the logs.
local F = dofile(os.getenv("MOONQ_SOURCE_DIR") .. "/tests/faults/helper.lua")

local N = 3000

describe("pg_terminate_backend during a drain", function()
  local schema
  setup(function() schema = F.open({ hot_reload = false }) end)
  teardown(F.close)

  it("completes every job once", function()
    local pid = F.start(schema, { { schema = schema, handlers = F.handlers(0.02, 10), hot_reload = false,
                                    workers = 2, log = { level = "info" },
                                    queue = { poll_interval = 0.5 } } }, 2)[1]
    F.send(F.url, schema, N)
    local terminated = 0
    for _ = 1, 6 do
      F.sleep(0.5 + math.random())
      -- every backend of the database that ran a statement of the schema
      -- or LISTENs: the children's pools, listeners and heartbeats (and
      -- this spec's own idle pool, which does not mind)
      local out = F.psql(F.url, ("SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a"
        .. " WHERE a.pid <> pg_backend_pid() AND a.datname = current_database()"
        .. " AND (a.query LIKE '%%%s%%' OR a.query LIKE 'LISTEN%%')"):format(schema))
      terminated = terminated + tonumber(out:match("%d+"))
    end
    assert.is_true(terminated > 0)
    assert.is_truthy(F.drained(F.url, schema, 120), "the queue did not drain")
    local again = F.check_outcome(F.url, schema, "short", N)
    assert.same({}, again, "jobs that ran twice")
    local text = F.check_logs(0)
    assert.matches("connection lost", text, 1, true)
    print(("\n%d backends terminated"):format(terminated))
    F.signal(pid, "TERM")
  end)
end)
