-- (ii) 1000 jobs in one INSERT ... SELECT.
INSERT INTO bench_floor.floor_job (queue, data)
SELECT 'floor', jsonb_build_object('n', g) FROM generate_series(1, 1000) g;
