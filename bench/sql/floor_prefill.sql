-- Empties the floor tables and queues :jobs ready rows (psql -v jobs=N).
TRUNCATE bench_floor.floor_job, bench_floor.floor_archive;
INSERT INTO bench_floor.floor_job (queue, data)
SELECT 'floor', jsonb_build_object('n', g) FROM generate_series(1, :jobs) g;
VACUUM ANALYZE bench_floor.floor_job;
VACUUM ANALYZE bench_floor.floor_archive;
CHECKPOINT;
