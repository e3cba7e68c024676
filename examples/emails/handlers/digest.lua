-- Job "digest", what schedule "digest" (config.lua) sends every morning:
-- counts the emails sent in the last 24 hours (their email.sent events) and
-- mails the count to job.data.to. The mail is a send-email job, sent with
-- this job's completion: a failed digest sends nothing.
local moonq = require "moonq"

return function(job, ctx)
  local rows = assert(moonq.db.query(([[
    SELECT count(*) AS emails, count(DISTINCT data->>'to') AS people
      FROM %s.queue_events
     WHERE type = 'email.sent' AND ts > now() - interval '24 hours']]):format(moonq.config().schema)))
  local n = rows[1]
  ctx.enqueue("send-email", {
    to = job.data.to or "team@example.com",
    subject = "Daily digest",
    body = ("%d emails sent to %d people in the last 24 hours"):format(n.emails, n.people),
  })
  return { emails = n.emails, people = n.people }
end
