-- The emails example, with moonq.testing: send-email and digest run one
-- job each with t.run; a job the server keeps refusing is retried by a
-- real worker until it is sent. The fake server (lua/smtp.lua) is the
-- module the handlers load: the spec sets how it fails. Run with
-- `moonq test` in this directory.
local t = require "moonq.testing"
local moonq = require "moonq"
local smtp = require "smtp"

-- t.run opens moonq by itself; this spec also calls moonq.queue and
-- moonq.events directly, so it opens first.
setup(function() t.open() end)

describe("send-email", function()
  before_each(function()
    smtp.fail_rate, smtp.fail_next = 0, 0
  end)

  it("sends, logs and emits email.sent", function()
    local res = t.run("handlers/send-email.lua",
      { data = { to = "ada@example.com", subject = "Hello" } })
    assert.is_true(res.ok)
    assert.matches("^<%d+%.%d+@smtp%.example>$", res.output.message_id)
    assert.same({ { stream = "job:send-email:" .. res.job.id, type = "email.sent",
                    data = { to = "ada@example.com", message_id = res.output.message_id } } },
      res.emitted)
    assert.same({ level = "info", msg = "sent", fields = { to = "ada@example.com", attempt = 1 } },
      res.logs[1])
    assert.equal("Hello", smtp.sent[#smtp.sent].subject)
  end)

  it("raises on a temporary failure, so the job is retried (up to 5 times)", function()
    smtp.fail_next = 1
    local res = t.run("handlers/send-email.lua", { data = { to = "ada@example.com" } })
    assert.is_false(res.ok)
    assert.matches("smtp: 451 4%.3%.0", res.error.message)
    assert.same({}, res.emitted)
    assert.equal(5, res.job.retry_limit)
  end)

  it("does not retry a bad address", function()
    local res = t.run("handlers/send-email.lua", { data = { to = "nobody" } })
    assert.is_true(res.ok)
    assert.same({ rejected = "bad address" }, res.output)
    assert.equal("warn", res.logs[1].level)
  end)

  it("is retried by the worker until the server takes it", function()
    smtp.fail_next = 2
    assert(moonq.start())
    -- The worker stores send-email.lua's `retry` as the queue's settings,
    -- which jobs take when they are sent: send once they are stored.
    assert(moonq.run_until(function()
      local q = t.sql("SELECT retry_delay FROM @.queue WHERE name = 'send-email'")[1]
      return q and q.retry_delay == 0.5
    end, 5))
    local id = assert(moonq.queue.send("send-email", { to = "grace@example.com" }))
    local job
    moonq.run_until(function()
      job = moonq.queue.get(id)
      return job.state == "completed" or job.state == "failed"
    end, 30)
    moonq.stop()
    assert.equal("completed", job.state)
    assert.equal(3, job.attempt)
    assert.equal(1, #t.sql("SELECT 1 FROM @.queue_events WHERE type = 'email.sent' AND data->>'to' = 'grace@example.com'"))
  end)
end)

describe("digest", function()
  it("counts the day's emails and mails the count", function()
    t.sql("DELETE FROM @.queue_events WHERE type = 'email.sent'") -- the other specs' emails
    for _, to in ipairs({ "a@example.com", "b@example.com", "a@example.com" }) do
      assert(moonq.events.append("job:send-email:0", { type = "email.sent", data = { to = to } }))
    end
    local res = t.run("handlers/digest.lua", { data = { to = "team@example.com" } })
    assert.is_true(res.ok)
    assert.same({ emails = 3, people = 2 }, res.output)
    assert.same({ { name = "send-email", options = {},
                    data = { to = "team@example.com", subject = "Daily digest",
                             body = "3 emails sent to 2 people in the last 24 hours" } } },
      res.enqueued)
  end)
end)
