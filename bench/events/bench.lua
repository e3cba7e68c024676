-- bench/events/bench.lua -- the moonq.events part of bench/bench_events.sh:
-- batched appends, single appends one after the other, and append ->
-- subscriber delivery. Prints "name value" lines.
--   lua5.4 bench/events/bench.lua SCHEMA
local moonq = require "moonq"
local schema = assert(arg[1], "usage: bench.lua SCHEMA")
assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema,
                    log = { level = "warn" } }))
local E = moonq.events

local function now() -- wall seconds with sub-ms resolution
  local rows = assert(moonq.db.query("SELECT extract(epoch FROM clock_timestamp())::float8 AS t"))
  return rows[1].t
end

local function pct(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

-- batched: append_many of 1,000 events, 50 times
local batch = {}
for i = 1, 1000 do batch[i] = { type = "bench.batch", data = { n = i, s = "some text" } } end
local t0 = now()
for r = 1, 50 do assert(E.append_many("bench:batch:" .. r, batch)) end
local t1 = now()
print(("append_many_events_per_s %.0f"):format(50000 / (t1 - t0)))

-- single appends, one after the other (each waits for its commit)
local lat = {}
for i = 1, 2000 do
  local s = now()
  assert(E.append("bench:single", { type = "bench.single", data = { n = i } }))
  lat[#lat + 1] = (now() - s) * 1000
end
print(("single_append_p50_ms %.3f"):format(pct(lat, 0.5)))
print(("single_append_p99_ms %.3f"):format(pct(lat, 0.99)))

-- delivery: append (with the wall time in data) -> subscriber, one every 5 ms
local delays, n = {}, 500
local sub = E.subscribe("bench:live", function(ev)
  delays[#delays + 1] = (now() - ev.data.t) * 1000
end, { from = "end" })
moonq.sleep(0.2)
for i = 1, n do
  E.append("bench:live", { type = "bench.live", data = { t = now() } })
  moonq.sleep(0.005)
end
moonq.run_until(function() return #delays >= n end, 20)
sub:close()
print(("delivery_count %d"):format(#delays))
print(("delivery_p50_ms %.3f"):format(pct(delays, 0.5)))
print(("delivery_p99_ms %.3f"):format(pct(delays, 0.99)))
moonq.close()
