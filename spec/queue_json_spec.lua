-- Job data and outputs round-trip exactly (big integers, floats, null,
-- empty arrays, unicode) through send -> fetch -> complete -> SQL, and the
-- SQL-side send works inside the application's own transactions.
local moonq = require "moonq"
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")
local Q = moonq.queue

local BIG = 9007199254740993          -- 2^53 + 1: not representable as a double
local MIN = math.mininteger           -- -9223372036854775808

describe("queue JSON", function()
  setup(function() H.open({}) end)
  teardown(H.close)

  it("big integers survive send -> fetch -> complete -> SQL and get", function()
    local id = assert(Q.send("big", { big = BIG, min = MIN, list = { BIG, MIN } }))
    local stored = H.row("SELECT data->>'big' AS big, data->>'min' AS min FROM @.job WHERE id = $1", id)
    assert.equal("9007199254740993", stored.big)
    assert.equal("-9223372036854775808", stored.min)

    local jobs = assert(Q.fetch("big", 1))
    local data = jobs[1].data
    assert.equal("integer", math.type(data.big))
    assert.equal(BIG, data.big)
    assert.equal("integer", math.type(data.min))
    assert.equal(MIN, data.min)
    assert.equal(BIG, data.list[1])
    assert.equal(MIN, data.list[2])

    -- the "handler" returns what it got
    assert.is_true(Q.complete(id, { big = data.big, min = data.min }))
    local out = H.row([[SELECT output->>'big' AS big, output->>'min' AS min,
                               jsonb_typeof(output->'big') AS t FROM @.job_archive WHERE id = $1]], id)
    assert.equal("9007199254740993", out.big)
    assert.equal("-9223372036854775808", out.min)
    assert.equal("number", out.t)

    local j = assert(Q.get(id))
    assert.equal("integer", math.type(j.output.big))
    assert.equal(BIG, j.output.big)
    assert.equal("integer", math.type(j.output.min))
    assert.equal(MIN, j.output.min)
    assert.equal(BIG, j.data.big)
  end)

  it("a job sent with SQL arrives in Lua with its integer exact", function()
    local id = H.row("SELECT @.send('j', '{\"id\": 9007199254740993}') AS id").id
    assert.equal("integer", math.type(id))
    local jobs = assert(Q.fetch("j", 1))
    assert.equal(id, jobs[1].id)
    assert.equal("integer", math.type(jobs[1].data.id))
    assert.equal(BIG, jobs[1].data.id)
  end)

  it("SQL send_many enqueues one job per element, ids in order", function()
    local rows = H.sql([[SELECT unnest(@.send_many('sm', '[{"n":1},{"n":2},{"n":3}]', '{"priority": 2}')) AS id]])
    assert.equal(3, #rows)
    local jobs = assert(Q.fetch("sm", 10))
    assert.same({ rows[1].id, rows[2].id, rows[3].id }, H.ids(jobs))
    for i, j in ipairs(jobs) do
      assert.same({ n = i }, j.data)
      assert.equal(2, j.priority)
    end
  end)

  it("floats, integers, null, empty arrays and objects, unicode keep their kind", function()
    local data = {
      f = 0.1, one = 1.0, int = 3, neg = -2.5e-7,
      none = moonq.null,
      empty_list = setmetatable({}, moonq.array_mt),
      empty_obj = {},
      text = "grüße \u{1F600} \"quoted\" \\ \n",
      nested = { { a = { b = { true, false } } } },
    }
    local id = assert(Q.send("kinds", data))
    local d = assert(Q.fetch("kinds", 1))[1].data
    assert.equal(0.1, d.f)
    assert.equal("float", math.type(d.one))
    assert.equal(1.0, d.one)
    assert.equal("integer", math.type(d.int))
    assert.equal(-2.5e-7, d.neg)
    assert.equal(moonq.null, d.none)
    assert.equal(data.text, d.text)
    assert.same({ { a = { b = { true, false } } } }, d.nested)
    assert.is_nil(next(d.empty_list))
    assert.is_nil(next(d.empty_obj))
    assert.equal(moonq.array_mt, getmetatable(d.empty_list))
    assert.are_not.equal(moonq.array_mt, getmetatable(d.empty_obj))
    local types = H.row([[SELECT jsonb_typeof(data->'empty_list') AS l, jsonb_typeof(data->'empty_obj') AS o,
                                 jsonb_typeof(data->'none') AS n FROM @.job WHERE id = $1]], id)
    assert.equal("array", types.l)
    assert.equal("object", types.o)
    assert.equal("null", types.n)
    -- output of any JSON kind, a bare array included
    assert.is_true(Q.complete(id, { 1, 2.5, "x" }))
    assert.same({ 1, 2.5, "x" }, Q.get(id).output)
  end)

  it("a structured error is stored as given", function()
    local id = assert(Q.send("errs", {}, { retry_limit = 0 }))
    assert(Q.fetch("errs", 1))
    assert(Q.fail(id, { message = "bad", code = BIG, trace = { "a", "b" } }))
    local e = H.row("SELECT error->>'code' AS code, error FROM @.job_archive WHERE id = $1", id)
    assert.equal("9007199254740993", e.code)
    assert.same({ message = "bad", code = BIG, trace = { "a", "b" } }, e.error)
  end)

  describe("SQL send in the application's transaction", function()
    local function psql_send(finish)
      local out, ok = H.psql(("BEGIN;\nSELECT %s.send('tx', '{\"a\": 1}');\n%s;\n"):format(H.schema, finish))
      assert.is_truthy(ok, out)
      return out
    end

    it("rolled back: enqueues nothing", function()
      local out = psql_send("ROLLBACK")
      assert.matches("^%s*%d+%s*$", out) -- the send itself ran and returned an id
      assert.equal(0, Q.counts("tx").waiting)
      assert.equal(0, H.row("SELECT count(*) AS n FROM @.job WHERE queue = 'tx'").n)
      assert.same({}, assert(Q.fetch("tx", 10)))
    end)

    it("committed: enqueues the job", function()
      local out = psql_send("COMMIT")
      local id = tonumber(out:match("%d+"))
      assert.equal(1, Q.counts("tx").waiting)
      local jobs = assert(Q.fetch("tx", 10))
      assert.same({ id }, H.ids(jobs))
      assert.same({ a = 1 }, jobs[1].data)
    end)
  end)
end)
