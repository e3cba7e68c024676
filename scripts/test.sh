#!/usr/bin/env bash
# scripts/test.sh -- the whole test suite: installs what is missing, builds,
# then ctest runs the C tests and the busted specs against a private
# PostgreSQL that its fixture starts and stops. Extra arguments go to ctest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build}
bash "$repo/scripts/build.sh"
cd "$build"
exec ctest --output-on-failure -j "$(nproc)" --timeout 600 "$@"
