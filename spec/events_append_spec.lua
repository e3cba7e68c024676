-- moonq.events.append / append_many and SQL append() against the real
-- PostgreSQL: the stored event comes back as it went in, batches keep
-- their order, SQL appends follow their transaction (the outbox), and bad
-- events are refused with a message naming the problem and nothing written.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local E = moonq.events

local MAX_SIZE = 100 -- events.max_size for this spec: data of 101 bytes is too big

local function count()
  return V.row("SELECT count(*) AS n FROM @.queue_events").n
end

describe("event append", function()
  setup(function()
    local dir = V.handlers_dir({
      -- appends an event whose data holds a NUL character or not
      ["nul.lua"] = [[
local moonq = require "moonq"
return function(job)
  local s = job.data.bad and "a\0b" or "fine"
  local ev, err = moonq.events.append("nul:" .. job.data.name, { type = "t", data = { s = s } })
  return { id = ev and ev.id, err = err }
end
]],
    })
    V.open({ events = { max_size = MAX_SIZE }, handlers = dir, hot_reload = false })
  end)
  teardown(V.close)

  it("returns the stored event; data round-trips and integers stay integers", function()
    local data = { n = 42, big = 9007199254740993, neg = -7, f = 1.5, s = "é\"\\",
                   list = { 1, 2, 3 }, nested = { b = true } }
    local ev = assert(E.append("orders:1", { type = "created", data = data, run_id = "run-1" }))
    assert.equal("integer", math.type(ev.id))
    assert.is_true(ev.id > 0)
    assert.equal("orders:1", ev.stream)
    assert.equal("created", ev.type)
    assert.equal("run-1", ev.run_id)
    assert.same(data, ev.data)
    assert.is_string(ev.ts)
    -- the row holds the same
    local row = V.row([[SELECT stream, type, run_id, data, ts = $2::timestamptz AS same_ts,
                               flow_name IS NULL AS no_flow FROM @.queue_events WHERE id = $1]],
                      ev.id, ev.ts)
    assert.equal("orders:1", row.stream)
    assert.equal("created", row.type)
    assert.equal("run-1", row.run_id)
    assert.same(data, row.data)
    assert.is_true(row.same_ts)
    assert.is_true(row.no_flow)
    -- and a query returns it, numbers typed as they went in
    local got = assert(E.query("orders:1"))
    assert.equal(1, #got)
    assert.equal(ev.id, got[1].id)
    assert.equal(ev.ts, got[1].ts)
    assert.equal("run-1", got[1].run_id)
    assert.same(data, got[1].data)
    for _, k in ipairs({ "n", "big", "neg" }) do
      assert.equal("integer", math.type(got[1].data[k]), k)
    end
    assert.equal(9007199254740993, got[1].data.big)
    assert.equal("float", math.type(got[1].data.f))
    assert.equal("integer", math.type(got[1].data.list[2]))
  end)

  it("stores {} for an event without data, and a JSON string as it is", function()
    local a = assert(E.append("plain", { type = "no-data" }))
    local b = assert(E.append("plain", { type = "string-data", data = "just text" }))
    assert.same({}, a.data)
    local got = assert(E.query("plain"))
    assert.same({ a.id, b.id }, V.ids(got))
    assert.same({}, got[1].data)
    assert.equal("just text", got[2].data)
    assert.is_true(V.row("SELECT data = '{}'::jsonb AS empty FROM @.queue_events WHERE id = $1", a.id).empty)
  end)

  it("append_many keeps the input order and returns ids ascending", function()
    local input = {}
    for i = 1, 7 do
      input[i] = { type = "step" .. i, data = { i = i }, run_id = i % 2 == 0 and "even" or nil }
    end
    local list = assert(E.append_many("many", input))
    assert.equal(#input, #list)
    for i, ev in ipairs(list) do
      assert.equal("many", ev.stream)
      assert.equal("step" .. i, ev.type)
      assert.same({ i = i }, ev.data)
      if i > 1 then assert.is_true(ev.id > list[i - 1].id) end
    end
    -- the table agrees: id order is input order
    local rows = V.sql("SELECT id, type, data, run_id FROM @.queue_events WHERE stream = 'many' ORDER BY id")
    assert.same(V.ids(list), V.ids(rows))
    for i, r in ipairs(rows) do
      assert.equal("step" .. i, r.type)
      assert.equal(i, r.data.i)
      assert.equal(i % 2 == 0 and "even" or moonq.null, r.run_id)
    end
  end)

  it("SQL append follows its transaction: rollback leaves nothing, commit is queried and delivered", function()
    local rec = V.live("tx:*", "tx:ready")
    local out, ok = V.psql(([[
      BEGIN;
      SELECT %s.append('tx:1', 'rolled-back', '{"a": 1}');
      ROLLBACK;]]):format(V.schema))
    assert(ok, out)
    assert.equal(0, V.row("SELECT count(*) AS n FROM @.queue_events WHERE stream = 'tx:1'").n)
    assert.same({}, assert(E.query("tx:1")))

    out, ok = V.psql(([[
      BEGIN;
      SELECT %s.append('tx:1', 'committed', '{"a": 2}', 'run-9');
      SELECT %s.append('tx:2', 'committed', '{"a": 3}');
      COMMIT;]]):format(V.schema, V.schema))
    assert(ok, out)
    local got = assert(E.query("tx:1"))
    assert.equal(1, #got)
    assert.equal("committed", got[1].type)
    assert.same({ a = 2 }, got[1].data)
    assert.equal("run-9", got[1].run_id)
    -- the live subscriber gets both committed events and never the rolled-back one
    assert.is_true(V.wait_events(rec, 2, 15))
    V.run_for(0.3)
    rec.sub:close()
    assert.equal(2, #rec.events)
    assert.same({ "tx:1", "tx:2" }, { rec.events[1].stream, rec.events[2].stream })
    assert.same({ "committed", "committed" }, { rec.events[1].type, rec.events[2].type })
    assert.same({ a = 3 }, rec.events[2].data)
    assert.equal(got[1].id, rec.events[1].id)
  end)

  describe("refuses a bad event, naming the problem, and writes nothing:", function()
    local function fn() end
    local cases = {
      { "an empty stream", "", { type = "t" }, "stream must be a non%-empty string" },
      { "a stream containing '*'", "a*b", { type = "t" }, "contains \"%*\"" },
      { "an empty type", "s", { type = "" }, "type must be a non%-empty string" },
      { "a missing type", "s", { data = { x = 1 } }, "type must be a string" },
      { "a type of 201 bytes", "s", { type = ("t"):rep(201) }, "type is 201 bytes, the limit is 200" },
      { "a type of 202 bytes in 101 characters", "s", { type = ("é"):rep(101) }, "type is 202 bytes" },
      { "a stream of 501 bytes", ("s"):rep(501), { type = "t" }, "stream is 501 bytes, the limit is 500" },
      { "data over events.max_size", "s", { type = "t", data = { s = ("x"):rep(93) } },
        "data is 101 bytes, the limit is 100" },
      { "a function in data", "s", { type = "t", data = { f = fn } }, "data%.f: cannot encode a function" },
      { "NaN in data", "s", { type = "t", data = { x = 0 / 0 } }, "data%.x: cannot encode NaN" },
      { "a non-string run_id", "s", { type = "t", run_id = 5 }, "run_id must be a string" },
      { "a stream that is not UTF-8", "s\xff", { type = "t" }, "event 1: stream is not valid UTF%-8 %(byte 1%)" },
      { "a type that is not UTF-8", "s", { type = "\xc3" }, "event 1: type is not valid UTF%-8 %(byte 0%)" },
      { "a run_id that is not UTF-8", "s", { type = "t", run_id = "r\xed\xa0\x80" },
        "event 1: run_id is not valid UTF%-8 %(byte 1%)" },
    }
    for _, c in ipairs(cases) do
      local name, stream, event, want = c[1], c[2], c[3], c[4]
      it(name, function()
        local before = count()
        local msg = V.refusal(E.append, stream, event)
        assert.matches(want, msg)
        assert.equal(before, count())
      end)
    end
  end)

  it("accepts events exactly at the limits (in bytes)", function()
    local stream = ("é"):rep(250) -- 500 bytes
    local ev = assert(E.append(stream, { type = ("t"):rep(200), data = { s = ("x"):rep(92) } }))
    local row = V.row([[SELECT octet_length(stream) AS s, octet_length(type) AS t,
                               octet_length(data::text) AS d FROM @.queue_events WHERE id = $1]], ev.id)
    assert.equal(500, row.s)
    assert.equal(200, row.t)
    assert.equal(("x"):rep(92), assert(E.query(stream))[1].data.s)
  end)

  it("append_many with one bad event writes none of them", function()
    local bad = {
      { type = "" },
      { type = "t", data = { s = ("x"):rep(200) } },
      { type = "t", data = { f = print } },
      { data = {} },
    }
    for i, b in ipairs(bad) do
      local before = count()
      local msg = V.refusal(E.append_many, "batch", { { type = "ok1" }, { type = "ok2" }, b, { type = "ok4" } })
      assert.matches("event 3", msg, nil, true)
      assert.equal(before, count(), "bad event " .. i)
    end
    assert.same({}, assert(E.query("batch")))
  end)

  it("SQL append refuses the same bad events, naming the problem", function()
    local cases = {
      { "''", "'t'", "event stream must be a non%-empty string" },
      { "'a*b'", "'t'", "contains \"%*\"" },
      { "'s'", "''", "event type must be a non%-empty string" },
      { "repeat('s', 501)", "'t'", "event stream is 501 bytes, the limit is 500" },
      { "'s'", "repeat('t', 201)", "event type is 201 bytes, the limit is 200" },
    }
    for _, c in ipairs(cases) do
      local before = count()
      local sql = ("SELECT %s.append(%s, %s)"):format(V.schema, c[1], c[2])
      local rows, err = moonq.db.query(sql)
      assert.is_nil(rows)
      assert.matches(c[3], err)
      assert.equal(before, count())
    end
  end)

  -- append_events with parallel arrays is the statement moonq's batches
  -- use; it keeps its rules for any other caller.
  describe("SQL append_events (parallel arrays)", function()
    local function append_events(streams, types, data, run_ids)
      return moonq.db.query(("SELECT ids::text AS ids, ts FROM %s.append_events($1::text[], $2::text[], $3::jsonb, $4::text[])")
        :format(V.schema), streams, types, data, run_ids)
    end

    it("stores the events in input order and returns their ids ascending and one ts", function()
      local rows = assert(append_events('{arr:1,arr:2,arr:1}', '{a,"b \\"q\\"",c}',
                                        '[{"n": 1}, "text", null]', '{NULL,run-2,NULL}'))
      assert.equal(1, #rows)
      local ids = {}
      for id in rows[1].ids:gmatch("%d+") do ids[#ids + 1] = math.tointeger(id) end
      assert.equal(3, #ids)
      assert.is_true(ids[1] < ids[2] and ids[2] < ids[3])
      local stored = V.sql([[SELECT id, stream, type, data, run_id, ts = $1::timestamptz AS same_ts
                               FROM @.queue_events WHERE stream LIKE 'arr:%' ORDER BY id]], rows[1].ts)
      assert.same(ids, V.ids(stored))
      assert.same({ "arr:1", "arr:2", "arr:1" }, { stored[1].stream, stored[2].stream, stored[3].stream })
      assert.same({ "a", 'b "q"', "c" }, { stored[1].type, stored[2].type, stored[3].type })
      assert.same({ n = 1 }, stored[1].data)
      assert.equal("text", stored[2].data)
      assert.equal(moonq.null, stored[1].run_id)
      assert.equal("run-2", stored[2].run_id)
      for _, r in ipairs(stored) do assert.is_true(r.same_ts) end
    end)

    it("refuses a batch with one bad event, naming it, and writes none of it", function()
      local cases = {
        { '{ok,ok,ok}', '{a,"",c}', "event 2: event type must be a non%-empty string" },
        { '{ok,"a*b",ok}', '{a,b,c}', 'event 2: event stream "a%*b" contains "%*"' },
        { '{ok,ok,""}', '{a,b,c}', "event 3: event stream must be a non%-empty string" },
        { '{ok,ok,NULL}', '{a,b,c}', "event 3: event stream must be a non%-empty string" },
      }
      for _, c in ipairs(cases) do
        local before = count()
        local rows, err = append_events(c[1], c[2], '[{}, {}, {}]', nil)
        assert.is_nil(rows)
        assert.matches(c[3], err)
        assert.equal(before, count())
      end
    end)

    it("refuses arrays of different lengths", function()
      for _, c in ipairs({ { '{a,b}', '{t}', '[{}, {}]', nil }, { '{a,b}', '{t,u}', '[{}]', nil },
                           { '{a,b}', '{t,u}', '[{}, {}]', '{r}' }, { '{}', '{}', '[]', nil },
                           { '{a}', '{t}', '{}', nil } }) do
        local before = count()
        local rows, err = append_events(c[1], c[2], c[3], c[4])
        assert.is_nil(rows)
        assert.matches("one element per event", err, nil, true)
        assert.equal(before, count())
      end
    end)
  end)

  -- PostgreSQL text cannot hold a NUL byte: an event must not be stored
  -- under a name cut short at it.
  it("refuses a stream, type or run_id holding a NUL byte (nothing is cut short)", function()
    for _, c in ipairs({ { "s\0x", { type = "t" }, "stream" },
                         { "s", { type = "t\0x" }, "type" },
                         { "s", { type = "t", run_id = "r\0x" }, "run_id" } }) do
      local before = count()
      local msg = V.refusal(E.append, c[1], c[2])
      assert.matches(c[3], msg, nil, true)
      assert.equal(before, count(), c[3])
    end
  end)

  -- jsonb rejects \u0000. Appends of one loop turn go to PostgreSQL as one
  -- statement, so such data must be refused at the API: otherwise it fails
  -- every other append of the same turn.
  it("refuses data holding a NUL character without failing other appends of the same turn", function()
    local good = assert(moonq.queue.send("nul", { name = "good", bad = false }))
    local bad = assert(moonq.queue.send("nul", { name = "bad", bad = true }))
    assert(moonq.start())
    assert.is_true(V.wait_all({ good, bad }, 15))
    local g, b = moonq.queue.get(good), moonq.queue.get(bad)
    assert.equal("completed", g.state)
    assert.equal("completed", b.state)
    assert.is_nil(g.output.err)
    assert.equal(1, V.row("SELECT count(*) AS n FROM @.queue_events WHERE stream = 'nul:good'").n)
    assert.is_nil(b.output.id)
    assert.matches("data", b.output.err, nil, true)
    assert.equal(0, V.row("SELECT count(*) AS n FROM @.queue_events WHERE stream = 'nul:bad'").n)
  end)
end)
