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
