-- Step "validate", the entry of flow "order": checks the order, keeps what
-- later steps need in the run's state and hands the charge its data.
-- An invalid order is not worth a retry: it fails the run at once.
return {
  flow = { name = "order", step = "validate", entry = true, emits = { "order.validated" } },
  retry = { limit = 0 },
  handler = function(job, ctx)
    local order = job.data
    local amount = 0
    for _, item in ipairs(order.items or {}) do
      if type(item.price) ~= "number" or item.price <= 0 or (item.qty or 1) < 1 then
        error({ message = "invalid order: bad item", sku = item.sku })
      end
      amount = amount + item.price * (item.qty or 1)
    end
    if amount <= 0 then error({ message = "invalid order: no items" }) end
    if type(order.email) ~= "string" or not order.email:find("@") then
      error({ message = "invalid order: no customer email" })
    end
    ctx.state.set("email", order.email)
    ctx.state.set("address", order.address)
    ctx.log.info("order valid", { order = order.id, amount = amount })
    ctx.emit("order.validated", { order_id = order.id, amount = amount, card = order.card })
    return { amount = amount }
  end,
}
