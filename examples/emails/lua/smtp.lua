-- smtp: a fake mail server for the example (an app's own module: moonq puts
-- the app's lua/ directory on the Lua path, for `moonq run` and `moonq test`
-- alike). Like a real server under load it now and then answers with a
-- temporary failure (a 4xx reply, worth a retry):
--   M.fail_rate   the share of sends that fail (SMTP_FAIL_RATE, default 0.3)
--   M.fail_next   this many next sends fail, whatever the rate (for tests)
--   M.sent        what was sent, in order
local M = { fail_rate = tonumber(os.getenv("SMTP_FAIL_RATE")) or 0.3, fail_next = 0, sent = {} }

-- Sends msg { to, subject, body }; returns the message id, or nil and the
-- server's reply.
function M.send(msg)
  if M.fail_next > 0 or math.random() < M.fail_rate then
    M.fail_next = math.max(M.fail_next - 1, 0)
    return nil, "451 4.3.0 mailbox temporarily unavailable, try again later"
  end
  local id = ("<%d.%d@smtp.example>"):format(os.time(), #M.sent + 1)
  M.sent[#M.sent + 1] = { id = id, to = msg.to, subject = msg.subject }
  return id
end

return M
