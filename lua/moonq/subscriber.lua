-- moonq.subscriber: runs a subscriber's function for one event.
--
-- Called by moonq.events.subscribe in a coroutine of its own (so fn may
-- wait: moonq.db.query, moonq.sleep, ...). An error in fn is logged with
-- its traceback; delivery goes on with the next event.
local log = require "moonq.log"

return function(fn, event, stream)
  local ok, err = xpcall(fn, debug.traceback, event)
  if not ok then
    log.error("subscriber failed", { stream = stream, event_id = event.id,
                                      error = tostring(err) })
  end
end
