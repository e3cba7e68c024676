#!/usr/bin/env bash
# cli_dashboard.sh -- the dashboard in a real browser: headless Chromium,
# driven by tests/dashboard_browser.js with puppeteer-core, against
# `moonq run --http` with jobs: the queues and their counts; Pause; a
# failed job's error and traceback; Retry changes its state; a live event
# arrives on the events page; the queues page refreshes itself; a consumer group with its lag; a flow, its
# run (with markup in its id) and the run's step; job data holding <script> and a queue named
# with <b> render as text; groups, flows and schedules pages render; the
# page fits a phone's width; 10,000 waiting jobs page 50 at a time; a
# server with http.token asks for it once and keeps it for the tab. The
# database is checked too (the queue is
# paused, the job waits again). Also: the files are served without the
# token, with a Content-Security-Policy; /ui/<unknown> is 404; with a
# token, /api and /metrics are 401 without it; `moonq web`'s /metrics has
# the database figures and no Lua memory.
#
# Needs chromium and node (scripts/deps.sh installs them) and
# puppeteer-core, which this script installs with npm into
# $MOONQ_TEST_CACHE (default ~/.cache/moonq-test) once. Exits 77 (ctest:
# skipped) with a message when Chromium or node is not installed.
# Screenshots are left in $MOONQ_BINARY_DIR/test-artifacts/.
# Run by ctest as sh_cli_dashboard with MOONQ_BIN and DATABASE_URL set.
set -u

PUPPETEER_VERSION=24.43.1

chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium" ] || ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: the dashboard browser test needs chromium, node and npm (scripts/deps.sh installs them)" >&2
  exit 77
fi
cache=${MOONQ_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moonq-test}/puppeteer-$PUPPETEER_VERSION
if [ ! -f "$cache/node_modules/puppeteer-core/package.json" ]; then
  mkdir -p "$cache"
  (cd "$cache" && npm install --no-audit --no-fund --silent "puppeteer-core@$PUPPETEER_VERSION" >npm.log 2>&1) || {
    echo "FAIL: npm could not install puppeteer-core@$PUPPETEER_VERSION into $cache: $(tail -5 "$cache/npm.log")" >&2
    exit 1
  }
fi

source "$(dirname "$0")/lib.sh"
mq_test_setup cli_dashboard
shots=${MOONQ_BINARY_DIR:-$dir}/test-artifacts
mkdir -p "$shots"
rm -f "$shots"/dashboard-*.png

mkdir -p "$dir/handlers"
cat >"$dir/handlers/ok.lua" <<'LUA'
return function(job, ctx) return { seen = job.data } end
LUA
cat >"$dir/handlers/boom.lua" <<'LUA'
return { retry = { limit = 0 }, handler = function(job, ctx) error("boom on purpose") end }
LUA
cat >"$dir/handlers/hello.lua" <<'LUA'
return {
  flow = { name = "greet", step = "hello", entry = true },
  handler = function(job, ctx) return "hello " .. job.data.to end,
}
LUA
mq_serve_http

# post PATH BODY: prints the reply.
post() { curl -s -H 'Content-Type: application/json' --data-binary "$2" "$base$1"; }
for i in 1 2 3; do post /api/jobs "{\"name\":\"ok\",\"data\":{\"i\":$i}}" >/dev/null; done
failed_id=$(post /api/jobs '{"name":"boom"}' | sed 's/[^0-9]//g')
xss_queue='<b>bold</b>'
xss_id=$(post /api/jobs '{"name":"nobody","data":{"x":"<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"},"options":{"queue":"<b>bold</b>"}}' |
  sed 's/[^0-9]//g')
sql "SELECT * FROM $schema.join_group('g<i>1</i>', 'dash:*', 4, 'm1', 't1', NULL, 10, true, '{}')" >/dev/null
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM $schema.queue_flow_steps WHERE flow_name = 'greet'")" = 1 ] && break; sleep 0.1
done
post /api/flows/greet/runs '{"data":{"to":"ann"},"options":{"run_id":"run<i>1</i>"}}' >/dev/null
"$bin" --config "$dir/config.lua" schedule nightly '0 3 * * *' >/dev/null || fail "setup: schedule"
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM $schema.job_archive")" = 5 ] &&
    [ "$(sql "SELECT status FROM $schema.queue_flow_index WHERE run_id = 'run<i>1</i>'")" = completed ] && break
  sleep 0.1
done
[ "$(sql "SELECT state FROM $schema.job_archive WHERE id = $failed_id")" = failed ] ||
  fail "setup: job $failed_id did not fail: $(cat "$dir/run.log")"

# 10,000 waiting jobs in queue "bulk" (no handler), for paging.
bulk_first=$(sql "SELECT max(x) FROM unnest($schema.send_many('bulk',
  (SELECT jsonb_agg(jsonb_build_object('i', g)) FROM generate_series(1, 10000) g), '{}')) x")

# A second server, with a token.
token=dashboard-test-token-0123456789
port2=$((port + 1))
cat >"$dir/token.lua" <<EOF
return { schema = "$schema", handlers = "$dir/handlers", log = { level = "warn" },
         http = { token = "$token" } }
EOF
"$bin" --config "$dir/token.lua" web --http "127.0.0.1:$port2" >"$dir/web.log" 2>&1 &
web_pid=$!
on_exit() { kill -INT "$web_pid" 2>/dev/null && wait "$web_pid" 2>/dev/null; }
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port2/" && break; sleep 0.1; done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port2/api/queues")" = 401 ] ||
  fail "the token server answers /api/queues without the token"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port2/ui/app.js")" = 200 ] ||
  fail "the token server does not serve /ui/app.js without the token"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port2/metrics")" = 401 ] ||
  fail "the token server answers /metrics without the token"
# /metrics of `moonq web` (no handlers): the database figures, no Lua memory.
curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$port2/metrics" >"$dir/web.metrics"
grep -q '^moonq_jobs{queue="bulk",state="waiting"} 10000$' "$dir/web.metrics" ||
  fail "moonq web /metrics: no count of bulk: $(head -c 600 "$dir/web.metrics")"
grep -q '^moonq_lua_memory_bytes' "$dir/web.metrics" && fail "moonq web /metrics: Lua memory without handlers"
if command -v promtool >/dev/null; then
  promtool check metrics <"$dir/web.metrics" >/dev/null 2>&1 || fail "moonq web /metrics: promtool check metrics"
fi

# The files: public, under a CSP; an unknown one is 404.
headers=$(curl -s -D - -o "$dir/index.html" "$base/")
[[ "$headers" == *"Content-Security-Policy: default-src 'none'; script-src 'self'"* ]] ||
  fail "GET /: no Content-Security-Policy: $headers"
grep -q '<script src="/ui/app.js"' "$dir/index.html" || fail "GET /: not the dashboard"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/ui/app.js")" = 200 ] || fail "GET /ui/app.js"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/ui/nothing.js")" = 404 ] || fail "GET /ui/nothing.js is not 404"
grep -n 'innerHTML\|outerHTML\|insertAdjacentHTML\|document.write' "$MOONQ_SOURCE_DIR/web/app.js" &&
  fail "web/app.js writes HTML: it must build the page from text nodes"

BASE=$base CHROMIUM=$chromium SHOTS=$shots FAILED_ID=$failed_id XSS_ID=$xss_id XSS_QUEUE=$xss_queue \
  SEND_OK="curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary '{\"name\":\"ok\"}' $base/api/jobs" \
  BULK_FIRST=$bulk_first TOKEN_BASE=http://127.0.0.1:$port2 TOKEN=$token \
  APPEND="curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary '{\"stream\":\"dash:live\",\"type\":\"dash.ping\",\"data\":{\"n\":1}}' $base/api/events" \
  NODE_PATH=$cache/node_modules timeout 120 node "$MOONQ_SOURCE_DIR/tests/dashboard_browser.js" \
  >"$dir/browser.out" 2>&1
cat "$dir/browser.out"
grep -q '^all [0-9]* browser checks passed$' "$dir/browser.out" ||
  fail "the browser checks failed (screenshots in $shots)"

# What the clicks changed.
[ "$(sql "SELECT paused FROM $schema.queue WHERE name = 'boom'")" = t ] || fail "Pause: queue boom is not paused"
[ "$(sql "SELECT state < 'active' FROM $schema.job WHERE id = $failed_id")" = t ] ||
  fail "Retry: job $failed_id does not wait again: $(sql "SELECT state FROM $schema.all_jobs WHERE id = $failed_id")"
ls "$shots"/dashboard-queues.png >/dev/null 2>&1 || fail "no screenshot in $shots"

exit $failed
