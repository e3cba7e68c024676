-- Job "send-email": sends one email through the (fake) mail server. A
-- temporary failure raises, and the job is retried up to 5 times with
-- exponential backoff (0.5 s, 1 s, 2 s, ... with jitter); a bad address is
-- not worth a retry, so the job completes saying so.
local smtp = require "smtp"

return {
  concurrency = 20,
  retry = { limit = 5, delay = 0.5, backoff = true },
  timeout = 10,
  handler = function(job, ctx)
    local m = job.data
    if type(m.to) ~= "string" or not m.to:find("^[^@%s]+@[^@%s]+$") then
      ctx.log.warn("not sending: bad address", { to = tostring(m.to) })
      return { rejected = "bad address" }
    end
    ctx.sleep(0.05) -- the round trip to the server: other jobs run meanwhile
    local id, reply = smtp.send({ to = m.to, subject = m.subject or "(no subject)", body = m.body or "" })
    if not id then error("smtp: " .. reply) end
    ctx.log.info("sent", { to = m.to, attempt = job.attempt })
    ctx.emit("email.sent", { to = m.to, message_id = id })
    return { message_id = id }
  end,
}
