-- bench/flows/bench.lua -- the flow benchmark of bench/bench_flows.sh: a
-- 3-step no-op flow (a -> b -> c) run by this process's workers.
--   lua5.4 bench/flows/bench.lua SCHEMA HANDLERS_DIR RUNS
-- Prints "name value" lines: step-to-step latency (the emitting step's
-- completion to its successor's start, both on PostgreSQL's clock) with
-- one run at a time into idle workers (this process waits without
-- querying while a run goes on), then runs/s for RUNS runs started
-- in one transaction.
local moonq = require "moonq"
local schema, dir, runs = arg[1], arg[2], tonumber(arg[3] or "2000")
assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema, handlers = dir,
                    hot_reload = false, log = { level = "warn" },
                    queue = { concurrency = 50 } }))
assert(moonq.start())
local function q(sql, ...) return assert(moonq.db.query((sql:gsub("@%.", schema .. ".")), ...)) end
assert(moonq.run_until(function()
  return #q("SELECT 1 FROM @.queue_flow_steps WHERE flow_name = 'bench'") == 3
end, 10), "the flow was not stored")

local function pct(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

-- latency: 200 runs one after the other, into idle workers
local lat = {}
for _ = 1, 200 do
  local id = assert(moonq.flow.start("bench", {}))
  -- the run's three steps take a few ms: let them run with this process
  -- otherwise idle (a poll per loop turn, a query each, would compete with
  -- them for the database), then wait for the end
  moonq.sleep(0.05)
  assert(moonq.run_until(function() return moonq.flow.get(id).status ~= "running" end, 10))
  local rows = q([[SELECT extract(epoch FROM s.ts - c.ts) * 1000 AS ms
                     FROM @.queue_events c JOIN @.queue_events s
                       ON s.stream = c.stream AND s.type = 'step.started'
                      AND s.step_name = CASE c.step_name WHEN 'a' THEN 'b' WHEN 'b' THEN 'c' END
                    WHERE c.stream = 'flow:bench:' || $1 AND c.type = 'step.completed'
                      AND c.step_name IN ('a', 'b')]], id)
  for _, r in ipairs(rows) do lat[#lat + 1] = tonumber(r.ms) end
  moonq.sleep(0.01)
end
print(("step_to_step_ms_p50 %.2f"):format(pct(lat, 0.5)))
print(("step_to_step_ms_p99 %.2f"):format(pct(lat, 0.99)))

-- throughput: RUNS runs started in one transaction
local t0 = q("SELECT extract(epoch FROM clock_timestamp())::float8 AS t")[1].t
q("SELECT @.start_flow('bench', '{}') FROM generate_series(1, $1::integer)", runs)
assert(moonq.run_until(function()
  return q("SELECT count(*) AS n FROM @.queue_flow_index WHERE flow_name = 'bench' AND status = 'running'")[1].n == 0
end, 600), "the runs did not finish")
local t1 = q("SELECT extract(epoch FROM clock_timestamp())::float8 AS t")[1].t
print(("runs_per_s %.0f"):format(runs / (t1 - t0)))
print(("steps_per_s %.0f"):format(3 * runs / (t1 - t0)))
moonq.stop()
moonq.close()
