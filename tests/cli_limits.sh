#!/usr/bin/env bash
# cli_limits.sh -- the CLI's edges: JSON arguments from standard input ("-")
# and from a file ("@FILE"), so payloads longer than a command line may hold
# pass (enqueue, schedule, flow start); a job whose data Lua cannot
# represent is still shown; a positional id that is not an
# integer says so without naming a flag; every numeric flag is range-checked;
# wrong usage exits 2 before any database is touched (even an unreachable
# one), runtime errors exit 1. Run by ctest as sh_cli_limits with MOONQ_BIN
# and DATABASE_URL set.
set -u

bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
url=${DATABASE_URL:?DATABASE_URL is not set (run through ctest)}
dir=$(mktemp -d)
schema=t_cli_limits_$$
trap 'psql "$url" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1; rm -rf "$dir"' EXIT
failed=0
passed=0
fail() { echo "FAIL: $*" >&2; failed=$((failed + 1)); }
sql() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
cfg=$dir/config.lua
printf 'return { schema = "%s", log = { level = "warn" } }\n' "$schema" >"$cfg"
# a database that cannot be reached: usage errors must not need one
printf 'return { database = "host=/nonexistent port=1 dbname=x connect_timeout=1", schema = "%s" }\n' \
  "$schema" >"$dir/nodb.lua"

# expect CODE DESCRIPTION TEXT -- COMMAND...: runs the command and checks its
# exit code and that TEXT is in its stderr.
expect() {
  local want=$1 what=$2 text=$3
  shift 4
  local err code
  err=$("$@" 2>&1 >/dev/null </dev/null)
  code=$?
  if [ "$code" -ne "$want" ]; then
    fail "$what: exit $code, expected $want: $err"
  elif [[ "$err" != *"$text"* ]]; then
    fail "$what: stderr lacks \"$text\": $err"
  else
    passed=$((passed + 1))
  fi
}

"$bin" --config "$cfg" migrate >/dev/null 2>&1 || { echo "migrate failed" >&2; exit 1; }

# A payload of ~300 KB: too long for one argument (Linux: 128 KiB).
big=$(head -c 300000 /dev/zero | tr '\0' 'x')
printf '{"blob":"%s"}' "$big" >"$dir/big.json"
id=$("$bin" --config "$cfg" enqueue big - <"$dir/big.json") || fail "enqueue - failed"
n=$(sql "SELECT length(data->>'blob') FROM $schema.job WHERE id = ${id:-0}")
[ "$n" = 300000 ] || fail "enqueue -: stored blob of $n characters, expected 300000"
id=$("$bin" --config "$cfg" enqueue big "@$dir/big.json") || fail "enqueue @FILE failed"
n=$(sql "SELECT length(data->>'blob') FROM $schema.job WHERE id = ${id:-0}")
[ "$n" = 300000 ] || fail "enqueue @FILE: stored blob of $n characters, expected 300000"
echo '{"every":"minute"}' >"$dir/sched.json"
"$bin" --config "$cfg" schedule limits_sched '0 3 * * *' "@$dir/sched.json" >/dev/null ||
  fail "schedule @FILE failed"
[ "$(sql "SELECT data->>'every' FROM $schema.schedule WHERE name = 'limits_sched'")" = minute ] ||
  fail "schedule @FILE: data not stored"
expect 1 "enqueue @missing" "cannot read $dir/missing.json" -- \
  "$bin" --config "$cfg" enqueue x "@$dir/missing.json"
expect 1 "enqueue bad JSON from stdin" "job data is not valid JSON" -- \
  sh -c "echo '{nope' | \"$bin\" --config \"$cfg\" enqueue x -"

# A job whose data Lua cannot represent (stored before SQL send refused it)
# is shown, with data_error and the stored JSON as data_text.
id=$(sql "SELECT $schema.send('legacy', '{}')")
sql "UPDATE $schema.job SET data = '{\"huge\":1e400}' WHERE id = $id" >/dev/null
out=$("$bin" --config "$cfg" job "$id" 2>&1) || fail "job with unreadable data: exit $?: $out"
[[ "$out" == *'"data_error":"job data holds a number beyond'* && "$out" == *'"data_text":'* ]] ||
  fail "job with unreadable data: $out"
out=$("$bin" --config "$cfg" jobs legacy 2>&1) || fail "jobs listing unreadable data: exit $?: $out"
[[ "$out" == *"$id "* ]] || fail "jobs listing unreadable data: $out"

# Positional ids and numeric flags.
expect 2 "job abc" 'ID expects an integer, got "abc"' -- "$bin" --config "$cfg" job abc
out=$("$bin" --config "$cfg" job abc 2>&1)
[[ "$out" != *"--id"* ]] || fail "job abc names an --id option: $out"
expect 2 "job 0" "ID must be 1 to" -- "$bin" --config "$cfg" job 0
expect 1 "job that does not exist" "job 999999 not found" -- "$bin" --config "$cfg" job 999999
expect 2 "jobs --limit -1" "--limit must be 1 to 100000, got -1" -- \
  "$bin" --config "$cfg" jobs q --limit -1
expect 2 "jobs --after -5" "--after must be 1 to" -- "$bin" --config "$cfg" jobs q --after -5
expect 2 "events query --limit 0" "--limit must be 1 to 100000, got 0" -- \
  "$bin" --config "$cfg" events query s --limit 0
expect 2 "events query --after -1" "--after must be 0 to" -- \
  "$bin" --config "$cfg" events query s --after -1
expect 2 "events replay x" 'event ID expects an integer, got "x"' -- \
  "$bin" --config "$cfg" events replay g x
expect 2 "flow runs --limit 100001" "--limit must be 1 to 100000" -- \
  "$bin" --config "$cfg" flow runs f --limit 100001
expect 2 "enqueue --priority 2^31" "--priority must be -2147483648 to 2147483647" -- \
  "$bin" --config "$cfg" enqueue x '{}' --priority 2147483648
expect 2 "enqueue --retry-limit -1" "--retry-limit must be 0 to" -- \
  "$bin" --config "$cfg" enqueue x '{}' --retry-limit -1
expect 2 "enqueue --retention 1e13" "--retention must be 0 to 3155760000 seconds" -- \
  "$bin" --config "$cfg" enqueue x '{}' --retention 1e13
expect 2 "enqueue --delay -1" "--delay must be 0 to 3155760000 seconds" -- \
  "$bin" --config "$cfg" enqueue x '{}' --delay -1
expect 2 "schedule --expire-in nan" '--expire-in expects a number, got "nan"' -- \
  "$bin" --config "$cfg" schedule s '* * * * *' --expire-in nan
[ "$(sql "SELECT count(*) FROM $schema.job WHERE name = 'x'")" = 0 ] ||
  fail "a refused enqueue wrote a job"

# Usage errors come before the database: exit 2 even when it is unreachable;
# the same command with good arguments is a runtime error (exit 1).
expect 2 "usage without a database" "--limit must be 1 to 100000" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" jobs q --limit -1
expect 2 "missing argument without a database" "expected NAME JSON" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" enqueue x
expect 1 "no database" "moonq jobs: " -- env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" jobs q
# values the database would refuse are usage errors too, found first
expect 2 "--expire-in 0 without a database" "--expire-in must be more than 0 seconds" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" enqueue x '{}' --expire-in 0
expect 2 "empty --queue without a database" "--queue must be 1 to 255 bytes, got 0" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" enqueue x '{}' --queue ''
expect 2 "300-byte --dead-letter without a database" "--dead-letter must be 1 to 255 bytes, got 300" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" enqueue x '{}' --dead-letter "$(printf 'd%.0s' $(seq 300))"
expect 2 "version with an argument" "unexpected argument extra" -- "$bin" version extra
expect 2 "201-byte --group without a database" "--group must be 1 to 200 bytes, got 201" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" events tail 'x:*' --group "$(printf 'g%.0s' $(seq 201))" --consumer c
expect 2 "--delay with --start-after without a database" "give either --delay or --start-after, not both" -- \
  env -u DATABASE_URL "$bin" --config "$dir/nodb.lua" enqueue x '{}' --delay 5 --start-after 2030-01-01

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
