-- Part 6 of bench/bench_scale.sh: a job whose output is about 1 MB
-- (job.data.bytes characters).
return function(job)
  return string.rep("x", job.data.bytes)
end
