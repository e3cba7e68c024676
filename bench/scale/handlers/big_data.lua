-- Part 6 of bench/bench_scale.sh: a job whose data is about 1 MB; reads it.
return function(job)
  return { bytes = #job.data.s }
end
