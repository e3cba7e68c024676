#!/usr/bin/env bash
# bench/bench_flows.sh -- flows: step-to-step latency and runs/s of a
# 3-step no-op flow (bench/flows/bench.lua) with the workers in one process.
#
#   bench/bench_flows.sh      build moonq.so, start the private PostgreSQL
#                             (or use DATABASE_URL), run, print
#   BENCH_RUNS=N              runs for the throughput part (default 2000)
#   BUILD_DIR=DIR             build directory (default build-bench)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup flows moonq_exe moonq_module
mkdir -p "$out/handlers/bench"
s=flows_bench
psql "$DATABASE_URL" -qAtX -c "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true
step() { # NAME ENTRY SUBSCRIBES EMITS
  cat >"$out/handlers/bench/$1.lua" <<LUA
return {
  flow = { name = "bench", step = "$1", entry = $2, subscribes = { $3 }, emits = { $4 } },
  handler = function(job, ctx) ${5:-} end,
}
LUA
}
step a true '' '"a.done"' 'ctx.emit("a.done", {})'
step b false '"a.done"' '"b.done"' 'ctx.emit("b.done", {})'
step c false '"b.done"' ''
LUA_CPATH="$build/?.so;;" LUA_PATH="$repo/lua/?.lua;;" \
  lua5.4 "$repo/bench/flows/bench.lua" "$s" "$out/handlers" "${BENCH_RUNS:-2000}" \
  2>"$out/lua.log" | tee "$out/summary.txt"
echo "raw outputs: $out"
