-- examples/analytics.sql against the real PostgreSQL: each query, run on
-- a seeded set of runs and events in a private schema (moonq.testing),
-- returns the rows it should, in order.
local t = require "moonq.testing"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

-- The statements of the file, in order, comments left out.
local function queries()
  local f = assert(io.open(here .. "../examples/analytics.sql"))
  local text = f:read("a")
  f:close()
  local out = {}
  text = text:gsub("%-%-[^\n]*", "")
  for statement in text:gmatch("([^;]+);") do
    if statement:find("%S") then out[#out + 1] = statement end
  end
  return out
end

-- Runs analytics query `n` on the private schema.
local function run(n)
  return t.sql((queries()[n]:gsub("moonq%.", "@.")))
end

-- One value of SQL computed now (timestamps as the queries print them).
local function value(sql)
  return t.sql("SELECT " .. sql .. " AS v")[1].v
end

local function run_row(flow, id, status, started, seconds, failed_step, error_message)
  t.sql([[INSERT INTO @.queue_flow_index (flow_name, run_id, status, started_at, completed_at,
                                          failed_step, error)
          VALUES ($1, $2, $3, now() - $4::interval,
                  CASE WHEN $5::float8 IS NULL THEN NULL
                       ELSE now() - $4::interval + make_interval(secs => $5::float8) END,
                  $6, CASE WHEN $7::text IS NULL THEN NULL
                           ELSE jsonb_build_object('message', $7::text) END)]],
    flow, id, status, started, seconds, failed_step, error_message)
end

local function event(stream, type, at, run_id, step, attempt)
  t.sql([[INSERT INTO @.queue_events (stream, type, ts, run_id, flow_name, step_name, attempt)
          VALUES ($1, $2, date_trunc('hour', now()) - $3::interval, $4,
                  CASE WHEN $4::text IS NULL THEN NULL ELSE 'order' END, $5, $6)]],
    stream, type, at, run_id, step, attempt)
end

describe("examples/analytics.sql", function()
  setup(function()
    t.open({ handlers = here .. "../handlers" })
    run_row("order", "o1", "completed", "2 hours", 10)
    run_row("order", "o2", "completed", "2 hours", 20)
    run_row("order", "o3", "failed", "1 hour", 5, "charge", "card exploded")
    run_row("order", "o4", "running", "10 minutes", nil)
    run_row("order", "o5", "cancelled", "3 hours", 1)
    run_row("order", "old", "completed", "40 days", 1)
    run_row("signup", "s1", "completed", "2 hours", 2)
    event("flow:order:o1", "order.validated", "2 hours", "o1", "validate", 1)
    event("flow:order:o2", "order.validated", "2 hours", "o2", "validate", 1)
    event("flow:order:o1", "order.charged", "2 hours", "o1", "charge", 1)
    event("flow:order:o3", "step.failed", "1 hour", "o3", "charge", 3)
    event("orders:9", "order.validated", "1 hour")
    event("orders:8", "order.validated", "30 hours") -- older than a day
  end)
  teardown(t.close)

  it("has the five queries", function()
    assert.equal(5, #queries())
  end)

  it("1. counts runs per status per day", function()
    local rows = run(1)
    local day = function(ago)
      return value(("date_trunc('day', (now() - interval '%s') AT TIME ZONE 'UTC')"):format(ago))
    end
    local want = {
      { day = day("3 hours"), flow_name = "order", status = "cancelled", runs = 1 },
      { day = day("2 hours"), flow_name = "order", status = "completed", runs = 2 },
      { day = day("1 hour"), flow_name = "order", status = "failed", runs = 1 },
      { day = day("10 minutes"), flow_name = "order", status = "running", runs = 1 },
      { day = day("2 hours"), flow_name = "signup", status = "completed", runs = 1 },
    }
    -- runs of one day are one row per flow and status: merge the expected
    local merged, keyed = {}, {}
    for _, w in ipairs(want) do
      local k = w.day .. w.flow_name .. w.status
      if keyed[k] then keyed[k].runs = keyed[k].runs + w.runs
      else keyed[k] = w; merged[#merged + 1] = w end
    end
    table.sort(merged, function(a, b)
      if a.day ~= b.day then return a.day < b.day end
      if a.flow_name ~= b.flow_name then return a.flow_name < b.flow_name end
      return a.status < b.status
    end)
    assert.same(merged, rows)
  end)

  it("2. ranks flows by their runs' p95 duration, finished runs only", function()
    local rows = run(2)
    assert.equal(2, #rows)
    assert.equal("order", rows[1].flow_name)
    assert.equal(3, rows[1].runs) -- o1, o2, o3; not the running, cancelled or old ones
    assert.equal(10, tonumber(rows[1].p50_s))
    assert.equal(19, tonumber(rows[1].p95_s))
    assert.equal(20, tonumber(rows[1].max_s))
    assert.equal("signup", rows[2].flow_name)
    assert.equal(2, tonumber(rows[2].max_s))
  end)

  it("3. lists the slowest runs", function()
    local ids = {}
    for i, r in ipairs(run(3)) do ids[i] = r.run_id end
    assert.same({ "o2", "o1", "o3", "s1" }, ids)
    assert.equal("charge", run(3)[3].failed_step)
  end)

  it("4. counts the last day's events by type per hour", function()
    local hour = function(ago)
      return value(("date_trunc('hour', now() AT TIME ZONE 'UTC') - interval '%s'"):format(ago))
    end
    assert.same({
      { hour = hour("2 hours"), type = "order.charged", events = 1 },
      { hour = hour("2 hours"), type = "order.validated", events = 2 },
      { hour = hour("1 hour"), type = "order.validated", events = 1 },
      { hour = hour("1 hour"), type = "step.failed", events = 1 },
    }, run(4))
  end)

  it("5. lists failed runs with the failing step, its error and attempts", function()
    local rows = run(5)
    assert.equal(1, #rows)
    assert.equal("o3", rows[1].run_id)
    assert.equal("charge", rows[1].failed_step)
    assert.equal("card exploded", rows[1].error)
    assert.equal(3, rows[1].attempts)
  end)
end)
