-- The moonq Lua module from stock lua5.4/busted: open a runtime on the test
-- database, run parameterised SQL through the asynchronous pool, close.
local moonq = require "moonq"

local schema = ("t_spec_%d"):format(math.random(1, 1e9))

describe("moonq module", function()
  setup(function()
    assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema }))
  end)

  teardown(function()
    moonq.db.query("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")
    moonq.close()
  end)

  it("has a version and the null sentinel", function()
    assert.is_string(moonq.version)
    assert.equal(require("cjson").null, moonq.null)
    assert.is_true(moonq.is_open())
  end)

  it("tells the wall-clock time as PostgreSQL does, to the microsecond, and a monotonic time", function()
    local db = assert(moonq.db.query("SELECT extract(epoch FROM clock_timestamp())::float8 AS t"))[1].t
    local now = moonq.now()
    assert.is_true(math.abs(now - db) < 5, ("moonq.now() %f, PostgreSQL %f"):format(now, db))
    -- sub-second precision: 50 readings are not all whole seconds
    local fractional = false
    for _ = 1, 50 do
      local t = moonq.now()
      if t ~= math.floor(t) then fractional = true end
    end
    assert.is_true(fractional)
    local m0 = moonq.monotonic()
    moonq.sleep(0.05)
    local m1 = moonq.monotonic()
    assert.is_true(m1 - m0 >= 0.03 and m1 - m0 < 5, tostring(m1 - m0))
  end)

  it("refuses to open twice", function()
    assert.has_error(function() moonq.open({}) end,
      "moonq is already open (call moonq.close() first)")
  end)

  it("applied the migrations into the configured schema", function()
    local rows = assert(moonq.db.query(
      "SELECT count(*) AS n FROM " .. schema .. ".migrations"))
    assert.is_true(rows[1].n >= 1)
    local proc = assert(moonq.db.query("SELECT to_regclass($1) AS t", schema .. ".process"))
    assert.equal(schema .. ".process", proc[1].t)
  end)

  it("converts parameters and columns by type", function()
    local rows, count = moonq.db.query(
      "SELECT $1::bigint AS big, $2::float8 AS f, $3::bool AS b, $4::text AS s, "
        .. "$5::text AS n, $6::jsonb AS j, 12.50::numeric AS num",
      9007199254740993, 0.1, true, "x'y", nil, { id = -9223372036854775807 - 1, list = { 1, 2.5 } })
    assert.equal(1, count)
    local r = rows[1]
    assert.equal(9007199254740993, r.big)
    assert.equal("integer", math.type(r.big))
    assert.equal(0.1, r.f)
    assert.is_true(r.b)
    assert.equal("x'y", r.s)
    assert.equal(moonq.null, r.n)
    assert.equal(math.mininteger, r.j.id)
    assert.equal(2.5, r.j.list[2])
    assert.equal("12.50", r.num)
  end)

  it("returns nil and the server's message for a bad statement", function()
    local rows, err = moonq.db.query("SELECT 1/0")
    assert.is_nil(rows)
    assert.matches("division by zero", err)
    assert.matches("SQLSTATE 22012", err)
    -- and the pool is still fine afterwards
    assert.equal(2, moonq.db.query("SELECT 2 AS v")[1].v)
  end)

  it("reports affected rows of commands", function()
    assert(moonq.db.query("CREATE TABLE " .. schema .. ".t (v int)"))
    local _, n = assert(moonq.db.query("INSERT INTO " .. schema .. ".t SELECT generate_series(1, 5)"))
    assert.equal(5, n)
  end)
end)

describe("moonq.open settings", function()
  it("applies config log.level, as moonq run does; info when not given", function()
    local schema = ("t_level_%d"):format(math.random(1, 1e9))
    assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema, log = { level = "warn" } }))
    local level = moonq.log.level()
    moonq.db.query("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")
    moonq.close()
    assert.equal("warn", level)
    assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema }))
    level = moonq.log.level()
    moonq.db.query("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")
    moonq.close()
    assert.equal("info", level)
  end)
end)

describe("moonq.open errors", function()
  it("names a bad config key", function()
    local ok, err = moonq.open({ databse = "x" })
    assert.is_nil(ok)
    assert.matches('unknown key "databse"', err, 1, true)
    assert.is_false(moonq.is_open())
  end)

  it("reports a dead database clearly", function()
    -- DATABASE_URL overrides `database`, so this runs without it.
    local script = ([[
      package.path = %q; package.cpath = %q
      local moonq = require "moonq"
      local ok, err = moonq.open({ database = "host=/nonexistent port=1 password=s3cret" })
      io.write(tostring(ok), "|", tostring(err), "|", tostring(moonq.is_open()))
    ]]):format(package.path, package.cpath)
    local path = os.tmpname()
    local file = assert(io.open(path, "w"))
    file:write(script)
    file:close()
    local f = assert(io.popen("env -u DATABASE_URL lua5.4 " .. path .. " 2>/dev/null"))
    local out = f:read("a")
    f:close()
    os.remove(path)
    local ok, err, open = out:match("^(.-)|(.*)|(.-)$")
    assert.equal("nil", ok)
    assert.matches("cannot connect", err)
    assert.is_nil(err:find("s3cret", 1, true))
    assert.equal("false", open)
  end)

end)
