# tests/lib.sh -- what the CLI tests (tests/*.sh) share, sourced after
# `set -u`: checks MOONQ_BIN and DATABASE_URL (ctest sets them), makes a
# temporary directory and a schema name of the test's own, and on exit runs
# the test's `on_exit` function (when it defines one), drops the schema and
# removes the directory.
#
#   mq_test_setup NAME   sets bin, url, dir, schema (t_NAME_<pid>), failed=0
#   fail MESSAGE         reports a failure (the test goes on; exit 1 at the end)
#   sql STATEMENT        runs SQL on the test database, prints rows unaligned
#   mq_serve_http [LEVEL] writes $dir/config.lua (log level LEVEL, warn) (the test's schema, the
#                        handlers in $dir/handlers), starts `moonq run --http`
#                        on a port of the test's own and waits until it
#                        answers; sets port, base (its URL) and run_pid (the
#                        cleanup stops it and fails the test when the log,
#                        $dir/run.log, holds a sanitizer report)

mq_test_setup() {
  bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
  url=${DATABASE_URL:?DATABASE_URL is not set (run through ctest)}
  dir=$(mktemp -d)
  schema=t_$1_$$
  failed=0
  trap mq_test_cleanup EXIT
}

mq_test_cleanup() {
  declare -F on_exit >/dev/null && on_exit
  [ -n "${run_pid-}" ] && kill -INT "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
  # A sanitizer report of the server that mq_serve_http started fails the test.
  local report=
  [ -n "${served-}" ] && report=$(grep -A20 -m1 'Sanitizer' "$dir/run.log" 2>/dev/null)
  psql "$url" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  rm -rf "$dir"
  if [ -n "$report" ]; then
    echo "FAIL: the server reported: $report" >&2
    exit 1
  fi
}

fail() { echo "FAIL: $*" >&2; failed=1; }
sql() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

mq_serve_http() {
  port=$((20000 + (${#schema} * 7919 + $$) % 20000))
  base=http://127.0.0.1:$port
  cat >"$dir/config.lua" <<EOF
return { schema = "$schema", handlers = "$dir/handlers", log = { level = "${1:-warn}" } }
EOF
  "$bin" --config "$dir/config.lua" run --http "127.0.0.1:$port" >"$dir/run.log" 2>&1 &
  run_pid=$!
  served=1
  for _ in $(seq 1 100); do curl -s -o /dev/null "$base/api/queues" && return 0; sleep 0.1; done
  fail "moonq run --http did not answer on $base: $(cat "$dir/run.log")"
}
