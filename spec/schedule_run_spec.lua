-- Schedules fired by `moonq run` processes against the real PostgreSQL:
-- three processes run a schedule that fires every second, made from SQL
-- while they run (its NOTIFY wakes them); for ~10 s every process tries
-- every slot and the database lets exactly one enqueue its job: one job
-- per slot, no slot twice, none missing. A schedule removed from
-- config.lua stops firing (disabled, its history kept; one that never
-- fired is deleted). A bad cron expression or zone in config.lua stops
-- `moonq run` at start with the key path and cron.c's message. With
-- workers = 2 only the first worker process fires.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

local RUN_FOR = 10 -- seconds the every-second schedule runs

-- A config.lua for `moonq run` in a temp dir; `schedules` is Lua source.
local function config(schema, handlers, extra)
  local path = W.tmpdir() .. "/config.lua"
  W.write(path, ([[
return {
  schema = %q, handlers = %q, hot_reload = false, shutdown_grace = 2,
  queue = { retry_limit = 0, poll_interval = 1 },
  log = { level = "debug" },
  %s
}
]]):format(schema, handlers, extra or ""))
  return path
end

-- Starts `moonq run` and waits until it serves; returns pid, log, rc.
local function start(path)
  local pid, log, rc = W.moonq_run(path)
  local up = W.poll(function() return (W.read(log) or ""):find("moonq: running", 1, true) end, 20, 0.05)
  assert.is_truthy(up, "moonq run did not start:\n" .. (W.read(log) or ""))
  return pid, log, rc
end

local function stop(pid, rc, log)
  assert.is_truthy(W.signal(pid, "TERM"))
  assert.equal(0, W.poll(rc, 15), "exit status\n" .. (W.read(log) or ""))
end

local function count_lines(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do n = n + 1 end
  return n
end

-- Fired slots of schedule `name` (Unix seconds), oldest first.
local function slots(name)
  local out = {}
  for i, r in ipairs(W.sql([[SELECT extract(epoch FROM f.slot)::bigint AS slot
                               FROM @.schedule_fire f JOIN @.schedule s ON s.id = f.schedule_id
                              WHERE s.name = $1 ORDER BY f.slot]], name)) do
    out[i] = r.slot
  end
  return out
end

describe("schedules in moonq run", function()
  local schema, handlers

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    schema = W.open({})
    handlers = W.handlers_dir({ ["tick.lua"] = "return function(job, ctx) return job.run_id end" })
  end)

  teardown(W.close)

  it("3 processes fire an every-second schedule made from SQL once per slot", function()
    local path = config(schema, handlers)
    local procs = {}
    for i = 1, 3 do procs[i] = { start(path) } end
    local created = W.row([[SELECT extract(epoch FROM now())::float8 AS t,
                                   @.schedule('every', '* * * * * *', '{}', '{"job": "tick"}') AS s]]).t
    W.sleep(RUN_FOR)
    -- disabled in the database: a fire that comes later finds nothing to fire
    local ended = W.row([[UPDATE @.schedule SET enabled = false WHERE name = 'every'
                          RETURNING extract(epoch FROM now())::float8 AS t]]).t
    W.sleep(1.5)
    local logs = {}
    for i, p in ipairs(procs) do
      stop(p[1], p[3], p[2])
      logs[i] = W.read(p[2]) or ""
    end

    local list = slots("every")
    local expected = math.floor(ended) - math.floor(created)
    assert.is_true(math.abs(#list - expected) <= 1,
      ("%d slots fired between %.3f and %.3f: %s"):format(#list, created, ended, table.concat(list, ",")))
    assert.is_true(#list >= RUN_FOR - 2)
    for i, slot in ipairs(list) do
      assert.is_true(slot > created and slot <= ended, "slot " .. slot .. " outside the run")
      if i > 1 then assert.equal(list[i - 1] + 1, slot, "a slot is missing: " .. table.concat(list, ",")) end
    end
    -- one job per slot, its slot in its run_id, none twice
    local jobs = W.sql([[SELECT run_id, count(*) AS n FROM @.all_jobs
                          WHERE name = 'tick' GROUP BY run_id ORDER BY run_id]])
    assert.equal(#list, #jobs)
    for i, j in ipairs(jobs) do
      assert.equal(1, j.n, j.run_id .. " enqueued twice")
      local iso = W.row("SELECT to_char(to_timestamp($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS t",
        list[i]).t
      assert.equal("schedule:every:" .. iso, j.run_id)
    end
    assert.equal(#list, W.row("SELECT count(*) AS n FROM @.job_archive WHERE name = 'tick' AND state = 'completed'").n)
    -- every process tried the slots (all but those before it read the new
    -- schedule); the database let one through
    local won = 0
    for i, text in ipairs(logs) do
      local tried = count_lines(text, "schedules: fire slots=1 fired=[01]")
      assert.is_true(tried >= #list / 2, ("process %d tried %d of %d slots\n%s"):format(i, tried, #list, text))
      won = won + count_lines(text, "schedules: fire slots=1 fired=1")
    end
    assert.equal(#list, won)
  end)

  it("a schedule removed from config.lua stops firing: disabled when it fired, deleted when not", function()
    local both = config(schema, handlers, [[schedules = {
    { name = "keep", cron = "* * * * * *", job = "tick" },
    { name = "gone", cron = "* * * * * *", job = "tick", data = { v = 1 } },
    { name = "never", cron = "0 0 1 1 *", job = "tick" },
  },]])
    local pid, log, rc = start(both)
    assert.is_truthy(W.poll(function() return #slots("gone") >= 2 end, 10, 0.1), W.read(log))
    stop(pid, rc, log)
    local sources = W.sql("SELECT name, source, enabled FROM @.schedule WHERE name IN ('keep', 'gone', 'never') ORDER BY name")
    assert.equal(3, #sources)
    for _, r in ipairs(sources) do
      assert.equal("config", r.source)
      assert.is_true(r.enabled)
    end

    local one = config(schema, handlers, [[schedules = {
    { name = "keep", cron = "* * * * * *", job = "tick" },
  },]])
    pid, log, rc = start(one)
    local gone = #slots("gone")
    local keep = #slots("keep")
    W.sleep(2.5)
    assert.is_true(#slots("keep") >= keep + 2, "keep stopped firing\n" .. W.read(log))
    assert.equal(gone, #slots("gone"), "a schedule removed from config.lua still fires")
    stop(pid, rc, log)
    local g = W.row("SELECT enabled, source, last_slot FROM @.schedule WHERE name = 'gone'")
    assert.is_false(g.enabled)
    assert.equal("config", g.source)
    assert.are_not.equal(moonq.null, g.last_slot)
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule WHERE name = 'never'").n)
    -- back in config.lua: enabled again, its missed slots not made up for
    local t = W.now()
    pid, log, rc = start(both)
    assert.is_truthy(W.poll(function() return #slots("gone") > gone end, 10, 0.1))
    stop(pid, rc, log)
    local fired = W.sql([[SELECT extract(epoch FROM f.slot)::float8 AS slot FROM @.schedule_fire f
                           JOIN @.schedule s ON s.id = f.schedule_id
                          WHERE s.name = 'gone' ORDER BY f.slot OFFSET $1]], gone)
    for _, f in ipairs(fired) do assert.is_true(f.slot > t - 1, "a slot of the disabled time fired") end
    W.sql("DELETE FROM @.schedule")
  end)

  it("a bad cron expression, zone or backfill in config.lua stops moonq run at start", function()
    local cases = {
      { [[{ name = "a", cron = "* * * * *" }, { name = "b", cron = "61 * * * *" }]],
        'schedules[2].cron: "61 * * * *": minute field: 61 is out of range 0-59' },
      { [[{ name = "a", cron = "0 3 * * *", tz = "Mars/Olympus" }]],
        'schedules[1].tz: unknown time zone "Mars/Olympus"' },
      { [[{ name = "a", cron = "@daily", backfill = "a while" }]],
        'schedules[1].backfill: expected a duration ("30m", "1h", "1d12h"), seconds or a count ("5 slots"), got "a while"' },
      { [[{ name = "a", cron = "@daily", tz = "" }]],
        'schedules[1].tz: expected a non-empty string, got string ""' },
      { [[{ name = "a", cron = "@daily", job = "" }]],
        'schedules[1].job: expected a non-empty string, got string ""' },
      { [[{ name = "a", cron = "@daily", tz = "europe/berlin" }]],
        'schedules[1].tz: unknown time zone "europe/berlin"' },
      -- what only PostgreSQL checks names the schedule too
      { [[{ name = "a", cron = "@daily" }, { name = "b", cron = "@daily", options = { prio = 1 } }]],
        'schedules[2] (name "b"): unknown option "prio"' },
      { [[{ name = "a", cron = "@daily", options = { priority = "high" } }]],
        'schedules[1] (name "a"): option "priority" must be an integer' },
    }
    for _, c in ipairs(cases) do
      local path = config(schema, handlers, "schedules = { " .. c[1] .. " },")
      local p = assert(io.popen(("DATABASE_URL=%s %s run --config %s 2>&1; echo \"rc=$?\"")
        :format(W.shq(W.url), W.shq(W.bin), W.shq(path))))
      local out = p:read("a")
      p:close()
      assert.matches("rc=1\n$", out)
      assert.matches(c[2], out, 1, true)
      assert.is_nil(out:find("(hint: )", 1, true), out)
      if not c[2]:find("(name", 1, true) then
        assert.matches("moonq: " .. path .. ": " .. c[2], out, 1, true)
      end
    end
    assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule").n)
  end)

  it("warns of a config.lua schedule whose job no handler of the process runs", function()
    local path = config(schema, handlers, [[schedules = {
    { name = "orphan", cron = "@yearly", job = "nobody" },
    { name = "fine", cron = "@yearly", job = "tick" } },]])
    local pid, log, rc = start(path)
    stop(pid, rc, log)
    local text = W.read(log)
    assert.matches("no handler here for a schedule's job name=orphan job=nobody", text, 1, true)
    assert.is_nil(text:find("name=fine job=tick", 1, true), text)
    W.sql("DELETE FROM @.schedule")
  end)

  it("with workers = 2 only the first worker process fires", function()
    local path = config(schema, handlers, [[workers = 2,
  schedules = { { name = "pre", cron = "* * * * * *", job = "tick" } },]])
    local pid, log, rc = W.moonq_run(path)
    assert.is_truthy(W.poll(function() return #slots("pre") >= 3 end, 15, 0.1), W.read(log))
    stop(pid, rc, log)
    local text = W.read(log)
    assert.is_true(count_lines(text, "DEBUG w1 schedules: fire slots=") >= 3, text)
    assert.equal(0, count_lines(text, "DEBUG w2 schedules: fire"))
    assert.equal(0, count_lines(text, "DEBUG w2 schedules: loaded"))
  end)
end)
