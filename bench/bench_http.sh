#!/usr/bin/env bash
# bench/bench_http.sh -- the HTTP API benchmark: single sends through
# POST /api/jobs with keep-alive.
#
#   bench/bench_http.sh     build moonq, start the private PostgreSQL (or use
#                           DATABASE_URL), serve the API with `moonq web` and
#                           load it with wrk
#   CONNS="1 16 64"         keep-alive connections of each run (default)
#   DURATION=10             seconds of each run
#   ROUNDS=3                runs of each connection count
#   BUILD_DIR=DIR           build directory (default build-bench)
#
# Each run: `wrk -t1 -c CONNS -d DURATION --latency` posting
# {"name":"bench","data":{"i":1}} (no handler consumes it). Printed per
# run: requests/s, p50 and p99 latency, non-2xx replies, CPU time per
# request of the moonq process and of PostgreSQL (/proc), and the jobs the
# database holds afterwards against wrk's request count (each 201 is a
# stored job). Then as the floor: pgbench, one `SELECT moonq.send(...)`
# per transaction, CONNS clients, the same DURATION. Raw outputs go to
# $BUILD_DIR/bench-out/http-<timestamp>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup http moonq_exe
command -v wrk >/dev/null || { echo "bench_http: wrk is missing (apt-get install wrk)" >&2; exit 1; }
url=$DATABASE_URL
s=http_bench
port=$((30000 + $$ % 20000))
conns=${CONNS:-1 16 64}
duration=${DURATION:-10}
rounds=${ROUNDS:-3}

psql "$url" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $s CASCADE"
cat >"$out/config.lua" <<EOF
return { schema = "$s", log = { level = "warn" },
         http = { listen = "127.0.0.1:$port" } }
EOF
"$build/moonq" --config "$out/config.lua" web >"$out/web.log" 2>&1 &
web=$!
trap 'kill -TERM $web 2>/dev/null; wait $web 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/schedules" && break; sleep 0.1; done

cat >"$out/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"name":"bench","data":{"i":1}}'
wrk.headers["Content-Type"] = "application/json"
EOF
printf 'SELECT %s.send(%s, %s);\n' "$s" "'bench_floor'" "'{\"i\":1}'" >"$out/floor.sql"

jobs() { psql "$url" -qAtX -c "SELECT count(*) FROM $s.job WHERE name = '$1'"; }
# ms of a wrk latency figure ("512.00us", "1.20ms", "2.01s")
ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else {sub(/s/,"",v); v*=1000} printf "%.3f", v}' <<<"$1"; }

echo "POST /api/jobs, keep-alive, wrk -t1 --latency, ${duration} s per run (moonq $(git -C "$repo" rev-parse --short HEAD))"
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }
us_per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) / n * 1e6 }'; }
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, synchronous_commit $(psql "$url" -qAtX -c 'SHOW synchronous_commit')"
printf '%-6s %-6s %10s %9s %9s %8s %12s %12s %s\n' conns round "req/s" "p50 ms" "p99 ms" non2xx \
  "moonq us/req" "PG us/req" "stored/requests"
for c in $conns; do
  for r in $(seq 1 "$rounds"); do
    before=$(jobs bench)
    m0=$(cpu_of "$web"); p0=$(bench_pg_cpu)
    f=$out/wrk-c$c-r$r.txt
    wrk -t1 -c "$c" -d "${duration}s" --latency -s "$out/post.lua" \
      "http://127.0.0.1:$port/api/jobs" >"$f"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$f")
    p50=$(ms "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(ms "$(awk '$1 == "99%" {print $2}' "$f")")
    reqs=$(awk '/requests in/ {print $1}' "$f")
    bad=$(awk '/Non-2xx/ {print $5}' "$f")
    m1=$(cpu_of "$web"); p1=$(bench_pg_cpu)
    stored=$(( $(jobs bench) - before ))
    printf '%-6s %-6s %10s %9s %9s %8s %12s %12s %s/%s\n' "$c" "$r" "$rps" "$p50" "$p99" "${bad:-0}" \
      "$(us_per "$m0" "$m1" "$reqs")" "$(us_per "$p0" "$p1" "$reqs")" "$stored" "$reqs"
  done
done

echo
echo "floor: pgbench, one SELECT $s.send(...) per transaction"
printf '%-8s %10s %12s %12s\n' clients "tps" "latency ms" "PG us/tx"
for c in $conns; do
  p0=$(bench_pg_cpu)
  pgbench -n -M prepared -c "$c" -j 1 -T "$duration" -f "$out/floor.sql" "$url" >"$out/pgbench-c$c.txt" 2>&1
  p1=$(bench_pg_cpu)
  tps=$(awk '/^tps/ {print $3; exit}' "$out/pgbench-c$c.txt")
  lat=$(awk '/^latency average/ {print $4}' "$out/pgbench-c$c.txt")
  n=$(awk '/number of transactions actually processed/ {print $6}' "$out/pgbench-c$c.txt")
  printf '%-8s %10s %12s %12s\n' "$c" "$tps" "$lat" "$(us_per "$p0" "$p1" "$n")"
done
echo
echo "raw outputs: $out"
