-- moonq.events.subscribe against the real PostgreSQL: where delivery
-- starts (from "start", "end" or an id), the switch from history to live
-- while another connection appends, patterns, close, and subscriber
-- functions that fail or wait.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local E = moonq.events

-- Appends n events of type `type` to stream; returns them.
local function append_n(stream, n, type)
  local out = {}
  for i = 1, n do out[i] = assert(E.append(stream, { type = type or "t", data = { i = i } })) end
  return out
end

-- Runs the loop until list holds n entries (or 20 s pass); true when it does.
local function wait_len(list, n)
  return (moonq.run_until(function() return #list >= n end, 20))
end

-- Appends `first` events to stream and waits until `list` (what sub's
-- function collects) has them too, then `second` more; closes sub and
-- returns the ids of the events appended, in order.
local function feed(sub, list, stream, first, second)
  local base = #list
  local events = append_n(stream, first)
  assert.is_true(wait_len(list, base + first))
  for _, e in ipairs(append_n(stream, second)) do events[#events + 1] = e end
  assert.is_true(wait_len(list, base + first + second))
  V.run_for(0.3)
  sub:close()
  return V.ids(events)
end

-- The concatenation of lists of events.
local function concat(...)
  local out = {}
  for _, list in ipairs({ ... }) do
    for _, e in ipairs(list) do out[#out + 1] = e end
  end
  return out
end

describe("event subscribe", function()
  setup(function() V.open() end)
  teardown(V.close)

  it("from start delivers the history, then live events", function()
    local history = append_n("start:1", 3, "old")
    local rec = V.record("start:1", { from = "start" })
    assert.is_true(V.wait_events(rec, 3))
    local live = append_n("start:1", 2, "new")
    assert.is_true(V.wait_events(rec, 5))
    V.run_for(0.3)
    rec.sub:close()
    local want = concat(history, live)
    assert.same(V.ids(want), V.ids(rec.events))
    for i, e in ipairs(rec.events) do
      assert.equal("start:1", e.stream)
      assert.equal(want[i].type, e.type)
      assert.same(want[i].data, e.data)
      assert.equal(want[i].ts, e.ts)
    end
  end)

  it("from end delivers only events appended after it", function()
    append_n("end:1", 3, "old")
    local rec = V.record("end:1", { from = "end" })
    local live = append_n("end:1", 2, "new")
    assert.is_true(V.wait_events(rec, 2))
    V.run_for(0.3)
    rec.sub:close()
    assert.same(V.ids(live), V.ids(rec.events))
  end)

  it("from end: subscribe returns with its position fixed, so an event appended right after is delivered", function()
    -- The read fixing the position and an append run on different
    -- connections (another process's here; the pool's own connections in
    -- general): the event must not commit unseen before that read.
    for round = 1, 3 do
      local stream = "end:now:" .. round
      local rec = V.record(stream, { from = "end" })
      local out, ok = V.psql(("SELECT %s.append('%s', 't', '{}')"):format(V.schema, stream))
      assert(ok, out)
      assert(V.wait_events(rec, 1, 10), ("round %d: the event appended after subscribe was not delivered"):format(round))
      rec.sub:close()
      assert.equal(stream, rec.events[1].stream)
    end
    -- and on the pool's own connections
    for round = 1, 20 do
      local stream = "end:pool:" .. round
      local rec = V.record(stream, { from = "end" })
      local e = assert(E.append(stream, { type = "t" }))
      assert(V.wait_events(rec, 1, 10), ("round %d: the event appended after subscribe was not delivered"):format(round))
      rec.sub:close()
      assert.equal(e.id, rec.events[1].id)
    end
  end)

  it("from an id delivers the events above it, then live ones", function()
    local history = append_n("id:1", 5)
    local rec = V.record("id:1", { from = history[3].id })
    assert.is_true(V.wait_events(rec, 2))
    local live = append_n("id:1", 1)
    assert.is_true(V.wait_events(rec, 3))
    V.run_for(0.3)
    rec.sub:close()
    assert.same({ history[4].id, history[5].id, live[1].id }, V.ids(rec.events))
  end)

  it("delivers only the streams a pattern matches; % and _ are literal", function()
    for _, s in ipairs({ "p_1", "pX1", "p%2", "pq", "p_1:x" }) do append_n(s, 1) end
    local exact = V.record("p_1", { from = "start" })
    local under = V.record("p_*", { from = "start" })
    local percent = V.record("p%*", { from = "start" })
    local all = V.record("*", { from = "start" })
    local total = V.row("SELECT count(*) AS n FROM @.queue_events").n
    assert.is_true(V.wait_events(all, total))
    assert.is_true(V.wait_events(exact, 1))
    assert.is_true(V.wait_events(under, 2))
    assert.is_true(V.wait_events(percent, 1))
    V.run_for(0.3)
    local function streams(rec)
      rec.sub:close()
      local out = {}
      for i, e in ipairs(rec.events) do out[i] = e.stream end
      return out
    end
    assert.same({ "p_1" }, streams(exact))
    assert.same({ "p_1", "p_1:x" }, streams(under))
    assert.same({ "p%2" }, streams(percent))
    assert.equal(total, #streams(all))
  end)

  -- Two psql sessions append 1,000 events each (transactions of 1 to 3
  -- events, random pauses of 0-4 ms between them, each session on streams
  -- of its own) while the subscriber starts from "start" in the middle:
  -- its history reads and its live reads must fit together exactly.
  it("switches from history to live without a gap or a duplicate while appends run", function()
    local per_writer = 1000
    local exits = {}
    for w = 1, 2 do
      local lines, i = {}, 0
      while i < per_writer do
        lines[#lines + 1] = "BEGIN;"
        for _ = 1, math.min(1 + i % 3, per_writer - i) do
          i = i + 1
          lines[#lines + 1] = ([[SELECT @.append('sw:%d:%d', 'e', '{"i": %d}');]]):format(w, i % 3, i)
        end
        lines[#lines + 1] = "COMMIT;"
        lines[#lines + 1] = "SELECT pg_sleep(random() * 0.004);"
      end
      local _, exit = V.psql_bg(table.concat(lines, "\n") .. "\n", "moonq_switch_" .. w)
      exits[w] = exit
    end
    local function stored() return V.row("SELECT count(*) AS n FROM @.queue_events WHERE stream LIKE 'sw:%'").n end
    assert.is_true(moonq.run_until(function() return stored() >= 300 end, 30), "the writers did not start")
    local rec = V.record("sw:*", { from = "start" })
    local at_subscribe = stored()
    V.wait_exit(exits, 90)
    assert.equal(2 * per_writer, stored())
    assert.is_true(at_subscribe < 2 * per_writer, "the writers were done before the subscription began")
    assert.is_true(V.wait_events(rec, 2 * per_writer, 30))
    V.run_for(0.5)
    rec.sub:close()
    local problem = V.delivery(rec.events, "sw:%")
    assert.is_nil(problem, problem)
  end)

  it("close stops delivery", function()
    local rec = V.live("close:*", "close:ready")
    local first = assert(E.append("close:1", { type = "t" }))
    assert.is_true(V.wait_events(rec, 1))
    rec.sub:close()
    rec.sub:close() -- idempotent
    assert(E.append("close:1", { type = "t" }))
    local out, ok = V.psql(("SELECT %s.append('close:1', 'sql');"):format(V.schema))
    assert(ok, out)
    V.run_for(1)
    assert.same({ first.id }, V.ids(rec.events))
  end)

  it("close called by the subscriber function stops the rest of its batch", function()
    append_n("close:batch", 10)
    local got, sub = {}, nil
    sub = assert(E.subscribe("close:batch", function(e)
      got[#got + 1] = e.id
      sub:close()
    end, { from = "start" }))
    V.run_for(1)
    assert.equal(1, #got)
  end)

  it("close while the subscriber function waits: its event finishes, no other is delivered", function()
    append_n("close:wait", 10)
    local got, finished = {}, 0
    local sub = assert(E.subscribe("close:wait", function(e)
      got[#got + 1] = e.id
      moonq.sleep(0.2)
      finished = finished + 1
    end, { from = "start" }))
    assert.is_true(wait_len(got, 1))
    sub:close()
    V.run_for(1)
    assert.equal(1, #got)
    assert.equal(1, finished)
  end)

  it("an error in the subscriber function does not stop delivery of the next events", function()
    local calls = {}
    local sub = assert(E.subscribe("fail:1", function(e)
      calls[#calls + 1] = e.id
      if e.data.i % 2 == 0 then error("subscriber fails on " .. e.data.i) end
      if e.data.i == 3 then error({ not_a = "string" }) end
    end, { from = "start" }))
    assert.same(feed(sub, calls, "fail:1", 5, 2), calls)
  end)

  it("a subscriber function may wait (moonq.sleep, moonq.db.query); events come one at a time", function()
    local history = {}
    for i = 1, 20 do history[i] = { type = "t", data = { i = i } } end
    history = assert(E.append_many("wait:1", history)) -- read as one batch
    local seen, active, most = {}, 0, 0
    local sub = assert(E.subscribe("wait:1", function(e)
      active = active + 1
      most = math.max(most, active)
      moonq.sleep(0.01)
      local rows = assert(moonq.db.query("SELECT $1::bigint AS id", e.id))
      seen[#seen + 1] = rows[1].id
      active = active - 1
    end, { from = "start" }))
    assert.is_true(wait_len(seen, 20))
    local ids = V.ids(history)
    for _, id in ipairs(feed(sub, seen, "wait:1", 3, 2)) do ids[#ids + 1] = id end
    assert.same(ids, seen)
    assert.equal(1, most)
  end)
end)
