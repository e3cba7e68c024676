#!/usr/bin/env bash
# bench/bench_send.sh -- single sends and send_many against the SQL floor,
# in interleaved rounds, optionally beside an earlier moonq.
#
#   bench/bench_send.sh             build bench_queue, start the private
#                                   PostgreSQL (or use DATABASE_URL), run, print
#   BENCH_ROUNDS=N                  rounds (default 5); figures are medians
#   BENCH_BASE=FILE                 a bench_queue built from an earlier commit:
#                                   its migrations make schema send_base, run
#                                   beside this checkout's (send_cur) in each round
#   BENCH_SECONDS=S                 length of each pgbench run (default 3)
#   BUILD_DIR=DIR                   build directory (default build-bench)
#
# Each round runs, in turn for every contender:
#   floor    pgbench -l of bench/sql/floor_insert1.sql: a single-row INSERT
#            into a minimal table, one transaction each (the SQL floor)
#   job      the same INSERT into moonq's job table (send_cur.job), the queue
#            defaults written out: what the table costs without send
#   sql      pgbench -l of `SELECT S.send('bench_send', {"n": ...}, '{}')`:
#            an application's send (its NOTIFY included), one transaction each
#   moonq    bench_queue --phases send: mq_queue_send one at a time through
#            moonq's pipeline (moonq.no_wake set, as on moonq's connections)
#   many     bench_queue --phases many: send_many of 1000 jobs, 1 and 4 in flight
# and then, once, the CPU of one send inside one backend (bench/sql/send_micro.sql:
# no client, no commit). p50s in ms, jobs/s; the job tables are emptied
# before each run. Raw outputs go to $BUILD_DIR/bench-out/send-<timestamp>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup send bench_queue
rounds=${BENCH_ROUNDS:-5}
secs=${BENCH_SECONDS:-3}
bq=$build/bench/bench_queue
url=$DATABASE_URL
say() { printf '%s\n' "$*" | tee -a "$out/summary.txt" >&2; }

declare -A bin=([send_cur]=$bq)
schemas=(send_cur)
if [ -n "${BENCH_BASE:-}" ]; then
  bin[send_base]=$BENCH_BASE
  schemas=(send_base send_cur)
fi
for s in "${schemas[@]}"; do
  "${bin[$s]}" --schema "$s" --phases none >"$out/migrate-$s.log" 2>&1 || {
    tail -5 "$out/migrate-$s.log" >&2; exit 1; }
done
psql "$url" -q -v ON_ERROR_STOP=1 -f "$repo/bench/sql/floor_setup.sql" >/dev/null 2>&1
empty() { psql "$url" -qAtX -c "TRUNCATE $1" >/dev/null; }

# p50 in ms of a pgbench run with a per-transaction log; $1 label, $2 script
pgb_p50() {
  local dir="$out/pgb-$1"
  mkdir -p "$dir" && rm -f "$dir"/pgbench_log.*
  (cd "$dir" && pgbench -n -M prepared -c 1 -j 1 -T "$secs" -l -f "$2" "$url" \
     >>"$out/pgbench-$1.log" 2>&1)
  cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n |
    awk '{v[NR]=$1} END {printf "%.3f\n", v[int(NR*0.5)]/1000}'
}

# RESULT value of a bench_queue run; $1 log, $2 key
result() { awk -v k="$2" '$1 == "RESULT" && $2 == k {print $3}' "$1"; }

declare -A F  # figure -> values, one a round
for s in "${schemas[@]}"; do
  printf '\\set n random(1, 1000000)\nSELECT %s.send('"'bench_send'"', jsonb_build_object('"'n'"', :n::int), '"'{}'"');\n' \
    "$s" >"$out/send-$s.sql"
done
cat >"$out/job-insert.sql" <<'SQL'
\set n random(1, 1000000)
INSERT INTO send_cur.job (queue, name, data, retry_limit, retry_delay, retry_backoff, expire_in, retention) VALUES ('bench_send', 'bench_send', jsonb_build_object('n', :n::int), 3, 60, true, 900, 604800) RETURNING id;
SQL
for r in $(seq 1 "$rounds"); do
  empty bench_floor.floor_job
  F[floor]+="$(pgb_p50 floor "$repo/bench/sql/floor_insert1.sql") "
  empty send_cur.job
  F[job]+="$(pgb_p50 job "$out/job-insert.sql") "
  for s in "${schemas[@]}"; do
    empty "$s.job"
    F[sql.$s]+="$(pgb_p50 "sql-$s" "$out/send-$s.sql") "
    empty "$s.job"
    log="$out/moonq-$s-$r.log"
    "${bin[$s]}" --schema "$s" --phases send --send-n 3000 --reps 1 >"$log" 2>&1
    F[moonq.$s]+="$(result "$log" send_p50_ms) "
    log="$out/many-$s-$r.log"
    "${bin[$s]}" --schema "$s" --phases many --many-total 100000 --many-batch 1000 \
      --many-inflight 1,4 --reps 1 >"$log" 2>&1
    F[many1.$s]+="$(result "$log" many_inflight1_jobs_per_s) "
    F[many4.$s]+="$(result "$log" many_inflight4_jobs_per_s) "
  done
  last() { echo "$1" | awk '{print $NF}'; }
  say "round $r: floor $(last "${F[floor]}") job $(last "${F[job]}")$(for s in "${schemas[@]}"; do
    printf ' | %s: sql %s moonq %s' "$s" "$(last "${F[sql.$s]}")" "$(last "${F[moonq.$s]}")"
  done)"
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {
  m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
  printf (m > 1000 ? "%.0f" : "%.3f"), m }'; }
floor=$(echo "${F[floor]}" | median)
say ""
say "medians of $rounds rounds (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
say "floor (i) single-row INSERT p50: $floor ms  [rounds: ${F[floor]}]"
job=$(echo "${F[job]}" | median)
say "INSERT into the job table p50: $job ms ($(awk -v a="$job" -v b="$floor" 'BEGIN{printf "%.2f", a/b}')x floor)  [${F[job]}]"
for s in "${schemas[@]}"; do
  sql=$(echo "${F[sql.$s]}" | median)
  mq=$(echo "${F[moonq.$s]}" | median)
  say "$s: SELECT send p50 $sql ms ($(awk -v a="$sql" -v b="$floor" 'BEGIN{printf "%.2f", a/b}')x floor)  [${F[sql.$s]}]"
  say "$s: mq_queue_send p50 $mq ms ($(awk -v a="$mq" -v b="$floor" 'BEGIN{printf "%.2f", a/b}')x floor)  [${F[moonq.$s]}]"
  say "$s: send_many 1000/batch jobs/s, 1 in flight $(echo "${F[many1.$s]}" | median), 4 in flight $(echo "${F[many4.$s]}" | median)  [4: ${F[many4.$s]}]"
done

# CPU of one send inside one backend
stmts=""
for s in "${schemas[@]}"; do
  stmts+="\$\$SELECT $s.send('bench_send', '{\"n\": 1}', '{}')\$\$, "
done
stmts+="\$\$INSERT INTO send_cur.job (queue, name, data, retry_limit, retry_delay, retry_backoff, expire_in, retention) VALUES ('bench_send', 'bench_send', '{\"n\": 1}', 3, 60, true, 900, 604800)\$\$, "
stmts+="\$\$INSERT INTO bench_floor.floor_job (queue, data) VALUES ('floor', '{\"n\": 1}')\$\$"
for s in "${schemas[@]}"; do empty "$s.job"; done
say ""
say "CPU per statement inside one backend (us; fastest and median of 9 rounds of 2000):"
psql "$url" -qAtX -F ' | ' -v ON_ERROR_STOP=1 -f "$repo/bench/sql/send_micro.sql" \
  -c "SELECT best_us, median_us, stmt FROM pg_temp.send_micro(ARRAY[$stmts], 2000, 9)" \
  | tee -a "$out/summary.txt" >&2
say "raw outputs: $out"
