#!/usr/bin/env bash
# bench/bench_sse.sh -- SSE fan-out: CLIENTS (100) readers of
# /api/events/stream on `moonq web` while events are appended at RATE
# (1000) per second for SECONDS_RUN (10); prints what each client got, the
# delivery latency (bench/bench_sse.py, readers in bench/bench_sse_client.c)
# and the server's CPU seconds. BUILD_DIR as bench/lib.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup sse moonq_exe bench_sse_client
s=sse_bench
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
psql "$DATABASE_URL" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $s CASCADE"
cat >"$out/config.lua" <<CONF
return { schema = "$s", log = { level = "warn" }, http = { listen = "127.0.0.1:$port" } }
CONF
"$build/moonq" --config "$out/config.lua" web >"$out/web.log" 2>&1 &
web=$!
trap 'kill -TERM $web 2>/dev/null; wait $web 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/schedules" && break; sleep 0.1; done
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, moonq $(git -C "$repo" rev-parse --short HEAD)"
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$web/stat"; }
cpu0=$(cpu)
python3 "$repo/bench/bench_sse.py" "http://127.0.0.1:$port" "$DATABASE_URL" "$s" \
  "${CLIENTS:-100}" "${RATE:-1000}" "${SECONDS_RUN:-10}" "$build/bench/bench_sse_client"
echo "moonq web CPU: $(awk -v a="$cpu0" -v b="$(cpu)" 'BEGIN { printf "%.2f", b - a }') s; load $(cut -d' ' -f1-3 /proc/loadavg)"
