-- The fetch path on 1,000,000 waiting jobs (plus 200,000 delayed ones in
-- the same queue and 200,000 in another queue): the plans of fetch_jobs'
-- claim and of next_due. Run: psql "$DATABASE_URL" -f bench/sql/explain_1m.sql
-- on a database migrated into schema "explain" (moonq -c <config with
-- schema = "explain"> migrate).
\set ON_ERROR_STOP on
SET search_path = explain, public;
TRUNCATE explain.job;
INSERT INTO explain.job (queue, name, data, priority, retry_limit, retry_delay,
                         retry_backoff, expire_in, retention, start_after)
SELECT CASE WHEN g % 7 = 0 THEN 'other' ELSE 'mail' END, 'mail',
       jsonb_build_object('n', g), (g % 3), 3, 60, true, 900, 604800,
       CASE WHEN g % 6 = 0 THEN now() + interval '1 hour' ELSE now() END
  FROM generate_series(1, 1400000) g;
VACUUM ANALYZE explain.job;
\echo '== claim of 500 runnable jobs (the SELECT inside fetch_jobs)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT jj.id FROM explain.job jj
 WHERE jj.queue = 'mail' AND jj.state < 'active' AND jj.start_after <= now()
 ORDER BY jj.priority DESC, jj.id
 LIMIT 500 FOR UPDATE SKIP LOCKED;
\echo '== the whole claim, as fetch_jobs runs it (rolled back)'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
UPDATE explain.job j SET state = 'active', started_at = now(), process_id = gen_random_uuid(),
       attempt = j.attempt + 1
 WHERE j.id = ANY(ARRAY(
   SELECT jj.id FROM explain.job jj
    WHERE jj.queue = 'mail' AND jj.state < 'active' AND jj.start_after <= now()
    ORDER BY jj.priority DESC, jj.id LIMIT 500 FOR UPDATE SKIP LOCKED));
ROLLBACK;
\echo '== next_due'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT min(j.start_after) FROM explain.job j
 WHERE j.queue = 'mail' AND j.state < 'active' AND j.start_after > now();
\timing on
SELECT count(*) FROM explain.fetch_jobs('mail', 500, gen_random_uuid());
SELECT count(*) FROM explain.fetch_jobs('mail', 500, gen_random_uuid());
