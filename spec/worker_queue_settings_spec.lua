-- A queue's settings come from two places: config.lua (`queue` and
-- `queues.<name>`, stored at start) and the `retry` table of the queue's
-- handler file (stored when the worker starts). A handler's retry options
-- replace only the retry settings: the queue keeps config.lua's dead_letter,
-- expire_in and retention, and the retry settings the handler leaves out.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

local HANDLERS = {
  -- no retries, always fails: its jobs go to the queue's dead-letter queue
  ["doomed.lua"] = [[
return { retry = { limit = 0 }, handler = function(job) error("doomed " .. job.data.n) end }
]],
  -- sets only the retry limit
  ["limited.lua"] = [[
return { retry = { limit = 5 }, handler = function(job) return "ok" end }
]],
  -- sets every retry option
  ["tuned.lua"] = [[
return { retry = { limit = 2, delay = 3, backoff = true, delay_max = 30 },
         handler = function(job) return "ok" end }
]],
  -- no retry table: config.lua's settings stand as they are
  ["plain.lua"] = [[return function(job) return "ok" end]],
  -- refused (a negative cap), so it stores nothing
  ["negcap.lua"] = [[return { retry = { delay_max = -1 }, handler = function() end }]],
}

describe("worker: queue settings from config.lua and handler files", function()
  setup(function()
    W.open({
      handlers = W.handlers_dir(HANDLERS), hot_reload = false,
      queue = { retry_delay = 0.1, retry_backoff = false },
      queues = {
        doomed = { dead_letter = "doomed_dead" },
        limited = { retry_limit = 1, retry_delay = 7, expire_in = 120, retention = 3600,
                    dead_letter = "limited_dead" },
        tuned = { retry_delay = 8, expire_in = 130, retention = 3700, dead_letter = "tuned_dead" },
        plain = { retry_limit = 4, retry_delay = 9, retry_backoff = true, expire_in = 140,
                  retention = 3800, dead_letter = "plain_dead" },
      },
    })
    assert(moonq.start())
  end)
  teardown(W.close)

  local function settings(queue)
    return W.row("SELECT retry_limit, retry_delay, retry_backoff, retry_delay_max, expire_in,"
      .. " retention, dead_letter FROM @.queue WHERE name = $1", queue)
  end

  -- The settings of `queue` once the worker has stored its handler's retry
  -- limit: moonq.start() sends that statement without waiting for it.
  local function settings_with_limit(queue, limit)
    moonq.run_until(function()
      local row = settings(queue)
      return row and row.retry_limit == limit
    end, 5)
    return settings(queue)
  end

  it("retry = { limit = 0 } keeps config's dead_letter, and a failed job reaches it", function()
    local row = settings_with_limit("doomed", 0)
    assert.equal(0, row.retry_limit)
    assert.equal("doomed_dead", row.dead_letter)
    local id = assert(Q.send("doomed", { n = 1 }))
    local job = W.wait_job(id)
    assert.equal("failed", job.state)
    assert.equal(1, job.attempt)
    local dead = W.sql("SELECT name, data FROM @.job WHERE queue = 'doomed_dead'")
    assert.equal(1, #dead)
    assert.equal("doomed", dead[1].name)
    assert.same({ n = 1 }, dead[1].data)
  end)

  it("a handler that sets only retry.limit keeps config's other settings", function()
    assert.same({ retry_limit = 5, retry_delay = 7, retry_backoff = false,
                  retry_delay_max = moonq.null, expire_in = 120, retention = 3600,
                  dead_letter = "limited_dead" }, settings_with_limit("limited", 5))
    local id = assert(Q.send("limited", {}))
    local job = W.wait_job(id)
    assert.equal("completed", job.state)
    assert.equal(5, job.retry_limit)
    assert.equal(7, job.retry_delay)
    assert.equal(120, job.expire_in)
    assert.equal(3600, job.retention)
    assert.equal("limited_dead", job.dead_letter)
  end)

  it("a handler's full retry table replaces the retry settings only", function()
    assert.same({ retry_limit = 2, retry_delay = 3, retry_backoff = true,
                  retry_delay_max = 30, expire_in = 130, retention = 3700,
                  dead_letter = "tuned_dead" }, settings_with_limit("tuned", 2))
  end)

  it("a handler without retry options keeps every setting of config.lua", function()
    assert.same({ retry_limit = 4, retry_delay = 9, retry_backoff = true,
                  retry_delay_max = moonq.null, expire_in = 140, retention = 3800,
                  dead_letter = "plain_dead" }, settings("plain"))
  end)

  it("a handler with a negative retry.delay_max is refused", function()
    W.run_for(0.3) -- time enough for a store, were there one
    assert.is_nil(settings("negcap"))
  end)

  describe("SQL store_queue_settings", function()
    it("merges: a missing key keeps its value, a null unsets it", function()
      W.sql([[SELECT @.store_queue_settings('fresh', '{"retention": 5, "dead_letter": "d"}')]])
      assert.same({ retry_limit = moonq.null, retry_delay = moonq.null,
                    retry_backoff = moonq.null, retry_delay_max = moonq.null,
                    expire_in = moonq.null, retention = 5, dead_letter = "d" }, settings("fresh"))
      W.sql([[SELECT @.store_queue_settings('fresh', '{"retry_limit": 2, "dead_letter": null}')]])
      local row = settings("fresh")
      assert.equal(2, row.retry_limit)
      assert.equal(5, row.retention)
      assert.equal(moonq.null, row.dead_letter)
      -- unset here: a job gets the '' row's value
      local id = assert(Q.send("fresh", {}))
      assert.equal(0.1, W.row("SELECT retry_delay FROM @.job WHERE id = $1", id).retry_delay)
    end)

    it("refuses an unknown key and leaves the row alone", function()
      local ok, err = pcall(W.sql, [[SELECT @.store_queue_settings('plain', '{"retry_limt": 1}')]])
      assert.is_false(ok)
      assert.matches('unknown queue setting "retry_limt"', err)
      assert.equal(4, settings("plain").retry_limit)
    end)
  end)
end)

-- A process that runs no handlers (the CLI, a script that only sends) must
-- not undo the retry options a running worker's handler files stored.
describe("queue settings and processes that run no handlers", function()
  local pid, log, config

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    W.open({ hot_reload = false }) -- inspects only
    local dir = W.handlers_dir({
      ["charge.lua"] = [[return { queue = "billing", retry = { limit = 2, delay = 0 },
                                  handler = function() return true end }]],
    })
    config = W.config_file({
      schema = W.schema, handlers = dir, hot_reload = false,
      queue = { retry_limit = 0 }, queues = { billing = { dead_letter = "billing_dlq" } },
    })
    pid, log = W.moonq_run(config)
  end)
  teardown(W.close)

  local function billing()
    return W.row("SELECT retry_limit, dead_letter FROM @.queue WHERE name = 'billing'")
  end

  it("the CLI leaves a handler's retry settings as the worker stored them", function()
    assert.is_truthy(W.poll(function()
      local r = billing()
      return r and r.retry_limit == 2
    end, 20, 0.1), "the worker did not store the handler's retry\n" .. (W.read(log) or ""))
    local ok = os.execute(("DATABASE_URL=%s %s --config %s counts billing >/dev/null 2>&1")
      :format(W.shq(W.url), W.shq(W.bin), W.shq(config)))
    assert.is_truthy(ok)
    local r = billing()
    assert.equal(2, r.retry_limit)
    assert.equal("billing_dlq", r.dead_letter)
  end)
end)
