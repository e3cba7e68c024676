-- Schedules firing in this process (moonq.start()) against the real
-- PostgreSQL: each slot enqueues one job with the schedule's job name,
-- data and send options, and the slot in its run_id; changes made while
-- running take effect without a restart; after a simulated downtime (the
-- last fired slot moved back in the table) missed slots are skipped, or
-- backfilled by a duration or a count, oldest first, each once; a slot at
-- or before the last fired one never fires; old rows of fired slots are
-- deleted in batches.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

-- Fired slots of schedule `name` as Unix seconds, oldest first, with their
-- jobs' run_ids (from the job tables).
local function fires(name)
  return W.sql([[
    SELECT extract(epoch FROM f.slot)::bigint AS slot, f.job_id, a.run_id, a.name, a.queue,
           a.priority, a.data
      FROM @.schedule_fire f JOIN @.schedule s ON s.id = f.schedule_id
      LEFT JOIN @.all_jobs a ON a.id = f.job_id
     WHERE s.name = $1 ORDER BY f.slot]], name)
end

local function slots(name)
  local out = {}
  for i, f in ipairs(fires(name)) do out[i] = f.slot end
  return out
end

-- Asserts that list holds consecutive integers (a slot every second).
local function assert_consecutive(list, what)
  for i = 2, #list do
    assert.equal(list[i - 1] + 1, list[i], what .. ": slots " .. table.concat(list, ","))
  end
end

describe("schedules firing", function()
  local schema

  setup(function()
    local dir = W.handlers_dir({
      ["tick.lua"] = [[
local moonq = require "moonq"
return {
  queue = "ticks",
  handler = function(job, ctx)
    assert(moonq.db.query("INSERT INTO " .. job.data.schema .. ".seen VALUES ($1, $2)", job.id, job.run_id))
  end,
}]],
    })
    schema = W.open({ handlers = dir, queue = { poll_interval = 0.5 } })
    W.sql("CREATE TABLE @.seen (job_id bigint, run_id text)")
  end)

  teardown(function()
    moonq.stop()
    W.close()
  end)

  before_each(function()
    moonq.stop()
    W.sql("DELETE FROM @.schedule")
    W.sql("DELETE FROM @.schedule_fire")
    W.sql("DELETE FROM @.job")
    W.sql("DELETE FROM @.job_archive")
    W.sql("DELETE FROM @.seen")
  end)

  it("enqueues a job per slot with the schedule's job, data and options; the job sees its slot", function()
    assert(moonq.schedule("every-second", "* * * * * *", { schema = schema },
      { job = "tick", priority = 4, queue = "ticks", retry_limit = 0 }))
    assert(moonq.start())
    W.run_for(3.5)
    local list = fires("every-second")
    assert.is_true(#list >= 2 and #list <= 5, #list .. " slots fired in 3.5 s")
    local ids = {}
    for i, f in ipairs(list) do ids[i] = f.job_id end
    assert.is_true(W.wait_all(ids, 10), "the jobs did not run")
    moonq.stop()
    local seen = {}
    for _, r in ipairs(W.sql("SELECT job_id, run_id FROM @.seen")) do seen[r.job_id] = r.run_id end
    for _, f in ipairs(list) do
      local iso = W.row("SELECT to_char(to_timestamp($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS t", f.slot).t
      assert.equal("schedule:every-second:" .. iso, f.run_id)
      assert.equal("tick", f.name)
      assert.equal("ticks", f.queue)
      assert.equal(4, f.priority)
      assert.same({ schema = schema }, f.data)
      -- the handler ran and saw its slot
      assert.equal(f.run_id, seen[f.job_id])
    end
    assert_consecutive(slots("every-second"), "every-second")
    local s = assert(moonq.schedules())[1]
    assert.equal(W.row("SELECT to_char(to_timestamp($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS t",
      list[#list].slot).t, s.last)
  end)

  it("fires a schedule made or changed while running, and stops firing one deleted", function()
    assert(moonq.start())
    W.run_for(0.3)
    -- made from SQL, as an application would: the NOTIFY wakes this process
    W.sql([[SELECT @.schedule('sql-made', '* * * * * *', jsonb_build_object('schema', $1::text), '{"job": "tick"}')]], schema)
    assert.is_true(moonq.run_until(function() return #fires("sql-made") >= 2 end, 5), "no fire after a change from SQL")
    -- changed to a slot every 2 seconds: even seconds only from then on
    local changed = W.now()
    assert(moonq.schedule("sql-made", "*/2 * * * * *", { schema = schema }, { job = "tick" }))
    -- (a slot the old definition armed may fire while the change is read)
    local function after_change()
      local list = {}
      for _, slot in ipairs(slots("sql-made")) do
        if slot > changed + 1.5 then list[#list + 1] = slot end
      end
      return list
    end
    assert.is_true(moonq.run_until(function() return #after_change() >= 2 end, 10),
      "the changed schedule did not fire")
    for _, slot in ipairs(after_change()) do assert.equal(0, slot % 2, "odd slot after the change") end
    assert.is_true(moonq.unschedule("sql-made"))
    W.run_for(0.2)
    local jobs = W.row("SELECT count(*) AS n FROM @.all_jobs WHERE run_id LIKE 'schedule:sql-made:%'").n
    W.run_for(2.2)
    moonq.stop()
    assert.equal(jobs, W.row("SELECT count(*) AS n FROM @.all_jobs WHERE run_id LIKE 'schedule:sql-made:%'").n,
      "fired after unschedule")
  end)

  it("stops firing with moonq.stop()", function()
    assert(moonq.schedule("s", "* * * * * *", { schema = schema }, { job = "tick" }))
    assert(moonq.start())
    assert.is_true(moonq.run_until(function() return #fires("s") >= 1 end, 5))
    moonq.stop()
    local n = #fires("s")
    W.sleep(2.2)
    moonq.run_until(function() return false end, 0.2)
    assert.equal(n, #fires("s"))
  end)

  describe("after downtime", function()
    -- Makes every schedule look as if it fired last `ago` seconds ago and
    -- no process ran since; returns the time it starts again (database
    -- clock, before moonq.start()).
    local function down_for(ago)
      W.sql([[UPDATE @.schedule SET changed_at = now() - interval '1 day',
                                    last_slot = date_trunc('second', now()) - make_interval(secs => $1)]], ago)
      return W.now()
    end

    it("skips missed slots but the most recent within a minute, or backfills a duration or a count", function()
      local data, job = { schema = schema }, { job = "tick" }
      assert(moonq.schedule("off", "* * * * * *", data, job))
      assert(moonq.schedule("window", "* * * * * *", data, { job = "tick", backfill = "20s" }))
      assert(moonq.schedule("count", "* * * * * *", data, { job = "tick", backfill = "5 slots" }))
      assert(moonq.schedule("long-off", "*/30 * * * * *", data, job))
      assert(moonq.schedule("minutely", "0 * * * * *", data, { job = "tick", backfill = "3m" }))
      local t0 = down_for(100)
      W.sql("UPDATE @.schedule SET last_slot = last_slot - interval '200 s' WHERE name = 'minutely'")
      assert(moonq.start())
      W.run_for(1.2)
      moonq.stop()
      local t1 = W.now()

      -- off: the latest missed slot (at most a second before the start),
      -- then every slot on time
      local off = slots("off")
      assert.is_true(#off >= 1, "nothing fired")
      assert.is_true(off[1] >= math.floor(t0) and off[1] <= t1, ("first slot %d, start %.3f"):format(off[1], t0))
      assert_consecutive(off, "off")
      -- a duration: every missed slot of the last 20 s
      local window = slots("window")
      assert.is_true(window[1] >= math.floor(t0) - 20 and window[1] <= math.floor(t1) - 19,
        ("first slot %d, start %.3f"):format(window[1], t0))
      assert.is_true(#window >= 20, #window .. " slots")
      assert_consecutive(window, "window")
      -- a count: the 5 most recent missed slots
      local count = slots("count")
      assert.is_true(count[1] >= math.floor(t0) - 4 and count[1] <= math.floor(t1) - 4,
        ("first slot %d, start %.3f"):format(count[1], t0))
      assert_consecutive(count, "count")
      -- every 30 s: the latest missed slot (at most 30 s old), none older
      -- (and one on time if one came while it ran)
      local long = slots("long-off")
      assert.is_true(#long >= 1 and #long <= 2, table.concat(long, ","))
      for _, slot in ipairs(long) do assert.is_true(slot > t0 - 31 and slot % 30 == 0) end
      -- every minute, 300 s down, 3 minutes of backfill: 3 slots (and one
      -- on time if a minute began while it ran)
      local minutely = slots("minutely")
      assert.is_true(#minutely == 3 or (#minutely == 4 and minutely[4] > t0),
        table.concat(minutely, ","))
      for i, slot in ipairs(minutely) do
        assert.equal(0, slot % 60)
        assert.is_true(slot > t0 - 181 and slot <= t1)
        if i > 1 then assert.equal(minutely[i - 1] + 60, slot) end
      end

      -- oldest first: the jobs' ids follow the slots
      for _, name in ipairs({ "window", "count" }) do
        local ids = {}
        for i, f in ipairs(fires(name)) do ids[i] = f.job_id end
        for i = 2, #ids do assert.is_true(ids[i] > ids[i - 1], name .. ": not oldest first") end
      end
      -- each once
      assert.equal(0, W.row([[SELECT count(*) AS n FROM (SELECT run_id FROM @.all_jobs
                               WHERE run_id LIKE 'schedule:%' GROUP BY run_id HAVING count(*) > 1) d]]).n)
      assert.equal(W.row("SELECT count(*) AS n FROM @.schedule_fire").n,
        W.row("SELECT count(*) AS n FROM @.all_jobs WHERE run_id LIKE 'schedule:%'").n)
    end)

    it("many schedules backfilling at once fire every missed slot (fires go oldest first, one at a time)", function()
      -- 30 schedules x 1,000 missed slots: 60 statements of 500 slots. Sent
      -- side by side on the pool's connections, a newer one committed
      -- first and the database refused the older slots of its schedules.
      local names = {}
      for i = 1, 30 do
        names[i] = ("bf%02d"):format(i)
        assert(moonq.schedule(names[i], "* * * * * *", { schema = schema }, { job = "none", backfill = "1000 slots" }))
      end
      W.sql([[UPDATE @.schedule SET changed_at = now() - interval '1 day',
                                    last_slot = date_trunc('second', now()) - interval '2 hours']])
      assert(moonq.start())
      local done = moonq.run_until(function()
        return W.row("SELECT count(*) AS n FROM @.schedule_fire").n >= 30 * 1000
      end, 120)
      moonq.stop()
      local rows = W.sql([[SELECT s.name, count(f.slot) AS n FROM @.schedule s
                            LEFT JOIN @.schedule_fire f ON f.schedule_id = s.id
                           GROUP BY s.name ORDER BY s.name]])
      local short = {}
      for _, r in ipairs(rows) do
        if r.n < 1000 then short[#short + 1] = r.name .. "=" .. r.n end
      end
      assert.is_true(done, "fired slots per schedule: " .. table.concat(short, " "))
      assert.same({}, short)
      for _, name in ipairs(names) do assert_consecutive(slots(name), name) end
    end)

    it("a second start finds nothing missed", function()
      assert(moonq.schedule("window", "*/5 * * * * *", { schema = schema }, { job = "tick", backfill = "1m" }))
      down_for(30)
      assert(moonq.start())
      W.run_for(0.5)
      moonq.stop()
      local first = #fires("window")
      assert.is_true(first >= 6, first .. " slots backfilled")
      assert(moonq.start())
      W.run_for(0.5)
      moonq.stop()
      assert.is_true(#fires("window") <= first + 2)
    end)
  end)

  describe("fire_schedules", function()
    it("fires a slot once, never one at or before the last fired slot, and nothing of a disabled schedule", function()
      assert(moonq.schedule("f", "@hourly", { schema = schema }, { job = "tick" }))
      local id = W.row("SELECT id FROM @.schedule WHERE name = 'f'").id
      local function fire(slot) return W.row("SELECT @.fire_schedules($1, $2, $3) AS n",
        "{" .. id .. "}", "{" .. slot .. "}", "{" .. (slot + 3600) .. "}").n end
      assert.equal(1, fire(1780002000))
      assert.equal(0, fire(1780002000))
      assert.equal(0, fire(1779998400))
      assert.equal(1, fire(1780005600))
      local row = W.row([[SELECT extract(epoch FROM last_slot)::bigint AS last,
                                 extract(epoch FROM next_slot)::bigint AS next FROM @.schedule WHERE id = $1]], id)
      assert.equal(1780005600, row.last)
      assert.equal(1780005600 + 3600, row.next)
      W.sql("UPDATE @.schedule SET enabled = false WHERE id = $1", id)
      assert.equal(0, fire(1780009200))
      assert.equal(2, W.row("SELECT count(*) AS n FROM @.all_jobs WHERE run_id LIKE 'schedule:f:%'").n)
    end)

    it("a slot whose job a singleton_key refuses fires without a job", function()
      assert(moonq.schedule("single", "@hourly", {}, { job = "lonely", singleton_key = "one" }))
      local id = W.row("SELECT id FROM @.schedule WHERE name = 'single'").id
      local ids = "{" .. id .. "," .. id .. "}"
      assert.equal(2, W.row("SELECT @.fire_schedules($1, '{1780002000,1780005600}', '{1780005600,1780005600}') AS n", ids).n)
      local rows = W.sql("SELECT job_id FROM @.schedule_fire WHERE schedule_id = $1 ORDER BY slot", id)
      assert.is_number(rows[1].job_id)
      assert.equal(moonq.null, rows[2].job_id)
      assert.equal(1, W.row("SELECT count(*) AS n FROM @.job WHERE name = 'lonely'").n)
    end)

    it("writes job.created events when job events are on", function()
      W.sql("UPDATE @.settings SET job_events = true")
      assert(moonq.schedule("ev", "@hourly", {}, { job = "evjob" }))
      local id = W.row("SELECT id FROM @.schedule WHERE name = 'ev'").id
      W.sql("SELECT @.fire_schedules($1, '{1780002000}', '{1780005600}')", "{" .. id .. "}")
      W.sql("UPDATE @.settings SET job_events = false")
      local e = W.row("SELECT stream, run_id FROM @.queue_events WHERE type = 'job.created' AND run_id LIKE 'schedule:ev:%'")
      assert.is_table(e)
      assert.equal("schedule:ev:2026-05-28T21:00:00Z", e.run_id)
      assert.matches("^job:evjob:%d+$", e.stream)
    end)
  end)

  it("refuses a slot more than a minute ahead of the database's clock (a host whose clock runs fast)", function()
    assert(moonq.schedule("ahead", "0 0 1 1 *", { x = 1 }))
    local id = W.row("SELECT id FROM @.schedule WHERE name = 'ahead'").id
    local fired = W.row([[SELECT @.fire_schedules(ARRAY[$1::bigint],
                            ARRAY[extract(epoch FROM now() + interval '1 hour')::float8],
                            ARRAY[extract(epoch FROM now() + interval '2 hours')::float8]) AS n]], id).n
    assert.equal(0, fired)
    assert.equal(moonq.null, W.row("SELECT last_slot FROM @.schedule WHERE id = $1", id).last_slot)
    assert(moonq.unschedule("ahead"))
  end)

  it("config syncs, stored next slots and fires running at once never deadlock", function()
    -- Four sessions write the same 12 schedules, each statement its own
    -- transaction: config syncs in descending and in ascending id order
    -- (two hosts starting with the schedules listed in different orders;
    -- every sync changes the data), stored next slots and fires. Row locks
    -- taken in different orders deadlocked (PostgreSQL aborts a session).
    local defs = {}
    for i = 12, 1, -1 do defs[#defs + 1] = { name = ("dl%02d"):format(i), cron = "@yearly", job = "dl" } end
    W.sql("SELECT @.sync_config_schedules($1)", moonq.json.encode(defs))
    local ids = {}
    for _, r in ipairs(W.sql("SELECT id FROM @.schedule WHERE name LIKE 'dl%' ORDER BY id")) do ids[#ids + 1] = r.id end
    local rounds, scripts = 150, { {}, {}, {}, {} }
    local id_list = table.concat(ids, ",")
    local ascending = {}
    for i = #defs, 1, -1 do ascending[#ascending + 1] = defs[i] end
    for n = 1, rounds do
      for _, d in ipairs(defs) do d.data = { n = n } end
      scripts[1][n] = ("SELECT %s.sync_config_schedules(%s);"):format(W.schema,
        "'" .. moonq.json.encode(defs):gsub("'", "''") .. "'")
      scripts[4][n] = ("SELECT %s.sync_config_schedules(%s);"):format(W.schema,
        "'" .. moonq.json.encode(ascending):gsub("'", "''") .. "'")
      scripts[2][n] = ("SELECT %s.store_schedule_next(ARRAY[%s]::bigint[], array_fill(extract(epoch FROM now())::float8 + %d, ARRAY[%d]), array_fill(NULL::text, ARRAY[%d]));")
        :format(W.schema, id_list, n, #ids, #ids)
      scripts[3][n] = ("SELECT %s.fire_schedules(ARRAY[%s]::bigint[], array_fill(extract(epoch FROM now())::float8 + %d * 0.1, ARRAY[%d]), array_fill(extract(epoch FROM now())::float8 + 3600, ARRAY[%d]));")
        :format(W.schema, id_list, n, #ids, #ids)
    end
    local dir, rcs = W.tmpdir(), {}
    for i, lines in ipairs(scripts) do
      local script = ("%s/s%d.sql"):format(dir, i)
      W.write(script, table.concat(lines, "\n") .. "\n")
      rcs[i] = ("%s/rc%d"):format(dir, i)
      W.own(W.bg(('psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -f %s >/dev/null; echo $? > %s')
        :format(W.shq(script), W.shq(rcs[i])), ("%s/log%d"):format(dir, i)))
    end
    assert.is_truthy(W.poll(function()
      for _, rc in ipairs(rcs) do if not W.read(rc) then return false end end
      return true
    end, 120, 0.1), "the sessions did not finish")
    for i, rc in ipairs(rcs) do
      assert.equal("0", W.read(rc):match("%d+"), ("session %d: %s"):format(i, W.read(("%s/log%d"):format(dir, i)) or ""))
    end
    -- and what they wrote is there: the last sync's data, every slot fired once
    assert.same({ n = rounds }, W.row("SELECT data FROM @.schedule WHERE name = 'dl01'").data)
    assert.equal(rounds * #ids, W.row([[SELECT count(*) AS n FROM @.schedule_fire f
                                          JOIN @.schedule s ON s.id = f.schedule_id
                                         WHERE s.name LIKE 'dl%']]).n)
    W.sql("SELECT @.unschedule(name) FROM @.schedule WHERE name LIKE 'dl%'")
  end)

  it("delete_old_fires deletes fired slots older than `keep` in batches, one process at a time", function()
    assert(moonq.schedule("h", "@hourly", {}, { job = "h" }))
    local id = W.row("SELECT id FROM @.schedule WHERE name = 'h'").id
    W.sql([[INSERT INTO @.schedule_fire (schedule_id, slot, fired_at)
            SELECT $1, now() - g * interval '1 hour', now() - g * interval '1 hour'
              FROM generate_series(1, 50) g]], id)
    assert.equal(10, W.row("SELECT @.delete_old_fires(86400 * 0 + 20.5 * 3600, 10) AS n").n)
    assert.equal(20, W.row("SELECT @.delete_old_fires(20.5 * 3600, 1000) AS n").n)
    assert.equal(0, W.row("SELECT @.delete_old_fires(20.5 * 3600, 1000) AS n").n)
    assert.equal(20, W.row("SELECT count(*) AS n FROM @.schedule_fire").n)
  end)
end)
