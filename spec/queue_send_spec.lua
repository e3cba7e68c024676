-- moonq.queue.send / send_many against the real PostgreSQL: every option
-- lands in the job row, singletons, per-queue defaults from config, and bad
-- input refused with nothing written.
local moonq = require "moonq"
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")
local Q = moonq.queue

local function job_row(id)
  return H.row([[SELECT *, extract(epoch FROM start_after - created_at)::float8 AS wait
                  FROM @.job WHERE id = $1]], id)
end

describe("queue send", function()
  setup(function()
    H.open({
      queue = { retry_limit = 4, retry_delay = 30, retry_backoff = false,
                expire_in = 600, retention = 3600 },
      queues = { x = { retry_limit = 7, retry_delay = 5, retry_backoff = true,
                       dead_letter = "x_dead" } },
    })
  end)
  teardown(H.close)

  it("returns an id and stores name, queue, data and the defaults", function()
    local id = assert(Q.send("plain", { a = 1, s = "x" }))
    assert.equal("integer", math.type(id))
    local r = job_row(id)
    assert.equal("plain", r.name)
    assert.equal("plain", r.queue)
    assert.same({ a = 1, s = "x" }, r.data)
    assert.equal("created", r.state)
    assert.equal(0, r.priority)
    assert.equal(0, r.attempt)
    -- config `queue` defaults
    assert.equal(4, r.retry_limit)
    assert.equal(30, r.retry_delay)
    assert.is_false(r.retry_backoff)
    assert.equal(600, r.expire_in)
    assert.equal(3600, r.retention)
    assert.equal(moonq.null, r.singleton_key)
    assert.equal(moonq.null, r.dead_letter)
    assert.equal(moonq.null, r.run_id)
    assert.is_true(r.wait < 1)
  end)

  it("nil data is stored as {}", function()
    local id = assert(Q.send("nodata"))
    assert.same({}, job_row(id).data)
  end)

  it("option queue: the job waits on that queue under its own name", function()
    local id = assert(Q.send("named", { n = 1 }, { queue = "elsewhere" }))
    local r = job_row(id)
    assert.equal("elsewhere", r.queue)
    assert.equal("named", r.name)
    assert.same({}, assert(Q.fetch("named", 5)))
    local jobs = assert(Q.fetch("elsewhere", 5))
    assert.equal(1, #jobs)
    assert.equal(id, jobs[1].id)
    assert.equal("named", jobs[1].name)
    assert.equal("elsewhere", jobs[1].queue)
  end)

  it("option priority is stored", function()
    local id = assert(Q.send("prio", {}, { priority = -12 }))
    assert.equal(-12, job_row(id).priority)
  end)

  it("option delay sets start_after that many seconds ahead", function()
    local id = assert(Q.send("delay", {}, { delay = 120 }))
    local w = job_row(id).wait
    assert.is_true(w > 119.9 and w < 120.1, "wait " .. w)
    assert.equal("delayed", Q.get(id).state)
  end)

  it("option start_after sets start_after to that timestamp", function()
    local id = assert(Q.send("sa", {}, { start_after = "2031-02-03T04:05:06Z" }))
    local r = H.row("SELECT start_after = '2031-02-03T04:05:06Z'::timestamptz AS ok FROM @.job WHERE id = $1", id)
    assert.is_true(r.ok)
  end)

  it("options retry_limit, retry_delay, retry_backoff, retry_delay_max are stored", function()
    local id = assert(Q.send("retry", {}, { retry_limit = 9, retry_delay = 2.5,
      retry_backoff = true, retry_delay_max = 40 }))
    local r = job_row(id)
    assert.equal(9, r.retry_limit)
    assert.equal(2.5, r.retry_delay)
    assert.is_true(r.retry_backoff)
    assert.equal(40, r.retry_delay_max)
  end)

  it("options expire_in and retention are stored", function()
    local id = assert(Q.send("exp", {}, { expire_in = 12.5, retention = 99 }))
    local r = job_row(id)
    assert.equal(12.5, r.expire_in)
    assert.equal(99, r.retention)
  end)

  it("options singleton_key, dead_letter and run_id are stored", function()
    local id = assert(Q.send("misc", {}, { singleton_key = "k1", dead_letter = "dl", run_id = "run-7" }))
    local r = job_row(id)
    assert.equal("k1", r.singleton_key)
    assert.equal("dl", r.dead_letter)
    assert.equal("run-7", r.run_id)
    local jobs = assert(Q.fetch("misc", 1))
    assert.equal("run-7", jobs[1].run_id)
  end)

  it("send_many with a singleton_key creates the first job only, none when the key is taken", function()
    local ids = assert(Q.send_many("manyk", { { n = 1 }, { n = 2 }, { n = 3 } }, { singleton_key = "mk" }))
    assert.equal(1, #ids)
    assert.equal(1, job_row(ids[1]).data.n)
    local again = assert(Q.send_many("manyk", { { n = 4 } }, { singleton_key = "mk" }))
    assert.same({}, again)
  end)

  it("singleton refused while one waits or runs, accepted after completion", function()
    local opts = { singleton_key = "only" }
    local id = assert(Q.send("single", { n = 1 }, opts))
    local none, err = Q.send("single", { n = 2 }, opts)
    assert.is_nil(none)
    assert.matches("singleton_key is taken", err, 1, true)
    -- another queue has its own key space
    assert.is_number(Q.send("single", { n = 3 }, { singleton_key = "only", queue = "single_b" }))
    local jobs = assert(Q.fetch("single", 5))
    assert.equal(1, #jobs)
    assert.equal(id, jobs[1].id)
    none, err = Q.send("single", { n = 4 }, opts)
    assert.is_nil(none)
    assert.matches("singleton_key is taken", err, 1, true)
    assert.equal(1, H.row("SELECT count(*) AS n FROM @.job WHERE queue = 'single'").n)
    assert.is_true(Q.complete(id))
    local id2 = assert(Q.send("single", { n = 5 }, opts))
    assert.is_true(id2 > id)
    assert.same({ n = 5 }, job_row(id2).data)
  end)

  it("SQL send returns NULL for a taken singleton", function()
    local r = H.row([[SELECT @.send('sqlsingle', '{}', '{"singleton_key":"s"}') AS a,
                              @.send('sqlsingle', '{}', '{"singleton_key":"s"}') AS b]])
    assert.is_number(r.a)
    assert.equal(moonq.null, r.b)
  end)

  describe("per-queue defaults from config", function()
    it("queues.x settings become the job's", function()
      local id = assert(Q.send("x", {}))
      local r = job_row(id)
      assert.equal(7, r.retry_limit)
      assert.equal(5, r.retry_delay)
      assert.is_true(r.retry_backoff)
      assert.equal("x_dead", r.dead_letter)
      -- merged with `queue` for what queues.x does not set
      assert.equal(600, r.expire_in)
    end)

    it("an explicit option overrides the queue default", function()
      local id = assert(Q.send("x", {}, { retry_limit = 2, dead_letter = "other" }))
      local r = job_row(id)
      assert.equal(2, r.retry_limit)
      assert.equal("other", r.dead_letter)
    end)

    it("the queue option picks the defaults of the target queue", function()
      local id = assert(Q.send("not_x", {}, { queue = "x" }))
      assert.equal(7, job_row(id).retry_limit)
    end)

    it("are stored in the schema's queue table", function()
      local r = H.row("SELECT retry_limit, dead_letter, paused FROM @.queue WHERE name = 'x'")
      assert.equal(7, r.retry_limit)
      assert.equal("x_dead", r.dead_letter)
      assert.is_false(r.paused)
      assert.equal(4, H.row("SELECT retry_limit FROM @.queue WHERE name = ''").retry_limit)
    end)
  end)

  describe("send_many", function()
    it("returns ids in input order, one row each, options shared", function()
      local ids = assert(Q.send_many("many", { { i = 1 }, { i = 2 }, { i = 3 } }, { priority = 3 }))
      assert.equal(3, #ids)
      for i = 1, 3 do
        local r = job_row(ids[i])
        assert.same({ i = i }, r.data)
        assert.equal(3, r.priority)
        assert.equal("many", r.queue)
      end
      assert.is_true(ids[1] < ids[2] and ids[2] < ids[3])
    end)

    it("an empty list sends nothing", function()
      local ids = assert(Q.send_many("many_empty", {}))
      assert.equal(0, #ids)
      assert.equal(0, H.row("SELECT count(*) AS n FROM @.job WHERE queue = 'many_empty'").n)
    end)

    it("a bad option refuses the whole list", function()
      local ids, err = Q.send_many("many_bad", { {}, {} }, { nope = 1 })
      assert.is_nil(ids)
      assert.matches('unknown option "nope"', err, 1, true)
      assert.equal(0, H.row("SELECT count(*) AS n FROM @.job WHERE name = 'many_bad'").n)
    end)
  end)
end)

describe("queue send refuses bad input, writing nothing", function()
  setup(function() H.open({ max_payload = 100 }) end)
  teardown(H.close)

  local function refused(pattern, ...)
    local id, err = Q.send(...)
    assert.is_nil(id)
    assert.is_string(err)
    assert.matches(pattern, err, 1, true)
    assert.equal(0, H.job_rows())
  end

  it("unknown option", function()
    refused('unknown option "colour"', "bad", {}, { colour = "red" })
  end)

  it("wrong option type", function()
    refused('option "priority" must be an integer', "bad", {}, { priority = "high" })
    refused('option "delay" must be a number', "bad", {}, { delay = "soon" })
    refused('option "retry_backoff" must be a boolean', "bad", {}, { retry_backoff = 1 })
    refused('option "queue" must be a non-empty string', "bad", {}, { queue = 5 })
    refused('option "retry_limit" must be an integer', "bad", {}, { retry_limit = 1.5 })
  end)

  it("negative delay", function()
    refused('option "delay" must be >= 0', "bad", {}, { delay = -1 })
  end)

  it("both delay and start_after", function()
    refused('give either "delay" or "start_after"', "bad", {},
      { delay = 1, start_after = "2030-01-01T00:00:00Z" })
  end)

  it("start_after that is not a timestamp", function()
    refused('option "start_after" must be a timestamp', "bad", {}, { start_after = "tomorrow-ish" })
  end)

  it("data that cannot be serialised", function()
    refused("data", "bad", { f = function() end })
    local id, err = Q.send("bad", { f = function() end })
    assert.is_nil(id)
    assert.matches("function", err)
  end)

  it("data larger than max_payload", function()
    refused("max_payload", "bad", { s = string.rep("x", 200) })
    local ids, err = Q.send_many("bad", { { s = "ok" }, { s = string.rep("x", 200) } })
    assert.is_nil(ids)
    assert.matches("max_payload", err, 1, true)
    assert.equal(0, H.job_rows())
    -- just under the limit is fine
    assert.is_number(Q.send("ok", { s = string.rep("x", 80) }))
    assert.equal(1, H.job_rows())
    H.sql("DELETE FROM @.job")
  end)

  it("empty name", function()
    refused("job name must be a non-empty string", "", {})
    local ids, err = Q.send_many("", { {} })
    assert.is_nil(ids)
    assert.matches("job name must be a non-empty string", err, 1, true)
  end)

  it("wrong argument types raise", function()
    assert.has_error(function() Q.send({}, {}) end)
    assert.has_error(function() Q.send("bad", {}, "opts") end)
    assert.has_error(function() Q.send_many("bad", "list") end)
    assert.equal(0, H.job_rows())
  end)
end)
