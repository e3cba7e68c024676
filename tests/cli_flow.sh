#!/usr/bin/env bash
# cli_flow.sh -- `moonq flow start` starts a run of a flow that a running
# `moonq run` declared (its id printed; --run-id chooses it), `flow show`
# prints the run with its steps and then its history, `flow runs` lists
# runs, `flow cancel` of a finished run is a runtime error (exit 1), an
# unknown flow or run, bad JSON and a bad --status are errors naming them. Run by ctest as
# sh_cli_flow with MOONQ_BIN and DATABASE_URL set.
set -u

source "$(dirname "$0")/lib.sh"
mq_test_setup cli_flow
run_pid=
on_exit() {
  [ -n "$run_pid" ] && kill -INT "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
}
moonq() { "$bin" --config "$dir/config.lua" "$@"; }

mkdir -p "$dir/handlers/greet"
cat >"$dir/handlers/greet/hello.lua" <<'LUA'
return {
  flow = { name = "greet", step = "hello", entry = true, emits = { "greet.said" } },
  handler = function(job, ctx) ctx.emit("greet.said", { to = job.data.to }) end,
}
LUA
cat >"$dir/handlers/greet/bye.lua" <<'LUA'
return {
  flow = { name = "greet", step = "bye", subscribes = { "greet.said" } },
  handler = function(job, ctx) return "bye " .. job.data.to end,
}
LUA
printf 'return { schema = "%s", handlers = "%s/handlers", log = { level = "warn" } }\n' \
  "$schema" "$dir" >"$dir/config.lua"
"$bin" --config "$dir/config.lua" run >"$dir/run.log" 2>&1 &
run_pid=$!
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM $schema.queue_flow_steps" 2>/dev/null)" = 2 ] && break
  sleep 0.1
done

out=$(moonq flow start greet '{"to": "ada"}' --run-id r1)
[ "$out" = r1 ] || fail "flow start: expected r1, got: $out"
for _ in $(seq 1 100); do
  moonq flow show r1 2>/dev/null | head -1 | grep -q '"status":"completed"' && break
  sleep 0.1
done
out=$(moonq flow show r1)
first=$(printf '%s\n' "$out" | head -1)
[[ "$first" == *'"status":"completed"'* && "$first" == *'"step":"hello"'*'"step":"bye"'* ]] ||
  fail "flow show: run line: $first"
[[ "$out" == *'"type":"flow.started"'*'"type":"greet.said"'*'"type":"flow.completed"'* ]] ||
  fail "flow show: history: $out"
out=$(moonq flow runs greet)
[[ "$out" == *RUN*STATUS* && "$out" == *'r1 '*completed* ]] || fail "flow runs: $out"
out=$(moonq flow start greet)
[[ "$out" =~ ^[0-9a-f-]{36}$ ]] || fail "flow start without --run-id: expected a uuid, got: $out"

moonq flow cancel r1 >/dev/null 2>"$dir/err"
[ $? -eq 1 ] || fail "flow cancel of a completed run: expected exit code 1"
grep -q "run r1 is not running" "$dir/err" || fail "flow cancel: message: $(cat "$dir/err")"
moonq flow start nope >/dev/null 2>"$dir/err"
[ $? -eq 1 ] || fail "flow start nope: expected exit code 1"
grep -q 'unknown flow "nope"' "$dir/err" || fail "flow start nope: message: $(cat "$dir/err")"
moonq flow start greet '{bad' >/dev/null 2>"$dir/err"
[ $? -eq 1 ] || fail "flow start with bad JSON: expected exit code 1"
grep -q "run data is not valid JSON" "$dir/err" || fail "bad JSON: $(cat "$dir/err")"
moonq flow show nosuch >/dev/null 2>"$dir/err"
[ $? -eq 1 ] && grep -q 'no run "nosuch"' "$dir/err" || fail "flow show nosuch: $(cat "$dir/err")"
moonq flow cancel nosuch >/dev/null 2>"$dir/err"
[ $? -eq 1 ] && grep -q 'no run "nosuch"' "$dir/err" || fail "flow cancel nosuch: $(cat "$dir/err")"
moonq flow runs greet --status bogus >/dev/null 2>"$dir/err"
[ $? -eq 2 ] && grep -q -- "--status must be" "$dir/err" || fail "flow runs --status bogus: $(cat "$dir/err")"
moonq flow nope >/dev/null 2>&1
[ $? -eq 2 ] || fail "flow nope: expected exit code 2"

[ "$failed" -eq 0 ] && echo "cli_flow: ok"
exit "$failed"
