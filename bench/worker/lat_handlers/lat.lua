-- Latency probe: does nothing; bench_worker.sh reads started_at/completed_at.
return function() end
