-- moonq.subscriber: runs a subscriber's function over one batch of events.
--
-- Called by moonq.events.subscribe in a coroutine of its own (so fn may
-- wait: moonq.db.query, moonq.sleep, ...). An error in fn for one event is
-- logged with its traceback and the batch goes on with the next event;
-- once the subscription is closed the rest of the batch is dropped.
local log = require "moonq.log"

return function(fn, events, stream, sub)
  for _, event in ipairs(events) do
    if not sub:is_open() then return end
    local ok, err = xpcall(fn, debug.traceback, event)
    if not ok then
      log.error("subscriber failed", { stream = stream, event_id = event.id,
                                        error = tostring(err) })
    end
  end
end
