#!/usr/bin/env bash
# examples/emails/run.sh -- the emails app: starts the private PostgreSQL
# under .moonq/ (unless DATABASE_URL is set), runs `moonq run` with a mail
# server that fails 30% of sends (SMTP_FAIL_RATE), enqueues ten emails from
# the CLI (one to a bad address), waits until they are done, runs the
# digest job by hand (schedule "digest" will send it every morning) and
# prints the jobs with their attempts.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# the moonq checkout: MOONQ_BIN's (its build/moonq), else this example's
if [ -n "${MOONQ_BIN:-}" ]; then
  repo=$(cd "$(dirname "$MOONQ_BIN")/.." && pwd)
else
  repo=$(cd "$here/../.." && pwd)
fi
moonq=${MOONQ_BIN:-$repo/build/moonq}
[ -x "$moonq" ] || bash "$repo/scripts/build.sh"
cd "$here"
export DATABASE_URL=${DATABASE_URL:-$(bash "$repo/scripts/pg.sh" start "$here/.moonq")}
sql() { psql "$DATABASE_URL" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }
wait_done() { # IDS (comma-separated): until none of them waits or runs
  for _ in $(seq 1 300); do
    [ "$(sql "SELECT count(*) FROM moonq.job WHERE id IN ($1)")" = 0 ] && return
    sleep 0.1
  done
}

"$moonq" migrate
SMTP_FAIL_RATE=${SMTP_FAIL_RATE:-0.3} "$moonq" run &
worker=$!
trap 'kill -TERM $worker 2>/dev/null || true; wait $worker 2>/dev/null || true' EXIT
# send-email.lua's retry settings are stored as its queue's when the worker
# starts; jobs take them when they are sent.
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM moonq.queue WHERE name = 'send-email' AND retry_delay = 0.5")" = 1 ] && break
  sleep 0.1
done

echo "== sending ten emails"
ids=()
for who in ada grace linus barbara ken dennis margaret edsger donald; do
  ids+=("$("$moonq" enqueue send-email "{\"to\": \"$who@example.com\", \"subject\": \"Hello $who\"}")")
done
ids+=("$("$moonq" enqueue send-email '{"to": "not an address"}')")
list=$(IFS=,; echo "${ids[*]}")
wait_done "$list"

echo "== the digest (what schedule \"digest\" will send at 08:00 Europe/Berlin)"
digest=$("$moonq" enqueue digest '{"to": "team@example.com"}')
wait_done "$digest"
sleep 1 # the digest's own email
"$moonq" job "$digest"

echo "== the jobs (TRY: attempts; the server refused the others)"
psql "$DATABASE_URL" -qX -c "SELECT id, name, state, attempt AS try, data->>'to' AS to, output
    FROM moonq.job_archive WHERE id IN ($list) OR id >= $digest ORDER BY id"
