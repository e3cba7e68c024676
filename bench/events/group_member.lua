-- bench/events/group_member.lua -- one member of a consumer group for
-- bench/bench_groups.sh: joins GROUP as CONSUMER on "bench:*" with a no-op
-- function and runs until killed.
--   lua5.4 bench/events/group_member.lua SCHEMA GROUP CONSUMER
local moonq = require "moonq"
local schema, group, consumer = arg[1], arg[2], arg[3]
assert(schema and group and consumer, "usage: group_member.lua SCHEMA GROUP CONSUMER")
assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema,
                    log = { level = "warn" } }))
assert(moonq.events.subscribe_group("bench:*", group, consumer, function() end,
                                    { lease = 2 }))
moonq.run_until_signal()
