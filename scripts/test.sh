#!/usr/bin/env bash
# scripts/test.sh -- the whole test suite: installs what is missing, builds,
# then ctest runs the C tests and the busted specs against a private
# PostgreSQL that its fixture starts and stops. Then a second build with
# AddressSanitizer and UBSan (BUILD_DIR-asan, its own PostgreSQL) runs the
# tests labelled `sanitize` (tests/CMakeLists.txt) again; MOONQ_SANITIZE=0
# skips that pass. Extra arguments go to ctest, in both passes.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build}

run_ctest() { # BUILD_DIR [CTEST ARGS]
  local dir=$1; shift
  (cd "$dir" && ctest --output-on-failure -j "$(nproc)" --timeout 600 "$@")
}

bash "$repo/scripts/build.sh"
run_ctest "$build" "$@"

[ "${MOONQ_SANITIZE:-1}" = 0 ] && exit 0
echo "test.sh: again with AddressSanitizer and UBSan in $build-asan" >&2
BUILD_DIR=$build-asan bash "$repo/scripts/build.sh" -DASAN=ON -DUBSAN=ON
run_ctest "$build-asan" -L sanitize "$@"
