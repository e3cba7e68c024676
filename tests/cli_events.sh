#!/usr/bin/env bash
# cli_events.sh -- `moonq events query` prints a stream's events as JSON
# lines (types filtered, --after), `moonq events tail` follows a pattern from
# an id, prints events appended from SQL while it runs and exits 0 on
# SIGINT; `events tail --group` follows as a group member, `events groups`,
# `parked` and `replay` show and replay a group's state; a wrong subcommand
# is a usage error (exit 2). Run by ctest as
# sh_cli_events with MOONQ_BIN and DATABASE_URL set.
set -u

bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
url=${DATABASE_URL:?DATABASE_URL is not set (run through ctest)}
dir=$(mktemp -d)
schema=t_cli_events_$$
trap 'psql "$url" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1; rm -rf "$dir"' EXIT
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }
sql() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

printf 'return { schema = "%s", log = { level = "warn" } }\n' "$schema" >"$dir/config.lua"
"$bin" --config "$dir/config.lua" migrate >/dev/null 2>&1 || { echo "migrate failed" >&2; exit 1; }
sql "SELECT $schema.append('orders:1', 'created', '{\"n\": 1}'),
            $schema.append('orders:1', 'paid', '{\"n\": 2}'),
            $schema.append('orders_1', 'created', '{}')" >/dev/null

out=$("$bin" --config "$dir/config.lua" events query orders:1 --type paid --type created)
[ "$(printf '%s\n' "$out" | wc -l)" -eq 2 ] || fail "query: expected 2 lines, got: $out"
[[ "$out" == *'"type":"created"'*'"type":"paid"'* ]] || fail "query: order or types: $out"
out=$("$bin" --config "$dir/config.lua" events query orders:1 --after 1)
[[ "$out" == *'"id":2'* && "$out" != *'"id":1,'* ]] || fail "query --after 1: $out"

"$bin" --config "$dir/config.lua" events tail 'orders:*' --from 1 >"$dir/tail.out" 2>"$dir/tail.err" &
pid=$!
for _ in $(seq 1 100); do grep -q '"id":2' "$dir/tail.out" 2>/dev/null && break; sleep 0.1; done
sql "SELECT $schema.append('orders:9', 'live', '{}')" >/dev/null
for _ in $(seq 1 100); do grep -q '"type":"live"' "$dir/tail.out" 2>/dev/null && break; sleep 0.1; done
kill -INT "$pid"
wait "$pid"
code=$?
[ "$code" -eq 0 ] || fail "tail: exit code $code after SIGINT: $(cat "$dir/tail.err")"
lines=$(cat "$dir/tail.out")
[[ "$lines" == *'"id":2'*'"type":"live"'* ]] || fail "tail: history then live expected: $lines"
[[ "$lines" != *'"id":1,'* && "$lines" != *'orders_1'* ]] || fail "tail: --from 1 or the pattern leaked: $lines"

# a consumer group: tail as member m1, then groups, parked and replay
"$bin" --config "$dir/config.lua" events tail 'orders:*' --group g1 --consumer m1 >"$dir/group.out" 2>"$dir/group.err" &
pid=$!
for _ in $(seq 1 100); do grep -q '"type":"live"' "$dir/group.out" 2>/dev/null && break; sleep 0.1; done
kill -INT "$pid"
wait "$pid"
code=$?
[ "$code" -eq 0 ] || fail "tail --group: exit code $code: $(cat "$dir/group.err")"
[ "$(grep -c '"id"' "$dir/group.out")" -eq 3 ] || fail "tail --group: expected the 3 orders:* events: $(cat "$dir/group.out")"
out=$("$bin" --config "$dir/config.lua" events groups)
[[ "$out" == *GROUP*PATTERN*LAG* && "$out" == *'g1 '*'orders:*'*' 16 '* ]] || fail "groups: $out"
# a group member leaves on SIGINT: no members listed
[[ "$out" == *' - '* ]] || fail "groups: m1 still a member after SIGINT: $out"
sql "INSERT INTO $schema.queue_event_parked (group_name, event_id, partition, consumer, attempts, error)
     VALUES ('g1', 2, 0, 'm1', 3, 'boom')" >/dev/null
out=$("$bin" --config "$dir/config.lua" events parked g1)
[[ "$out" == *'"error":"boom"'*'"event_id":2'* ]] || fail "parked: $out"
out=$("$bin" --config "$dir/config.lua" events replay g1 2)
[[ "$out" == "1 parked events of group g1 marked for a replay" ]] || fail "replay: $out"
"$bin" --config "$dir/config.lua" events tail 'orders:*' --group g1 >/dev/null 2>&1
[ $? -eq 2 ] || fail "tail --group without --consumer: expected exit code 2"
"$bin" --config "$dir/config.lua" events tail 'orders:*' --group g1 --consumer m1 --from start >/dev/null 2>&1
[ $? -eq 2 ] || fail "tail --group --from: expected exit code 2"

"$bin" --config "$dir/config.lua" events replay g1 abc >/dev/null 2>"$dir/err"
[ $? -eq 2 ] && grep -q 'event ID expects an integer, got "abc"' "$dir/err" || fail "replay abc: $(cat "$dir/err")"
# a member taken over by another process under its name ends (exit 1)
"$bin" --config "$dir/config.lua" events tail 'orders:*' --group g2 --consumer m >/dev/null 2>"$dir/first.err" &
first=$!
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM $schema.queue_event_group_members WHERE group_name = 'g2'")" = 1 ] && break
  sleep 0.1
done
"$bin" --config "$dir/config.lua" events tail 'orders:*' --group g2 --consumer m >/dev/null 2>&1 &
second=$!
for _ in $(seq 1 150); do kill -0 "$first" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$first" 2>/dev/null; then
  fail "tail --group: the member taken over still runs"
  kill -INT "$first"
fi
wait "$first"
code=$?
[ "$code" -eq 1 ] || fail "tail --group taken over: exit code $code"
grep -q "member m of group g2 ended" "$dir/first.err" || fail "taken over: $(cat "$dir/first.err")"
kill -INT "$second"
wait "$second"

"$bin" --config "$dir/config.lua" events nope >/dev/null 2>&1
[ $? -eq 2 ] || fail "events nope: expected exit code 2"

[ "$failed" -eq 0 ] && echo "cli_events: ok"
exit "$failed"
