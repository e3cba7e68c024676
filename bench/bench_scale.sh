#!/usr/bin/env bash
# bench/bench_scale.sh -- how `moonq run` holds up at scale: deep backlogs and
# a large archive (part 4), a transaction held open beside a steady flow
# (5), memory over a long drain and after 1 MB jobs (6), and many queues (7).
# Unattended, about 20 minutes with the defaults on two cores; prints a
# summary table (also $out/summary.md).
#
#   bench/bench_scale.sh            build moonq, start the private PostgreSQL
#                                   of the build dir (or use DATABASE_URL), run
#   PARTS=4,5,6,7                   parts to run (default all)
#   BUILD_DIR=DIR                   build directory (default build-bench)
#   SCALE_SCHEMA=S                  schema, dropped and migrated at the start
#                                   (default bench_scale)
#   BEST=w:c:p                      the tuned setting: workers, concurrency,
#                                   prefetch (default 2:500:500); "default" is
#                                   moonq's defaults (1 worker, 10, "auto")
#
# Part 4, backlog: for each BACKLOGS size (default "50000 1000000 5000000")
# the queue is filled to that size (bench_sutil.fill: one send copied by
# INSERT ... generate_series, no NOTIFY) and vacuumed, the plan of one
# fetch_jobs(500) is logged (auto_explain: ANALYZE, BUFFERS, nested
# statements; rolled back), then each setting drains until WINDOW_JOBS
# (default 50000; WINDOW_JOBS_DEFAULT, 10000, for the defaults) jobs are
# archived or DRAIN_TIMEOUT s (60) pass; the rate is those jobs over first
# claim -> last of them completed. The fetch plan is logged again after
# the drains (dead entries at the head of the index). Then HISTORY
# (default 10000000) completed jobs are inserted into job_archive
# (generate_series, queue "history") and the smallest backlog's drains and
# send p50 (SEND_N single sends timed in the backend, default 2000) are
# measured again.
#
# Part 5, held-back horizon: a sender paced at RATE jobs/s (default 200,
# each send its own transaction) feeds `moonq run` (defaults) for
# PRE_SECONDS (45), then another connection runs BEGIN; SELECT
# txid_current(); and stays idle in transaction for HOLD_SECONDS (default
# 300; the goal speaks of 10 minutes: HOLD_SECONDS=600 for that, the run
# then takes 5 minutes more), then POST_SECONDS (90). Jobs/s sent and
# completed and enqueue -> start latency per phase and per BUCKET s (10),
# dead tuples and sizes of job and job_archive every BUCKET s.
#
# Part 6, memory: MEM_JOBS (default 1000000) drained with BEST while VmRSS
# of every process of `moonq run` is sampled every MEM_SAMPLE s (1); then a
# job with BIG_BYTES (1000000) of data and one returning that much output,
# then BIG_BATCH (10) of each sent at once, each followed by 20,000 no-op
# jobs (allocations that drive Lua's GC) and 3 s of quiet, RSS compared
# with before.
#
# Part 7, many queues: QUEUES (default 1000) handler files, one queue each;
# MANY_JOBS (100000; MANY_JOBS_DEFAULT, 20000, for the defaults) spread
# evenly over them and drained, against the same number in one queue;
# then bench/bench_idle.sh QUEUES IDLE_SECONDS (default 20) for the idle
# CPU. Where pg_stat_statements is loaded, each drain also counts moonq's
# statements (reset before it) and writes them, the most called first, to
# $out/pgss-<label>.txt.
#
# Every drain is checked for exactly-once: no job left active, every
# archived job completed at its first attempt, sent = archived + waiting.
# Files: bench/scale/config.lua (settings from SCALE_* variables),
# bench/scale/handlers/ (noop, big_data, big_output), bench/scale/util.sql
# (fill, waits, timed and paced sends; schema bench_sutil). Raw outputs go
# to $BUILD_DIR/bench-out/scale-<timestamp>/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup scale moonq_exe
moonq=$build/moonq
url=$DATABASE_URL

parts=${PARTS:-4,5,6,7}
export SCALE_SCHEMA=${SCALE_SCHEMA:-bench_scale}
s=$SCALE_SCHEMA
best=${BEST:-2:500:500}
backlogs=${BACKLOGS:-"50000 1000000 5000000"}
window_jobs=${WINDOW_JOBS:-50000}
window_default=${WINDOW_JOBS_DEFAULT:-10000}
drain_timeout=${DRAIN_TIMEOUT:-60}
history=${HISTORY:-10000000}
send_n=${SEND_N:-2000}
rate=${RATE:-200}
pre_s=${PRE_SECONDS:-45}
hold_s=${HOLD_SECONDS:-300}
post_s=${POST_SECONDS:-90}
bucket=${BUCKET:-10}
mem_jobs=${MEM_JOBS:-1000000}
mem_sample=${MEM_SAMPLE:-1}
big_bytes=${BIG_BYTES:-1000000}
big_batch=${BIG_BATCH:-10}
queues=${QUEUES:-1000}
many_jobs=${MANY_JOBS:-100000}
many_default=${MANY_JOBS_DEFAULT:-20000}
idle_s=${IDLE_SECONDS:-20}
cfg=$repo/bench/scale/config.lua
handlers=$repo/bench/scale/handlers
t_start=$(date +%s)

q() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$out/progress.log" >&2; }
# row PART MEASURE FIGURE GOAL MET: one line of the summary table.
row() { printf '| %s | %s | %s | %s | %s |\n' "$@" >>"$out/summary.md"; }
now() { date +%s.%N; }
has_part() { [[ ",$parts," == *",$1,"* ]]; }

# grp_cpu PGID -> CPU seconds used so far by process group PGID (`moonq
# run` and its worker processes).
grp_cpu() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v g="$1" -v hz="$(getconf CLK_TCK)" '
    $5 == g { t += $14 + $15 + $16 + $17 } END { printf "%.3f\n", t / hz }'
}
# us_per_job PG0 PG1 MOONQ JOBS -> "PG+moonq" CPU microseconds per job.
us_per_job() {
  awk -v a="$1" -v b="$2" -v m="$3" -v n="$4" 'BEGIN { if (n > 0) printf "%.0f+%.0f\n", (b - a) / n * 1e6, m / n * 1e6; else print "?" }'
}
# Process group of `moonq run` (it and its worker processes).
group_pids() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v g="$1" '$5 == g { print $1 }'
}
# start_moonq SETTING LOG [HANDLERS] -> pid, the leader of its own process
# group; SETTING is w:c:p or "default".
start_moonq() {
  local w="" c="" p=""
  [ "$1" = default ] || IFS=: read -r w c p <<<"$1"
  SCALE_WORKERS=$w SCALE_CONCURRENCY=$c SCALE_PREFETCH=$p SCALE_HANDLERS=${3:-$handlers} \
    setsid "$moonq" -c "$cfg" run >"$2" 2>&1 &
  echo $!
}
stop_moonq() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  log "moonq run $1 did not stop in 30 s; killed"
  kill -KILL -- "-$1" 2>/dev/null || true
}

reset_queue() {
  q "TRUNCATE $s.job, $s.job_archive, $s.queue_events" >/dev/null
}
# fill QUEUE N: N jobs named (and queued in) QUEUE.
fill() { q "CALL bench_sutil.fill('$s', '$1', $2)" >/dev/null; }
count_waiting() { q "SELECT count(*) FROM $s.job WHERE queue = '$1'"; }
# wait_until CONDITION TIMEOUT -> the epoch when the boolean query
# CONDITION held (or the timeout passed; then also a line in progress.log).
wait_until() {
  local at ok
  IFS='|' read -r at ok < <(q "CALL bench_sutil.wait_until(\$q\$$1\$q\$, $2)")
  [ "$ok" = t ] || log "  waited $2 s in vain for: $1"
  echo "$at"
}
# wait_empty QUEUE TIMEOUT -> epoch when QUEUE had no job left.
wait_empty() { wait_until "SELECT NOT EXISTS (SELECT 1 FROM $s.job WHERE queue = '$1')" "$2"; }

# check_once QUEUE SENT: exactly-once after a drain stopped: nothing active,
# every archived job of QUEUE completed at attempt 1, SENT = archived +
# waiting. Prints "ok" or what is wrong (and appends it to $out/checks.txt).
check_once() {
  local res
  res=$(q "SELECT (SELECT count(*) FROM $s.job WHERE state = 'active'),
                  (SELECT count(*) FROM $s.job WHERE queue = '$1'),
                  count(*), count(*) FILTER (WHERE state <> 'completed'), coalesce(max(attempt), 0)
             FROM $s.job_archive WHERE queue = '$1'")
  local active waiting archived bad maxatt
  IFS='|' read -r active waiting archived bad maxatt <<<"$res"
  local verdict=ok
  if [ "$active" != 0 ] || [ "$bad" != 0 ] || [ "$maxatt" -gt 1 ] || [ $((archived + waiting)) != "$2" ]; then
    verdict="FAIL(active=$active not_completed=$bad max_attempt=$maxatt sent=$2 archived=$archived waiting=$waiting)"
  fi
  echo "$1 sent=$2 archived=$archived waiting=$waiting active=$active not_completed=$bad max_attempt=$maxatt: $verdict" >>"$out/checks.txt"
  echo "$verdict"
}

# explain_fetch LABEL: the plan of one fetch_jobs('noop', 500) with every
# statement inside it (auto_explain at NOTICE), rolled back.
explain_fetch() {
  local label=$1 e
  # From the head (the 3-argument fetch_jobs), and as a worker claims: past
  # the last job claimed a second or more before (sql/023).
  for e in "" "-past"; do
    local args="'noop', 500, gen_random_uuid()"
    [ -z "$e" ] || args="$args, 0, (SELECT coalesce(max(id), 0) FROM $s.job_archive WHERE queue = 'noop' AND started_at < now() - interval '1 s')"
    psql "$url" -qX -v ON_ERROR_STOP=1 >"$out/explain-$label$e.txt" 2>&1 <<EOF
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_level = notice;
SET client_min_messages = notice;
BEGIN;
SELECT count(*) FROM $s.fetch_jobs($args);
ROLLBACK;
EOF
  done
}
# fetch_ms LABEL -> "ms buffers": the duration of fetch_jobs' claim (its
# choice of jobs, lock_waiting_rows' SELECT (sql/039; before it
# lock_waiting's ARRAY(...)), plus the UPDATE, as
# auto_explain timed them) and the shared buffers its choice of jobs
# touched: "all/scan", all = the choice (the walk and the row locks), scan =
# the walk alone (the scan nodes in it).
fetch_ms() {
  awk 'function bufs(   i, a, n) { for (i = 1; i <= NF; i++) if ($i ~ /^(hit|read)=/) { split($i, a, "="); n += a[2] }; return n }
       /duration: .* ms/ { for (i = 1; i <= NF; i++) if ($i == "duration:") d = $(i + 1); c = 0; next }
       /Query Text: (ARRAY\(|SELECT coalesce\(array_agg\(x\.id\))/ { t += d; seen = 1; c = 1; next }
       /Query Text: WITH claimed AS/ { t += d; next }
       c && all == "" && /Buffers: shared/ { all = bufs(); next }
       c && /-> +(Index Scan|Index Only Scan|Bitmap Heap Scan|Seq Scan) .* on job / { f = 1; next }
       c && f && /Buffers: shared/ { scan += bufs(); f = 0 }
       END { printf "%s %s/%s\n", (seen ? t : "?"), (all == "" ? "?" : all), (scan == "" ? "?" : scan) }' "$out/explain-$1.txt"
}

# drain_window SETTING LABEL SENT: moonq run drains queue noop until
# window_jobs (window_default for the defaults) are archived (or
# drain_timeout), stops; appends to $out/drain.txt and prints "rate cpu
# check" (cpu: PostgreSQL's and moonq's CPU us per job archived, "PG+moonq").
drain_window() {
  local setting=$1 label=$2 sent=$3
  local window_jobs=$window_jobs
  [ "$setting" != default ] || window_jobs=$window_default
  local c0; c0=$(bench_pg_cpu)
  local t0; t0=$(now)
  local pid; pid=$(start_moonq "$setting" "$out/moonq-$label.log")
  local at
  at=$(wait_until "SELECT count(*) >= $window_jobs FROM $s.job_archive WHERE queue = 'noop'" "$drain_timeout")
  local mc; mc=$(grp_cpu "$pid")
  stop_moonq "$pid"
  local c1; c1=$(bench_pg_cpu)
  local cpu; cpu=$(us_per_job "$c0" "$c1" "$mc" "$(q "SELECT count(*) FROM $s.job_archive WHERE queue = 'noop'")")
  local res n first span
  res=$(q "WITH a AS (SELECT started_at, completed_at FROM $s.job_archive WHERE queue = 'noop'),
                w AS (SELECT completed_at FROM a ORDER BY completed_at OFFSET least($window_jobs, (SELECT count(*) FROM a)) - 1 LIMIT 1)
           SELECT least($window_jobs, (SELECT count(*) FROM a)),
                  extract(epoch FROM (SELECT min(started_at) FROM a)),
                  extract(epoch FROM (SELECT completed_at FROM w) - (SELECT min(started_at) FROM a))")
  IFS='|' read -r n first span <<<"$res"
  local chk; chk=$(check_once noop "$sent")
  local r; r=$(awk -v n="$n" -v sp="$span" 'BEGIN { printf "%.0f", (sp > 0 ? n / sp : 0) }')
  local wall; wall=$(awk -v n="$n" -v t0="$t0" -v at="$at" 'BEGIN { printf "%.0f", n / (at - t0) }')
  echo "$label setting=$setting jobs=$n first_claim_after=$(awk -v a="$first" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')s window=${span}s rate=$r/s wall_rate=$wall/s cpu_us_per_job=$cpu once=$chk" >>"$out/drain.txt"
  echo "$r $cpu $chk"
}

# ---------------------------------------------------------------- setup
log "output: $out"
q "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1
"$moonq" -c "$cfg" migrate >"$out/migrate.log" 2>&1
psql "$url" -qX -v ON_ERROR_STOP=1 -f "$repo/bench/scale/util.sql" >/dev/null
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit, load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
  echo "command: bash bench/bench_scale.sh (in effect: PARTS=$parts BEST=$best BACKLOGS=\"$backlogs\" WINDOW_JOBS=$window_jobs WINDOW_JOBS_DEFAULT=$window_default DRAIN_TIMEOUT=$drain_timeout HISTORY=$history SEND_N=$send_n RATE=$rate PRE_SECONDS=$pre_s HOLD_SECONDS=$hold_s POST_SECONDS=$post_s BUCKET=$bucket MEM_JOBS=$mem_jobs BIG_BYTES=$big_bytes BIG_BATCH=$big_batch QUEUES=$queues MANY_JOBS=$many_jobs MANY_JOBS_DEFAULT=$many_default IDLE_SECONDS=$idle_s)"
  echo
  echo "| part | measure | figure | goal | met |"
  echo "|---|---|---|---|---|"
} >"$out/summary.md"
: >"$out/drain.txt"

# ---------------------------------------------------------------- part 4
# setting_name SETTING -> how the summary names it.
setting_name() {
  if [ "$1" = default ]; then echo "defaults (w1 c10 auto)"; return; fi
  local w c p; IFS=: read -r w c p <<<"$1"
  echo "w$w c$c p$p"
}
# at_least A B MIN -> "yes (A/B x)" when A >= MIN * B, else "no (...)".
at_least() {
  awk -v a="$1" -v b="$2" -v m="$3" 'BEGIN { r = (b > 0 ? a / b : 0); printf "%s (%.2fx)", (r >= m ? "yes" : "no"), r }'
}
# backlog_drain LEVEL SETTING LABEL [EXPLAIN_LABEL] -> "rate check": tops
# queue noop up to LEVEL waiting jobs, empties its archive, vacuums, logs
# the fetch plan when asked, drains a window.
backlog_drain() {
  local have; have=$(count_waiting noop)
  log "  backlog $1: topping up $have -> $1; drain $3"
  fill noop $(($1 - have))
  q "DELETE FROM $s.job_archive WHERE queue = 'noop'" >/dev/null
  q "VACUUM ANALYZE $s.job" >/dev/null; q "CHECKPOINT" >/dev/null
  [ -z "${4:-}" ] || explain_fetch "$4"
  drain_window "$2" "$3" "$(count_waiting noop)"
}
part4() {
  log "part 4: backlogs $backlogs, window $window_jobs jobs, settings $best and default"
  reset_queue
  local first_level="" L setting rate cpu chk p50_0 p99_0
  local -A rates
  for L in $backlogs; do
    [ -n "$first_level" ] || first_level=$L
    for setting in "$best" default; do
      read -r rate cpu chk < <(backlog_drain "$L" "$setting" "backlog$L-${setting//:/-}" \
                             "$([ "$setting" = "$best" ] && echo "before-$L")")
      rates[$L-$setting]=$rate
      row 4 "drain rate, backlog $L, $(setting_name "$setting")" "$rate jobs/s, CPU us/job PG+moonq $cpu (exactly-once: $chk)" \
        "not slower than at $first_level" "$(at_least "$rate" "${rates[$first_level-$setting]}" 0.8)"
    done
    explain_fetch "after-$L"
    local fb fa
    fb=$(fetch_ms "before-$L"); fa=$(fetch_ms "after-$L")
    row 4 "fetch_jobs(500) at backlog $L: claim ms, buffers of its choice of jobs (all/walk) (vacuumed / after the drains)" \
      "${fb% *} ms, ${fb#* } buf / ${fa% *} ms, ${fa#* } buf" "flat with backlog" "see explain-*.txt"
    if [ "$L" = "$first_level" ]; then
      q "CHECKPOINT" >/dev/null # the drains' dirty pages are not flushed during the sends
      IFS='|' read -r p50_0 p99_0 < <(q "CALL bench_sutil.send_timed('$s', 'timed', $send_n)")
      q "DELETE FROM $s.job WHERE queue = 'timed'" >/dev/null
    fi
  done

  log "  history: $history completed jobs into job_archive"
  q "TRUNCATE $s.job" >/dev/null
  q "DELETE FROM $s.job_archive WHERE queue = 'noop'" >/dev/null
  local th0; th0=$(now)
  psql "$url" -qX -v ON_ERROR_STOP=1 >"$out/history.log" 2>&1 <<EOF
SELECT setval('$s.job_id_seq', nextval('$s.job_id_seq') + $history);
INSERT INTO $s.job_archive (id, queue, name, data, state, priority, retry_limit, attempt,
                            retry_delay, retry_backoff, expire_in, retention, start_after,
                            created_at, started_at, output, completed_at, keep_until)
SELECT currval('$s.job_id_seq') - $history + g, 'history', 'history', jsonb_build_object('n', g),
       'completed', 0, 3, 1, 60, true, 900, 604800, t, t, t, NULL, t, t + interval '7 days'
  FROM generate_series(1, $history) g,
       LATERAL (SELECT now() - interval '6 days' + g * interval '50 ms') x(t);
VACUUM ANALYZE $s.job_archive;
EOF
  log "  history inserted and vacuumed in $(awk -v a="$th0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
  for setting in "$best" default; do
    read -r rate cpu chk < <(backlog_drain "$first_level" "$setting" "history-backlog$first_level-${setting//:/-}" \
                           "$([ "$setting" = "$best" ] && echo "history-$first_level")")
    row 4 "drain rate, backlog $first_level + $history archived, $(setting_name "$setting")" \
      "$rate jobs/s, CPU us/job PG+moonq $cpu (exactly-once: $chk)" "not slower than without history (${rates[$first_level-$setting]})" \
      "$(at_least "$rate" "${rates[$first_level-$setting]}" 0.8)"
  done
  local p50_1 p99_1
  q "CHECKPOINT" >/dev/null # nor the history's
  IFS='|' read -r p50_1 p99_1 < <(q "CALL bench_sutil.send_timed('$s', 'timed', $send_n)")
  q "DELETE FROM $s.job WHERE queue = 'timed'" >/dev/null
  row 4 "send p50 / p99 (ms, $send_n sends, in the backend), without / with $history archived" \
    "$(printf '%.3f / %.3f -> %.3f / %.3f' "$p50_0" "$p99_0" "$p50_1" "$p99_1")" "not slower" \
    "$(awk -v a="$p50_1" -v b="$p50_0" 'BEGIN { r = a / b; printf "%s (%.2fx)", (r <= 1.25 ? "yes" : "no"), r }')"
  q "TRUNCATE $s.job, $s.job_archive" >/dev/null
}

# ---------------------------------------------------------------- part 5
part5() {
  local total=$((pre_s + hold_s + post_s))
  log "part 5: $rate jobs/s for ${total}s, transaction held open from ${pre_s}s for ${hold_s}s"
  reset_queue
  q "VACUUM $s.job" >/dev/null
  local pid; pid=$(start_moonq default "$out/moonq-held.log")
  sleep 2
  local t0; t0=$(now)
  q "CALL bench_sutil.send_paced('$s', 'noop', $rate, $total)" >/dev/null &
  local sender=$!
  echo "t_s job_dead job_live job_bytes archive_dead archive_live archive_bytes job_autovacuums" >"$out/held-tables.txt"
  (
    while kill -0 "$sender" 2>/dev/null; do
      q "SELECT round(extract(epoch FROM clock_timestamp()) - $t0), j.n_dead_tup, j.n_live_tup,
                pg_total_relation_size('$s.job'), a.n_dead_tup, a.n_live_tup,
                pg_total_relation_size('$s.job_archive'), j.autovacuum_count
           FROM pg_stat_user_tables j, pg_stat_user_tables a
          WHERE j.relid = '$s.job'::regclass AND a.relid = '$s.job_archive'::regclass" | tr '|' ' ' >>"$out/held-tables.txt"
      sleep "$bucket"
    done
  ) &
  local sampler=$!
  sleep "$pre_s"
  explain_fetch held-start
  local h0; h0=$(now)
  { echo "BEGIN; SELECT txid_current();"; sleep "$hold_s"; echo "COMMIT;"; } |
    psql "$url" -qAtX >"$out/held-xact.log" 2>&1 &
  local holder=$!
  sleep $((hold_s > 10 ? hold_s - 5 : 0))
  explain_fetch held-end
  wait "$holder" || true
  local h1; h1=$(now)
  log "  transaction released after $(awk -v a="$h0" -v b="$h1" 'BEGIN { printf "%.0f", b - a }') s"
  wait "$sender" || log "  sender failed"
  explain_fetch held-after
  wait "$sampler" 2>/dev/null || true
  wait_empty noop 60 >/dev/null
  stop_moonq "$pid"
  local ids; ids=$(q "SELECT count(*), max(id) - min(id) + 1 FROM $s.job_archive WHERE queue = 'noop'")
  local chk; chk=$(check_once noop "${ids#*|}")
  # Per bucket of created_at: jobs/s completed, start latency p50/p99 (ms).
  q "SELECT b * $bucket, count(*) / $bucket::float8,
            round((percentile_cont(0.5) WITHIN GROUP (ORDER BY lat) * 1000)::numeric, 2),
            round((percentile_cont(0.99) WITHIN GROUP (ORDER BY lat) * 1000)::numeric, 2)
       FROM (SELECT floor((extract(epoch FROM created_at) - $t0) / $bucket)::int b,
                    extract(epoch FROM started_at - created_at) lat
               FROM $s.job_archive WHERE queue = 'noop') x
      GROUP BY b ORDER BY b" | tr '|' ' ' >"$out/held-buckets.txt"
  # phase LABEL FROM TO (seconds after t0): jobs/s completed, p50, p99 (ms).
  phase() {
    q "SELECT count(*) FILTER (WHERE c >= $2 AND c < $3) / ($3 - $2)::float8,
              count(*) FILTER (WHERE completed_at >= to_timestamp($t0 + $2) AND completed_at < to_timestamp($t0 + $3)) / ($3 - $2)::float8,
              round((percentile_cont(0.5) WITHIN GROUP (ORDER BY lat) FILTER (WHERE c >= $2 AND c < $3) * 1000)::numeric, 2),
              round((percentile_cont(0.99) WITHIN GROUP (ORDER BY lat) FILTER (WHERE c >= $2 AND c < $3) * 1000)::numeric, 2)
         FROM (SELECT completed_at, extract(epoch FROM created_at) - $t0 c,
                      extract(epoch FROM started_at - created_at) lat
                 FROM $s.job_archive WHERE queue = 'noop') x" | tr '|' ' '
  }
  local hs he; hs=$(awk -v a="$h0" -v t="$t0" 'BEGIN { printf "%.0f", a - t }'); he=$(awk -v a="$h1" -v t="$t0" 'BEGIN { printf "%.0f", a - t }')
  local warm=$((pre_s > 20 ? 10 : 0))
  local sb tb pb qb sd td pd qd sl tl pl ql sa ta pa qa sz tz pz qz
  read -r sb tb pb qb < <(phase before "$warm" "$hs")
  read -r sd td pd qd < <(phase during "$hs" "$he")
  read -r sl tl pl ql < <(phase "during-last" "$((he > hs + 60 ? he - 60 : hs))" "$he")
  read -r sa ta pa qa < <(phase after "$he" "$total")
  read -r sz tz pz qz < <(phase "after-last" "$((total > he + 60 ? total - 60 : he))" "$total")
  {
    echo "phase sent_s completed_s p50_ms p99_ms (sent and latency by creation time, completed by completion time; t0 = first send, hold ${hs}-${he} s)"
    echo "before $sb $tb $pb $qb"; echo "during $sd $td $pd $qd"; echo "during-last-60s $sl $tl $pl $ql"
    echo "after $sa $ta $pa $qa"; echo "after-last-60s $sz $tz $pz $qz"
  } >"$out/held-phases.txt"
  local dj0 dj1 sj0 sj1 da1 sa0 sa1
  dj0=$(awk -v t="$hs" 'NR > 1 && $1 <= t { v = $2 } END { print v + 0 }' "$out/held-tables.txt")
  dj1=$(awk 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "$out/held-tables.txt")
  sj0=$(awk -v t="$hs" 'NR > 1 && $1 <= t { v = $4 } END { print v + 0 }' "$out/held-tables.txt")
  sj1=$(awk 'NR > 1 && $4 > m { m = $4 } END { print m + 0 }' "$out/held-tables.txt")
  sa0=$(awk -v t="$hs" 'NR > 1 && $1 <= t { v = $7 } END { print v + 0 }' "$out/held-tables.txt")
  sa1=$(awk 'NR > 1 { v = $7 } END { print v + 0 }' "$out/held-tables.txt")
  da1=$(awk 'NR > 1 && $5 > m { m = $5 } END { print m + 0 }' "$out/held-tables.txt")
  local ok_t ok_l ok_r
  ok_t=$(awk -v a="$td" -v b="$tb" 'BEGIN { print (a >= 0.5 * b ? "yes" : "no") }')
  ok_l=$(awk -v a="$qd" -v b="$qb" -v c="$pd" -v d="$pb" 'BEGIN { print (a <= 1.5 * b && c <= 1.5 * d ? "yes" : "no") }')
  ok_r=$(awk -v a="$qz" -v b="$qb" -v c="$tz" -v d="$tb" 'BEGIN { print (a <= 1.5 * b && c >= 0.5 * d ? "yes" : "no") }')
  row 5 "jobs/s completed (sent) before / during ${hold_s}s hold / last 60 s of it / after ($rate/s asked)" \
    "$(printf '%.0f (%.0f) / %.0f (%.0f) / %.0f (%.0f) / %.0f (%.0f)' "$tb" "$sb" "$td" "$sd" "$tl" "$sl" "$ta" "$sa") (exactly-once: $chk)" ">= 50% of before" "$ok_t"
  row 5 "start latency p50 / p99 ms: before, during, last 60 s of hold, after, last 60 s" \
    "$pb/$qb, $pd/$qd, $pl/$ql, $pa/$qa, $pz/$qz" "during within +50% of before" "$ok_l"
  row 5 "recovers after the hold ends (last 60 s vs before)" "$(printf 'p99 %s vs %s ms, %.0f vs %.0f jobs/s' "$qz" "$qb" "$tz" "$tb")" "within 50%" "$ok_r"
  local f0 f1 f2
  f0=$(fetch_ms held-start); f1=$(fetch_ms held-end); f2=$(fetch_ms held-after)
  row 5 "fetch_jobs(500) claim from the head ms, buffers of its choice of jobs (all/walk): hold start / 5 s before its end / end of run" \
    "${f0% *} ms, ${f0#* } buf / ${f1% *} ms, ${f1#* } buf / ${f2% *} ms, ${f2#* } buf" "(trend)" "see explain-held-*.txt"
  f0=$(fetch_ms held-start-past); f1=$(fetch_ms held-end-past); f2=$(fetch_ms held-after-past)
  row 5 "fetch_jobs(500) claim past a job claimed 1 s before (as the worker claims), same" \
    "${f0% *} ms, ${f0#* } buf / ${f1% *} ms, ${f1#* } buf / ${f2% *} ms, ${f2#* } buf" "(trend)" "see explain-held-*-past.txt"
  row 5 "job: dead tuples at hold start -> max; size" \
    "$dj0 -> $dj1; $((sj0 / 1024)) -> $((sj1 / 1024)) kB" "(trend)" "see held-tables.txt"
  row 5 "job_archive: dead tuples max; size" "$da1; $((sa0 / 1048576)) -> $((sa1 / 1048576)) MB" "(trend)" "see held-tables.txt"
  reset_queue
}

# ---------------------------------------------------------------- part 6
# rss_now PID -> "pid:kB ..." of every process of the group and the sum.
rss_now() {
  local p tot=0 line=""
  for p in $(group_pids "$1"); do
    local k; k=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    [ -n "$k" ] || k=0
    line="$line $p:$k"; tot=$((tot + k))
  done
  echo "$tot$line"
}
part6() {
  log "part 6: RSS over $mem_jobs drained jobs ($best), then ${big_bytes}-byte data and output"
  reset_queue
  fill noop "$mem_jobs"
  q "VACUUM ANALYZE $s.job" >/dev/null
  local pid; pid=$(start_moonq "$best" "$out/moonq-mem.log")
  local t0; t0=$(now)
  echo "t_s total_kB pid:kB..." >"$out/mem-rss.txt"
  (
    while kill -0 "$pid" 2>/dev/null; do
      echo "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') $(rss_now "$pid")" >>"$out/mem-rss.txt"
      sleep "$mem_sample"
    done
  ) &
  local sampler=$!
  local at; at=$(wait_empty noop 600)
  local t_end; t_end=$(awk -v a="$t0" -v b="$at" 'BEGIN { printf "%.1f", b - a }')
  local chk; chk=$(check_once noop "$mem_jobs")
  local mrate; mrate=$(awk -v n="$mem_jobs" -v t="$t_end" 'BEGIN { printf "%.0f", n / t }')
  # Flatness per process after warm-up (the first 20% of the drain).
  local flat
  flat=$(awk -v te="$t_end" 'NR > 1 && $1 >= 0.2 * te && $1 <= te {
      for (i = 3; i <= NF; i++) { split($i, a, ":"); n[a[1]]++; s[a[1]] += a[2];
        if (!(a[1] in mn) || a[2] < mn[a[1]]) mn[a[1]] = a[2]; if (a[2] > mx[a[1]]) mx[a[1]] = a[2];
        if (!(a[1] in f)) f[a[1]] = a[2]; l[a[1]] = a[2] } }
    END { ok = "yes"; for (p in n) { m = s[p] / n[p];
        printf "pid %s: %.1f MB first, %.1f last, %.1f-%.1f (%+.1f%%/%+.1f%% of mean); ", p, f[p] / 1024, l[p] / 1024, mn[p] / 1024, mx[p] / 1024, 100 * (mn[p] - m) / m, 100 * (mx[p] - m) / m;
        if (mx[p] > 1.1 * m || mn[p] < 0.9 * m) ok = "no" }
      printf "|%s\n", ok }' "$out/mem-rss.txt")
  row 6 "RSS of each moonq process over $mem_jobs jobs (after the first 20%), drained at $mrate jobs/s" \
    "${flat%|*} exactly-once: $chk" "flat within +-10%" "${flat##*|}"
  # Big jobs: RSS before, the jobs, 20,000 no-op jobs, 3 s, RSS after.
  # big JOB DATA_SQL COUNT -> "before_kB peak_kB after_kB" (sums of the group)
  big() {
    sleep 3
    local r0; r0=$(rss_now "$pid"); r0=${r0%% *}
    local tb; tb=$(now)
    q "SELECT $s.send_many('$1', (SELECT jsonb_agg($2) FROM generate_series(1, $3)))" >/dev/null
    wait_empty "$1" 60 >/dev/null
    fill noop 20000
    q "SELECT $s.wake('noop')" >/dev/null
    wait_empty noop 60 >/dev/null
    sleep 3
    local r1; r1=$(rss_now "$pid"); r1=${r1%% *}
    local pk; pk=$(awk -v a="$(awk -v t0="$t0" -v tb="$tb" 'BEGIN { print tb - t0 }')" 'NR > 1 && $1 >= a && $2 > m { m = $2 } END { print m + 0 }' "$out/mem-rss.txt")
    echo "$r0 $pk $r1"
  }
  local job what n r0 pk r1 rounds=0
  for n in 1 "$big_batch"; do
    for job in big_data big_output; do
      if [ "$job" = big_data ]; then what="jsonb_build_object('s', repeat('x', $big_bytes))"
      else what="jsonb_build_object('bytes', $big_bytes)"; fi
      read -r r0 pk r1 < <(big "$job" "$what" "$n")
      rounds=$((rounds + 1))
      row 6 "RSS (all processes) before -> peak -> after $n job(s) at once with $big_bytes bytes of $([ "$job" = big_data ] && echo data || echo output) each, then 20k no-op jobs" \
        "$((r0 / 1024)) -> $((pk / 1024)) -> $((r1 / 1024)) MB ($(awk -v a="$r1" -v b="$r0" 'BEGIN { printf "%+.1f", (a - b) / 1024 }') MB)" \
        "back within a few MB (4)$([ "$n" = 1 ] || echo "; beyond the goal's one job")" "$(awk -v a="$r1" -v b="$r0" 'BEGIN { print (a - b <= 4096 ? "yes" : "no") }')"
    done
  done
  local bchk; bchk=$(q "SELECT count(*) FILTER (WHERE state = 'completed') || '/' || count(*) FROM $s.job_archive WHERE queue IN ('big_data', 'big_output')")
  local chk2; chk2=$(check_once noop $((mem_jobs + rounds * 20000)))
  stop_moonq "$pid"
  wait "$sampler" 2>/dev/null || true
  row 6 "big jobs completed / sent; exactly-once of the no-op jobs" "$bchk; $chk2" "all" \
    "$(awk -v c="$bchk" 'BEGIN { split(c, a, "/"); print (a[1] == a[2] ? "yes" : "no") }')"
  reset_queue
}

# ---------------------------------------------------------------- part 7
part7() {
  log "part 7: $many_jobs jobs over $queues queues vs one queue; idle CPU"
  local dir=$out/many-handlers
  mkdir -p "$dir"
  local i
  for i in $(seq 1 "$queues"); do echo 'return function() end' >"$dir/q$i.lua"; done
  local per setting shape pgss=off
  if [[ $(q "SHOW shared_preload_libraries") == *pg_stat_statements* ]] &&
    q "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null 2>&1; then
    pgss=on
  fi
  local -A r7 cpu7
  for setting in "$best" default; do
    per=$((many_jobs / queues))
    [ "$setting" != default ] || per=$((many_default / queues))
    for shape in many one; do
      reset_queue
      if [ "$shape" = many ]; then
        for i in $(seq 1 "$queues"); do echo "CALL bench_sutil.fill('$s', 'q$i', $per);"; done |
          psql "$url" -qX -v ON_ERROR_STOP=1 >/dev/null
      else
        fill q1 $((per * queues))
      fi
      q "VACUUM ANALYZE $s.job" >/dev/null
      local label; label="queues-$shape-$([ "$setting" = default ] && echo default || echo best)"
      log "  drain $label"
      [ "$pgss" != on ] || q "SELECT pg_stat_statements_reset()" >/dev/null
      local c0; c0=$(bench_pg_cpu)
      local t0; t0=$(now)
      local pid; pid=$(start_moonq "$setting" "$out/moonq-$label.log" "$dir")
      local at; at=$(wait_until "SELECT NOT EXISTS (SELECT 1 FROM $s.job)" 300)
      local mc; mc=$(grp_cpu "$pid")
      stop_moonq "$pid"
      local c1; c1=$(bench_pg_cpu)
      local res n span first bad maxatt
      res=$(q "SELECT count(*), extract(epoch FROM max(completed_at) - min(started_at)), extract(epoch FROM min(started_at)),
                      count(*) FILTER (WHERE state <> 'completed'), coalesce(max(attempt), 0) FROM $s.job_archive")
      IFS='|' read -r n span first bad maxatt <<<"$res"
      local left; left=$(q "SELECT count(*) FROM $s.job")
      local chk=ok
      [ "$n" = $((per * queues)) ] && [ "$left" = 0 ] && [ "$bad" = 0 ] && [ "$maxatt" = 1 ] ||
        chk="FAIL(archived=$n left=$left not_completed=$bad max_attempt=$maxatt)"
      local r; r=$(awk -v n="$n" -v sp="$span" 'BEGIN { printf "%.0f", (sp > 0 ? n / sp : 0) }')
      local stmts=?
      if [ "$pgss" = on ]; then # moonq's statements name the schema quoted
        psql "$url" -qX -c "SELECT calls, rows, round(total_exec_time::numeric, 1) AS ms, left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
          FROM pg_stat_statements WHERE query LIKE '%\"$s\".%' ORDER BY calls DESC LIMIT 10" >"$out/pgss-$label.txt"
        stmts=$(q "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%\"$s\".%'")
      fi
      r7[$shape-$setting]=$r
      cpu7[$shape-$setting]=$(us_per_job "$c0" "$c1" "$mc" "$n")
      echo "$label setting=$setting jobs=$n first_claim_after=$(awk -v a="$first" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')s span=${span}s rate=$r/s wall=$(awk -v a="$at" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')s cpu_us_per_job=${cpu7[$shape-$setting]} statements=$stmts once=$chk" >>"$out/drain.txt"
      eval "chk_${shape}=\$chk"
    done
    row 7 "drain rate, $((per * queues)) jobs over $queues queues vs one queue, $( [ "$setting" = default ] && echo defaults || echo "$setting")" \
      "${r7[many-$setting]} vs ${r7[one-$setting]} jobs/s; CPU us/job PG+moonq ${cpu7[many-$setting]} vs ${cpu7[one-$setting]} (exactly-once: $chk_many, $chk_one)" ">= 50% of one queue" \
      "$(awk -v a="${r7[many-$setting]}" -v b="${r7[one-$setting]}" 'BEGIN { r = a / b; printf "%s (%.2f)", (r >= 0.5 ? "yes" : "no"), r }')"
  done
  reset_queue
  log "  idle: bench/bench_idle.sh $queues $idle_s"
  BUILD_DIR=$build bash "$repo/bench/bench_idle.sh" "$queues" "$idle_s" >"$out/idle.txt" 2>"$out/idle.err" || log "  bench_idle.sh failed (idle.err)"
  local on off
  on=$(awk '/hot_reload=true/ { for (i = 1; i <= NF; i++) if ($i ~ /^cpu=/) { sub("cpu=", "", $i); print $i } }' "$out/idle.txt")
  off=$(awk '/hot_reload=false/ { for (i = 1; i <= NF; i++) if ($i ~ /^cpu=/) { sub("cpu=", "", $i); print $i } }' "$out/idle.txt")
  row 7 "idle CPU of moonq run, $queues idle queues, hot_reload on (default) / off" "${on:-?} / ${off:-?} of a core" "<= 1% of a core" \
    "$(awk -v a="${on%\%}" 'BEGIN { print (a != "" && a + 0 <= 1 ? "yes" : "no") }')"
}

for p in 4 5 6 7; do
  if has_part "$p"; then
    tp=$(date +%s)
    "part$p"
    log "part $p took $(( $(date +%s) - tp )) s"
  fi
done
echo >>"$out/summary.md"
echo "total $(( $(date +%s) - t_start )) s, load average at the end $(cut -d' ' -f1-3 /proc/loadavg); raw outputs: $out" >>"$out/summary.md"
cat "$out/summary.md"
