-- Step "ship": books the parcel once the payment is captured; its event
-- is the run's last.
return {
  flow = { name = "order", step = "ship", subscribes = { "payment.captured" },
           emits = { "order.shipped" } },
  handler = function(job, ctx)
    local address = ctx.state.get("address")
    local tracking = ("TRK-%s"):format(job.data.order_id)
    ctx.emit("order.shipped", { order_id = job.data.order_id, tracking = tracking,
                                city = address and address.city })
    return { tracking = tracking }
  end,
}
