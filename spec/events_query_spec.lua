-- moonq.events.query against the real PostgreSQL: stream order, the
-- filters (types, after/before, limit, run_id, from_ts/to_ts) and stream
-- patterns, where `*` is the only wildcard and `%`, `_` and `\` in names
-- are literal characters.
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
local E = moonq.events

-- The streams of the pattern cases; each gets one event.
local STREAMS = { "orders:1", "orders:2", "orders:", "order", "orders", "ordersX",
                  "shop:orders:1", "a_b", "axb", "a%1", "ab", "a\\b", "a\\\\b", "%", "_" }

-- Whether `stream` matches `pattern` (`*`: any run of characters, every
-- other character itself): the reference the store is checked against.
local function matches(pattern, stream)
  local lua = pattern:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*")
  return stream:match("^" .. lua .. "$") ~= nil
end

local function streams_of(events)
  local out = {}
  for i, e in ipairs(events) do out[i] = e.stream end
  return out
end

describe("event query", function()
  local q1, q2 = {}, {} -- events of streams q:1 and q:2, in append order

  setup(function()
    V.open()
    -- q:1 and q:2 interleaved, each append its own transaction (own ts)
    local plan = { { "q:1", "a", "r1" }, { "q:2", "a" }, { "q:1", "b" }, { "q:1", "c", "r1" },
                   { "q:2", "b", "r1" }, { "q:1", "a", "r2" }, { "q:1", "d" }, { "q:1", "c" } }
    for i, p in ipairs(plan) do
      local ev = assert(E.append(p[1], { type = p[2], data = { i = i }, run_id = p[3] }))
      table.insert(p[1] == "q:1" and q1 or q2, ev)
    end
    for _, s in ipairs(STREAMS) do assert(E.append(s, { type = "t" })) end
  end)
  teardown(V.close)

  -- The ids of q1's events for which keep(event, position) is true.
  local function q1_ids(keep)
    local out = {}
    for i, e in ipairs(q1) do
      if keep(e, i) then out[#out + 1] = e.id end
    end
    return out
  end

  it("returns a stream's events in stream order, and only that stream's", function()
    local got = assert(E.query("q:1"))
    assert.same(V.ids(q1), V.ids(got))
    for i, e in ipairs(got) do
      assert.equal("q:1", e.stream)
      assert.equal(q1[i].type, e.type)
      assert.same(q1[i].data, e.data)
      assert.equal(q1[i].ts, e.ts)
    end
    assert.same(V.ids(q2), V.ids(assert(E.query("q:2"))))
    assert.same({}, assert(E.query("q:none")))
  end)

  it("filters by types", function()
    local got = assert(E.query("q:1", { types = { "a", "c" } }))
    assert.same(q1_ids(function(e) return e.type == "a" or e.type == "c" end), V.ids(got))
    assert.same({}, assert(E.query("q:1", { types = { "zzz" } })))
  end)

  it("filters by after and before (both exclusive)", function()
    local got = assert(E.query("q:1", { after = q1[2].id, before = q1[5].id }))
    assert.same({ q1[3].id, q1[4].id }, V.ids(got))
    assert.same(q1_ids(function(_, i) return i > 4 end), V.ids(assert(E.query("q:1", { after = q1[4].id }))))
    assert.same({ q1[1].id }, V.ids(assert(E.query("q:1", { before = q1[2].id }))))
  end)

  it("returns at most limit events, the first ones; after pages through", function()
    assert.same({ q1[1].id, q1[2].id }, V.ids(assert(E.query("q:1", { limit = 2 }))))
    local pages, after = {}, nil
    repeat
      local page = assert(E.query("q:1", { limit = 2, after = after }))
      for _, e in ipairs(page) do pages[#pages + 1] = e.id end
      after = page[#page] and page[#page].id
    until #page < 2
    assert.same(V.ids(q1), pages)
  end)

  it("filters by run_id", function()
    assert.same(q1_ids(function(e) return e.run_id == "r1" end), V.ids(assert(E.query("q:1", { run_id = "r1" }))))
    assert.same({ q2[2].id }, V.ids(assert(E.query("q:2", { run_id = "r1" }))))
    assert.same({}, assert(E.query("q:1", { run_id = "nope" })))
  end)

  it("filters by from_ts (inclusive) and to_ts (exclusive)", function()
    local got = assert(E.query("q:1", { from_ts = q1[2].ts, to_ts = q1[4].ts }))
    assert.same({ q1[2].id, q1[3].id }, V.ids(got))
    assert.same(q1_ids(function(_, i) return i >= 5 end), V.ids(assert(E.query("q:1", { from_ts = q1[5].ts }))))
  end)

  it("combines filters", function()
    local got = assert(E.query("q:1", { types = { "a", "c" }, run_id = "r1", after = q1[1].id }))
    assert.same({ q1[3].id }, V.ids(got))
  end)

  describe("patterns", function()
    it("orders:* matches orders:1 and orders:2 but not order, orders or ordersX", function()
      local got = assert(E.query("orders:*"))
      assert.same({ "orders:1", "orders:2", "orders:" }, streams_of(got))
      assert.same({ "orders" }, streams_of(assert(E.query("orders"))))
      assert.same({ "order" }, streams_of(assert(E.query("order"))))
    end)

    it("% and _ in names are literal", function()
      assert.same({ "a_b" }, streams_of(assert(E.query("a_b"))))
      assert.same({ "a_b" }, streams_of(assert(E.query("a_*"))))
      assert.same({ "a%1" }, streams_of(assert(E.query("a%*"))))
      assert.same({ "a%1" }, streams_of(assert(E.query("a%1"))))
      assert.same({ "%" }, streams_of(assert(E.query("%"))))
      assert.same({ "_" }, streams_of(assert(E.query("_"))))
      assert.same({ "%" }, streams_of(assert(E.query("%*"))))
    end)

    it("a backslash in names is literal", function()
      assert.same({ "a\\b" }, streams_of(assert(E.query("a\\b"))))
      assert.same({ "a\\b", "a\\\\b" }, streams_of(assert(E.query("a\\*"))))
      assert.same({ "a\\\\b" }, streams_of(assert(E.query("a\\\\*"))))
    end)

    it("* matches every stream", function()
      local all = assert(E.query("*", { limit = 100000 }))
      assert.equal(V.row("SELECT count(*) AS n FROM @.queue_events").n, #all)
      for i = 2, #all do assert.is_true(all[i].id > all[i - 1].id) end
    end)

    it("match exactly the streams the reference matcher matches", function()
      local all = assert(E.query("*", { limit = 100000 }))
      local patterns = { "orders:*", "order*", "*:1", "*orders*", "a*", "a_*", "a%*", "a\\*",
                         "*b", "a*b", "q:*", "%*", "_*", "*%", "*_*", "orders:1" }
      for _, p in ipairs(patterns) do
        local want = {}
        for _, e in ipairs(all) do
          if matches(p, e.stream) then want[#want + 1] = e.id end
        end
        assert.same(want, V.ids(assert(E.query(p, { limit = 100000 }))), "pattern " .. p)
      end
    end)
  end)
end)
