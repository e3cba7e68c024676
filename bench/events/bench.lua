-- bench/events/bench.lua -- the moonq.events part of bench/bench_events.sh.
-- Prints "name value" lines.
--   lua5.4 bench/events/bench.lua SCHEMA [PART...]
-- Parts (default: all, in this order):
--   batch      append_many of 1,000 events, 50 times, one call after the other
--   inflight   append_many of 1,000 events from 2 and 4 jobs at once (each
--              job's calls one after the other), 100 calls in all
--   turn       single appends from 64 jobs at once, 200 each: the appends of
--              a loop turn go as one statement
--   single     single appends one after the other (each waits for its commit)
--   delivery   append -> subscriber, one append every 5 ms
--   sqlwake    SQL appends from 8 pgbench clients (1,000/s in all, 5 s) ->
--              subscriber: how late each arrives (a lost wake-up shows as a
--              delay near the 5-second poll)
-- Times come from luasystem's clock when it is installed (busted brings it),
-- else from the server's clock_timestamp() (a round trip per reading).
local moonq = require "moonq"
local schema = assert(arg[1], "usage: bench.lua SCHEMA [PART...]")
local has_system, system = pcall(require, "system")

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Handlers for the parts that append from several jobs at once.
local handlers = tmpdir()
for _, c in ipairs({ 2, 4 }) do
  write(("%s/bench_many_%d.lua"):format(handlers, c), ([[
local moonq = require "moonq"
local batch = {}
for i = 1, 1000 do batch[i] = { type = "bench.batch", data = { n = i, s = "some text" } } end
return { concurrency = %d, handler = function(job)
  for r = 1, job.data.calls do assert(moonq.events.append_many(job.data.stream, batch)) end
end }
]]):format(c))
end
write(handlers .. "/bench_turn.lua", [[
local moonq = require "moonq"
return { concurrency = 64, handler = function(job)
  for i = 1, job.data.n do
    assert(moonq.events.append(job.data.stream, { type = "bench.turn", data = { n = i } }))
  end
end }
]])

assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema,
                    handlers = handlers, hot_reload = false,
                    log = { level = "warn" } }))
local E = moonq.events

local function server_now() -- wall seconds with sub-ms resolution
  local rows = assert(moonq.db.query("SELECT extract(epoch FROM clock_timestamp())::float8 AS t"))
  return rows[1].t
end
local now = has_system and system.gettime or server_now

local function pct(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

-- Sends jobs {name = data...} and runs the loop until all have finished;
-- returns the seconds that took. The first call starts the worker.
local started = false
local function run_jobs(name, list)
  if not started then
    assert(moonq.start())
    started = true
  end
  local ids = {}
  for i, data in ipairs(list) do ids[i] = assert(moonq.queue.send(name, data)) end
  local set = "{" .. table.concat(ids, ",") .. "}"
  local t0 = now()
  assert(moonq.run_until(function()
    local rows = assert(moonq.db.query(
      "SELECT count(*) AS n FROM " .. schema .. ".job_archive WHERE id = ANY($1::bigint[])", set))
    return rows[1].n == #ids
  end, 120), name .. ": jobs did not finish")
  return now() - t0
end

local parts = {}

function parts.batch()
  local batch = {}
  for i = 1, 1000 do batch[i] = { type = "bench.batch", data = { n = i, s = "some text" } } end
  local t0 = now()
  for r = 1, 50 do assert(E.append_many("bench:batch:" .. r, batch)) end
  print(("append_many_events_per_s %.0f"):format(50000 / (now() - t0)))
end

function parts.inflight()
  for _, c in ipairs({ 2, 4 }) do
    local jobs = {}
    for j = 1, c do jobs[j] = { stream = "bench:inflight:" .. j, calls = 100 // c } end
    local s = run_jobs("bench_many_" .. c, jobs)
    print(("append_many_%d_in_flight_events_per_s %.0f"):format(c, 100000 / s))
  end
end

function parts.turn()
  local jobs = {}
  for j = 1, 64 do jobs[j] = { stream = "bench:turn:" .. j, n = 200 } end
  local s = run_jobs("bench_turn", jobs)
  print(("append_64_jobs_events_per_s %.0f"):format(64 * 200 / s))
end

function parts.single()
  local lat = {}
  for i = 1, 2000 do
    local s = now()
    assert(E.append("bench:single", { type = "bench.single", data = { n = i } }))
    lat[#lat + 1] = (now() - s) * 1000
  end
  print(("single_append_p50_ms %.3f"):format(pct(lat, 0.5)))
  print(("single_append_p99_ms %.3f"):format(pct(lat, 0.99)))
end

-- append (with the wall time in data) -> subscriber, one every 5 ms. With
-- luasystem also as measured until now: both readings from the server's
-- clock, the subscriber's costing a round trip of its own.
function parts.delivery()
  local clocks = has_system and { { "", now }, { "_server_clock", server_now } }
    or { { "_server_clock", server_now } }
  for _, c in ipairs(clocks) do
    local suffix, clock = c[1], c[2]
    local delays, n = {}, 500
    local sub = E.subscribe("bench:live", function(ev)
      delays[#delays + 1] = (clock() - ev.data.t) * 1000
    end, { from = "end" })
    moonq.sleep(0.2)
    for _ = 1, n do
      E.append("bench:live", { type = "bench.live", data = { t = clock() } })
      moonq.sleep(0.005)
    end
    moonq.run_until(function() return #delays >= n end, 20)
    sub:close()
    print(("delivery%s_count %d"):format(suffix, #delays))
    print(("delivery%s_p50_ms %.3f"):format(suffix, pct(delays, 0.5)))
    print(("delivery%s_p99_ms %.3f"):format(suffix, pct(delays, 0.99)))
  end
end

function parts.sqlwake()
  local delays, late = {}, 0
  local sub = E.subscribe("bench:sql:*", function(ev)
    local d = (now() - ev.data.t) * 1000
    delays[#delays + 1] = d
    if d > 1000 then late = late + 1 end
  end, { from = "end" })
  moonq.sleep(0.2)
  local script = os.tmpname()
  write(script, ("SELECT %s.append('bench:sql:' || :client_id, 'bench.sql', "
    .. "jsonb_build_object('t', extract(epoch FROM clock_timestamp())));\n"):format(schema))
  local log = os.tmpname()
  local rc = os.tmpname()
  os.execute(('(pgbench "$DATABASE_URL" -n -c 8 -j 2 -R 1000 -T 5 -f %s > %s 2>&1; echo $? > %s) &')
    :format(script, log, rc))
  local done = function()
    local f = io.open(rc)
    local s = f and f:read("a")
    if f then f:close() end
    return s and s:match("%d")
  end
  assert(moonq.run_until(done, 30), "pgbench did not finish")
  moonq.sleep(6) -- anything left waits for the 5-second poll at most
  sub:close()
  local stored = assert(moonq.db.query(
    "SELECT count(*) AS n FROM " .. schema .. ".queue_events WHERE stream LIKE 'bench:sql:%'"))[1].n
  print(("sqlwake_delivered %d of %d"):format(#delays, stored))
  print(("sqlwake_p50_ms %.3f"):format(pct(delays, 0.5)))
  print(("sqlwake_p99_ms %.3f"):format(pct(delays, 0.99)))
  print(("sqlwake_max_ms %.3f"):format(pct(delays, 1)))
  print(("sqlwake_later_than_1s %d"):format(late))
  assert(moonq.db.query("DELETE FROM " .. schema .. ".queue_events WHERE stream LIKE 'bench:sql:%'"))
  os.remove(script); os.remove(log); os.remove(rc)
end

local order = { "batch", "inflight", "turn", "single", "delivery", "sqlwake" }
local chosen = #arg > 1 and { table.unpack(arg, 2) } or order
for _, name in ipairs(chosen) do
  assert(parts[name], "unknown part " .. name)()
end
moonq.close()
os.execute("rm -rf '" .. handlers .. "'")
