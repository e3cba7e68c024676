-- examples/analytics.sql -- questions about flows and events, answered
-- from moonq's tables: queue_flow_index (one row per flow run: flow_name,
-- run_id, status running|completed|failed|cancelled, started_at,
-- completed_at, failed_step, error, data) and queue_events (every event:
-- stream, type, ts, data, and for a flow's events run_id, flow_name,
-- step_name, step_id, attempt).
--
-- The schema is `moonq` (config.lua's `schema`). For another one, replace
-- "moonq." everywhere, e.g.
--   sed 's/moonq\./shop_jobs./g' examples/analytics.sql | psql "$DATABASE_URL"
-- Run one query: copy it, or psql -f this file for all of them.
-- spec/analytics_spec.lua runs each on a seeded data set.

-- 1. Flow runs per status per day (last 30 days, UTC days).
SELECT date_trunc('day', started_at AT TIME ZONE 'UTC') AS day,
       flow_name, status, count(*) AS runs
  FROM moonq.queue_flow_index
 WHERE started_at >= now() - interval '30 days'
 GROUP BY 1, 2, 3
 ORDER BY 1, 2, 3;

-- 2. Slowest flows: how long finished runs took, per flow (last 7 days),
--    slowest p95 first. Runs still running are left out; so are cancelled
--    ones, whose end says nothing about the flow's speed.
SELECT flow_name,
       count(*) AS runs,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - started_at))::numeric, 3) AS p50_s,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - started_at))::numeric, 3) AS p95_s,
       round(max(extract(epoch FROM completed_at - started_at))::numeric, 3) AS max_s
  FROM moonq.queue_flow_index
 WHERE status IN ('completed', 'failed')
   AND started_at >= now() - interval '7 days'
 GROUP BY flow_name
 ORDER BY p95_s DESC, flow_name;

-- 3. The slowest runs themselves (last 7 days), with where each ended.
SELECT flow_name, run_id, status, completed_at - started_at AS duration, failed_step
  FROM moonq.queue_flow_index
 WHERE status IN ('completed', 'failed')
   AND started_at >= now() - interval '7 days'
 ORDER BY completed_at - started_at DESC, run_id
 LIMIT 10;

-- 4. Events by type per hour (last 24 hours, UTC hours), every stream.
SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AS hour, type, count(*) AS events
  FROM moonq.queue_events
 WHERE ts >= now() - interval '24 hours'
 GROUP BY 1, 2
 ORDER BY 1, 2;

-- 5. Failed runs with their failing step and its error (the latest 50),
--    and how many attempts that step made (its step.failed event).
SELECT f.flow_name, f.run_id, f.started_at, f.completed_at, f.failed_step,
       f.error->>'message' AS error,
       (SELECT max(e.attempt) FROM moonq.queue_events e
         WHERE e.run_id = f.run_id AND e.type = 'step.failed'
           AND e.step_name = f.failed_step) AS attempts
  FROM moonq.queue_flow_index f
 WHERE f.status = 'failed'
 ORDER BY f.completed_at DESC, f.run_id
 LIMIT 50;
