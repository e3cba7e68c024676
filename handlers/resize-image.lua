-- Job "resize-image": waits without blocking the loop; other jobs run
-- while it sleeps.
return {
  timeout = 10,
  handler = function(job, ctx)
    ctx.log.info("resizing", { width = job.data.width })
    ctx.sleep(0.5)
    return { width = job.data.width, done = true }
  end,
}
