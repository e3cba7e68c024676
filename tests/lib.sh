# tests/lib.sh -- what the CLI tests (tests/*.sh) share, sourced after
# `set -u`: checks MOONQ_BIN and DATABASE_URL (ctest sets them), makes a
# temporary directory and a schema name of the test's own, and on exit runs
# the test's `on_exit` function (when it defines one), drops the schema and
# removes the directory.
#
#   mq_test_setup NAME   sets bin, url, dir, schema (t_NAME_<pid>), failed=0
#   fail MESSAGE         reports a failure (the test goes on; exit 1 at the end)
#   sql STATEMENT        runs SQL on the test database, prints rows unaligned

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
  psql "$url" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  rm -rf "$dir"
}

fail() { echo "FAIL: $*" >&2; failed=1; }
sql() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
