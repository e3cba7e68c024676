#!/usr/bin/env bash
# cli_http_outage.sh -- while PostgreSQL is down, the HTTP API answers 503
# within a few seconds with a JSON error saying the database is
# unreachable and naming no host, user or password (a call used to wait
# 30 s for a connection, the pool's queue_timeout); once it is back, calls
# are answered again. `moonq web` on a PostgreSQL of the test's own
# (scripts/pg.sh), stopped and started. Run by ctest as sh_cli_http_outage
# with MOONQ_BIN set.
set -u

source "$(dirname "$0")/lib.sh"
mq_test_setup cli_http_outage
src=${MOONQ_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
chmod 755 "$dir"
pg() { bash "$src/scripts/pg.sh" "$1" "$dir/pg"; }
on_exit() {
  [ -n "${web-}" ] && kill -INT "$web" 2>/dev/null && wait "$web" 2>/dev/null
  pg stop >/dev/null 2>&1
}
own=$(pg start) || { echo "FAIL: cannot start a PostgreSQL: $own" >&2; exit 1; }
# The server on a port derived from this shell's pid; the next one if
# another process holds it. It is up when it answers (up to 30 s on a
# loaded machine).
port=$((20000 + ($$ * 13) % 20000))
for _ in 1 2 3 4 5; do
  base=http://127.0.0.1:$port
  cat >"$dir/config.lua" <<EOF
return { schema = "$schema", database = "$own password=secret-word",
         log = { level = "warn" }, http = { listen = "127.0.0.1:$port" } }
EOF
  env -u DATABASE_URL "$bin" --config "$dir/config.lua" web >"$dir/web.log" 2>&1 &
  web=$!
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "$base/api/queues" && break
    kill -0 "$web" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$web" 2>/dev/null && break
  wait "$web" 2>/dev/null
  grep -q 'in use' "$dir/web.log" || { echo "FAIL: moonq web did not start: $(cat "$dir/web.log")" >&2; exit 1; }
  port=$((port + 1))
done

# call PATH [METHOD [BODY]]: sets status, body and secs (the call's time).
call() {
  local t0=$(date +%s.%N)
  status=$(curl -s -m 60 -o "$dir/resp" -w '%{http_code}' -X "${2:-GET}" \
    ${3:+-H 'Content-Type: application/json' --data-binary "$3"} "$base$1")
  body=$(cat "$dir/resp")
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
}
call /api/queues
[ "$status" = 200 ] || fail "before the outage: $status $body"

pg stop >/dev/null
sleep 1
for c in "/api/queues" "/api/queues/q/counts" "/api/jobs/1" "/api/jobs POST {\"name\":\"x\"}" \
         "/api/events?stream=s" "/api/runs?flow=f" "/metrics"; do
  set -- $c
  call "$@"
  [ "$status" = 503 ] || fail "$c while PostgreSQL is down: $status $body"
  [ "$(echo "$secs < 5" | bc)" = 1 ] || fail "$c while PostgreSQL is down took $secs s"
  [[ "$body" == *'"error":"the database is unreachable'* ]] ||
    fail "$c while PostgreSQL is down: the error does not say the database is unreachable: $body"
  [[ "$body" == *secret-word* || "$body" == *"$dir"* || "$body" == *moonq\ * ]] &&
    fail "$c while PostgreSQL is down: the error shows the connection: $body"
done

pg start >/dev/null
for _ in $(seq 1 300); do
  call /api/queues
  [ "$status" = 200 ] && break
  sleep 0.1
done
[ "$status" = 200 ] || fail "after the outage: $status $body"
kill -INT "$web" && wait "$web"
web=
grep -A20 -m1 Sanitizer "$dir/web.log" && fail "the server reported the above"
exit $failed
