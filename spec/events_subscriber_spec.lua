-- A subscriber's timeout bounds one event: an event whose function runs
-- too long is cut off and logged, and the events after it in the same
-- batch are still delivered.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local E = moonq.events

describe("a subscriber that times out on one event", function()
  setup(function() W.open({ hot_reload = false }) end)
  teardown(W.close)

  it("still gets the rest of its batch", function()
    local seen = {}
    local sub = E.subscribe("slow", function(ev)
      seen[#seen + 1] = ev.type
      if ev.type == "b" then moonq.sleep(3) end
    end, { from = "start", timeout = 0.5 })
    assert(E.append_many("slow", { { type = "a" }, { type = "b" }, { type = "c" }, { type = "d" } }))
    assert.is_true(moonq.run_until(function() return #seen >= 4 end, 20),
      "delivered: " .. table.concat(seen, ","))
    sub:close()
    assert.same({ "a", "b", "c", "d" }, seen)
  end)
end)
