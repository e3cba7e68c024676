#!/usr/bin/env bash
# cli_secrets.sh -- a database connection string with a password never
# reaches a message, and one libpq cannot parse is a permanent error: every
# command (`moonq run` included, which retries only connection failures)
# exits 1 at once with one line naming the problem, the password masked
# ("***"), libpq's own parse error included. Run by ctest as sh_cli_secrets
# with MOONQ_BIN and DATABASE_URL set.
set -u

bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
good_url=${DATABASE_URL:?DATABASE_URL is not set (run through ctest)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/handlers"
printf 'return { database = os.getenv("DATABASE_URL"), handlers = "handlers" }\n' \
  >"$tmp/config.lua"
passed=0
failed=0

# report NAME OK OUTPUT: counts the result of one check (OK 1: passed).
report() {
  if [ "$2" -eq 1 ]; then
    echo "ok - $1"
    passed=$((passed + 1))
    return
  fi
  echo "output was: $3" >&2
  echo "not ok - $1"
  failed=$((failed + 1))
}

# check NAME URL WANT COMMAND...: runs COMMAND with DATABASE_URL=URL (at
# most 20 s) and expects exit code 1 within 10 s, WANT in the output, and
# no "SECRET" anywhere in it.
check() {
  local name=$1 url=$2 want=$3
  shift 3
  local out code ok=1 t0 t1
  t0=$(date +%s)
  out=$(cd "$tmp" && DATABASE_URL=$url timeout 20 "$bin" "$@" 2>&1)
  code=$?
  t1=$(date +%s)
  if [ "$code" -ne 1 ]; then
    echo "$name: exit code $code, expected 1" >&2
    ok=0
  fi
  if [ $((t1 - t0)) -gt 10 ]; then
    echo "$name: took $((t1 - t0)) s: retried a permanent error" >&2
    ok=0
  fi
  if [[ "$out" != *"$want"* ]]; then
    echo "$name: output lacks: $want" >&2
    ok=0
  fi
  if [[ "$out" == *SECRET* ]]; then
    echo "$name: the password is in the output" >&2
    ok=0
  fi
  report "$name" "$ok" "$out"
}

bad_uri='postgresql://app:SECRET@[bad/db'
check "malformed URI: run" "$bad_uri" \
  'invalid database connection string: end of string reached when looking for matching "]" in IPv6 host address in URI: "postgresql://app:***@[bad/db"' \
  run --config config.lua
check "malformed URI: migrate" "$bad_uri" 'postgresql://app:***@[bad/db' migrate
check "malformed URI: jobs" "$bad_uri" 'postgresql://app:***@[bad/db' jobs q
check "unknown URI parameter: run" 'postgresql://app:SECRET@localhost/db?foo=1' \
  'invalid database connection string: invalid URI query parameter: "foo"' \
  run --config config.lua
check "password in the query, unknown parameter: run" \
  'postgresql://app@localhost/db?password=SECRET&foo=1' \
  'invalid URI query parameter: "foo"' run --config config.lua
check "unknown keyword: run" "host=/nonexistent password=SECRET bogus=1" \
  'invalid database connection string: invalid connection option "bogus"' \
  run --config config.lua
check "unterminated quote: enqueue" "host=/nonexistent password='SECRET" \
  'invalid database connection string: unterminated quoted string' \
  enqueue j '{}'
# settings libpq checks only when it connects are permanent too
check "bad sslmode value: run" 'postgresql://app:SECRET@/db?host=/x&sslmode=bogus' \
  'cannot connect to PostgreSQL: invalid sslmode value: "bogus"' run --config config.lua
check "port out of range: run" 'postgresql://app:SECRET@localhost:99999/db' \
  'cannot connect to PostgreSQL: invalid port number: "99999"' run --config config.lua

# A connection failure is retried (moonq run waits for the database) and
# logged at every attempt, the password masked in libpq's message too.
url="postgresql://app:SECRET@/moonq?host=$tmp/nosuchdir"
out=$(cd "$tmp" && DATABASE_URL=$url timeout 3 "$bin" run --config config.lua 2>&1)
code=$?
ok=0
[ "$code" -eq 124 ] && [[ "$out" == *"database not reachable attempt=2"* ]] &&
  [[ "$out" != *SECRET* ]] && ok=1
report "a connection failure is retried" "$ok" "exit $code: $out"

# A password that libpq does quote: a wrong one for the real database (its
# server trusts local connections, so the URI's user is what fails here).
out=$(cd "$tmp" && DATABASE_URL="$good_url user=nosuchrole password=SECRET" \
  "$bin" jobs q 2>&1)
code=$?
ok=0
[ "$code" -eq 1 ] && [[ "$out" != *SECRET* ]] && ok=1
report "an authentication failure does not show the password" "$ok" \
  "exit $code: $out"

echo "# $passed passed, $failed failed"
[ "$failed" -eq 0 ]
