-- events.retention: `moonq run` deletes events older than the retention, in
-- batches, and keeps the rest.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local E = moonq.events

describe("events.retention", function()
  local pid, log

  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    W.open({ hot_reload = false })
    local config = W.config_file({
      schema = W.schema, handlers = W.handlers_dir({}), hot_reload = false,
      events = { retention = 3600 }, log = { level = "info" },
    })
    pid, log = W.moonq_run(config)
  end)
  teardown(W.close)

  it("deletes events older than the retention and keeps newer ones", function()
    for i = 1, 30 do assert(E.append("old:" .. i, { type = "t" })) end
    for i = 1, 5 do assert(E.append("new:" .. i, { type = "t" })) end
    W.sql("UPDATE @.queue_events SET ts = now() - interval '2 hours' WHERE stream LIKE 'old:%'")
    local gone = W.poll(function()
      return W.row("SELECT count(*) AS n FROM @.queue_events WHERE stream LIKE 'old:%'").n == 0
    end, 30, 0.2)
    assert.is_truthy(gone, "old events are still there\n" .. (W.read(log) or ""))
    assert.equal(5, W.row("SELECT count(*) AS n FROM @.queue_events WHERE stream LIKE 'new:%'").n)
  end)
end)
