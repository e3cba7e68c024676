#!/usr/bin/env bash
# bench/bench_idle.sh -- CPU of an idle `moonq run` with many queues.
#
#   bench/bench_idle.sh [QUEUES=1000] [SECONDS=60]
#
# Writes QUEUES handler files (one queue each), starts `moonq run` (hot
# reload on and off, the default poll_interval), waits 15 s for it to
# settle, then reads the CPU time it used over SECONDS from /proc and
# prints it as % of one core, with the statements PostgreSQL ran for it
# meanwhile (pg_stat_database xact_commit of its database). Uses
# bench/lib.sh for the build and PostgreSQL.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup idle moonq_exe
queues=${1:-1000}
seconds=${2:-60}
dir=$out/handlers
mkdir -p "$dir"
for i in $(seq 1 "$queues"); do
  printf 'return { queue = "idle%d", handler = function(job, ctx) end }\n' "$i" >"$dir/h$i.lua"
done
hz=$(getconf CLK_TCK)
commits() {
  psql "$DATABASE_URL" -qAtX -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
}
for reload in true false; do
  cat >"$out/config-$reload.lua" <<CONF
return { schema = "bench_idle", handlers = "$dir", hot_reload = $reload, log = { level = "warn" } }
CONF
  "$build/moonq" --config "$out/config-$reload.lua" run >"$out/run-$reload.log" 2>&1 &
  pid=$!
  sleep 15
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  c0=$(commits)
  sleep "$seconds"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  c1=$(commits)
  kill -TERM "$pid"
  wait "$pid" || true
  awk -v q="$queues" -v r="$reload" -v t="$((t1 - t0))" -v hz="$hz" -v s="$seconds" \
      -v c="$((c1 - c0))" 'BEGIN {
    printf "queues=%d hot_reload=%s cpu=%.2f%% of a core statements/s=%.1f\n",
           q, r, 100 * t / hz / s, c / s }'
done
