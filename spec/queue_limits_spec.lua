-- PostgreSQL's limits checked where values come in (sql/014_limits.sql):
-- JSON that Lua cannot represent, durations, names in bytes, NOTIFY
-- payloads, config.lua and handler files; readers of data stored before the
-- limits; one bad row in a release batch; errors that name what is wrong.
local moonq = require "moonq"
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")
local Q = moonq.queue

-- Runs SQL on a connection of its own (psql); returns output and whether
-- it succeeded.
local function psql(sql)
  local out, ok = H.psql((sql:gsub("@%.", H.schema .. ".")))
  return out, ok == true
end

local function job_count()
  return H.row("SELECT count(*) AS n FROM @.job").n
end

describe("queue limits", function()
  setup(function() H.open() end)
  teardown(H.close)

  describe("JSON that Lua cannot represent", function()
    it("SQL send refuses a number beyond a 64-bit float, naming the problem", function()
      local n = job_count()
      local out, ok = psql([[SELECT @.send('x', '{"huge":1e400}')]])
      assert.is_false(ok)
      assert.matches("job data holds a number beyond 1.7976931348623157e308", out, 1, true)
      out, ok = psql([[SELECT @.send('x', '{"neg":[-2e308]}')]])
      assert.is_false(ok)
      assert.matches("holds a number beyond", out, 1, true)
      assert.equal(n, job_count())
    end)

    it("SQL send refuses data nested deeper than 128 levels; 128 are read back by Lua", function()
      local n = job_count()
      local out, ok = psql("SELECT @.send('x', (repeat('[',129)||'1'||repeat(']',129))::jsonb)")
      assert.is_false(ok)
      assert.matches("job data is nested deeper than 128 levels", out, 1, true)
      out, ok = psql([[SELECT @.send_many('x', jsonb_build_array('{}'::jsonb,
                        (repeat('{"a":',129)||'1'||repeat('}',129))::jsonb))]])
      assert.is_false(ok)
      assert.matches("nested deeper than 128 levels", out, 1, true)
      assert.equal(n, job_count())
      out = assert(psql("SELECT @.send('deep', (repeat('[',128)||'1'||repeat(']',128))::jsonb)"))
      local job = assert(Q.get(assert(math.tointeger(tonumber(out)))))
      local v, depth = job.data, 1
      while type(v[1]) == "table" do v, depth = v[1], depth + 1 end
      assert.equal(128, depth)
      assert.equal(1, v[1])
    end)

    it("SQL append refuses event data Lua cannot read", function()
      local out, ok = psql([[SELECT @.append('limits:1', 'x', '{"huge":1e400}')]])
      assert.is_false(ok)
      assert.matches("event data holds a number beyond", out, 1, true)
      assert.equal(0, H.row("SELECT count(*) AS n FROM @.queue_events WHERE stream = 'limits:1'").n)
    end)

    it("a job stored with such data before is shown by get and list with data_error and data_text", function()
      local id = assert(Q.send("old_data", { a = 1 }))
      H.sql([[UPDATE @.job SET data = '{"huge":1e400}' WHERE id = $1]], id)
      local job = assert(Q.get(id))
      assert.is_nil(job.data)
      assert.matches("job data holds a number beyond", job.data_error, 1, true)
      assert.matches('"huge": 1000000000', job.data_text, 1, true)
      local list = assert(Q.list("old_data"))
      assert.equal(1, #list)
      assert.equal(job.data_error, list[1].data_error)
    end)

    it("a finished job whose output or error Lua cannot read is shown with output_error and error_error", function()
      local id = assert(Q.send("old_out", {}))
      local done = assert(Q.fetch("old_out", 1))[1]
      assert(Q.complete(done.id, { fine = true }))
      H.sql([[UPDATE @.job_archive SET output = '{"huge":1e400}',
                                       error = (repeat('[', 130) || '1' || repeat(']', 130))::jsonb
               WHERE id = $1]], id)
      local job = assert(Q.get(id))
      assert.is_nil(job.output)
      assert.matches("job output holds a number beyond", job.output_error, 1, true)
      assert.matches('"huge"', job.output_text, 1, true)
      assert.is_nil(job.error)
      assert.matches("job error is nested deeper than 128 levels", job.error_error, 1, true)
      local list = assert(Q.list("old_out"))
      assert.equal(1, #list)
      assert.equal(job.output_error, list[1].output_error)
    end)

    it("moonq.db.query names a JSON column it cannot read instead of returning its text", function()
      local rows, err = moonq.db.query([[SELECT 1 AS n, '{"h":1e400}'::jsonb AS j]])
      assert.is_nil(rows)
      assert.matches('column "j" of row 1 cannot be read in Lua: number beyond', err, 1, true)
    end)

    it("events stored with such data before reach readers with data_error", function()
      H.sql([[INSERT INTO @.queue_events (stream, type, data) VALUES ('limits:2', 'x', '{"huge":1e400}')]])
      local list = assert(moonq.events.query("limits:2"))
      assert.equal(1, #list)
      assert.is_nil(list[1].data)
      assert.matches("event data cannot be read in Lua: number beyond", list[1].data_error, 1, true)
    end)
  end)

  describe("durations", function()
    for _, opt in ipairs({ "retention", "retry_delay", "expire_in", "delay", "retry_delay_max" }) do
      it(("%s of 1e13 is refused at send, naming the option and the limit"):format(opt), function()
        local n = job_count()
        local id, err = Q.send("durations", {}, { [opt] = 1e13 })
        assert.is_nil(id)
        assert.matches(('option "%s" is 10000000000000'):format(opt), err, 1, true)
        assert.matches("seconds, the limit is 3155760000 (100 years)", err, 1, true)
        local out, ok = psql(([[SELECT @.send('durations', '{}', '{"%s": 1e13}')]]):format(opt))
        assert.is_false(ok)
        assert.matches("the limit is 3155760000", out, 1, true)
        assert.equal(n, job_count())
      end)
    end

    it("a duration too long to show in full is shown as a number", function()
      local id, err = Q.send("durations", {}, { delay = 1e300 })
      assert.is_nil(id)
      assert.matches('option "delay" is 1e+300 seconds, the limit is 3155760000', err, 1, true)
    end)

    it("100 years is accepted and completes", function()
      local id = assert(Q.send("durations", {}, { retention = 3155760000, expire_in = 3155760000 }))
      local job = assert(Q.fetch("durations", 1))[1]
      assert.equal(id, job.id)
      assert(Q.complete(id, { ok = true }))
      assert.equal("completed", Q.get(id).state)
    end)

    it("a queue's stored settings are bounded the same way, from SQL too", function()
      local out, ok = psql([[SELECT @.store_queue_settings('slow', '{"expire_in": 1e13}')]])
      assert.is_false(ok)
      assert.matches('queue setting "expire_in" is 10000000000000 seconds, the limit is 3155760000', out, 1, true)
      assert.equal(0, H.row("SELECT count(*) AS n FROM @.queue WHERE name = 'slow'").n)
    end)

    it("a schedule's send options are bounded the same way", function()
      local s, err = moonq.schedule("limits_every_minute", "* * * * *", {}, { retention = 1e13 })
      assert.is_nil(s)
      assert.matches('option "retention" is 10000000000000', err, 1, true)
    end)
  end)

  describe("names and payloads in bytes", function()
    local euros = string.rep("€", 2700) -- 2,700 characters, 8,100 bytes

    it("a queue name over 255 bytes is refused at send and pause, naming the limit", function()
      local n = job_count()
      local id, err = Q.send("named", {}, { queue = euros })
      assert.is_nil(id)
      assert.matches('option "queue" is 8100 bytes, the limit is 255', err, 1, true)
      local ok, perr = Q.pause(euros)
      assert.is_nil(ok)
      assert.matches("queue name is 8100 bytes, the limit is 255", perr, 1, true)
      assert.equal(n, job_count())
    end)

    it("a singleton_key over 1,000 bytes and a run_id over 200 are refused, naming the limit", function()
      local id, err = Q.send("named", {}, { singleton_key = string.rep("k", 3000) })
      assert.is_nil(id)
      assert.matches('option "singleton_key" is 3000 bytes, the limit is 1000', err, 1, true)
      id, err = Q.send("named", {}, { run_id = string.rep("r", 201) })
      assert.is_nil(id)
      assert.matches('option "run_id" is 201 bytes, the limit is 200', err, 1, true)
    end)

    it("a wake-up of names over 8,000 bytes becomes a wake-up of every queue", function()
      local out, ok = psql(("LISTEN %s_wake; SELECT @.wake(repeat('€', 2700));"):format(H.schema))
      assert(ok, out)
      -- many queues whose names together pass 8,000 bytes, woken in one statement
      local names = {}
      for i = 1, 40 do names[i] = ("%03d%s"):format(i, string.rep("q", 250)) end
      out, ok = psql(("SELECT @.wake(%s)"):format(H.shq(table.concat(names, ","))))
      assert(ok, out)
    end)
  end)

  describe("one bad row in a release batch", function()
    it("is left active; the others are released", function()
      local a = assert(Q.send("rel_good", {}))
      local b = assert(Q.send("rel_poison", {}))
      local c = assert(Q.send("rel_good", {}))
      H.sql([[UPDATE @.job SET state = 'active', attempt = 1, started_at = now(),
                             process_id = '00000000-0000-0000-0000-000000000001'
               WHERE id IN ($1, $2, $3)]], a, b, c)
      H.sql([[ALTER TABLE @.job ADD CONSTRAINT poison_release
                CHECK (NOT (state = 'created' AND name = 'rel_poison')) NOT VALID]])
      local r = H.row([[SELECT @.release_jobs_guarded(ARRAY[$1, $2, $3]::bigint[],
                          '00000000-0000-0000-0000-000000000001') AS n]], a, b, c)
      H.sql("ALTER TABLE @.job DROP CONSTRAINT poison_release")
      assert.equal(2, r.n)
      assert.equal("waiting", Q.get(a).state)
      assert.equal("active", Q.get(b).state)
      assert.equal("waiting", Q.get(c).state)
    end)
  end)

  describe("one bad row in a maintenance pass", function()
    it("fails that expired job for good; the others expire as usual and the pass completes", function()
      local a = assert(Q.send("maint_good", {}, { expire_in = 1 }))
      local b = assert(Q.send("maint_poison", {}, { expire_in = 1 }))
      -- running for an hour in this (live) process
      H.sql([[UPDATE @.job SET state = 'active', attempt = 1, process_id = $3::uuid,
                             started_at = now() - interval '1 hour'
               WHERE id IN ($1, $2)]], a, b, Q.process_id())
      H.sql([[ALTER TABLE @.job ADD CONSTRAINT poison_retry
                CHECK (NOT (state = 'retry' AND name = 'maint_poison')) NOT VALID]])
      local r = Q.maintain()
      H.sql("ALTER TABLE @.job DROP CONSTRAINT poison_retry")
      assert.is_table(r)
      assert.equal(2, r.expired)
      assert.equal("retry", H.row("SELECT state::text AS s FROM @.job WHERE id = $1", a).s)
      local bad = Q.get(b)
      assert.equal("failed", bad.state)
      assert.matches("expired", bad.error.message, 1, true)
      assert.matches("poison_retry", bad.error.store_error, 1, true)
    end)
  end)

  describe("errors that name what is wrong", function()
    it("a retry refused by a singleton conflict says so in a sentence", function()
      local id = assert(Q.send("single", {}, { singleton_key = "only", retry_limit = 0 }))
      assert.equal(id, assert(Q.fetch("single", 1))[1].id)
      assert(Q.fail(id, { message = "boom" }))
      assert.equal("failed", Q.get(id).state)
      assert(Q.send("single", {}, { singleton_key = "only" }))
      local ok, err = Q.retry(id)
      assert.is_nil(ok)
      assert.matches(('job %d cannot be retried: another job with singleton_key "only" waits or runs')
        :format(id), err, 1, true)
      assert.not_matches("job_singleton_idx", err, 1, true)
    end)

    it("a NUL character in sent data is refused naming the field", function()
      local n = job_count()
      local id, err = Q.send("nul", { user = { name = "a\0b" } })
      assert.is_nil(id)
      assert.matches("data.user.name: string holds a NUL character", err, 1, true)
      local ids
      ids, err = Q.send_many("nul", { {}, { "x\0" } })
      assert.is_nil(ids)
      assert.matches("list[2][1]: string holds a NUL character", err, 1, true)
      assert.equal(n, job_count())
    end)

    it("a NUL character in send options is refused naming the option", function()
      local n = job_count()
      local id, err = Q.send("nul", {}, { singleton_key = "k\0" })
      assert.is_nil(id)
      assert.matches("options.singleton_key: string holds a NUL character", err, 1, true)
      assert.equal(n, job_count())
    end)
  end)
end)

describe("limits of config.lua and handler files", function()
  it("a schema name too long for its notification channels is refused, naming the limit", function()
    local ok, err = moonq.open({ database = H.url, schema = "s" .. string.rep("x", 58) })
    assert.is_nil(ok)
    assert.matches("schema: expected a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 53 characters",
      err, 1, true)
  end)

  it("a queue duration of 1e13 is refused, naming the limit", function()
    local ok, err = moonq.open({ database = H.url, schema = "limits_unused",
                                 queue = { retention = 1e13 } })
    assert.is_nil(ok)
    assert.matches("queue.retention: expected seconds, at most 3155760000 (100 years)", err, 1, true)
    ok, err = moonq.open({ database = H.url, schema = "limits_unused",
                           queues = { q = { expire_in = 1e13 } } })
    assert.is_nil(ok)
    assert.matches("expire_in: expected seconds, at most 3155760000", err, 1, true)
  end)

  it("a config queue name over 255 bytes is refused", function()
    local ok, err = moonq.open({ database = H.url, schema = "limits_unused",
                                 queues = { [string.rep("€", 100)] = { retry_limit = 1 } } })
    assert.is_nil(ok)
    assert.matches("queue names of 1 to 255 bytes", err, 1, true)
  end)

  it("handler files: retry delays and timeouts over 100 years, queue names over 255 bytes", function()
    local handler = require "moonq.handler"
    local fn = function() end
    local cases = {
      { { handler = fn, retry = { delay = 1e13 } }, "retry.delay must be at most 3155760000 seconds" },
      { { handler = fn, retry = { delay_max = 1e13 } }, "retry.delay_max must be at most 3155760000" },
      { { handler = fn, timeout = 1e13 }, "timeout must be at most 3155760000" },
      { { handler = fn, timeout = 0 / 0 }, "timeout must be > 0" },
      { { handler = fn, queue = string.rep("€", 100) }, "queue is 300 bytes, the limit is 255" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(handler.normalise, "job", c[1], "job.lua")
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)

describe("a NUL byte in a queue or job name", function()
  setup(function() H.open() end)
  teardown(H.close)

  it("is refused naming the argument, and nothing is written or paused", function()
    local before = job_count()
    for _, call in ipairs({
      function() return Q.send("a\0b", {}) end,
      function() return Q.send_many("a\0b", { {} }) end,
      function() return Q.pause("p\0x") end,
      function() return Q.resume("p\0x") end,
      function() return Q.counts("p\0x") end,
      function() return Q.purge("p\0x") end,
    }) do
      local ok, err = pcall(call)
      assert.is_false(ok)
      assert.matches("bad argument #1 .*contains a NUL byte", tostring(err))
    end
    assert.equal(before, job_count())
    assert.equal(0, H.row("SELECT count(*) AS n FROM @.queue WHERE name IN ('a', 'p')").n)
  end)

  it("list's limit is 1 to 100000, raised naming it", function()
    for _, limit in ipairs({ -1, 0, 1e12 }) do
      local ok, err = pcall(Q.list, "q", { limit = limit })
      assert.is_false(ok)
      assert.matches("limit must be 1 to 100000", tostring(err))
    end
    assert.same({}, assert(Q.list("q", { limit = 100000 })))
  end)
end)

describe("start_after", function()
  setup(function() H.open() end)
  teardown(H.close)

  it("infinity is refused at send, from Lua and SQL (the job would never run)", function()
    local before = job_count()
    for _, t in ipairs({ "infinity", "-infinity" }) do
      local id, err = Q.send("q", {}, { start_after = t })
      assert.is_nil(id)
      assert.matches('option "start_after" must be a finite timestamp', err, 1, true)
      local out, ok = psql(("SELECT @.send('q', '{}', '{\"start_after\": \"%s\"}')"):format(t))
      assert.is_false(ok)
      assert.matches('must be a finite timestamp', out, 1, true)
    end
    assert.equal(before, job_count())
    assert.is_number(assert(Q.send("q", {}, { start_after = "2030-01-01T00:00:00Z" })))
  end)
end)
