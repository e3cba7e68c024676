-- Step "charge": charges the card. A declined card is an outcome, not an
-- error: the flow goes on to notify-failure. A gateway failure raises and
-- the step is retried; the retry's successor runs once.
local payments = require "payments"

return {
  flow = { name = "order", step = "charge", subscribes = { "order.validated" },
           emits = { "payment.captured", "payment.declined" } },
  retry = { limit = 3, delay = 0.5, backoff = false },
  handler = function(job, ctx)
    local d = job.data
    local charge_id, declined = payments.charge(d.card, d.amount, d.order_id, job.attempt)
    if not charge_id then
      ctx.log.warn("payment declined", { order = d.order_id, reason = declined })
      ctx.emit("payment.declined", { order_id = d.order_id, reason = declined })
      return { declined = declined }
    end
    ctx.state.set("charge_id", charge_id)
    ctx.emit("payment.captured", { order_id = d.order_id, charge_id = charge_id, amount = d.amount })
    return { charge_id = charge_id }
  end,
}
