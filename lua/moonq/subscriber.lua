-- moonq.subscriber: runs a subscriber's function over one batch of events.
--
-- Called by moonq.events.subscribe in a coroutine of its own (so fn may
-- wait: moonq.db.query, moonq.sleep, ...). An error in fn for one event is
-- logged with its traceback and the batch goes on with the next event.
local log = require "moonq.log"

return function(fn, events, stream)
  for _, event in ipairs(events) do
    local ok, err = xpcall(fn, debug.traceback, event)
    if not ok then
      log.error("subscriber failed", { stream = stream, event_id = event.id,
                                        error = tostring(err) })
    end
  end
end
