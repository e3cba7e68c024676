#!/usr/bin/env bash
# bench/bench_analytics.sh -- EXPLAIN (ANALYZE, BUFFERS) of each query of
# examples/analytics.sql on 1,000,000 events and 100,000 flow runs.
#
#   bench/bench_analytics.sh  build moonq, start the private PostgreSQL (or
#                             use DATABASE_URL), seed, explain, print times
#   BENCH_EVENTS=N BENCH_RUNS=N   sizes (default 1000000 and 100000)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup analytics moonq_exe
s=analytics_bench
events=${BENCH_EVENTS:-1000000}
runs=${BENCH_RUNS:-100000}
psql "$DATABASE_URL" -qAtX -c "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true
printf 'return { database = os.getenv("DATABASE_URL"), schema = "%s" }\n' "$s" >"$out/config.lua"
"$build/moonq" -c "$out/config.lua" migrate >"$out/migrate.log" 2>&1
# runs over the last 30 days, a tenth failed; 10 events per run (steps and
# their own events) plus job events, spread over the same 30 days in id order
psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO $s.queue_flow_index (flow_name, run_id, started_at, completed_at, status, failed_step, error)
SELECT 'flow' || (g % 5), 'run-' || g,
       now() - interval '30 days' + (g * interval '30 days' / $runs),
       now() - interval '30 days' + (g * interval '30 days' / $runs) + (g % 97) * interval '1 second',
       CASE WHEN g % 10 = 0 THEN 'failed' WHEN g % 10 = 1 THEN 'running' ELSE 'completed' END,
       CASE WHEN g % 10 = 0 THEN 'charge' END,
       CASE WHEN g % 10 = 0 THEN '{"message": "declined"}'::jsonb END
  FROM generate_series(1, $runs) g;
UPDATE $s.queue_flow_index SET completed_at = NULL WHERE status = 'running';
INSERT INTO $s.queue_events (stream, type, data, run_id, flow_name, step_name, attempt, ts)
SELECT 'flow:flow' || ((g / 10) % 5) || ':run-' || (g / 10),
       CASE g % 10 WHEN 0 THEN 'flow.started' WHEN 9 THEN 'step.failed' ELSE 'step.t' || (g % 7) END,
       jsonb_build_object('n', g), 'run-' || (g / 10), 'flow' || ((g / 10) % 5),
       CASE WHEN g % 10 = 9 THEN 'charge' ELSE 'step' || (g % 3) END, 1 + g % 3,
       now() - interval '30 days' + (g * interval '30 days' / $events)
  FROM generate_series(1, $events) g;
VACUUM ANALYZE $s.queue_flow_index;
VACUUM ANALYZE $s.queue_events;
SQL
# each query of the examples file, EXPLAINed
sed "s/moonq\./$s./g" "$repo/examples/analytics.sql" | grep -v '^[[:space:]]*--' |
  awk -v RS=';' -v dir="$out" '/SELECT/ { print $0 ";" > sprintf("%s/q%d.sql", dir, ++n) }'
for f in "$out"/q*.sql; do
  q=$(basename "$f" .sql)
  { echo "-- $q"; cat "$f"; } >>"$out/explain.txt"
  psql "$DATABASE_URL" -qAtX -c "EXPLAIN (ANALYZE, BUFFERS) $(cat "$f")" >>"$out/explain.txt"
  ms=$(psql "$DATABASE_URL" -qAtX -c "EXPLAIN (ANALYZE) $(cat "$f")" | awk '/Execution Time/ { print $3 }')
  echo "$q $ms ms" | tee -a "$out/summary.txt"
done
echo "plans: $out/explain.txt"
