#!/usr/bin/env bash
# cli_config.sh -- `moonq migrate --config FILE` with a bad config.lua exits
# 1 and prints one clear message on stderr: the key path and what was
# expected, or file:line for a Lua error. Run by ctest as sh_cli_config with
# MOONQ_BIN set; a bad config is rejected before any database is touched.
set -u

src=${MOONQ_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
fixtures=$src/tests/fixtures/config
passed=0
failed=0

# check NAME FIXTURE EXPECTED...: runs migrate on the fixture and expects
# exit code 1 and every EXPECTED string in stderr.
check() {
  local name=$1 fixture=$fixtures/$2
  shift 2
  local err code ok=1
  err=$("$bin" migrate --config "$fixture" 2>&1 >/dev/null)
  code=$?
  if [ "$code" -ne 1 ]; then
    echo "$name: exit code $code, expected 1" >&2
    ok=0
  fi
  for want in "$@"; do
    if [[ "$err" != *"$want"* ]]; then
      echo "$name: stderr lacks: $want" >&2
      ok=0
    fi
  done
  if [ "$ok" -eq 1 ]; then
    echo "ok - $name"
    passed=$((passed + 1))
  else
    echo "stderr was: $err" >&2
    echo "not ok - $name"
    failed=$((failed + 1))
  fi
}

check unknown_key unknown_key.lua \
  "moonq: $fixtures/unknown_key.lua: unknown key \"wokers\"" \
  '(did you mean "workers"?)'
check nested_unknown_key nested_unknown.lua \
  'unknown key "queue.retry_limt" (did you mean "queue.retry_limit"?)'
check wrong_type wrong_type.lua \
  "$fixtures/wrong_type.lua: queue.retry_limit: expected an integer >= 0, got string \"3\""
check bad_values bad_values.lua \
  'workers: expected an integer >= 1, got 0' \
  'schema: expected a lowercase SQL identifier' \
  'log.level: expected one of'
check syntax_error syntax_error.lua \
  "moonq: $fixtures/syntax_error.lua:3: unexpected symbol near '='"
check runtime_error runtime_error.lua \
  "moonq: $fixtures/runtime_error.lua:2: boom"
check not_a_table returns_number.lua \
  "$fixtures/returns_number.lua must return a table, got number"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
