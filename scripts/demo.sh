#!/usr/bin/env bash
# scripts/demo.sh -- the README's first command: installs what is missing,
# builds, starts the private PostgreSQL and runs the example app
# (config.lua + handlers/): jobs are sent from the CLI and from SQL, the
# worker processes them (one fails and succeeds on retry, one emits and
# queues a follow-up, one sleeps), a schedule made with `moonq schedule`
# fires every second in the running worker, then it stops cleanly.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/build.sh
moonq=build/moonq
db=${DATABASE_URL:-$(bash scripts/pg.sh start)}
export DATABASE_URL=$db
psql_q() { psql "$db" -qtAX -c "$1"; }

echo "== applying migrations"
$moonq migrate

echo "== starting the worker (moonq run)"
$moonq run &
worker=$!
trap 'kill -TERM $worker 2>/dev/null || true' EXIT
sleep 1

echo "== sending jobs"
ids=()
for who in ada grace linus; do
  ids+=("$($moonq enqueue send-email "{\"to\": \"$who@example.com\"}")")
done
ids+=("$($moonq enqueue flaky '{"note": "fails once, then succeeds"}')")
ids+=("$($moonq enqueue order.placed '{"order": 1001, "email": "buyer@example.com"}')")
ids+=("$($moonq enqueue resize-image '{"width": 640}' --priority 5)")
ids+=("$($moonq enqueue resize-image '{"width": 1280}' --delay 1)")
# Applications enqueue inside their own transactions with plain SQL:
ids+=("$(psql_q "SELECT moonq.send('send-email', '{\"to\": \"sql@example.com\"}')")")
list=$(IFS=,; echo "${ids[*]}")

echo "== waiting for jobs $list to finish"
for _ in $(seq 1 60); do
  left=$(psql_q "SELECT count(*) FROM moonq.job WHERE id IN ($list)")
  [ "$left" = 0 ] && break
  sleep 0.5
done

echo "== scheduling job heartbeat every second (moonq schedule)"
since=$(psql_q "SELECT now()")
$moonq schedule heartbeat '* * * * * *' --job heartbeat
for _ in $(seq 1 50); do
  fired=$(psql_q "SELECT count(*) FROM moonq.job_archive
                   WHERE name = 'heartbeat' AND created_at > '$since'")
  [ "$fired" -ge 2 ] && break
  sleep 0.2
done
$moonq schedules
$moonq unschedule heartbeat

echo "== stopping the worker"
kill -TERM $worker
wait $worker
trap - EXIT

echo "== results"
for q in send-email flaky order.placed resize-image heartbeat; do
  $moonq jobs "$q" --limit 5
done
psql "$db" -qX -c "SELECT id, name, state, attempt, output
          FROM moonq.job_archive WHERE id IN ($list) ORDER BY id"
