-- Turns job lifecycle events on in the benchmark's schema (bench_queue
-- --patch): the runtime then finds the switch set and leaves it.
SELECT @schema@.store_job_events(true);
