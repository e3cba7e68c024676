#!/usr/bin/env bash
# cli_metrics.sh -- GET /metrics of `moonq run --http` after running jobs:
# the job counts by queue and state match the rows; the completed, failed
# and retried counters and the run-time and wait-time histograms match the
# attempts the process ran; a consumer group's lag matches event_groups();
# event ids, pool connections, reconnects and Lua memory are there; a
# queue name with a quote and a backslash is escaped; the database figures
# are cached for a second; `promtool check metrics` accepts the output.
# Run by ctest as sh_cli_metrics with MOONQ_BIN and DATABASE_URL set.
set -u

source "$(dirname "$0")/lib.sh"
mq_test_setup cli_metrics

scrape() { curl -s -o "$dir/metrics" -w '%{http_code}' "$base/metrics"; }
# value SERIES: the value of the series line that starts with SERIES (a name
# with its labels), or "none".
value() {
  S="$1" awk 'BEGIN { s = ENVIRON["S"] } index($0, s " ") == 1 { print $NF; found = 1 } END { if (!found) print "none" }' "$dir/metrics"
}
# check SERIES WANT WHAT
check() {
  local got
  got=$(value "$1")
  [ "$got" = "$2" ] || fail "$3: $1 is $got, expected $2"
}

mkdir -p "$dir/handlers"
cat >"$dir/handlers/ok.lua" <<'LUA'
return function(job, ctx) return job.data end
LUA
cat >"$dir/handlers/boom.lua" <<'LUA'
return { retry = { limit = 1, delay = 0 }, handler = function(job, ctx) error("boom") end }
LUA
# computes 0.3 s without yielding (the loop's clock stands still meanwhile)
cat >"$dir/handlers/cpu.lua" <<'LUA'
return function(job, ctx)
  local t = os.clock()
  while os.clock() - t < 0.3 do end
end
LUA
mq_serve_http

send() { curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary "$1" "$base/api/jobs"; }
for i in 1 2 3 4 5; do send "{\"name\":\"ok\",\"data\":{\"i\":$i}}"; done
send '{"name":"boom"}'
send '{"name":"boom"}'
send '{"name":"cpu"}'
send '{"name":"nobody","options":{"queue":"we\"ird\\q"}}'
sql "SELECT * FROM $schema.join_group('g1', 'orders:*', 4, 'm1', 't1', NULL, 10, true, '{}')" >/dev/null
for i in 1 2 3; do
  curl -s -o /dev/null -H 'Content-Type: application/json' \
    --data-binary "{\"stream\":\"orders:$i\",\"type\":\"placed\"}" "$base/api/events"
done

for _ in $(seq 1 150); do
  [ "$(sql "SELECT count(*) FROM $schema.job_archive WHERE state IN ('completed', 'failed')")" = 8 ] && break
  sleep 0.1
done
[ "$(sql "SELECT count(*) FROM $schema.job_archive WHERE state = 'failed'")" = 2 ] ||
  fail "setup: the two boom jobs did not fail: $(cat "$dir/run.log")"

[ "$(scrape)" = 200 ] || fail "GET /metrics: $(cat "$dir/metrics")"

# Job counts by queue and state: as the rows say.
check 'moonq_jobs{queue="ok",state="completed"}' \
  "$(sql "SELECT count(*) FROM $schema.job_archive WHERE queue = 'ok' AND state = 'completed'")" "counts"
check 'moonq_jobs{queue="boom",state="failed"}' 2 "counts"
check 'moonq_jobs{queue="boom",state="waiting"}' 0 "counts"
check 'moonq_jobs{queue="we\"ird\\q",state="waiting"}' 1 "an escaped queue name"
check 'moonq_queue_paused{queue="ok"}' 0 "paused"

# Counters and histograms of this process.
check 'moonq_jobs_completed_total{queue="ok"}' 5 "completed"
check 'moonq_jobs_failed_total{queue="boom"}' 2 "failed"
check 'moonq_jobs_retried_total{queue="boom"}' 2 "retried"
check 'moonq_jobs_failed_total{queue="ok"}' 0 "failed"
check 'moonq_job_run_seconds_count{queue="ok"}' 5 "run time"
check 'moonq_job_run_seconds_count{queue="boom"}' 4 "run time: every attempt"
check 'moonq_job_run_seconds_bucket{queue="ok",le="+Inf"}' 5 "run time"
check 'moonq_job_wait_seconds_count{queue="ok"}' 5 "wait time"
check 'moonq_job_wait_seconds_count{queue="boom"}' 2 "wait time: first attempts only"
check 'moonq_job_run_seconds_bucket{queue="ok",le="10"}' 5 "run time: quick handlers"
check 'moonq_job_run_seconds_count{queue="cpu"}' 1 "run time: a handler that never yields"
check 'moonq_job_run_seconds_bucket{queue="cpu",le="0.1"}' 0 "run time: 0.3 s of computing counts"

# Events, groups, the pool, Lua.
check 'moonq_events_appended_total' \
  "$(sql "SELECT last_value FROM pg_sequences WHERE schemaname = '$schema' AND sequencename = 'queue_events_id_seq'")" \
  "events appended"
check 'moonq_group_lag_events{group="g1"}' "$(sql "SELECT lag FROM $schema.event_groups('g1')")" "group lag"
[ "$(value 'moonq_group_lag_events{group="g1"}')" = 3 ] || fail "group lag: 3 events appended after the join"
busy=$(value 'moonq_pg_connections{state="busy"}')
idle=$(value 'moonq_pg_connections{state="idle"}')
down=$(value 'moonq_pg_connections{state="down"}')
[ $((busy + idle + down)) = 4 ] 2>/dev/null || fail "pool: busy $busy + idle $idle + down $down is not the pool of 4"
check 'moonq_pg_reconnects_total' 0 "reconnects"
[ "$(value moonq_lua_memory_bytes)" -gt 10000 ] 2>/dev/null ||
  fail "lua memory: $(value moonq_lua_memory_bytes)"

# The database figures are cached (at least 1 s): a job sent now shows on a
# scrape a second later, not at once.
send '{"name":"nobody","options":{"queue":"later"}}'
scrape >/dev/null
check 'moonq_jobs{queue="later",state="waiting"}' none "cache: a scrape at once"
sleep 1.2
scrape >/dev/null
check 'moonq_jobs{queue="later",state="waiting"}' 1 "cache: a scrape after a second"

status=$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics?x=1")
[ "$status" = 400 ] || fail "an unknown argument: $status"

if command -v promtool >/dev/null; then
  promtool check metrics <"$dir/metrics" >"$dir/promtool.out" 2>&1 ||
    fail "promtool check metrics: $(cat "$dir/promtool.out")"
else
  fail "promtool is not installed (scripts/deps.sh installs prometheus)"
fi

exit $failed
