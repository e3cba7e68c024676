#!/usr/bin/env bash
# bench/bench_groups.sh -- consumer group throughput with 1, 2 and 4 member
# processes.
#
#   bench/bench_groups.sh     build moonq.so, start the private PostgreSQL
#                             (or use DATABASE_URL), run, print
#   BENCH_EVENTS=N            events per run (default 100000, on 200 streams)
#   BUILD_DIR=DIR             build directory (default build-bench)
#
# Each run: a fresh group of 16 partitions; K member processes
# (bench/events/group_member.lua, a no-op function) join and share the
# partitions; then one psql session appends N events in transactions of
# 100 (200 streams) and the clock runs from the start of the appends until
# the group's checkpoints count N events handled (polled every 50 ms).
# Then a backlog run: N events appended first, K members of a new group
# start, the clock runs from their start. Raw outputs go to
# $BUILD_DIR/bench-out/groups-<ts>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup groups moonq_exe moonq_module
s=ev_groups_bench
n=${BENCH_EVENTS:-100000}
q() { psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
q "DROP SCHEMA IF EXISTS $s CASCADE" 2>/dev/null || true
printf 'return { database = os.getenv("DATABASE_URL"), schema = "%s" }\n' "$s" >"$out/config.lua"
"$build/moonq" -c "$out/config.lua" migrate >"$out/migrate.log" 2>&1

pids=()
stop_members() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_members EXIT

now() { date +%s.%N; }
start_members() { # K GROUP
  for i in $(seq 1 "$1"); do
    LUA_CPATH="$build/?.so;;" LUA_PATH="$repo/lua/?.lua;;" \
      lua5.4 "$repo/bench/events/group_member.lua" "$s" "$2" "m$i" >>"$out/members.log" 2>&1 &
    pids+=($!)
  done
}
wait_handled() { # GROUP
  while :; do
    done_n=$(q "SELECT coalesce(sum(handled), 0) FROM $s.queue_event_checkpoints WHERE group_name = '$1'")
    [ "$done_n" -ge "$n" ] && break
    sleep 0.05
  done
}
report() { # WHAT K T0 T1
  awk -v what="$1" -v k="$2" -v n="$n" -v t0="$3" -v t1="$4" 'BEGIN {
    printf "%s, members %d: %d events in %.2f s = %.0f events/s\n", what, k, n, t1 - t0, n / (t1 - t0) }' |
    tee -a "$out/summary.txt"
}
for i in $(seq 1 $((n / 100))); do
  echo "SELECT $s.append_events(jsonb_agg(jsonb_build_object('stream', 'bench:' || (g % 200), 'type', 'bench.group', 'data', jsonb_build_object('n', g)))) FROM generate_series($((i * 100)), $((i * 100 + 99))) g;"
done >"$out/append.sql"
for k in 1 2 4 1 2 4; do
  group=g$k-$RANDOM
  q "TRUNCATE $s.queue_events" >/dev/null
  start_members "$k" "$group"
  share=$(( (16 + k - 1) / k ))
  for _ in $(seq 1 200); do
    ok=$(q "SELECT count(*) = $k AND max(c) <= $share FROM (SELECT consumer, count(*) c
              FROM $s.queue_event_checkpoints WHERE group_name = '$group' AND consumer IS NOT NULL
             GROUP BY consumer) m" 2>/dev/null || echo f)
    [ "$ok" = t ] && break
    sleep 0.1
  done
  [ "$ok" = t ] || { echo "members did not share the partitions (k=$k)" >&2; exit 1; }
  t0=$(now)
  psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -f "$out/append.sql" >/dev/null
  wait_handled "$group"
  report live "$k" "$t0" "$(now)"
  stop_members

  group=b$k-$RANDOM
  t0=$(now)
  start_members "$k" "$group"
  wait_handled "$group"
  report backlog "$k" "$t0" "$(now)"
  stop_members
done
echo "raw outputs: $out"
