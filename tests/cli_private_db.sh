#!/usr/bin/env bash
# cli_private_db.sh -- without DATABASE_URL and `database`, moonq starts the
# private PostgreSQL under <config dir>/.moonq and goes on: the server it
# starts in the background must not hold moonq's pipe to the start script
# open (moonq used to wait for that pipe's end forever). Run by ctest as
# sh_cli_private_db with MOONQ_BIN set.
set -u

bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
src=${MOONQ_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
dir=$(mktemp -d)
trap 'bash "$src/scripts/pg.sh" stop "$dir/.moonq" >/dev/null 2>&1; rm -rf "$dir"' EXIT
chmod 755 "$dir"
mkdir "$dir/handlers"
printf 'return { schema = "private_db_test" }\n' >"$dir/config.lua"

out=$(env -u DATABASE_URL timeout 120 "$bin" --config "$dir/config.lua" migrate 2>&1)
code=$?
if [ "$code" -ne 0 ] || [[ "$out" != *"schema private_db_test is at version"* ]]; then
  echo "FAIL: migrate on the private PostgreSQL exited $code (124: it hung): $out" >&2
  exit 1
fi
echo "cli_private_db: ok"
