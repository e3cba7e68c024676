-- Job "order.placed" (the file's path names it): emits an event and queues
-- a follow-up job.
return {
  concurrency = 5,
  retry = { limit = 5, delay = 2, backoff = true },
  handler = function(job, ctx)
    ctx.emit("order.accepted", { order = job.data.order })
    ctx.enqueue("send-email", { to = job.data.email, subject = "Order " .. job.data.order })
    return { accepted = job.data.order }
  end,
}
