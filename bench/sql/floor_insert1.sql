-- (i) one job, one statement, one transaction.
\set n random(1, 1000000)
INSERT INTO bench_floor.floor_job (queue, data) VALUES ('floor', jsonb_build_object('n', :n::int));
