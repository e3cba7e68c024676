-- Schedules through the API against the real PostgreSQL: moonq.schedule,
-- moonq.unschedule and moonq.schedules from Lua, the SQL functions of the
-- same names, and `moonq schedule|unschedule|schedules` on the command
-- line. What each stores is read back from the schedule table; next fire
-- times are checked against the clock of the schedule's zone. A schedule
-- made from SQL that cron.c refuses is disabled, with the reason, by the
-- first process that loads it.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

local function null(v) return v == moonq.null end

-- The local wall-clock time and offset of an ISO 8601 time with an offset.
local function parts(iso)
  local date, hm, off = iso:match("^(%d%d%d%d%-%d%d%-%d%d)T(%d%d:%d%d):00([%+%-Z][%d:]*)$")
  return date, hm, off
end

describe("schedules API", function()
  local schema

  setup(function()
    schema = W.open({ handlers = W.handlers_dir({}) })
  end)

  teardown(W.close)

  before_each(function()
    W.sql("DELETE FROM @.schedule")
  end)

  describe("moonq.schedule", function()
    it("stores a schedule and returns it with its next fire time in its zone", function()
      local s = assert(moonq.schedule("nightly", "30 2 * * *", { keep = 7 },
        { tz = "Europe/Berlin", job = "cleanup", backfill = "1h", priority = 5, retry_limit = 1 }))
      assert.equal("nightly", s.name)
      assert.equal("30 2 * * *", s.cron)
      assert.equal("Europe/Berlin", s.tz)
      assert.equal("cleanup", s.job)
      assert.same({ keep = 7 }, s.data)
      assert.same({ priority = 5, retry_limit = 1 }, s.options)
      assert.equal("1h", s.backfill)
      assert.is_true(s.enabled)
      assert.equal("api", s.source)
      -- fields without a value are nil, as documented (not moonq.null)
      assert.is_nil(s.error)
      assert.is_nil(s.last)
      -- 02:30 Berlin time (03:00 on the spring-forward day), within a day
      local date, hm, off = parts(s.next)
      assert.is_truthy(date, s.next)
      assert.is_true(hm == "02:30" or hm == "03:00", s.next)
      assert.is_true(off == "+01:00" or off == "+02:00", s.next)
      local r = W.row([[SELECT extract(epoch FROM $1::timestamptz - now())::float8 AS ahead,
                               to_char($1::timestamptz AT TIME ZONE 'Europe/Berlin', 'HH24:MI') AS local
                          ]], s.next)
      assert.is_true(r.ahead > 0 and r.ahead <= 86400 + 3600, s.next)
      assert.equal(hm, r["local"])

      local row = W.row("SELECT * FROM @.schedule WHERE name = 'nightly'")
      assert.equal("cleanup", row.job)
      assert.same({ keep = 7 }, row.data)
      assert.same({ priority = 5, retry_limit = 1 }, row.options)
      assert.equal(3600, row.backfill_seconds)
      assert.is_true(null(row.backfill_slots))
      assert.equal("api", row.source)
    end)

    it("takes backfill as a count, as whole seconds, or none", function()
      assert.equal("5 slots", assert(moonq.schedule("a", "@hourly", nil, { backfill = "5 slots" })).backfill)
      assert.equal(5, W.row("SELECT backfill_slots FROM @.schedule WHERE name = 'a'").backfill_slots)
      assert.equal("1h30m", assert(moonq.schedule("b", "@hourly", nil, { backfill = 5400 })).backfill)
      -- a float with an integral value is whole seconds, as in config.lua
      assert.equal("1h", assert(moonq.schedule("b2", "@hourly", nil, { backfill = 3600.0 })).backfill)
      assert.is_nil(assert(moonq.schedule("c", "@hourly", nil, { backfill = false })).backfill)
      assert.is_nil(assert(moonq.schedule("c", "@hourly", nil, { backfill = 0 })).backfill)
      assert.equal("UTC", assert(moonq.schedule("c", "@hourly")).tz)
      -- UTC times end in Z; @every counts from the Unix epoch
      local s = assert(moonq.schedule("d", "@every 1h"))
      local _, hm, off = parts(s.next)
      assert.equal("Z", off)
      assert.equal("00", hm:sub(4, 5))
    end)

    it("replaces a schedule, keeping its history; an unchanged one is not written", function()
      assert(moonq.schedule("r", "0 * * * *", { v = 1 }))
      W.sql("UPDATE @.schedule SET last_slot = '2026-01-01 10:00Z', changed_at = '2026-01-01Z' WHERE name = 'r'")
      local before = W.row("SELECT version, updated_at::text AS u, changed_at::text AS c FROM @.schedule WHERE name = 'r'")
      assert(moonq.schedule("r", "0 * * * *", { v = 1 }))
      local same = W.row("SELECT version, updated_at::text AS u, changed_at::text AS c FROM @.schedule WHERE name = 'r'")
      assert.same(before, same)
      -- new data: written, but neither the slots nor the firing processes' view change
      assert(moonq.schedule("r", "0 * * * *", { v = 2 }))
      local data = W.row("SELECT version, data, changed_at::text AS c, last_slot::text AS l FROM @.schedule WHERE name = 'r'")
      assert.equal(before.version, data.version)
      assert.same({ v = 2 }, data.data)
      assert.equal(before.c, data.c)
      -- a new cron expression: a new version and a new start for missed slots
      local s = assert(moonq.schedule("r", "30 * * * *", { v = 2 }))
      local cron = W.row("SELECT version, changed_at > '2026-01-02Z' AS moved, last_slot FROM @.schedule WHERE name = 'r'")
      assert.is_true(cron.version > before.version)
      assert.is_true(cron.moved)
      assert.is_false(null(cron.last_slot))
      assert.equal("2026-01-01T10:00:00Z", s.last)
    end)

    it("returns nil and a message for a bad expression, zone, backfill or option", function()
      local cases = {
        { { "x", "61 * * * *" }, 'cron: "61 * * * *": minute field: 61 is out of range 0-59' },
        { { "x", "* * * *" }, 'cron: "* * * *": 4 fields, expected 5 or 6' },
        { { "x", "0 0 30 2 *" }, 'cron: "0 0 30 2 *" never fires (no fire time within 8 years)' },
        { { "x", "* * * * *", nil, { tz = "Mars/Olympus" } }, 'tz: unknown time zone "Mars/Olympus"' },
        { { "x", "* * * * *", nil, { backfill = "1x" } }, 'backfill: expected a duration ("30m", "1h", "1d12h"), seconds or a count ("5 slots"), got "1x"' },
        { { "x", "* * * * *", nil, { backfill = "2000 slots" } }, "backfill: a count of slots must be 1 to 1000, got 2000" },
        { { "", "* * * * *" }, "name: a schedule name must be 1 to 200 bytes, got 0" },
        { { "x", "* * * * *", nil, { frobnicate = 1 } }, 'unknown option "frobnicate"' },
        { { "x", "* * * * *", nil, { run_id = "r" } }, 'option "run_id" cannot be given to a schedule (each fire sets it)' },
        { { "x", "* * * * *", nil, { priority = "high" } }, 'option "priority" must be an integer, got "high"' },
        { { "x", "* * * * *", { f = print } }, "data.f" },
        { { "x", "* * * * *", nil, { backfill = 1.5 } }, 'backfill: expected a duration ("30m", "1h", "1d12h"), seconds or a count ("5 slots"), got "1.5"' },
        { { "x", "* * * * *", nil, { tz = "" } }, 'tz: tz must be a time zone name such as "Europe/Berlin" (leave it out for UTC)' },
        { { "x", "* * * * *", nil, { job = "" } }, "job: job must be a job name (leave it out to enqueue the schedule's name)" },
        { { "x", "* * * * *", nil, { tz = "europe/berlin" } }, 'tz: unknown time zone "europe/berlin"' },
        { { "x", "* * * * *", nil, { tz = "localtime" } }, "tz: " },
        { { "x", "* * * * *", nil, { tz = "right/UTC" } }, "tz: " },
        { { "a\0b", "* * * * *" }, "must not contain NUL bytes" },
        { { "x", "* * * * *\0 junk" }, "must not contain NUL bytes" },
        { { "x", "* * * * *", nil, { tz = "Europe/Berlin\0x" } }, "must not contain NUL bytes" },
        { { "x", "* * * * *", nil, { job = "tick\0x" } }, "must not contain NUL bytes" },
        { { "x", "* * * * *", nil, { backfill = "1h\0x" } }, "must not contain NUL bytes" },
        { { "x", "* * * * *", nil, { backfill = "" } }, "backfill: an empty string is no backfill" },
        { { "two\nlines", "* * * * *" }, "name: a schedule name must not contain control characters" },
      }
      for _, c in ipairs(cases) do
        local s, err = moonq.schedule(table.unpack(c[1], 1, 4))
        assert.is_nil(s)
        assert.matches(c[2], err, 1, true)
      end
      assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule").n)
      -- unschedule refuses a name with NUL instead of deleting "a"
      assert(moonq.schedule("a", "@daily"))
      local gone, err = moonq.unschedule("a\0b")
      assert.is_nil(gone)
      assert.matches("NUL", err)
      assert.equal(1, W.row("SELECT count(*) AS n FROM @.schedule WHERE name = 'a'").n)
      assert.is_true(moonq.unschedule("a"))
      -- wrong argument types raise
      assert.has_error(function() moonq.schedule(nil, "* * * * *") end)
      assert.has_error(function() moonq.schedule("x", "* * * * *", nil, "opts") end)
      assert.has_error(function() moonq.schedule("x", "* * * * *", nil, { tz = 1 }) end)
      assert.has_error(function() moonq.schedule("x", "* * * * *", nil, { backfill = {} }) end)
    end)
  end)

  describe("moonq.schedules", function()
    it("lists every schedule by name with its next and last fire time", function()
      assert(moonq.schedule("b", "0 9 * * mon-fri", nil, { tz = "America/New_York" }))
      assert(moonq.schedule("a", "*/15 * * * *"))
      W.sql("UPDATE @.schedule SET last_slot = '2026-07-01 13:00Z' WHERE name = 'b'")
      W.sql("UPDATE @.schedule SET enabled = false, error = 'off for a test' WHERE name = 'a'")
      local list = assert(moonq.schedules())
      assert.equal(2, #list)
      assert.equal("a", list[1].name)
      assert.is_false(list[1].enabled)
      assert.is_nil(list[1].next)
      assert.is_nil(list[1].backfill)
      assert.equal("off for a test", list[1].error)
      assert.is_nil(list[2].error)
      assert.equal("b", list[2].name)
      assert.equal("2026-07-01T09:00:00-04:00", list[2].last)
      local date, hm, off = parts(list[2].next)
      assert.equal("09:00", hm)
      assert.is_true(off == "-04:00" or off == "-05:00")
      local dow = W.row("SELECT extract(isodow FROM $1::date)::int AS d", date).d
      assert.is_true(dow >= 1 and dow <= 5, date)
    end)
  end)

  describe("moonq.unschedule", function()
    it("deletes a schedule and its history; false when there is none", function()
      assert(moonq.schedule("u", "@daily"))
      local id = W.row("SELECT id FROM @.schedule WHERE name = 'u'").id
      W.sql("INSERT INTO @.schedule_fire (schedule_id, slot) VALUES ($1, '2026-01-01Z')", id)
      assert.is_true(moonq.unschedule("u"))
      assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule").n)
      assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule_fire").n)
      assert.is_false(moonq.unschedule("u"))
    end)
  end)

  describe("SQL", function()
    it("schedule(), unschedule() and schedules() work as the Lua API does", function()
      local s = W.row([[SELECT @.schedule('sql', '0 3 * * *', '{"k": 1}',
                        '{"tz": "Europe/Berlin", "backfill": 600, "queue": "maint"}') AS s]]).s
      assert.equal("Europe/Berlin", s.tz)
      assert.equal("10m", s.backfill)
      assert.same({ queue = "maint" }, s.options)
      assert.same({ k = 1 }, s.data)
      local rows = W.sql("SELECT * FROM @.schedules()")
      assert.equal(1, #rows)
      assert.equal("sql", rows[1].name)
      assert.equal("api", rows[1].source)
      assert.equal("10m", rows[1].backfill)
      -- the Lua list computes its next fire time
      local _, hm = parts(assert(moonq.schedules())[1].next)
      assert.equal("03:00", hm)
      local _, err = moonq.db.query(("SELECT %s.schedule('bad', '* * * * *', '{}', '{\"tz\": \"Mars/Olympus\"}')"):format(schema))
      assert.matches('unknown time zone "Mars/Olympus"', err, 1, true)
      _, err = moonq.db.query(("SELECT %s.schedule('bad', 'every day', '{}')"):format(schema))
      assert.matches('"every day": not a cron expression', err, 1, true)
      _, err = moonq.db.query(("SELECT %s.schedule('bad', '@hourly', '{}', '{\"backfill\": \"1 week\"}')"):format(schema))
      assert.matches("backfill: expected a duration", err, 1, true)
      -- false is none, as in Lua; "" is refused
      local none = W.row([[SELECT @.schedule('none', '@hourly', '{}', '{"backfill": false}') AS s]]).s
      assert.equal(moonq.null, none.backfill)
      _, err = moonq.db.query(("SELECT %s.schedule('bad', '@hourly', '{}', '{\"backfill\": \"\"}')"):format(schema))
      assert.matches("backfill: an empty string is no backfill", err, 1, true)
      _, err = moonq.db.query(("SELECT %s.schedule(E'two\\nlines', '@hourly')"):format(schema))
      assert.matches("must not contain control characters", err, 1, true)
      -- data Lua cannot read would fail every fire's job
      _, err = moonq.db.query(("SELECT %s.schedule('huge', '* * * * *', '{\"huge\": 1e400}')"):format(schema))
      assert.matches("data holds a number beyond", err, 1, true)
      _, err = moonq.db.query(("SELECT %s.schedule('deep', '* * * * *', (repeat('[', 130) || '1' || repeat(']', 130))::jsonb)"):format(schema))
      assert.matches("data is nested deeper than 128 levels", err, 1, true)
      assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule WHERE name IN ('huge', 'deep')").n)
      assert.is_true(W.row("SELECT @.unschedule('sql') AS ok").ok)
      assert.is_false(W.row("SELECT @.unschedule('sql') AS ok").ok)
    end)

    it("SQL accepts exactly the zones and names the processes accept", function()
      -- each zone: does cron.c (moonq.schedule checks with it first) take
      -- it, and does SQL's schedule() take it; they must agree
      local zones = { "UTC", "Europe/Berlin", "America/New_York", "Etc/GMT+12", "EST5EDT",
                      "Europe/berlin", "europe/berlin", "utc", "localtime", "right/UTC",
                      "Etc/GMT+25", "GMT+3", "Mars/Olympus", "../etc/passwd", "/etc/localtime" }
      local accepted = {}
      for _, tz in ipairs(zones) do
        local lua_ok = moonq.schedule("z", "@hourly", nil, { tz = tz }) ~= nil
        local rows, err = moonq.db.query(("SELECT %s.schedule('z', '@hourly', '{}', $1)"):format(schema),
          moonq.json.encode({ tz = tz }))
        assert.equal(lua_ok, rows ~= nil, ("zone %q: Lua %s, SQL %s"):format(tz,
          lua_ok and "accepts" or "refuses", rows and "accepts" or ("refuses: " .. tostring(err))))
        if lua_ok then accepted[#accepted + 1] = tz end
      end
      assert.same({ "UTC", "Europe/Berlin", "America/New_York", "Etc/GMT+12", "EST5EDT" }, accepted)
      -- empty tz and job are refused, not read as UTC and the name
      local _, err = moonq.db.query(("SELECT %s.schedule('e', '@hourly', '{}', '{\"tz\": \"\"}')"):format(schema))
      assert.matches('tz must be a time zone name', err, 1, true)
      _, err = moonq.db.query(("SELECT %s.schedule('e', '@hourly', '{}', '{\"job\": \"\"}')"):format(schema))
      assert.matches('job must be a job name', err, 1, true)
      assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule WHERE name = 'e'").n)
    end)

    it("a schedule cron.c refuses is disabled, with the reason, by the first process that loads it", function()
      -- the shape is right, so SQL takes it
      W.sql("SELECT @.schedule('bad', '61 * * * *')")
      W.sql("SELECT @.schedule('good', '0 0 1 1 *')")
      assert(moonq.start())
      local row = W.poll(function()
        local r = W.row("SELECT enabled, error FROM @.schedule WHERE name = 'bad'")
        return not r.enabled and r
      end, 10)
      moonq.stop()
      assert.is_table(row, "the bad schedule was not disabled")
      assert.equal('cron: "61 * * * *": minute field: 61 is out of range 0-59', row.error)
      -- the good one is left alone, with its next slot stored
      local good = W.row("SELECT enabled, error, next_slot = date_trunc('year', now()) + interval '1 year' AS next_ok FROM @.schedule WHERE name = 'good'")
      assert.is_true(good.enabled)
      assert.is_true(null(good.error))
      assert.is_true(good.next_ok)
      local list = assert(moonq.schedules())
      assert.equal("bad", list[1].name)
      assert.equal("disabled", list[1].enabled and "enabled" or "disabled")
    end)
  end)

  describe("the command line", function()
    local config
    local function moonq_cli(args)
      local p = assert(io.popen(("DATABASE_URL=%s %s -c %s %s 2>&1; echo \"rc=$?\"")
        :format(W.shq(W.url), W.shq(W.bin), W.shq(config), args)))
      local out = p:read("a")
      p:close()
      local rc = tonumber(out:match("rc=(%d+)\n$"))
      return out:gsub("rc=%d+\n$", ""), rc
    end

    setup(function()
      config = W.config_file({ schema = schema, log = { level = "warn" } })
    end)

    it("moonq schedule stores, moonq schedules lists, moonq unschedule deletes", function()
      local out, rc = moonq_cli([[schedule report '30 2 * * *' '{"to": "ops"}' --tz Europe/Berlin --backfill '2 slots' --priority 3 --queue reports]])
      assert.equal(0, rc, out)
      assert.matches("^schedule report stored; next %d%d%d%d%-%d%d%-%d%dT0[23]:[03]0:00%+0[12]:00\n$", out)
      local row = W.row("SELECT tz, data, options, backfill_slots FROM @.schedule WHERE name = 'report'")
      assert.equal("Europe/Berlin", row.tz)
      assert.same({ to = "ops" }, row.data)
      assert.same({ priority = 3, queue = "reports" }, row.options)
      assert.equal(2, row.backfill_slots)

      W.sql("UPDATE @.schedule SET last_slot = '2026-03-29 01:00Z' WHERE name = 'report'")
      out, rc = moonq_cli("schedules")
      assert.equal(0, rc, out)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.matches("^NAME%s+CRON%s+TZ%s+NEXT%s+LAST$", lines[1])
      assert.matches("^report%s+30 2 %* %* %*%s+Europe/Berlin%s+%S+%s+2026%-03%-29T03:00:00%+02:00$", lines[2])
      local next = lines[2]:match("Europe/Berlin%s+(%S+)")
      assert.equal(assert(moonq.schedules())[1].next, next)

      -- columns stay aligned past their default widths
      local long = ("a-schedule-name-longer-than-the-column-%d"):format(1)
      assert(moonq.schedule(long, "0 9 * * mon-fri", nil, { tz = "America/Argentina/Buenos_Aires" }))
      out = moonq_cli("schedules")
      lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equal(3, #lines, out)
      local col = lines[1]:find("NEXT", 1, true)
      for i = 2, 3 do
        assert.matches("^%S", lines[i]:sub(col), 1)
        assert.matches(" $", lines[i]:sub(1, col - 1))
      end
      assert(moonq.unschedule(long))

      out, rc = moonq_cli("schedule bad '61 * * * *'")
      assert.equal(1, rc)
      assert.equal('moonq schedule: cron: "61 * * * *": minute field: 61 is out of range 0-59\n', out)
      out, rc = moonq_cli("schedule bad")
      assert.equal(2, rc)
      assert.matches("expected NAME CRON %[JSON%]", out)
      out, rc = moonq_cli("schedule bad '@daily' --run-id x")
      assert.equal(2, rc)
      assert.matches("unknown option %-%-run%-id", out)

      out, rc = moonq_cli("unschedule report")
      assert.equal(0, rc, out)
      assert.equal("schedule report deleted\n", out)
      out, rc = moonq_cli("unschedule report")
      assert.equal(1, rc)
      assert.equal('moonq unschedule: no schedule "report"\n', out)
      assert.equal(0, W.row("SELECT count(*) AS n FROM @.schedule").n)
    end)
  end)
end)
