-- Job "send-email": the simplest handler is a function (job, ctx).
return function(job, ctx)
  ctx.log.info("sending email", { to = job.data.to })
  return { sent = true, to = job.data.to }
end
