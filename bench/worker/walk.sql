-- Cost of one fetch_jobs(50) as a drain progresses without VACUUM (the
-- claimed-then-deleted rows leave dead entries at the head of
-- job_fetch_idx that every fetch walks past). psql -v s=SCHEMA -f walk.sql
SET moonq.no_wake = on;
DELETE FROM :s.job; TRUNCATE :s.job_archive;
SELECT :s.send_many('noop', (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 50000) g)) IS NOT NULL AS sent;
VACUUM ANALYZE :s.job;
CREATE TABLE IF NOT EXISTS bench_wutil.walk (i int, fetch_ms float8, complete_ms float8);
TRUNCATE bench_wutil.walk;
CREATE OR REPLACE PROCEDURE bench_wutil.walk(s text, n int, b int) LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; t0 timestamptz; t1 timestamptz; t2 timestamptz; o uuid := gen_random_uuid();
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    EXECUTE format('SELECT array_agg(id) FROM %I.fetch_jobs(''noop'', $1, $2)', s) INTO ids USING b, o;
    t1 := clock_timestamp();
    EXECUTE format('SELECT count(*) FROM %I.complete_jobs($1, (SELECT jsonb_agg(null::jsonb) FROM unnest($1)), $2)', s) USING ids, o;
    t2 := clock_timestamp();
    INSERT INTO bench_wutil.walk VALUES (i, extract(epoch FROM t1 - t0) * 1000, extract(epoch FROM t2 - t1) * 1000);
    COMMIT;
  END LOOP;
END $$;
CALL bench_wutil.walk(:'s', 1000, 50);
SELECT (i - 1) / 100 * 100 + 1 AS from_fetch, round(avg(fetch_ms)::numeric, 3) AS fetch_ms_per_50,
       round(avg(complete_ms)::numeric, 3) AS complete_ms_per_50
  FROM bench_wutil.walk GROUP BY 1 ORDER BY 1;
