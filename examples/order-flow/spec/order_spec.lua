-- The order flow, with moonq.testing: whole runs with t.run_flow (the
-- app's handlers run in this process against a private schema) and
-- single steps with t.run. Run with `moonq test` in this directory.
local t = require "moonq.testing"

local GOOD_CARD, DECLINED_CARD, FLAKY_CARD =
  "4242 4242 4242 4242", "4000 0000 0000 0002", "4000 0000 0000 0119"

local function order(id, card, extra)
  local o = { id = id, email = "ada@example.com", card = card,
              address = { city = "Berlin" },
              items = { { sku = "mug", price = 1200, qty = 2 }, { sku = "tea", price = 450 } } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- The steps of a run, in order, and the event types of its history.
local function steps(run)
  local out = {}
  for i, s in ipairs(run.steps) do out[i] = s.step end
  return out
end

local function types(history)
  local out = {}
  for i, e in ipairs(history) do out[i] = e.type end
  return out
end

local function event(history, type)
  for _, e in ipairs(history) do if e.type == type then return e end end
end

describe("flow order", function()
  it("validates, charges and ships a good order", function()
    local run, history = t.run_flow("order", order(1, GOOD_CARD))
    assert.equal("completed", run.status)
    assert.same({ "validate", "charge", "ship" }, steps(run))
    assert.same({ "flow.started",
                  "step.started", "order.validated", "step.completed",
                  "step.started", "payment.captured", "step.completed",
                  "step.started", "order.shipped", "step.completed",
                  "flow.completed" }, types(history))
    assert.same({ order_id = 1, tracking = "TRK-1", city = "Berlin" },
      event(history, "order.shipped").data)
    assert.equal(2850, event(history, "payment.captured").data.amount)
  end)

  it("notifies the customer instead of shipping when the card is declined", function()
    local run, history = t.run_flow("order", order(2, DECLINED_CARD))
    assert.equal("completed", run.status)
    assert.same({ "validate", "charge", "notify-failure" }, steps(run))
    assert.is_nil(event(history, "order.shipped"))
    assert.same({ order_id = 2, to = "ada@example.com", reason = "card_declined" },
      event(history, "customer.notified").data)
  end)

  it("retries a charge the gateway failed, and ships once", function()
    local run, history = t.run_flow("order", order(3, FLAKY_CARD))
    assert.equal("completed", run.status)
    assert.same({ "validate", "charge", "ship" }, steps(run))
    assert.equal(2, run.steps[2].attempt)
    local retrying = 0
    for _, e in ipairs(history) do
      if e.type == "step.retrying" then retrying = retrying + 1 end
    end
    assert.equal(1, retrying)
  end)

  it("fails the run at validate for an order without items", function()
    local run = t.run_flow("order", order(4, GOOD_CARD, { items = {} }))
    assert.equal("failed", run.status)
    assert.equal("validate", run.failed_step)
    assert.equal("invalid order: no items", run.error.message)
    assert.same({ "validate" }, steps(run))
  end)
end)

describe("steps of flow order", function()
  it("validate totals the order and keeps the customer in the run's state", function()
    local res = t.run("handlers/order/validate.lua", { data = order(5, GOOD_CARD) })
    assert.is_true(res.ok)
    assert.same({ amount = 2850 }, res.output)
    assert.same({ email = "ada@example.com", address = { city = "Berlin" } }, res.state)
    assert.same({ { stream = "flow:order:" .. res.job.run_id, type = "order.validated",
                    data = { order_id = 5, amount = 2850, card = GOOD_CARD } } }, res.emitted)
    assert.same({ level = "info", msg = "order valid", fields = { order = 5, amount = 2850 } },
      res.logs[1])
  end)

  it("validate refuses a bad item", function()
    local res = t.run("handlers/order/validate.lua",
      { data = order(6, GOOD_CARD, { items = { { sku = "mug", price = -1 } } }) })
    assert.is_false(res.ok)
    assert.equal("invalid order: bad item", res.error.message)
    assert.equal("mug", res.error.sku)
  end)

  it("charge captures the payment, or emits payment.declined", function()
    local res = t.run("handlers/order/charge.lua",
      { data = { order_id = 7, amount = 500, card = GOOD_CARD } })
    assert.same({ charge_id = "ch_7_500" }, res.output)
    assert.same({ charge_id = "ch_7_500" }, res.state)
    assert.equal("payment.captured", res.emitted[1].type)

    res = t.run("handlers/order/charge.lua",
      { data = { order_id = 8, amount = 500, card = DECLINED_CARD } })
    assert.is_true(res.ok)
    assert.same({ { stream = "flow:order:" .. res.job.run_id, type = "payment.declined",
                    data = { order_id = 8, reason = "card_declined" } } }, res.emitted)
    assert.same({}, res.state)
  end)

  it("charge raises on a gateway failure, and a retry stores nothing twice", function()
    local first = t.run("handlers/order/charge.lua",
      { data = { order_id = 9, amount = 500, card = FLAKY_CARD }, attempt = 1 })
    assert.is_false(first.ok)
    assert.matches("processing error", first.error.message)
    assert.same({}, first.emitted) -- a failed attempt emits nothing
    local second = t.run("handlers/order/charge.lua",
      { data = { order_id = 9, amount = 500, card = FLAKY_CARD }, attempt = 2 })
    assert.is_true(second.ok)
    assert.equal(3, second.job.retry_limit) -- the handler's retry.limit
  end)

  it("ship reads the address from the run's state", function()
    local res = t.run("handlers/order/ship.lua", {
      data = { order_id = 10, charge_id = "ch_10_500", amount = 500 },
      state = { address = { city = "Lisbon" } } })
    assert.same({ tracking = "TRK-10" }, res.output)
    assert.equal("Lisbon", res.emitted[1].data.city)
  end)
end)
