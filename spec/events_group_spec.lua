-- moonq.events.subscribe_group in one process against the real PostgreSQL:
-- one member gets every event once and each stream in order; two members
-- share the partitions with no overlap; checkpoints survive a member that
-- leaves; a failing function is retried, then parked without stalling the
-- partition, and replayed on request; bad options are refused.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local E = moonq.events

-- Appends n events spread over `streams` streams named prefix:<k>.
local function spread(prefix, n, streams)
  local out = {}
  for i = 1, n do
    out[i] = assert(E.append(prefix .. ":" .. (i % streams), { type = "t", data = { i = i } }))
  end
  return out
end

-- A member of `group` on `pattern` recording into rec.events; opts as
-- subscribe_group's; fn (optional) runs first for each event.
local function member(pattern, group, consumer, opts, fn)
  local rec = { events = {} }
  rec.g = assert(E.subscribe_group(pattern, group, consumer, function(e, info)
    if fn then fn(e, info) end
    rec.events[#rec.events + 1] = e
  end, opts))
  return rec
end

local function group_row(name)
  local list = assert(E.groups(name))
  return list[1]
end

describe("event consumer groups", function()
  setup(function() V.open() end)
  teardown(V.close)

  it("one member gets every event once, each stream in order, history then live", function()
    spread("one", 300, 7)
    local rec = member("one:*", "g-one", "a", { lease = 3 })
    assert.is_true(V.wait_events(rec, 300))
    spread("one", 200, 7)
    assert.is_true(V.wait_events(rec, 500))
    V.run_for(0.5)
    assert.is_nil(V.delivery(rec.events, "one:%"))
    local row = group_row("g-one")
    assert.equal("one:*", row.pattern)
    assert.equal(16, row.partitions)
    assert.equal(1, #row.members)
    assert.equal("a", row.members[1].consumer)
    assert.equal(16, #row.members[1].partitions)
    assert.equal(500, row.handled)
    assert.equal(0, row.lag)
    rec.g:close()
  end)

  it("two members share the partitions: the union is everything, the overlap nothing", function()
    local a = member("two:*", "g-two", "a", { lease = 2, partitions = 8 })
    local b = member("two:*", "g-two", "b", { lease = 2 })
    -- wait until b holds its share (a gives half back at a renewal)
    assert.is_truthy(moonq.run_until(function()
      local row = group_row("g-two")
      return #row.members == 2 and #row.members[1].partitions == 4 and #row.members[2].partitions == 4
    end, 15), "the partitions were not shared")
    spread("two", 1000, 50)
    local all = {}
    assert.is_true(moonq.run_until(function() return #a.events + #b.events >= 1000 end, 30))
    V.run_for(0.5)
    for _, e in ipairs(a.events) do all[#all + 1] = e end
    for _, e in ipairs(b.events) do all[#all + 1] = e end
    assert.is_nil(V.delivery(all, "two:%"))
    assert.is_true(#a.events > 100 and #b.events > 100, ("a %d, b %d"):format(#a.events, #b.events))
    -- no stream went to both
    local owner = {}
    for name, rec in pairs({ a = a, b = b }) do
      for _, e in ipairs(rec.events) do
        assert.is_true(owner[e.stream] == nil or owner[e.stream] == name, e.stream .. " went to both")
        owner[e.stream] = name
      end
    end
    a.g:close()
    b.g:close()
  end)

  it("a member that leaves gives its partitions to the others at once; the checkpoint holds", function()
    spread("leave", 100, 5)
    local a = member("leave:*", "g-leave", "a", { lease = 30 })
    assert.is_true(V.wait_events(a, 100))
    V.run_for(0.3)
    a.g:close()
    assert.is_false(a.g:is_open())
    assert.is_truthy(moonq.run_until(function() return #group_row("g-leave").members == 0 end, 5),
      "the member did not leave")
    local later = spread("leave", 50, 5)
    -- a new member (lease 30 s: nothing may wait for a lease to run out)
    local b = member("leave:*", "g-leave", "b", { lease = 30 })
    assert.is_true(V.wait_events(b, 50))
    V.run_for(0.5)
    local got = V.ids(b.events)
    table.sort(got)
    assert.same(V.ids(later), got)
    b.g:close()
  end)

  it("a failing function is retried, then parked; the partition goes on; replay hands it back", function()
    local fail_on, calls = nil, {}
    local rec = member("park:*", "g-park", "a", { lease = 2, partitions = 1,
                                                 retry = { limit = 2, delay = 0.05 } },
      function(e, info)
        calls[#calls + 1] = { id = e.id, attempt = info.attempt, replay = info.replay }
        if e.data.i == fail_on then error("cannot handle " .. e.data.i) end
      end)
    fail_on = 3
    local events = spread("park", 5, 1)
    assert.is_true(V.wait_events(rec, 4))
    V.run_for(0.3)
    -- 1, 2, 4, 5 handled in order; 3 tried 3 times (1 + 2 retries)
    assert.same({ events[1].id, events[2].id, events[4].id, events[5].id }, V.ids(rec.events))
    local tries = 0
    for _, c in ipairs(calls) do if c.id == events[3].id then tries = tries + 1 end end
    assert.equal(3, tries)
    local parked = assert(E.parked("g-park"))
    assert.equal(1, #parked)
    assert.equal(events[3].id, parked[1].event_id)
    assert.equal(3, parked[1].attempts)
    assert.matches("cannot handle 3", parked[1].error)
    assert.equal("park:0", parked[1].stream)
    assert.equal(1, group_row("g-park").parked)
    -- replay: the function now succeeds
    fail_on = nil
    assert.equal(1, assert(E.replay("g-park")))
    assert.is_true(V.wait_events(rec, 5, 15))
    V.run_for(0.3)
    assert.equal(events[3].id, rec.events[5].id)
    assert.is_true(calls[#calls].replay)
    assert.same({}, assert(E.parked("g-park")))
    rec.g:close()
  end)

  it("a replayed event that fails again is parked again", function()
    local rec = member("repark:*", "g-repark", "a", { lease = 2, partitions = 1,
                                                     retry = { limit = 0 } },
      function() error("always") end)
    local ev = assert(E.append("repark:1", { type = "t" }))
    assert.is_truthy(moonq.run_until(function() return #assert(E.parked("g-repark")) == 1 end, 10))
    assert.equal(1, assert(E.replay("g-repark", { ev.id })))
    assert.is_truthy(moonq.run_until(function()
      local p = assert(E.parked("g-repark"))
      return #p == 1 and p[1].attempts == 2 and not p[1].replay
    end, 15), "not parked again")
    assert.equal(0, #rec.events)
    rec.g:close()
  end)

  it("a function that times out counts as a failure", function()
    local rec = member("slow:*", "g-slow", "a", { lease = 2, partitions = 1, timeout = 0.1,
                                                 retry = { limit = 0 } },
      function(e) if e.data.slow then moonq.sleep(5) end end)
    local slow = assert(E.append("slow:1", { type = "t", data = { slow = true } }))
    local fast = assert(E.append("slow:1", { type = "t", data = { slow = false } }))
    assert.is_true(V.wait_events(rec, 1))
    assert.same({ fast.id }, V.ids(rec.events))
    local parked = assert(E.parked("g-slow"))
    assert.equal(slow.id, parked[1].event_id)
    assert.matches("timed out", parked[1].error)
    rec.g:close()
  end)

  it("moonq.close() with a member still joined leaves the group, also in the middle of an event", function()
    for _, mid in ipairs({ false, true }) do
      local group = mid and "g-close-mid" or "g-close"
      local out, ok = V.run([[
        assert(moonq.open({ database = url, schema = schema, log = { level = "error" } }))
        local started = false
        assert(moonq.events.subscribe_group(group .. ":*", group, "a", function(e)
          started = true
          if mid then moonq.sleep(30) end
        end, { lease = 30 }))
        assert(moonq.events.append(group .. ":1", { type = "t" }))
        assert(moonq.run_until(function() return started end, 10))
        moonq.close()
        print("closed")
      ]], { url = V.url, schema = V.schema, group = group, mid = mid })
      assert.is_truthy(ok, out)
      assert.matches("closed", out)
      assert.equal(0, V.row("SELECT count(*) AS n FROM @.queue_event_group_members WHERE group_name = $1", group).n)
      assert.equal(0, V.row([[SELECT count(*) AS n FROM @.queue_event_checkpoints
                               WHERE group_name = $1 AND consumer IS NOT NULL]], group).n)
      -- the event cut off by the close goes to the next member
      local rec = member(group .. ":*", group, "b", { lease = 30 })
      V.run_for(1)
      assert.equal(mid and 1 or 0, #rec.events)
      rec.g:close()
    end
  end)

  it("parks an error that is not UTF-8 (its bad bytes as '?') and goes on", function()
    local rec = member("utf:*", "g-utf", "a", { lease = 2, partitions = 1, retry = { limit = 0 } },
      function(e) if e.data.bad then error("bad byte \xff here", 0) end end)
    local bad = assert(E.append("utf:1", { type = "t", data = { bad = true } }))
    local good = assert(E.append("utf:1", { type = "t", data = { bad = false } }))
    assert.is_true(V.wait_events(rec, 1))
    assert.is_truthy(moonq.run_until(function() return #assert(E.parked("g-utf")) == 1 end, 10))
    local p = assert(E.parked("g-utf"))[1]
    assert.equal(bad.id, p.event_id)
    assert.equal("bad byte ? here", p.error)
    assert.same({ good.id }, V.ids(rec.events))
    rec.g:close()
  end)

  it("an event whose parking fails is not passed over: it is tried again and parked later", function()
    V.sql("CREATE TABLE @.park_gate (closed boolean)")
    V.sql("INSERT INTO @.park_gate VALUES (true)")
    V.sql([[CREATE FUNCTION @.no_parking() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF EXISTS (SELECT 1 FROM @.park_gate) THEN
              RAISE EXCEPTION 'parking is closed'; END IF; RETURN NEW; END $$]])
    V.sql([[CREATE TRIGGER no_parking BEFORE INSERT ON @.queue_event_parked
            FOR EACH ROW EXECUTE FUNCTION @.no_parking()]])
    local tries = 0
    local rec = member("pf:*", "g-pf", "a", { lease = 2, partitions = 1, retry = { limit = 0 } },
      function(e) if e.data.bad then tries = tries + 1 error("always", 0) end end)
    local bad = assert(E.append("pf:1", { type = "t", data = { bad = true } }))
    local good = assert(E.append("pf:1", { type = "t", data = { bad = false } }))
    assert.is_truthy(moonq.run_until(function() return tries >= 2 end, 15), "not tried again")
    assert.equal(0, #rec.events) -- the good one waits behind it (same stream)
    V.sql("DELETE FROM @.park_gate")
    assert.is_true(V.wait_events(rec, 1, 15))
    local parked = assert(E.parked("g-pf"))
    assert.equal(1, #parked)
    assert.equal(bad.id, parked[1].event_id)
    V.run_for(0.5)
    assert.same({ good.id }, V.ids(rec.events))
    rec.g:close()
  end)

  it("an error object whose __tostring raises is parked as such; the group goes on", function()
    local rec = member("ts:*", "g-ts", "a", { lease = 2, partitions = 1, retry = { limit = 0 } },
      function(e)
        if e.data.bad then error(setmetatable({}, { __tostring = function() error("boom") end })) end
      end)
    assert(E.append("ts:1", { type = "t", data = { bad = true } }))
    local good = assert(E.append("ts:1", { type = "t", data = { bad = false } }))
    assert.is_true(V.wait_events(rec, 1))
    assert.same({ good.id }, V.ids(rec.events))
    assert.is_truthy(moonq.run_until(function() return #assert(E.parked("g-ts")) == 1 end, 10))
    assert.equal("(error object is a table value)", assert(E.parked("g-ts"))[1].error)
    rec.g:close()
    assert.is_false(rec.g:is_open())
  end)

  it("a checkpoint whose write failed is written again at a renewal", function()
    V.sql("CREATE TABLE @.cp_gate (closed boolean)")
    V.sql([[CREATE FUNCTION @.no_checkpoints() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF EXISTS (SELECT 1 FROM @.cp_gate) AND NEW.last_id IS DISTINCT FROM OLD.last_id THEN
              RAISE EXCEPTION 'checkpoints are closed'; END IF; RETURN NEW; END $$]])
    V.sql([[CREATE TRIGGER no_checkpoints BEFORE UPDATE ON @.queue_event_checkpoints
            FOR EACH ROW EXECUTE FUNCTION @.no_checkpoints()]])
    local rec = member("cp:*", "g-cp", "a", { lease = 1, partitions = 1 })
    V.run_for(0.5)
    V.sql("INSERT INTO @.cp_gate VALUES (true)")
    local events = spread("cp", 3, 1)
    assert.is_true(V.wait_events(rec, 3))
    V.run_for(0.5) -- the write failed meanwhile
    local function last() return V.row("SELECT last_id FROM @.queue_event_checkpoints WHERE group_name = 'g-cp'").last_id end
    assert.is_true(last() == moonq.null or last() < events[3].id, "the checkpoint was written through the gate")
    V.sql("DELETE FROM @.cp_gate")
    assert.is_truthy(moonq.run_until(function() return last() == events[3].id end, 10),
      "the checkpoint was not written again")
    rec.g:close()
  end)

  it("idle partitions' positions are written too (no checkpoint stays at the start of the log)", function()
    local rec = member("idle:*", "g-idle", "a", { lease = 1 })
    assert(E.append("idle:1", { type = "t" }))
    assert.is_true(V.wait_events(rec, 1))
    assert.is_truthy(moonq.run_until(function()
      return V.row([[SELECT count(*) AS n FROM @.queue_event_checkpoints
                      WHERE group_name = 'g-idle' AND base::text = '1:1:']]).n == 0
    end, 10), "quiet partitions kept the start of the log as their position")
    rec.g:close()
  end)

  it("refuses bad options with a message naming them", function()
    assert(E.subscribe_group("opt:*", "g-opt", "a", function() end, { partitions = 4 })):close()
    assert.matches('reads the pattern "opt:%*", not "other:%*"',
      V.refusal(E.subscribe_group, "other:*", "g-opt", "b", function() end))
    assert.matches("has 4 partitions, not 8",
      V.refusal(E.subscribe_group, "opt:*", "g-opt", "b", function() end, { partitions = 8 }))
    assert.matches("group name must be 1 to 200 bytes",
      V.refusal(E.subscribe_group, "opt:*", ("g"):rep(201), "b", function() end))
    assert.matches("consumer name must be 1 to 200 bytes",
      V.refusal(E.subscribe_group, "opt:*", "g-opt", "", function() end))
    assert.matches("partitions must be an integer from 1 to 1024",
      V.refusal(E.subscribe_group, "x:*", "g-new", "b", function() end, { partitions = 2000 }))
    assert.matches("lease",
      V.refusal(E.subscribe_group, "x:*", "g-new", "b", function() end, { lease = 0 }))
    assert.matches("the group name contains a NUL byte",
      V.refusal(E.subscribe_group, "x:*", "ab\0cd", "b", function() end))
    assert.matches("the pattern contains a NUL byte",
      V.refusal(E.subscribe_group, "n\0q:*", "g-new", "b", function() end))
    assert.matches("unknown option partitons",
      V.refusal(E.subscribe_group, "x:*", "g-new", "b", function() end, { partitons = 4 }))
    assert.matches("unknown option limt",
      V.refusal(E.subscribe_group, "x:*", "g-new", "b", function() end, { retry = { limt = 1 } }))
    assert.matches("partitions must be an integer from 1 to 1024",
      V.refusal(E.subscribe_group, "x:*", "g-new", "b", function() end, { partitions = 1.5 }))
    assert.matches("retry.limit must be an integer from 0 to 1000000",
      V.refusal(E.subscribe_group, "x:*", "g-new", "b", function() end, { retry = { limit = 2 ^ 31 } }))
    assert.equal(0, V.row("SELECT count(*) AS n FROM @.queue_event_groups WHERE group_name = 'g-new'").n)
  end)

  it("a second handle under the same consumer name takes over; the first stops", function()
    local a = member("take:*", "g-take", "c", { lease = 1 })
    local b = member("take:*", "g-take", "c", { lease = 1 })
    assert.is_truthy(moonq.run_until(function() return not a.g:is_open() end, 10),
      "the first handle did not stop")
    assert.is_true(b.g:is_open())
    local events = spread("take", 20, 3)
    assert.is_true(V.wait_events(b, 20))
    V.run_for(0.3)
    assert.is_nil(V.delivery(b.events, "take:%"))
    assert.equal(#events, #b.events)
    assert.equal(0, #a.events)
    b.g:close()
  end)
end)
