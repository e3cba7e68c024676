#!/usr/bin/env bash
# bench/bench_worker.sh -- the worker benchmark: `moonq run` with a no-op Lua
# handler draining a queued backlog, and enqueue -> handler-start latency.
#
#   bench/bench_worker.sh           build moonq + moonq.so, start the private
#                                   PostgreSQL (or use DATABASE_URL), run, print
#   BENCH_JOBS=N                    backlog to drain (default 50000)
#   BENCH_TIMEOUT=S                 stop a drain after S seconds (default 25;
#                                   the rate is then taken over what was done)
#   BENCH_SETTINGS="w:c ..."        workers:concurrency pairs ("" none; default
#                                   "1:1 1:10 1:100 2:1 2:10 2:100")
#   BENCH_EXTRA="w:c:e ..."         more drains, e = job_events (1/0)
#   BENCH_PERF=w:c                  one more drain under perf record -a -g
#   BENCH_PGSS="w:c[:e] ..."        one more drain each with pg_stat_statements reset
#                                   before and its top statements saved after
#   BENCH_LAT_N=N, BENCH_LAT_GAP=S  latency probe: N jobs, one every S s (500, 0.01)
#   BENCH_PATCH="f.sql ..."         SQL applied over the schema after migrating
#                                   (@schema@ replaced; use with BENCH_SCHEMA)
#   BENCH_SCHEMA=S                  schema (default moonq_wbench)
#   BENCH_PREFETCH=N                queue.prefetch of the drains (default "auto")
#   BENCH_RETENTION=S               retention of the jobs (default 604800; 0: a
#                                   completed job is deleted, not archived)
#   BENCH_HANDLERS=DIR              handlers dir of the drains (default bench/worker/handlers)
#   BUILD_DIR=DIR                   build directory (default build-bench)
#
# Files: bench/worker/config.lua (settings from BENCH_* variables),
# bench/worker/handlers/noop.lua (drains), bench/worker/lat_handlers/lat.lua
# (latency; separate so each run has one consumer), bench/worker/util.sql (wait_empty,
# send_lat), bench/worker/send_lat.lua (sends through moonq's connections).
# Raw outputs go to $BUILD_DIR/bench-out/worker-<timestamp>/ (summary.txt).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build-bench}
out=$build/bench-out/worker-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
njobs=${BENCH_JOBS:-50000}
timeout=${BENCH_TIMEOUT:-25}
settings=${BENCH_SETTINGS-"1:1 1:10 1:100 2:1 2:10 2:100"}
say() { printf '%s\n' "$*" | tee -a "$out/summary.txt" >&2; }

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1
fi
cmake --build "$build" --target moonq_exe moonq_module -j"$(nproc)" >"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log" >&2; exit 1; }
moonq=$build/moonq

if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$("$repo/scripts/pg.sh" start "$build/pg")
fi
export DATABASE_URL
url=$DATABASE_URL
export BENCH_WORKER_DIR=$repo/bench/worker
export BENCH_SCHEMA=${BENCH_SCHEMA:-moonq_wbench}
s=$BENCH_SCHEMA
cfg=$repo/bench/worker/config.lua
q() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

"$moonq" -c "$cfg" migrate >"$out/migrate.log" 2>&1
for f in ${BENCH_PATCH:-}; do
  sed "s/@schema@/$s/g" "$f" | psql "$url" -qX -v ON_ERROR_STOP=1 >/dev/null
done
psql "$url" -qX -v ON_ERROR_STOP=1 -f "$repo/bench/worker/util.sql" >/dev/null

hz=$(getconf CLK_TCK)
pm_pid=$(head -1 "$(q "SHOW data_directory")/postmaster.pid")
# PostgreSQL CPU seconds: postmaster (with reaped children) + live backends.
pgcpu() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm_pid" -v hz="$hz" '
    $1 == pm { t += $14 + $15 + $16 + $17 } $4 == pm && $1 != pm { t += $14 + $15 }
    END { printf "%.3f\n", t / hz }'
}
# CPU seconds of process group $1 (moonq run and its prefork children).
grpcpu() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v g="$1" -v hz="$hz" '
    $5 == g { t += $14 + $15 + $16 + $17 } END { printf "%.3f\n", t / hz }'
}

running=""
trap '[ -z "$running" ] || kill -KILL -- "-$running" 2>/dev/null || true' EXIT
start_moonq() { # workers concurrency job_events log [handlers] -> pid (own process group)
  BENCH_HANDLERS=${5:-${BENCH_HANDLERS:-$BENCH_WORKER_DIR/handlers}} BENCH_WORKERS=$1 BENCH_CONCURRENCY=$2 BENCH_JOB_EVENTS=$3 \
    setsid "$moonq" -c "$cfg" run >"$4" 2>&1 &
  echo $!
}
stop_moonq() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
}

fill() {
  psql "$url" -qAtX -v ON_ERROR_STOP=1 >/dev/null <<EOF
DELETE FROM $s.job;
TRUNCATE $s.job_archive;
SET moonq.no_wake = on;
SELECT $s.send_many('noop', (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, $njobs) g),
                    '{"retention": ${BENCH_RETENTION:-604800}}');
VACUUM ANALYZE $s.job;
VACUUM ANALYZE $s.job_archive;
CHECKPOINT;
EOF
}

# drain W C E [label] -> appends a line to $out/drain.txt:
# label workers conc events done secs wall_jobs_s steady_jobs_s moonq_us pg_us empty
drain() {
  local w=$1 c=$2 e=$3 label=${4:-w$1-c$2-e$3}
  fill
  sleep 0.5
  [ -z "${PGSS_NOW:-}" ] || q "SELECT pg_stat_statements_reset()" >/dev/null
  local c0; c0=$(pgcpu)
  local t0; t0=$(date +%s.%N)
  local pid; pid=$(start_moonq "$w" "$c" "$e" "$out/moonq-$label.log"); running=$pid
  if [ -n "${PERF_NOW:-}" ]; then
    sleep 1
    perf record -a -g -o "$out/perf-$label.data" -- sleep 3 >"$out/perf-$label.log" 2>&1 || true
  fi
  local at empty
  IFS='|' read -r at empty < <(q "CALL bench_wutil.wait_empty('$s', 'noop', $timeout)")
  local mc; mc=$(grpcpu "$pid")
  local c1; c1=$(pgcpu)
  stop_moonq "$pid"
  [ -z "${PGSS_NOW:-}" ] || psql "$url" -X -c "SELECT calls, rows, round((rows::numeric / calls), 1) AS rows_per_call,
    round(total_exec_time::numeric, 1) AS total_ms, round((total_exec_time / calls)::numeric, 3) AS ms_per_call,
    round((total_exec_time * 1000 / $njobs)::numeric, 1) AS us_per_job, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
    FROM pg_stat_statements WHERE query NOT LIKE '%wait_empty%' AND query NOT LIKE '%NOT EXISTS (SELECT 1 FROM%' ORDER BY total_exec_time DESC LIMIT 8" >"$out/pgss-$label.txt"
  local done_ steady
  IFS='|' read -r done_ steady < <(q "SELECT count(*), extract(epoch FROM max(completed_at) - min(started_at)) FROM $s.job_archive WHERE queue = 'noop' AND state = 'completed'")
  if [ "${BENCH_RETENTION:-}" = 0 ]; then # nothing archived: done when the queue is empty
    done_=$([ "$empty" = t ] && echo "$njobs" || q "SELECT $njobs - count(*) FROM $s.job WHERE queue = 'noop'")
    steady=0
  fi
  awk -v l="$label" -v w="$w" -v c="$c" -v e="$e" -v n="$done_" -v t0="$t0" -v at="$at" \
      -v st="$steady" -v mc="$mc" -v c0="$c0" -v c1="$c1" -v em="$empty" 'BEGIN {
    secs = at - t0; printf "%s %d %d %d %d %.3f %.0f %.0f %.1f %.1f %s\n", l, w, c, e, n, secs,
      n / secs, (st > 0 ? n / st : 0), mc / n * 1e6, (c1 - c0) / n * 1e6, em }' | tee -a "$out/drain.txt" >&2
}

say "== drain $njobs no-op jobs (label workers conc job_events done secs wall_jobs/s steady_jobs/s moonq_us/job pg_us/job empty)"
for sc in $settings; do drain "${sc%%:*}" "${sc#*:}" 1; done
for sc in ${BENCH_EXTRA:-}; do IFS=: read -r w c e <<<"$sc"; drain "$w" "$c" "$e"; done
if [ -n "${BENCH_PGSS:-}" ] && [[ $(q "SHOW shared_preload_libraries") == *pg_stat_statements* ]]; then
  q "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null 2>&1
  for sc in $BENCH_PGSS; do
    IFS=: read -r w c e <<<"$sc:1"
    PGSS_NOW=1 drain "$w" "$c" "$e" "pgss-w$w-c$c-e$e"
  done
fi
if [ -n "${BENCH_PERF:-}" ]; then
  IFS=: read -r w c e <<<"$BENCH_PERF:1"
  PERF_NOW=1 drain "$w" "$c" "${e:-1}" "perf-w$w-c$c-e${e:-1}"
  perf report -i "$out/perf-perf-w$w-c$c-e${e:-1}.data" --stdio --no-children --sort comm \
    2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 >"$out/perf-comm.txt" || true
  perf report -i "$out/perf-perf-w$w-c$c-e${e:-1}.data" --stdio --no-children --comm moonq \
    --sort dso,symbol -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 >"$out/perf-moonq.txt" || true
  perf report -i "$out/perf-perf-w$w-c$c-e${e:-1}.data" --stdio --no-children --comm postgres \
    --sort symbol -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 >"$out/perf-postgres.txt" || true
  rm -f "$out"/perf-*.data
fi

# ---- latency: enqueue -> fetch (started_at) and -> completion, worker idle ----
lat_n=${BENCH_LAT_N:-500}; lat_gap=${BENCH_LAT_GAP:-0.01}
lat_report() { # mode
  q "SELECT '$1', count(*),
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)) * 1000)::numeric, 3),
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)) * 1000)::numeric, 3),
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)) * 1000)::numeric, 3),
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)) * 1000)::numeric, 3),
       coalesce(round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at) - (data->>'t')::float8) * 1000)::numeric, 3), -1),
       coalesce(round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at) - (data->>'t')::float8) * 1000)::numeric, 3), -1)
     FROM $s.job_archive WHERE queue = 'lat'"
}
latency() { # mode: sql | moonq
  q "DELETE FROM $s.job; TRUNCATE $s.job_archive" >/dev/null
  local pid; pid=$(start_moonq 1 10 1 "$out/moonq-lat-$1.log" "$BENCH_WORKER_DIR/lat_handlers"); running=$pid
  sleep 2
  if [ "$1" = sql ]; then
    q "CALL bench_wutil.send_lat('$s', $lat_n, $lat_gap)" >/dev/null
  else
    LUA_CPATH="$build/?.so;;" LUA_PATH="$repo/lua/?.lua;;" lua5.4 "$repo/bench/worker/send_lat.lua" "$cfg" "$lat_n" "$lat_gap" \
      >"$out/send_lat.log" 2>&1
  fi
  q "CALL bench_wutil.wait_empty('$s', 'lat', 10)" >/dev/null
  stop_moonq "$pid"
  lat_report "$1" | tee -a "$out/latency.txt" >&2
}
say "== latency, $lat_n jobs one every ${lat_gap}s, workers=1 conc=10 (mode n start_p50_ms start_p99_ms done_p50_ms done_p99_ms start_from_t_p50 start_from_t_p99; ms; from created_at = send transaction start)"
latency sql
latency moonq
q "DELETE FROM $s.job; TRUNCATE $s.job_archive" >/dev/null
say "raw outputs: $out"
