#!/usr/bin/env bash
# bench/bench_idle_start.sh -- where the time of an idle start goes (issue 12,
# goal 2): the round trip of one client's statements back to back and after
# being idle, then `moonq run` idle with one job sent every BENCH_GAP_MS;
# see bench/idle_start/idle_start.mjs for the measures.
#
#   bench/bench_idle_start.sh       build moonq, start the private PostgreSQL
#                                   (or use DATABASE_URL), install the `pg`
#                                   npm package once into $BUILD_DIR/bench-node
#   BENCH_N=N                       statements and jobs per measure (300)
#   BENCH_GAP_MS=MS                 idle time between them (10)
#   BUILD_DIR=DIR                   build directory (default build-bench)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup idle_start moonq
node=$build/bench-node
if [ ! -d "$node/node_modules/pg" ]; then
  mkdir -p "$node"
  npm install --prefix "$node" --no-audit --no-fund pg@8 >"$out/npm.log" 2>&1 || {
    tail -20 "$out/npm.log" >&2; exit 1; }
fi
schema=bench_idle
mkdir -p "$out/handlers"
echo 'return function() end' >"$out/handlers/bench_idle.lua"
cat >"$out/config.lua" <<LUA
return { database = os.getenv("DATABASE_URL"), schema = "$schema", handlers = "$out/handlers",
  workers = 1, hot_reload = false, queue = { concurrency = 10 }, log = { level = "warn" } }
LUA
psql "$DATABASE_URL" -qX -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
"$build/moonq" -c "$out/config.lua" migrate >"$out/migrate.log" 2>&1
cp "$repo/bench/idle_start/idle_start.mjs" "$node/"
MOONQ_BIN=$build/moonq BENCH_SCHEMA=$schema BENCH_DIR=$out node "$node/idle_start.mjs" | tee "$out/summary.txt"
psql "$DATABASE_URL" -qX -c "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1
echo "raw outputs: $out"
