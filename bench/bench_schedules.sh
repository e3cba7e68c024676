#!/usr/bin/env bash
# bench/bench_schedules.sh -- 10,000 cron schedules, each firing every
# minute, fired by one `moonq run` process: fire lag and CPU per fire.
#
#   bench/bench_schedules.sh       build moonq, start a private PostgreSQL
#                                  (build-bench/pg-schedules, with
#                                  track_commit_timestamp on), run, print
#   BENCH_SCHEDULES=N              schedules (default 10000)
#   BENCH_MINUTES=M                minutes measured per variant (default 3)
#   BENCH_VARIANTS="aligned spread" which runs (default both)
#   BUILD_DIR=DIR                  build directory (default build-bench)
#
# Variants: "aligned" puts every schedule at second 0 of the minute
# (`* * * * *`: N slots due at the same instant, the hard case); "spread"
# gives schedule i second i mod 60 (`S * * * * *`: N/60 slots a second).
# Each run: a fresh schema, the schedules stored by one SQL statement,
# `moonq run` started (no handlers: the jobs only pile up), then M whole
# minutes measured after a first minute of warm-up. Lag of a fire is
# measured twice from the slot's time: to the start of the transaction
# that fired it (schedule_fire.fired_at) and to its commit, when the job
# becomes visible (pg_xact_commit_timestamp of the row). CPU is moonq's
# (/proc/PID/stat) and PostgreSQL's (the postmaster's children) over the
# measured minutes, divided by the fires in them. Raw outputs go to
# $BUILD_DIR/bench-out/schedules-<ts>/.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build-bench}
n=${BENCH_SCHEDULES:-10000}
minutes=${BENCH_MINUTES:-3}
variants=${BENCH_VARIANTS:-aligned spread}
out=$build/bench-out/schedules-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
say() { printf '%s\n' "$*" >&2; }

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1
fi
cmake --build "$build" --target moonq_exe -j"$(nproc)" >"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log" >&2; exit 1; }
moonq=$build/moonq

pgdir=$build/pg-schedules
url=$("$repo/scripts/pg.sh" start "$pgdir")
q() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
if [ "$(q "SHOW track_commit_timestamp")" != on ]; then
  q "ALTER SYSTEM SET track_commit_timestamp = on" >/dev/null
  "$repo/scripts/pg.sh" stop "$pgdir"
  url=$("$repo/scripts/pg.sh" start "$pgdir")
fi
export DATABASE_URL=$url
postmaster=$(head -1 "$pgdir/data/postmaster.pid")

# CPU seconds (user + system) of a process, or of the postmaster's children.
cpu_of() { awk '{ printf "%.2f\n", ($14 + $15) / 100 }' "/proc/$1/stat"; }
pg_cpu() {
  local total=0 p
  for p in $(pgrep -P "$postmaster"); do
    total=$(awk -v t="$total" '{ printf "%.2f", t + ($14 + $15) / 100 }' "/proc/$p/stat" 2>/dev/null || echo "$total")
  done
  echo "$total"
}
# Sleeps until `offset` seconds from the next whole minute (at least 0.2 s
# from now).
until_minute() {
  local now; now=$(date +%s.%N)
  sleep "$(awk -v n="$now" -v o="$1" 'BEGIN {
    d = 60 - (n % 60) + o; if (d < 0.2) d += 60; printf "%.3f", d }')"
}

stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
summary=$out/summary.txt
for variant in $variants; do
  s=sched_bench
  q "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true
  mkdir -p "$out/$variant/handlers"
  printf 'return { schema = "%s", handlers = "handlers", log = { level = "info" } }\n' "$s" \
    >"$out/$variant/config.lua"
  (cd "$out/$variant" && "$moonq" migrate >migrate.log 2>&1)
  cron="'* * * * *'"
  [ "$variant" = spread ] && cron="(g % 60) || ' * * * * *'"
  q "SELECT count($s.put_schedule('bench-' || g, $cron, NULL, 'tick', '{}', '{}', NULL, 'api'))
       FROM generate_series(1, $n) g" >/dev/null
  (cd "$out/$variant" && exec "$moonq" run >moonq.log 2>&1) &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null || true' EXIT
  until_minute 0.5  # warm-up: the first whole minute after the start
  until_minute -0.5 # CPU counts from half a second before minute t0
  t0=$(awk -v n="$(date +%s)" 'BEGIN { printf "%d", (int(n / 60) + 1) * 60 }')
  c0=$(cpu_of "$pid"); p0=$(pg_cpu)
  for _ in $(seq 1 "$minutes"); do until_minute -0.5; done
  c1=$(cpu_of "$pid"); p1=$(pg_cpu)
  t1=$((t0 + 60 * minutes))
  sleep 1.5
  kill -TERM "$pid"; wait "$pid" || true
  trap - EXIT
  q "SELECT extract(epoch FROM f.fired_at - f.slot) AS start_lag,
            extract(epoch FROM pg_xact_commit_timestamp(f.xmin) - f.slot) AS commit_lag
       FROM $s.schedule_fire f
      WHERE f.slot >= to_timestamp($t0) AND f.slot < to_timestamp($t1)" >"$out/$variant/lags.txt"
  expected=$((n * minutes))
  q "SELECT count(*),
            round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM f.fired_at - f.slot))::numeric, 3),
            round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM f.fired_at - f.slot))::numeric, 3),
            round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM pg_xact_commit_timestamp(f.xmin) - f.slot))::numeric, 3),
            round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM pg_xact_commit_timestamp(f.xmin) - f.slot))::numeric, 3),
            round(max(extract(epoch FROM pg_xact_commit_timestamp(f.xmin) - f.slot))::numeric, 3)
       FROM $s.schedule_fire f
      WHERE f.slot >= to_timestamp($t0) AND f.slot < to_timestamp($t1)" |
    awk -F'|' -v v="$variant" -v e="$expected" -v n="$n" -v m="$minutes" \
        -v mc="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" \
        -v pc="$(awk -v a="$p0" -v b="$p1" 'BEGIN { print b - a }')" '{
      printf "%s: %d schedules x %d min: %d of %d slots fired; lag to tx start p50 %.3f s p99 %.3f s; to commit p50 %.3f s p99 %.3f s max %.3f s; CPU per fire moonq %.1f us, PostgreSQL %.1f us\n",
        v, n, m, $1, e, $2, $3, $4, $5, $6, mc * 1e6 / $1, pc * 1e6 / $1 }' | tee -a "$summary"
  dup=$(q "SELECT count(*) FROM (SELECT run_id FROM $s.job GROUP BY run_id HAVING count(*) > 1) d")
  [ "$dup" = 0 ] || say "bench_schedules: $dup slots enqueued twice"
done
say "raw output: $out ($stamp)"
