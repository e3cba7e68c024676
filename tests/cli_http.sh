#!/usr/bin/env bash
# cli_http.sh -- the HTTP API of `moonq run --http` and `moonq web`, with
# curl: every route and what it changes in the database; bad input
# (malformed JSON, an unknown key, an unknown send option, an unknown
# query argument, an oversize body is 413, fixed-length or chunked); 404,
# 405; a Host that is not the loopback and a cross-origin POST are 403;
# keep-alive and the idle timeout; a non-loopback bind needs a token
# (config error naming http.token), answers 401 without it or with a wrong
# one; event streams deliver history, then live events, then after a
# reconnect with Last-Event-ID everything that was missed, an event whose
# transaction committed late included, and nothing twice; a job's progress
# (ctx.emit with now = true) is followed live while it runs; SIGTERM ends the
# streams, answers a request that waits for PostgreSQL and stops the process; a slow stream client does not grow the
# server's memory; docs/openapi.yaml names every route. Run by ctest as sh_cli_http with MOONQ_BIN
# and DATABASE_URL set.
set -u

source "$(dirname "$0")/lib.sh"
mq_test_setup cli_http
port=$((20000 + $$ % 20000))
port2=$((port + 1))
base=http://127.0.0.1:$port
pids=()
on_exit() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
}

# api METHOD PATH [BODY] [CURL ARGS...]: sets $status and $body.
api() {
  local m=$1 p=$2 d=${3-}
  shift 2; [ $# -gt 0 ] && shift
  local args=(-s -o "$dir/resp" -w '%{http_code}' -X "$m" "$@")
  [ -n "$d" ] && args+=(-H 'Content-Type: application/json' --data-binary "$d")
  status=$(curl "${args[@]}" "$base$p")
  body=$(cat "$dir/resp")
}
# expect STATUS TEXT WHAT: the last reply had STATUS and holds TEXT.
expect() {
  [ "$status" = "$1" ] && [[ "$body" == *"$2"* ]] ||
    fail "$3: expected $1 with '$2', got $status $body"
}
# jget PATH: a value of the last reply ("jobs.1.id"; "queues.@email.paused":
# the element named email), integers printed as such.
jget() {
  printf '%s' "$body" | JPATH=$1 lua5.4 -e '
    local v = require("cjson").decode(io.read("a"))
    for k in os.getenv("JPATH"):gmatch("[^.]+") do
      if type(v) ~= "table" then v = nil break end
      local name = k:match("^@(.*)")
      if name then -- the element of an array whose name is NAME
        local found
        for _, e in ipairs(v) do if e.name == name then found = e end end
        v = found
      else
        v = v[tonumber(k) or k]
      end
    end
    if type(v) == "number" and math.tointeger(v) then v = math.tointeger(v) end
    if v == require("cjson").null then v = nil end
    print(v)'
}
# wait_for FILE TEXT [TENTHS]: until FILE holds TEXT.
wait_for() {
  for _ in $(seq 1 "${3:-100}"); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

mkdir -p "$dir/handlers"
cat >"$dir/handlers/echo.lua" <<'LUA'
return function(job, ctx) return { echoed = job.data } end
LUA
cat >"$dir/handlers/boom.lua" <<'LUA'
return { retry = { limit = 0 }, handler = function(job, ctx) error("boom") end }
LUA
cat >"$dir/handlers/slow.lua" <<'LUA'
return function(job, ctx)
  ctx.emit("progress", { pct = 50 }, { now = true })
  ctx.sleep(3)
  return "done"
end
LUA
cat >"$dir/handlers/hello.lua" <<'LUA'
return {
  flow = { name = "greet", step = "hello", entry = true },
  handler = function(job, ctx) return "hello " .. job.data.to end,
}
LUA
cat >"$dir/config.lua" <<EOF
return { schema = "$schema", handlers = "$dir/handlers", log = { level = "warn" },
         max_payload = 4096, http = { timeout = 2, heartbeat = 1 } }
EOF

# (In a sanitizer build ASan's quarantine would keep every freed block in the
# RSS that the slow client check below measures. The soft limit of 1,024
# descriptors, common on servers, is what the 1,100 streams below pass.)
(ulimit -Sn 1024 2>/dev/null
 ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0 \
   exec "$bin" --config "$dir/config.lua" run --http "127.0.0.1:$port") >"$dir/run.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
for _ in $(seq 1 100); do curl -s -o /dev/null "$base/api/schedules" && break; sleep 0.1; done

# ---- jobs -------------------------------------------------------------------
api POST /api/jobs '{"name":"echo","data":{"n":9007199254740993,"x":1.5,"s":"<b>"}}'
expect 201 '"id":' "send"
id=$(jget id)
for _ in $(seq 1 100); do
  api GET "/api/jobs/$id"; [ "$(jget state)" = completed ] && break; sleep 0.1
done
expect 200 '"state": "completed"' "get a completed job"
[ "$(sql "SELECT output->'echoed'->>'n' FROM $schema.job_archive WHERE id = $id")" = 9007199254740993 ] ||
  fail "send: the integer did not round-trip exactly"

api POST /api/jobs '{"name":"later","data":{},"options":{"delay":3600,"priority":5}}'
expect 201 '"id":' "send with options"
later=$(jget id)
[ "$(sql "SELECT priority FROM $schema.job WHERE id = $later")" = 5 ] || fail "send: priority not stored"

api POST /api/jobs/batch '{"name":"later","list":[{"i":1},{"i":2},{"i":3}]}'
expect 201 '"ids":' "send_many"
[ "$(sql "SELECT count(*) FROM $schema.job WHERE queue = 'later'")" = 4 ] || fail "send_many: 3 more jobs expected"
# with a singleton_key (every job's): one entry per job, null for each job
# not created; none created is 409
api POST /api/jobs/batch '{"name":"later","list":[{"i":1},{"i":2},{"i":3}],"options":{"singleton_key":"k1","queue":"single"}}'
expect 201 '"ids":' "send_many with a singleton_key"
first=$(sql "SELECT id FROM $schema.job WHERE queue = 'single'")
[ "$(printf %s "$body" | tr -d ' ')" = "{\"ids\":[$first,null,null]}" ] ||
  fail "send_many with a singleton_key: expected [$first,null,null], got $body"
api POST /api/jobs/batch '{"name":"later","list":[{"i":4},{"i":5}],"options":{"singleton_key":"k1","queue":"single"}}'
expect 409 '"ids":[null,null]' "send_many with a singleton_key taken"
[ "$(sql "SELECT count(*) FROM $schema.job WHERE queue = 'single'")" = 1 ] || fail "send_many with a singleton_key: one job expected"

api GET "/api/jobs?queue=later&limit=2&order=oldest"
expect 200 '"jobs":' "list"
[ "$(jget jobs.1.id)" = "$later" ] || fail "list: oldest first expected $later, got $body"
next=$(jget next)
api GET "/api/jobs?queue=later&limit=2&order=oldest&after=$next"
[ "$(jget jobs.1.data.i)" = 2 ] || fail "list: the second page starts after $next: $body"
api GET "/api/jobs?queue=later&limit=10&after=$next&order=oldest"
[ "$(jget next)" = nil ] || fail "list: a page that is not full has no next: $body"
api GET "/api/jobs?queue=later&state=delayed"
expect 200 '"state": "delayed"' "list by state"
api GET "/api/jobs?queue=later&state=sleeping"
expect 400 'unknown state \"sleeping\"' "list with a bad state"

api GET /api/queues
expect 200 '"name":"later"' "list queues"
[ "$(jget queues.@later.counts.waiting)" = 3 ] && [ "$(jget queues.@echo.counts.completed)" = 1 ] &&
  [ "$(jget queues.@later.paused)" = false ] || fail "list queues: later and echo with counts: $body"
api GET /api/queues/later/counts
expect 200 '"delayed":1' "counts"
[[ "$body" == *'"waiting":3'* ]] || fail "counts: 3 waiting expected: $body"
# counts of a queue name no queue can have: why, not zeros
api GET "/api/queues/$(printf 'q%.0s' $(seq 1 256))/counts"
expect 400 'queue name is 256 bytes, the limit is 255' "counts of an over-long queue name"
# the counts are read once for every caller and kept up to 1 s (an Age
# header says how old): a job added behind the server's back shows after
# that second; a change made through the server shows at once
api GET /api/queues/later/counts
behind=$(sql "SELECT $schema.send('later', '{}')")
age=$(curl -s -D - -o "$dir/resp" "$base/api/queues/later/counts" | tr -d '\r' | sed -n 's/^Age: //Ip')
body=$(cat "$dir/resp")
[ "$(jget waiting)" = 3 ] && [ "$age" = 0 ] || fail "counts: not the cached ones (Age \"$age\"): $body"
sleep 1.2
api GET /api/queues/later/counts
[ "$(jget waiting)" = 4 ] || fail "counts: not read again after 1 s: $body"
sql "DELETE FROM $schema.job WHERE id = $behind" >/dev/null
api POST /api/queues/later/pause
expect 200 '{"paused":true}' "pause"
[ "$(sql "SELECT paused FROM $schema.queue WHERE name = 'later'")" = t ] || fail "pause: not stored"
api GET /api/queues
[ "$(jget queues.@later.paused)" = true ] && [ "$(jget queues.@later.counts.paused)" = 3 ] ||
  fail "counts: a pause through the server is not shown at once: $body"
api POST /api/queues/later/resume
expect 200 '{"paused":false}' "resume"
[ "$(sql "SELECT paused FROM $schema.queue WHERE name = 'later'")" = f ] || fail "resume: not stored"

api POST "/api/jobs/$later/cancel"
expect 200 '{"cancelled":true}' "cancel"
[ "$(sql "SELECT state FROM $schema.job_archive WHERE id = $later")" = cancelled ] || fail "cancel: not cancelled"
api POST "/api/jobs/$later/cancel"
expect 404 "job $later not found among waiting or active jobs" "cancel twice"
api POST "/api/jobs/$later/retry"
expect 200 '{"retried":true}' "retry"
[ "$(sql "SELECT state FROM $schema.job WHERE id = $later")" = created ] || fail "retry: not waiting again"

api POST /api/jobs '{"name":"boom"}'
boom=$(jget id)
for _ in $(seq 1 100); do
  api GET "/api/jobs/$boom"; [ "$(jget state)" = failed ] && break; sleep 0.1
done
expect 200 '"state": "failed"' "a failing job"
api POST "/api/jobs/$boom/retry"
expect 200 '{"retried":true}' "retry a failed job"
for _ in $(seq 1 100); do
  [ "$(sql "SELECT attempt FROM $schema.job_archive WHERE id = $boom")" = 1 ] &&
    [ "$(sql "SELECT count(*) FROM $schema.job WHERE id = $boom")" = 0 ] && break
  sleep 0.1
done
[ "$(sql "SELECT state FROM $schema.job_archive WHERE id = $boom")" = failed ] || fail "retry: the job did not run again"

api DELETE "/api/queues/later/jobs?state=delayed"
expect 200 '{"purged":' "purge"
[ "$(sql "SELECT count(*) FROM $schema.job WHERE queue = 'later' AND start_after > now()")" = 0 ] ||
  fail "purge: delayed jobs left"

api GET /api/jobs/999999
expect 404 'job 999999 not found' "get a missing job"
api GET /api/jobs/abc
expect 400 'a job id is a positive integer' "get with a bad id"

# ---- bad input --------------------------------------------------------------
n=$(sql "SELECT count(*) FROM $schema.job")
api POST /api/jobs '{"name":"echo",'
expect 400 'the request body is not JSON' "malformed JSON"
api POST /api/jobs '[1,2]'
expect 400 'the request body must be a JSON object' "an array body"
api POST /api/jobs '{"name":"echo","bogus":1}'
expect 400 'unknown key \"bogus\" (known: name, data, options)' "unknown key"
api POST /api/jobs '{"name":"echo","options":{"prority":1}}'
expect 400 'unknown option \"prority\"' "unknown send option"
api POST /api/jobs '{"data":{}}'
expect 400 'name is required' "missing name"
api POST "/api/queues/later%00evil/pause"
expect 400 'the URL holds an encoded NUL (%00)' "an encoded NUL in a path"
api DELETE "/api/queues/later%00zzz/jobs?state=delayed"
expect 400 'the URL holds an encoded NUL (%00)' "an encoded NUL in a purge path"
api GET "/api/jobs?queue=later%00zz"
expect 400 'the URL holds an encoded NUL (%00)' "an encoded NUL in a query argument"
api POST /api/jobs '{"name":"echo","options":{"queue":"a\u0000b"}}'
expect 400 'options.queue' "a NUL in a send option, named"
api POST /api/jobs '{"name":"echo","data":{"k\u0000":1}}'
expect 400 'data' "a NUL in a data key, named"
api POST /api/jobs/batch '{"name":"echo","list":[{},{"s":"x\u0000"}]}'
expect 400 'list[2].s' "a NUL in a batch element, named"
api POST /api/jobs '{"name":"echo","data":{"s":"'"$(head -c 5000 /dev/zero | tr '\0' a)"'"}}'
expect 400 'max_payload' "data over max_payload"
api POST /api/jobs/batch '{"name":"echo","list":[{},{"s":"'"$(head -c 5000 /dev/zero | tr '\0' a)"'"}]}'
expect 400 'list[2] is' "send_many: an element over max_payload"
api GET "/api/jobs?queue=later&colour=red"
expect 400 'unknown query argument \"colour\"' "unknown query argument"
api GET "/api/jobs?queue=later&limit=0"
expect 400 'limit must be an integer from 1 to 10000' "bad limit"
head -c 2000000 /dev/zero | tr '\0' a >"$dir/big"
api POST /api/jobs '' --data-binary @"$dir/big"
expect 413 'more than http.max_body (69632)' "oversize body"
api POST /api/jobs '' -H 'Transfer-Encoding: chunked' --data-binary @"$dir/big"
expect 413 'more than http.max_body' "oversize chunked body"
[ "$(sql "SELECT count(*) FROM $schema.job")" = "$n" ] || fail "bad input: a job was written"
# a key twice in one object of a body, at any depth, is refused naming it
n=$(sql "SELECT count(*) FROM $schema.job")
api POST /api/jobs '{"name":"echo","name":"boom"}'
expect 400 'the key \"name\" appears twice' "a body key twice"
api POST /api/jobs '{"name":"echo","data":{"to":"ann","to":"bob"}}'
expect 400 'the key \"to\" appears twice' "a data key twice"
api POST /api/events '{"stream":"dup","events":[{"type":"a","type":"b"}]}'
expect 400 'the key \"type\" appears twice' "an event key twice"
[ "$(sql "SELECT count(*) FROM $schema.job")" = "$n" ] || fail "a key twice: a job was written"
api GET /api/nothing
expect 404 'no route' "unknown path"
api PUT /api/jobs
expect 405 'method PUT is not allowed' "wrong method"
# a 405 says which methods the path has (Allow), for each kind of route
for case in "PUT /api/jobs|POST, GET, HEAD" "DELETE /api/jobs/1|GET, HEAD" \
            "GET /api/queues/q/pause|POST" "POST /api/queues/q/jobs|DELETE"; do
  m=${case%% *}; rest=${case#* }; p=${rest%%|*}; want=${case#*|}
  allow=$(curl -s -o /dev/null -D - -X "$m" "$base$p" | tr -d '\r' | sed -n 's/^Allow: //Ip')
  [ "$allow" = "$want" ] || fail "405 of $m $p: Allow \"$allow\", expected \"$want\""
done
# a URL over 8 KiB is 414 with a JSON error naming the limit, path or query
api GET "/api/queues?x=$(head -c 9000 /dev/zero | tr '\0' a)"
expect 414 '"error":"the URL is about 9' "a long query"
api GET "/api/queues/$(head -c 9000 /dev/zero | tr '\0' a)/counts"
expect 414 'the limit is 8192' "a long path"
[ "$(head -c 1 "$dir/resp")" = "{" ] || fail "414: not JSON: $(head -c 100 "$dir/resp")"
# HTTP/1.1 needs a Host header (HTTP/1.0 does not)
api GET /api/queues '' -H 'Host:'
expect 400 'needs a Host header' "HTTP/1.1 without Host"
api GET /api/queues '' -0 -H 'Host:'
expect 200 '"queues"' "HTTP/1.0 without Host"
api GET /api/jobs/1 '' -H 'Host: attacker.example'
expect 403 'Host header' "a Host that is not the loopback"
# the loopback with anything but digits after the colon is not the loopback
api GET /api/jobs/1 '' -H 'Host: localhost:@attacker.example'
expect 403 'Host header' "a Host of localhost and more after its colon"
api GET /api/jobs/1 '' -H 'Host: 127.0.0.1:'
expect 403 'Host header' "a Host with an empty port"
api POST /api/queues/later/pause '' -H 'Origin: http://attacker.example'
expect 403 'cross-origin POST refused' "cross-origin POST"
[ "$(sql "SELECT paused FROM $schema.queue WHERE name = 'later'")" = f ] || fail "cross-origin POST paused the queue"

# keep-alive: several requests on one connection
out=$(curl -sv "$base/api/schedules" "$base/api/schedules" "$base/api/schedules" 2>&1)
[ "$(grep -c 'Re-using existing connection' <<<"$out")" -ge 2 ] || fail "keep-alive: connection not reused: $out"
# an idle connection is closed after http.timeout (2 s)
t0=$(date +%s%N)
exec 3<>"/dev/tcp/127.0.0.1/$port"
timeout 10 cat <&3 >/dev/null
exec 3<&-
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$ms" -ge 1500 ] && [ "$ms" -lt 8000 ] || fail "idle timeout: closed after $ms ms, expected about 2000"

# ---- events -------------------------------------------------------------------
api POST /api/events '{"stream":"orders:1","type":"created","data":{"total":10}}'
expect 201 '"stream":"orders:1","type":"created"' "append"
e1=$(jget id)
api POST /api/events '{"stream":"orders:1","events":[{"type":"paid"},{"type":"shipped","data":{"by":"post"}}]}'
expect 201 '"events":[' "append many"
api POST /api/events '{"stream":"orders:1","events":[]}'
expect 400 'events must hold 1 to 1000 events' "append no events"
api POST /api/events "{\"stream\":\"orders:1\",\"type\":\"x\",\"run_id\":\"$(head -c 300 /dev/zero | tr '\0' r)\"}"
expect 400 'run_id is 300 bytes, the limit is 200' "event run_id over 200 bytes"
api POST /api/events '{"stream":"orders:*","type":"x"}'
expect 400 'stream' "append to a pattern"
api POST /api/events '{"stream":"orders:1"}'
expect 400 'type (or events) is required' "append without a type"
api GET "/api/events?stream=orders:*&types=paid,shipped"
expect 200 '"type":"paid"' "query"
[ "$(jget events.2.data.by)" = post ] && [ "$(jget events.3)" = nil ] || fail "query: types filter: $body"
api GET "/api/events?stream=orders:1&after=$e1&limit=1"
[ "$(jget events.1.type)" = paid ] && [ "$(jget events.2)" = nil ] || fail "query after/limit: $body"
api GET "/api/events"
expect 400 'stream is required' "query without a stream"

# history from an id, then live
curl -s -N "$base/api/events/stream?stream=orders:*&from=$e1" >"$dir/sse1" &
sse=$!
wait_for "$dir/sse1" 'event: shipped' || fail "stream: history not delivered: $(cat "$dir/sse1")"
api POST /api/events '{"stream":"orders:2","type":"live1"}'
wait_for "$dir/sse1" 'event: live1' || fail "stream: live event not delivered: $(cat "$dir/sse1")"
wait_for "$dir/sse1" '^:$' 30 || fail "stream: no heartbeat within 3 s"
kill "$sse"; wait "$sse" 2>/dev/null
grep -q '"type":"created"' "$dir/sse1" && fail "stream: from=$e1 delivered event $e1"
last=$(grep '^id: ' "$dir/sse1" | tail -1 | cut -c5-)

# while disconnected: an event whose transaction took an id first and
# commits last, and one committed at once
psql "$url" -qAtX -c "BEGIN; SELECT $schema.append('orders:3', 'late', '{}'); SELECT pg_sleep(2); COMMIT;" >/dev/null &
late_pid=$!
sleep 0.5
api POST /api/events '{"stream":"orders:3","type":"early"}'
curl -s -N "$base/api/events/stream?stream=orders:*" -H "Last-Event-ID: $last" >"$dir/sse2" &
sse=$!
wait_for "$dir/sse2" 'event: early' || fail "reconnect: event missed while away not delivered: $(cat "$dir/sse2")"
last2=$(grep '^id: ' "$dir/sse2" | tail -1 | cut -c5-)
kill "$sse"; wait "$sse" 2>/dev/null
wait "$late_pid"
curl -s -N "$base/api/events/stream?stream=orders:*" -H "Last-Event-ID: $last2" >"$dir/sse3" &
sse=$!
pids+=("$sse")
wait_for "$dir/sse3" 'event: late' || fail "reconnect: the late commit was missed: $(cat "$dir/sse3")"
api POST /api/events '{"stream":"orders:4","type":"live2"}'
wait_for "$dir/sse3" 'event: live2' || fail "reconnect: live after the reconnect: $(cat "$dir/sse3")"
all=$(cat "$dir/sse1" "$dir/sse2" "$dir/sse3" | grep '^data: ' | sort)
[ "$(uniq -d <<<"$all")" = "" ] || fail "stream: delivered twice: $(uniq -d <<<"$all")"
for t in paid shipped live1 early late live2; do
  [ "$(grep -c "\"type\":\"$t\"" <<<"$all")" = 1 ] || fail "stream: $t not delivered exactly once"
done
# the query and the stream share their limits, and their messages
long=$(head -c 501 /dev/zero | tr '\0' a)
for p in "/api/events?stream=$long" "/api/events/stream?stream=$long"; do
  api GET "$p"
  expect 400 'stream must be a stream or pattern of 1 to 500 bytes, got 501' "${p%%\?*} with a pattern over 500 bytes"
done
for p in "/api/events?stream=" "/api/events/stream?stream="; do
  api GET "$p"
  expect 400 'of 1 to 500 bytes, got 0' "${p%%\?*} with an empty pattern"
done
api GET "/api/events/stream?from=yesterday"
expect 400 'from must be' "stream with a bad from"
api GET "/api/events/stream" '' -H 'Last-Event-ID: 5/x/y'
expect 400 'Last-Event-ID' "stream with a bad Last-Event-ID"
# snapshots PostgreSQL would refuse (the stream used to wait on a read
# failing forever), an id past 64 bits, a token over 2 KiB
api GET "/api/events/stream" '' -H 'Last-Event-ID: 5/10:1:/10:12:'
expect 400 '1 <= xmin <= xip < xmax' "stream with xmin above xmax in Last-Event-ID"
api GET "/api/events/stream?from=99999999999999999999"
expect 400 '0 to 9223372036854775807' "stream from an id past 64 bits"
api GET "/api/events/stream" '' -H "Last-Event-ID: 5/1:1:/1:1:$(printf '%03000d' 0)"
expect 400 'it must be 1 to 2047' "stream with a Last-Event-ID over 2 KiB"

# a job's progress, followed live while it runs
api POST /api/jobs '{"name":"slow"}'
slow_id=$(jget id)
curl -s -N "$base/api/events/stream?stream=job:slow:$slow_id&from=start" >"$dir/progress" &
sse=$!
wait_for "$dir/progress" 'event: progress' || fail "progress: not delivered: $(cat "$dir/progress")"
api GET "/api/jobs/$slow_id"
[ "$(jget state)" = active ] || fail "progress: the job should still run: $body"
kill "$sse"; wait "$sse" 2>/dev/null

# ---- flows, schedules, groups ----------------------------------------------------
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM $schema.queue_flow_steps WHERE flow_name = 'greet'")" = 1 ] && break; sleep 0.1
done
api POST /api/flows/greet/runs '{"data":{"to":"ann"},"options":{"run_id":"run-1"}}'
expect 201 '{"run_id":"run-1"}' "start a flow run"
for _ in $(seq 1 100); do
  api GET /api/runs/run-1; [ "$(jget status)" = completed ] && break; sleep 0.1
done
expect 200 '"status": "completed"' "get a run"
run_rows() { sql "SELECT (SELECT count(*) FROM $schema.job WHERE run_id = 'run-1')
  + (SELECT count(*) FROM $schema.job_archive WHERE run_id = 'run-1')
  + (SELECT count(*) FROM $schema.queue_events WHERE run_id = 'run-1')"; }
rows_before=$(run_rows)
api POST /api/flows/greet/runs '{"data":{"to":"ann"},"options":{"run_id":"run-1"}}'
expect 409 'a run \"run-1\" exists already' "start a run whose id is taken"
[ "$(run_rows)" = "$rows_before" ] || fail "start a run whose id is taken: it wrote jobs or events"
api POST /api/flows/nope/runs '{}'
expect 400 'unknown flow \"nope\"' "start an unknown flow"
api GET /api/runs/none
expect 404 'run none not found' "get a missing run"
api POST /api/flows/greet/runs '{"data":{"to":"bob"},"options":{"run_id":"run-2"}}'
api GET /api/flows
expect 200 '"flow": "greet"' "list flows"
[ "$(jget flows.1.steps.1.step)" = hello ] || fail "list flows: the step: $body"
api GET "/api/runs?flow=greet&limit=1"
expect 200 '"runs":' "list runs"
[ "$(jget runs.1.run_id)" = run-2 ] && [ "$(jget next)" != nil ] || fail "list runs: newest first with a next: $body"
next=$(jget next)
api GET "/api/runs?flow=greet&limit=1&before=$(printf %s "$next" | sed 's/+/%2B/g; s/ /%20/g')"
[ "$(jget runs.1.run_id)" = run-1 ] || fail "list runs: the second page: $body"
# runs that started at the same moment (one transaction) are all paged
# through, none skipped between two pages, none twice
sql "INSERT INTO $schema.queue_flow_index (flow_name, run_id, started_at)
     SELECT 'same', 'same-' || i, '2026-01-02 03:04:05.678+00' FROM generate_series(1, 5) i" >/dev/null
seen=() before=
for _ in 1 2 3 4; do
  api GET "/api/runs?flow=same&limit=2${before:+&before=$before}"
  for i in 1 2; do r=$(jget runs.$i.run_id); [ "$r" != nil ] && seen+=("$r"); done
  next=$(jget next); [ "$next" = nil ] && break
  before=$(printf %s "$next" | sed 's/+/%2B/g; s/ /%20/g; s/|/%7C/g')
done
[ "${seen[*]}" = "same-5 same-4 same-3 same-2 same-1" ] ||
  fail "list runs sharing a started_at: paged through ${seen[*]}"
api GET "/api/runs?flow=greet&status=completed&limit=10"
[ "$(jget next)" = nil ] && [ "$(jget runs.1.status)" = completed ] || fail "list runs by status: $body"
api GET "/api/runs?flow=greet&status=sleeping"
expect 400 'unknown status \"sleeping\"' "list runs with a bad status"
api GET "/api/runs?flow=greet&before=yesterday-ish"
expect 400 'yesterday-ish' "list runs with a bad before"
api GET "/api/runs"
expect 400 'flow is required' "list runs without a flow"

"$bin" --config "$dir/config.lua" schedule nightly '0 3 * * *' >/dev/null || fail "schedule: cli"
api GET /api/schedules
expect 200 '"name":"nightly"' "list schedules"

"$bin" --config "$dir/config.lua" events tail 'orders:*' --group g1 --consumer m1 >"$dir/group.out" 2>&1 &
gpid=$!
wait_for "$dir/group.out" '"type":"live2"' || fail "group: member did not start: $(cat "$dir/group.out")"
kill -INT "$gpid"; wait "$gpid"
api POST /api/events '{"stream":"orders:5","type":"after_group"}'
api GET /api/groups
expect 200 '"group":"g1","pattern":"orders:*","partitions":16' "list groups"
[ "$(jget groups.1.lag)" -ge 1 ] 2>/dev/null || fail "groups: lag of the event appended since: $body"

# a queue name with "/" in a path segment, percent-encoded
api POST /api/jobs '{"name":"a/b"}'
api GET /api/queues/a%2Fb/counts
expect 200 '"waiting":1' "a percent-encoded queue name"

# a client that reads slowly holds at most http.stream_buffer (1 MiB) and a
# batch in the server, not the backlog, and is cut off with a last event
# that says so: 40 MB of events for a client reading 2 KB/s
rss() { awk '/VmRSS/ {print $2}' "/proc/$run_pid/status"; }
curl -s -N --limit-rate 2k "$base/api/events/stream?stream=slow:*" >"$dir/slow" &
slow=$!
pids+=("$slow")
wait_for "$dir/slow" 'subscribed' || fail "slow client: not subscribed"
rss0=$(rss)
sql "SELECT count(*) FROM (SELECT $schema.append('slow:' || i, 'big',
       jsonb_build_object('pad', repeat('x', 2000))) FROM generate_series(1, 20000) i) x" >/dev/null
for _ in $(seq 1 30); do [ "$(stat -c %s "$dir/slow")" -gt 10000 ] && break; sleep 0.1; done
sleep 2
grown=$(( $(rss) - rss0 ))
[ "$grown" -lt 20000 ] || fail "slow client: the server grew by $grown KB while 40 MB waited"
[ "$(stat -c %s "$dir/slow")" -lt 1000000 ] || fail "slow client: it was not slow"
kill "$slow"
# (the 2 KB/s client takes minutes to read to the end: one at full speed
# reads what was sent, the overflow event last)
curl -s -N -m 20 "$base/api/events/stream?stream=slow:*" -o "$dir/cut" &
cut=$!
wait_for "$dir/cut" 'subscribed' || fail "cut off: not subscribed"
kill -STOP "$cut"
sql "SELECT count(*) FROM (SELECT $schema.append('slow:' || i, 'big',
       jsonb_build_object('pad', repeat('x', 2000))) FROM generate_series(1, 20000) i) x" >/dev/null
sleep 3; kill -CONT "$cut"
wait "$cut"; rc=$?
[ "$rc" = 0 ] || fail "cut off: the stream did not end (curl exit $rc)"
tail -c 400 "$dir/cut" | grep -q 'event: moonq.overflow' ||
  fail "cut off: no moonq.overflow event last: $(tail -c 400 "$dir/cut")"
tail -c 400 "$dir/cut" | grep -Eq '"stream_buffer": ?1048576' ||
  fail "cut off: the overflow event does not name the limit: $(tail -c 400 "$dir/cut")"

# 1,100 event streams at once, then gone: more than a soft limit of 1,024
# descriptors; the server raises it, and answers after
python3 - "$port" <<'PY' || fail "1,100 streams: could not open them"
import socket, sys, time
socks = []
for i in range(1100):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    s.sendall(b"GET /api/events/stream?stream=many HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    socks.append(s)
time.sleep(2)
for s in socks:
    s.close()
PY
sleep 1
api GET /api/queues '' -m 10
expect 200 '"queues"' "an answer after 1,100 streams came and went"

# every route of src/http_api.c and src/http_metrics.c is in docs/openapi.yaml
routes=$(grep -ho '{"\(GET\|POST\|DELETE\)", "/[^"]*"' "$MOONQ_SOURCE_DIR/src/http_api.c" \
  "$MOONQ_SOURCE_DIR/src/http_metrics.c" | sed 's/{"\([A-Z]*\)", "\([^"]*\)"/\1 \2/' | sort)
documented=$(awk '/^  \// { path = $1; sub(/:$/, "", path) }
  /^    (get|post|delete):/ { m = toupper($1); sub(/:$/, "", m); gsub(/\{[a-z_]+\}/, "{}", path); print m, path }' \
  "$MOONQ_SOURCE_DIR/docs/openapi.yaml" | sort)
[ "$routes" = "$documented" ] || fail "openapi.yaml and the routes differ: $(diff <(echo "$routes") <(echo "$documented"))"
[ "$(wc -l <<<"$routes")" -ge 18 ] || fail "routes not found in http_api.c: $routes"

# ---- a non-loopback bind needs a token ---------------------------------------
cat >"$dir/open.lua" <<EOF
return { schema = "$schema", log = { level = "warn" }, http = { listen = "0.0.0.0:$port2" } }
EOF
out=$("$bin" --config "$dir/open.lua" web 2>&1)
[ $? -eq 1 ] && [[ "$out" == *'http.token: required when http.listen ("0.0.0.0:'* ]] ||
  fail "non-loopback bind without a token: $out"
out=$("$bin" --config "$dir/config.lua" web --http "0.0.0.0:$port2" 2>&1)
[ $? -eq 1 ] && [[ "$out" == *'http.token: required'* ]] || fail "web --http 0.0.0.0 without a token: $out"
out=$("$bin" --config "$dir/config.lua" web --http "127.0.0.1:$port" 2>&1)
[ $? -eq 1 ] && [[ "$out" == *"http.listen: cannot listen on 127.0.0.1:$port: "*'in use'* ]] ||
  fail "a port in use: $out"
# --http replaces the file's public address before it is checked: the
# loopback one needs no token (here it is taken, which is the error seen)
out=$("$bin" --config "$dir/open.lua" web --http "127.0.0.1:$port" 2>&1)
[ $? -eq 1 ] && [[ "$out" == *"http.listen: cannot listen on 127.0.0.1:$port: "*'in use'* ]] ||
  fail "--http over a file's public address: $out"
out=$("$bin" --config "$dir/config.lua" web --http "127.0.0.1:99999" 2>&1)
[ $? -eq 1 ] && [[ "$out" == *'http.listen: port must be 1 to 65535'* ]] || fail "bad port: $out"
token=s3cret-token-0123456789
cat >"$dir/open.lua" <<EOF
return { schema = "$schema", log = { level = "warn" },
         http = { listen = "0.0.0.0:$port2", token = "$token" } }
EOF
"$bin" --config "$dir/open.lua" web >"$dir/web.log" 2>&1 &
web_pid=$!
pids+=("$web_pid")
base=http://127.0.0.1:$port2
for _ in $(seq 1 100); do curl -s -o /dev/null "$base/api/schedules" && break; sleep 0.1; done
api GET /api/schedules
expect 401 'an Authorization: Bearer token is required' "no token"
api GET /api/schedules '' -H "Authorization: Bearer ${token}x"
expect 401 'the bearer token is wrong' "a wrong token"
api POST /api/jobs '{"name":"echo"}' -H "Authorization: Bearer wrong"
expect 401 'wrong' "POST with a wrong token"
api POST /api/jobs '{"name":"echo"}' -H "Authorization: Bearer $token"
expect 201 '"id":' "POST with the token"
api GET "/api/events/stream" '' -H "Authorization: Bearer nope"
expect 401 'wrong' "stream without the token"
# without the token an unknown route or method says nothing of what exists
api GET /api/nonexistent
expect 401 'an Authorization: Bearer token is required' "unknown route without the token"
api DELETE /api/jobs/1
expect 401 'an Authorization: Bearer token is required' "a wrong method without the token"
api GET /api/schedules '' -H "Authorization: Basic eDp5"
expect 401 'an Authorization: Bearer token is required' "Basic instead of Bearer"
api GET /api/nonexistent '' -H "Authorization: Bearer $token"
expect 404 'no route' "unknown route with the token"
grep -q "$token" "$dir/web.log" "$dir/run.log" && fail "the token was logged"
kill -TERM "$web_pid"; wait "$web_pid" || fail "web: exit code $? after SIGTERM"

# ---- SIGTERM ends the streams and stops ----------------------------------------
# A request waiting for PostgreSQL when the stop begins (a pause held up by
# a row lock for 2 s) is answered before the process exits.
psql "$url" -qAtX -c "BEGIN; SELECT 1 FROM $schema.queue WHERE name = 'later' FOR UPDATE;
                      SELECT pg_sleep(2); COMMIT;" >/dev/null &
lock_pid=$!
sleep 0.5
base=http://127.0.0.1:$port
curl -s -w ' %{http_code}' -X POST "$base/api/queues/later/pause" >"$dir/held" &
held=$!
sleep 0.5
kill -TERM "$run_pid"
for _ in $(seq 1 150); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$run_pid" 2>/dev/null && fail "run: still running 15 s after SIGTERM"
wait "$run_pid"; code=$?
[ "$code" -eq 0 ] || fail "run: exit code $code after SIGTERM: $(cat "$dir/run.log")"
wait "$held" "$lock_pid"
[ "$(cat "$dir/held")" = '{"paused":true} 200' ] || fail "stop: the request in flight got: $(cat "$dir/held")"
curl -s -o /dev/null "$base/api/schedules" && fail "stop: still accepting connections"
for _ in $(seq 1 50); do kill -0 "$sse" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sse" 2>/dev/null && fail "stream: still open after the server stopped"
pids=()

[ "$failed" -eq 0 ] && echo "cli_http: ok"
exit "$failed"
