-- Step "notify-failure": tells the customer the payment was declined (a
-- real app would send the email with ctx.enqueue("send-email", ...)).
return {
  flow = { name = "order", step = "notify-failure", subscribes = { "payment.declined" },
           emits = { "customer.notified" } },
  handler = function(job, ctx)
    local email = ctx.state.get("email")
    ctx.log.info("telling the customer", { order = job.data.order_id, to = email })
    ctx.emit("customer.notified", { order_id = job.data.order_id, to = email,
                                    reason = job.data.reason })
  end,
}
