#!/usr/bin/env bash
# bench/bench_batch_plans.sh -- one call of each batch function that
# sql/032_batch_plans.sql changed, on a batch of 1,000, with the generic
# plans a process's connection comes to use: milliseconds a call.
#
#   bench/bench_batch_plans.sh   build moonq, start a private PostgreSQL
#                                (build-bench/pg) unless DATABASE_URL is
#                                set, run, print
#   MOONQ=PATH                   the moonq binary that migrates the schema
#                                (default: the one built here); a binary
#                                built from an older commit measures the
#                                functions as they were
#   BENCH_CALLS=K                calls timed per function (default 5)
#   BUILD_DIR=DIR                build directory (default build-bench)
#
# A fresh schema holds what makes the planner expect a handful of rows
# from an array of ten: 50,000 other jobs and 50,000 past flow runs, then
# 1,000 schedules and 1,000 flow runs with their entry step claimed, and
# ANALYZE. Then, with plan_cache_mode = force_generic_plan, each call runs
# in a transaction that is rolled back (so every call does the same work):
#   fire_schedules       the current hour's slot of the 1,000 schedules
#   flow_steps_archived  the 1,000 step jobs archived as completed in one
#                        statement (as archive() does it), ending their runs
# Prints the fastest and the median call of each, in ms (psql's \timing).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup batch-plans moonq_exe
moonq=${MOONQ:-$build/moonq}
calls=${BENCH_CALLS:-5}
schema=bench_bp_$$
say() { printf '%s\n' "$*" >&2; }

printf 'return { database = [[%s]], schema = "%s" }\n' "$DATABASE_URL" "$schema" >"$out/config.lua"
"$moonq" --config "$out/config.lua" migrate >"$out/migrate.log" 2>&1 || {
  tail -5 "$out/migrate.log" >&2; exit 1; }
trap 'psql "$DATABASE_URL" -qX -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1' EXIT
say "schema $schema: $(tail -1 "$out/migrate.log")"

psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 >"$out/setup.log" <<SQL
SET moonq.no_wake = on;
SELECT count(*) FROM $schema.send_many('other', (SELECT jsonb_agg(jsonb_build_object('n', g))
                                                 FROM generate_series(1, 50000) g));
SELECT count(*) FROM generate_series(1, 1000) g,
  $schema.put_schedule('s' || g, '@hourly', 'UTC', 'tick', '{}', '{}', NULL, 'api');
SELECT $schema.store_flows('[{"flow": "one", "steps": [{"step": "a", "job": "one.a", "entry": true}]}]');
SELECT count(*) FROM generate_series(1, 1000) g, $schema.start_flow('one', jsonb_build_object('n', g));
SELECT count(*) FROM $schema.fetch_jobs('one.a', 1000, '00000000-0000-0000-0000-0000000000b4');
INSERT INTO $schema.queue_flow_index (flow_name, run_id, status, completed_at)
SELECT 'one', 'past' || g, 'completed', now() FROM generate_series(1, 50000) g;
ANALYZE;
CREATE TABLE $schema.b AS SELECT
  (SELECT array_agg(s.id ORDER BY s.id) FROM $schema.schedule s) AS schedules,
  (SELECT array_agg(j.id ORDER BY j.id) FROM $schema.job j WHERE j.queue = 'one.a') AS steps;
SQL

# time NAME SQL: runs SQL $calls times, each in a transaction rolled back;
# prints NAME, the fastest and the median call in ms.
time_calls() {
  local name=$1 sql=$2 i
  {
    echo "SET plan_cache_mode = force_generic_plan;"
    echo "SET moonq.no_wake = on;"
    for ((i = 0; i < calls; i++)); do
      echo "BEGIN;"
      echo "\\timing on"
      echo "$sql;"
      echo "\\timing off"
      echo "ROLLBACK;"
    done
  } | psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 >"$out/$name.log" 2>&1 || {
    tail -5 "$out/$name.log" >&2; exit 1; }
  grep -o 'Time: [0-9.]*' "$out/$name.log" | awk '{print $2}' | sort -n \
    | awk -v name="$name" '{t[NR] = $1} END {
        printf "%-20s fastest %8.1f ms   median %8.1f ms   (%d calls)\n", name, t[1], t[int((NR + 1) / 2)], NR }'
}

time_calls fire_schedules "SELECT $schema.fire_schedules(b.schedules,
  array_fill(extract(epoch FROM date_trunc('hour', now()))::float8, ARRAY[cardinality(b.schedules)]),
  array_fill(extract(epoch FROM date_trunc('hour', now()))::float8 + 3600, ARRAY[cardinality(b.schedules)]))
  FROM $schema.b"
time_calls flow_steps_archived "WITH gone AS (DELETE FROM $schema.job j USING $schema.b WHERE j.id = ANY(b.steps) RETURNING j.*)
  INSERT INTO $schema.job_archive (id, queue, name, data, state, priority, retry_limit, attempt,
    retry_delay, retry_backoff, retry_delay_max, expire_in, retention, start_after, created_at,
    started_at, singleton_key, dead_letter, run_id, process_id, output, completed_at, keep_until)
  SELECT id, queue, name, data, 'completed', priority, retry_limit, attempt, retry_delay,
    retry_backoff, retry_delay_max, expire_in, retention, start_after, created_at, started_at,
    singleton_key, dead_letter, run_id, process_id, '{}', now(), now() + make_interval(secs => retention)
  FROM gone"
