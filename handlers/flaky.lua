-- Job "flaky": fails on its first attempt, succeeds when retried
-- (config.lua gives queue "flaky" a one-second retry delay).
return function(job, ctx)
  if job.attempt == 1 then
    error("the remote service is down (attempt " .. job.attempt .. ")")
  end
  ctx.log.info("succeeded on retry", { attempt = job.attempt })
  return { attempt = job.attempt }
end
