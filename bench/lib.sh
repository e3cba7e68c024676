# bench/lib.sh -- what the bench/bench_*.sh scripts share; source it.
#
#   bench_setup NAME TARGET...
#
# Sets repo (the checkout), build (BUILD_DIR, default build-bench) and out
# ($build/bench-out/NAME-<UTC time>, created); configures the build
# directory once (RelWithDebInfo) and builds TARGETs, logs in $out (the
# script exits with the build log's tail on failure); exports
# DATABASE_URL, starting the private PostgreSQL in $build/pg when it is
# not set.
#
#   bench_pg_cpu [POSTMASTER PID]
#
# Prints PostgreSQL's CPU seconds so far: the postmaster, its live children
# and the children it has reaped (pgbench's backends exit before we look).
# The postmaster is DATABASE_URL's unless given.
bench_setup() {
  local name=$1
  shift
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  build=${BUILD_DIR:-$repo/build-bench}
  out=$build/bench-out/$name-$(date -u +%Y%m%d-%H%M%S)
  mkdir -p "$out"
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1
  fi
  local targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  cmake --build "$build" "${targets[@]}" -j"$(nproc)" >"$out/build.log" 2>&1 || {
    tail -30 "$out/build.log" >&2; exit 1; }
  if [ -z "${DATABASE_URL:-}" ]; then
    DATABASE_URL=$("$repo/scripts/pg.sh" start "$build/pg")
  fi
  export DATABASE_URL
}

bench_pg_cpu() {
  local pm=${1:-}
  [ -n "$pm" ] || pm=$(head -1 "$(psql "$DATABASE_URL" -qAtX -c "SHOW data_directory")/postmaster.pid" 2>/dev/null || echo 0)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" -v hz="$(getconf CLK_TCK)" '
    $1 == pm { t += $14 + $15 + $16 + $17 } $4 == pm && $1 != pm { t += $14 + $15 }
    END { printf "%.2f\n", t / hz }'
}
