-- Sends N jobs to queue "lat" through moonq's own connections (moonq.no_wake:
-- one wake() per loop turn), one every GAP seconds.
-- usage: lua send_lat.lua CONFIG N GAP   (package.cpath must find moonq.so)
local moonq = require "moonq"
local config, n, gap = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert(moonq.open(config))
for i = 1, n do
  moonq.queue.send("lat", { i = i })
  moonq.run_until(function() return false end, gap)
end
moonq.close()
