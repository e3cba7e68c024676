-- Job "heartbeat": scripts/demo.sh schedules it every second with
-- `moonq schedule heartbeat '* * * * * *'`. A scheduled job's run_id is
-- "schedule:<name>:<slot>", the slot in UTC.
return function(job, ctx)
  local slot = job.run_id and job.run_id:match("^schedule:.*:(%d+%-%d+%-%d+T[%d:]+Z)$")
  ctx.log.info("heartbeat", { slot = slot })
  return { slot = slot }
end
