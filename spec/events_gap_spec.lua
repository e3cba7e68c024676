-- Gap safety of subscriptions against the real PostgreSQL. An event's id
-- is drawn when it is inserted but the event becomes visible when its
-- transaction commits, so with concurrent writers events become visible
-- out of id order; a reader that moved a cursor over ids would skip the
-- late ones, and one that waited for the oldest open transaction would
-- stall behind it. Here concurrent transactions that stay open for a while
-- after their appends, and one left open on purpose, must not make a live
-- subscriber or a consumer group miss, repeat or hold back an event.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local E = moonq.events

-- 8 writers x 1,000 transactions x 2.5 events (2 and 3 in turn) = 20,000
-- events. Each transaction sleeps 0-50 ms (25 ms on average) between its
-- appends and its COMMIT, so a writer takes about 1,000 x 25 ms = 25 s and
-- the 8 of them run side by side: about 30 s in all on 2 shared cores,
-- well under ctest's 180 s. Fewer, fuller transactions keep the 20,000
-- events while one transaction per event would take 8 x 2,500 x 25 ms =
-- 500 s of sleeping.
local WRITERS = 8
local TRANSACTIONS = 1000
local STREAMS = 3 -- per writer: gap:w<k>:0 .. 2, written by that writer only

-- Where an event of writer w went: in one writer's commit order its ids
-- only grow, so each stream's ids in delivery order must grow too.
local function writer_script(w)
  local lines = {}
  local n = 0
  for t = 1, TRANSACTIONS do
    lines[#lines + 1] = "BEGIN;"
    for _ = 1, 2 + t % 2 do
      n = n + 1
      lines[#lines + 1] = ([[SELECT @.append('gap:w%d:%d', 'e', '{"w": %d, "n": %d}');]])
        :format(w, n % STREAMS, w, n)
    end
    lines[#lines + 1] = "SELECT pg_sleep(random() * 0.05);"
    lines[#lines + 1] = "COMMIT;"
  end
  return table.concat(lines, "\n") .. "\n", n
end

-- How often an event came after one with a higher id (in delivery order).
local function inversions(events)
  local n, top = 0, 0
  for _, e in ipairs(events) do
    if e.id < top then n = n + 1 end
    top = math.max(top, e.id)
  end
  return n
end

local function stored(like)
  return V.row("SELECT count(*) AS n FROM @.queue_events WHERE stream LIKE $1", like).n
end

describe("event subscriptions with concurrent writers", function()
  setup(function()
    V.open()
    V.sql("CREATE TABLE @.gate (opened boolean)")
  end)
  teardown(V.close)

  it("deliver every event exactly once and each stream in order", function()
    local live = V.live("gap:*", "gap:ready")
    local early = V.record("gap:w*", { from = "start" })
    -- a consumer group of two members (one process: the same reads and
    -- checkpoints as across processes) reads from the group's start
    local group = { events = {} }
    local members = {}
    for i, name in ipairs({ "a", "b" }) do
      members[i] = assert(E.subscribe_group("gap:w*", "gap", name, function(e)
        group.events[#group.events + 1] = e
      end, { lease = 5 }))
    end
    local exits, total = {}, 0
    for w = 1, WRITERS do
      local script, n = writer_script(w)
      total = total + n
      exits[w] = select(2, V.psql_bg(script, "moonq_gap_" .. w))
    end
    assert.equal(20000, total)
    -- a third reader starts from "start" in the middle: its first step
    -- reads thousands of events in batches while the writers go on
    assert.is_true(moonq.run_until(function() return stored("gap:w%") >= 5000 end, 120),
      "the writers did not get to 5,000 events")
    local late = V.record("gap:w*", { from = "start" })
    V.wait_exit(exits, 150)
    assert.equal(total, stored("gap:w%"))
    -- (a timeout here shows below as missing events)
    moonq.run_until(function()
      return #live.events >= total and #early.events >= total and #late.events >= total
        and #group.events >= total
    end, 60)
    V.run_for(0.5)
    for _, m in ipairs(members) do m:close() end
    local problem = V.delivery(group.events, "gap:w%")
    assert.is_nil(problem, "group: " .. tostring(problem))
    for name, rec in pairs({ live = live, early = early, late = late }) do
      rec.sub:close()
      local problem = V.delivery(rec.events, "gap:w%")
      assert.is_nil(problem, name .. ": " .. tostring(problem))
    end
    -- the case this spec is about happened: events became visible out of id order
    assert.is_true(inversions(live.events) > 0, "every event committed in id order: no gap to fall into")
  end)

  it("do not wait for a transaction left open, and deliver its event once it commits", function()
    local rec = V.live("open:*", "open:ready")
    local app = "moonq_open_" .. V.schema
    -- appends, then waits (uncommitted) until the spec opens the gate
    local _, exit = V.psql_bg([[
      BEGIN;
      SELECT @.append('open:tx:held', 'held');
      DO $$
      DECLARE t0 timestamptz := clock_timestamp();
      BEGIN
        WHILE NOT EXISTS (SELECT 1 FROM @.gate) AND clock_timestamp() < t0 + interval '60 seconds' LOOP
          PERFORM pg_sleep(0.02);
        END LOOP;
      END $$;
      COMMIT;
    ]], app)
    local function open_tx()
      return V.row([[SELECT count(*) AS n FROM pg_stat_activity
                      WHERE application_name = $1 AND backend_xid IS NOT NULL]], app).n
    end
    assert.is_true(moonq.run_until(function() return open_tx() == 1 end, 15),
      "the open transaction did not append")

    -- events committed meanwhile, by moonq and by SQL on another connection
    local others = { assert(E.append("open:tx:other", { type = "a" })) }
    for _, e in ipairs(assert(E.append_many("open:tx:other", { { type = "b" }, { type = "c" } }))) do
      others[#others + 1] = e
    end
    local out, ok = V.psql(("SELECT %s.append('open:tx:sql', 'd');"):format(V.schema))
    assert(ok, out)
    assert.is_true(V.wait_events(rec, 4, 5), "events committed after the open transaction were held back")
    assert.equal(1, open_tx(), "the transaction closed too early for this test")
    for _, e in ipairs(rec.events) do assert.not_equal("open:tx:held", e.stream) end

    -- the held event comes once its transaction commits
    V.sql("INSERT INTO @.gate VALUES (true)")
    V.wait_exit({ exit }, 30)
    V.wait_events(rec, 5, 10) -- a timeout shows below as a missing event
    V.run_for(0.5)
    rec.sub:close()
    local problem = V.delivery(rec.events, "open:tx:%")
    assert.is_nil(problem, problem)
    local held = rec.events[#rec.events]
    assert.equal("open:tx:held", held.stream)
    assert.is_true(held.id < others[1].id, "the held event's id is lower than those delivered before it")
  end)
end)
