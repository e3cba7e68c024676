#!/usr/bin/env bash
# bench/bench_flows.sh -- flows: step-to-step latency and runs/s of a
# 3-step no-op flow (bench/flows/bench.lua) with the workers in one process.
#
#   bench/bench_flows.sh      build moonq.so, start the private PostgreSQL
#                             (or use DATABASE_URL), run, print
#   BENCH_RUNS=N              runs for the throughput part (default 2000)
#   BUILD_DIR=DIR             build directory (default build-bench)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build-bench}
out=$build/bench-out/flows-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out/handlers/bench"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1
fi
cmake --build "$build" --target moonq_exe moonq_module -j"$(nproc)" >"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log" >&2; exit 1; }
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$("$repo/scripts/pg.sh" start "$build/pg")
fi
export DATABASE_URL
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
