#!/usr/bin/env bash
# bench/run.sh -- moonq's queue benchmark beside the SQL floor, in one run.
#
#   bench/run.sh            build, start the private PostgreSQL (or use
#                           DATABASE_URL), run everything, print a table and
#                           append a dated section to bench/RESULTS.md
#   BENCH_NO_APPEND=1       do not touch bench/RESULTS.md
#   BENCH_ROUNDS=N          rounds of the paired drain comparison (default 3)
#   BUILD_DIR=DIR           build directory (default build-bench)
#
# What runs (about 4-5 minutes on a 2-core machine):
#   1. bench_queue on moonq as it is: send one at a time, send_many, drain
#      (several batch sizes / fetches in flight), EXPLAIN of the hot SQL.
#   2. pgbench on the SQL floor (bench/sql/floor_*.sql): single-row INSERT,
#      1000-row INSERT, claim + delete, claim + move to a minimal archive.
#   3. paired drain rounds, interleaved so that this machine's noisy CPU
#      hits every contender alike: moonq as is, moonq with the remaining
#      proposed completion SQL (bench/sql/alt_complete.sql + alt_archive.sql
#      applied over the migrated schema) and the floor. (alt_queue.sql and
#      alt_no_notify.sql are in sql/002_queue.sql since 5ea988f.)
#   4. pg_stat_statements (track = all) around sends and a drain.
#   5. micro: CPU of one fetch + completion of 1000 jobs inside one backend,
#      for moonq as is, each proposed SQL change, and the floor.
# Raw outputs go to $BUILD_DIR/bench-out/<timestamp>/.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build-bench}
rounds=${BENCH_ROUNDS:-3}
stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
out=$build/bench-out/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
sqldir=$repo/bench/sql
t_start=$(date +%s)

say() { printf '%s\n' "$*" >&2; }

# ---- build ------------------------------------------------------------------
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1 || {
    cat "$out/cmake.log" >&2; exit 1; }
fi
cmake --build "$build" --target bench_queue -j"$(nproc)" >"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log" >&2
  say "run.sh: build failed (is add_subdirectory(bench) in CMakeLists.txt?)"
  exit 1; }
bq=$build/bench/bench_queue

# ---- database ---------------------------------------------------------------
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$("$repo/scripts/pg.sh" start "$build/pg")
fi
export DATABASE_URL
url=$DATABASE_URL
psql "$url" -qAtc "SELECT 1" >/dev/null
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r | head -1)
pgbench=$(command -v pgbench || echo "$bindir/pgbench")

q() { psql "$url" -qAtc "$1"; }
pg_version=$(q "SHOW server_version")
sync_commit=$(q "SHOW synchronous_commit")
fsync=$(q "SHOW fsync")
shared_buffers=$(q "SHOW shared_buffers")
preload=$(q "SHOW shared_preload_libraries")
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ncpu=$(nproc)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# PostgreSQL's CPU seconds so far: the postmaster, its live children, and
# the children it has reaped (pgbench's backends exit before we look).
pm_pid=$(head -1 "$(q "SHOW data_directory")/postmaster.pid" 2>/dev/null || echo 0)
hz=$(getconf CLK_TCK)
pgcpu() {
  [ "$pm_pid" != 0 ] || { echo 0; return; }
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm_pid" -v hz="$hz" '
    $1 == pm { t += $14 + $15 + $16 + $17 } $4 == pm && $1 != pm { t += $14 + $15 }
    END { printf "%.2f\n", t / hz }'
}

# ---- helpers ----------------------------------------------------------------
declare -A R      # figure -> value
declare -a CMDS   # "label<TAB>command line"

# Runs bench_queue with a label; keeps its RESULT lines as R[label.key].
bench() {
  local label=$1; shift
  local log="$out/$label.log"
  [[ $label =~ ^pair-.*-([0-9]+)$ && ${BASH_REMATCH[1]} != 1 ]] ||
    CMDS+=("$label	DATABASE_URL=... $(printf '%q ' "${bq#$repo/}" "$@" | sed "s#$repo/##g")")
  "$bq" --out "$out" "$@" >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
  while read -r _ key value; do R[$label.$key]=$value; done < <(grep '^RESULT ' "$log")
}

# Runs pgbench; prints its tps. Extra args go to pgbench.
pgb() {
  local label=$1; shift
  "$pgbench" -n -M prepared "$@" "$url" >"$out/pgbench-$label.log" 2>&1 || {
    tail -20 "$out/pgbench-$label.log" >&2; exit 1; }
  grep -oP 'tps = \K[0-9.]+' "$out/pgbench-$label.log"
}

prefill_floor() {
  psql "$url" -q -v ON_ERROR_STOP=1 -v jobs="$1" -f "$sqldir/floor_prefill.sql" >/dev/null
}

# max and median of numbers on stdin
stats() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "0 0"; exit}
  m = NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "%.0f %.0f\n", v[NR], m}'; }

# median of the second column
med2() { awk '{print $2}' | sort -g | awk '{v[NR]=$1} END {if (NR==0) {print 0; exit}
  printf "%.1f\n", NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

# 123456.7 -> 123,457
fmt() { awk -v x="$1" 'BEGIN { if (x !~ /^[0-9.]+$/) { printf "%s", x; exit }
  s = sprintf("%.0f", x); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
  printf "%s", s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# ---- 1. moonq as it is --------------------------------------------------------
say "== 1/5 moonq as it is (send, send_many, drain sweep, explain)"
bench base --schema moonq_bench --phases send,many,drain,explain \
  --send-n 5000 --many-total 200000 --many-batch 1000 --many-inflight 1,2,4 \
  --drain-jobs 50000 --drain 500x2,1000x1,1000x2 --reps 2
cp "$out/explain.txt" "$out/explain-base.txt"
drain_b=${R[base.drain_best_batch]}
drain_k=${R[base.drain_best_inflight]}

# ---- 2. the SQL floor ------------------------------------------------------------
say "== 2/5 SQL floor with pgbench"
psql "$url" -q -v ON_ERROR_STOP=1 -f "$sqldir/floor_setup.sql" >/dev/null 2>&1
# (i) single-row INSERT, 1 client; latency percentiles from the per-transaction log
best_i=0; best_p50=999; best_p99=0
for rep in 1 2 3; do
  prefill_floor 1
  rm -f "$out"/pgbench_log.*
  tps=$(cd "$out" && pgb insert1-$rep -c 1 -j 1 -T 4 -l -f "$sqldir/floor_insert1.sql")
  read -r p50 p99 < <(cat "$out"/pgbench_log.* | awk '{print $3}' | sort -n |
    awk '{v[NR]=$1} END {printf "%.3f %.3f\n", v[int(NR*0.5)]/1000, v[int(NR*0.99)]/1000}')
  rm -f "$out"/pgbench_log.*
  if awk -v a="$p50" -v b="$best_p50" 'BEGIN{exit !(a<b)}'; then
    best_p50=$p50; best_p99=$p99; best_i=$tps; fi
done
R[floor.insert1_tps]=$(printf '%.0f' "$best_i"); R[floor.insert1_p50_ms]=$best_p50; R[floor.insert1_p99_ms]=$best_p99
CMDS+=("floor (i)	pgbench -n -M prepared -c 1 -j 1 -T 4 -l -f bench/sql/floor_insert1.sql \"\$DATABASE_URL\"  (3 runs, lowest p50)")
# (ii) 1000-row INSERT ... SELECT generate_series, 1 and 2 clients
for c in 1 2; do
  vals=(); cpus=()
  for rep in 1 2; do
    prefill_floor 1
    c0=$(pgcpu)
    tps=$(pgb insert1000-c$c-$rep -c $c -j $c -T 3 -f "$sqldir/floor_insert1000.sql")
    sleep 0.3
    c1=$(pgcpu)
    vals+=("$tps")
    cpus+=("$(awk -v a="$c0" -v b="$c1" -v t="$tps" 'BEGIN { printf "0 %.1f\n", (b - a) / (t * 3 * 1000) * 1e6 }')")
  done
  read -r best med < <(printf '%s\n' "${vals[@]}" | awk '{print $1*1000}' | stats)
  R[floor.insert1000_c${c}_rows_per_s]=$best
  R[floor.insert1000_c${c}_pg_cpu]=$(printf '%s\n' "${cpus[@]}" | med2)
done
CMDS+=("floor (ii)	pgbench -n -M prepared -c {1,2} -j {1,2} -T 3 -f bench/sql/floor_insert1000.sql \"\$DATABASE_URL\"  (2 runs each, best; rows/s = tps x 1000)")
# (iii) claim + delete, and (iv) claim + move to a minimal archive: 50,000 jobs
floor_drain() { # script clients batch label -> "jobs/s PostgreSQL-CPU-us/job"
  local script=$1 c=$2 b=$3 label=$4
  prefill_floor 50000
  local t=$((50000 / b / c))
  local c0; c0=$(pgcpu)
  local tps; tps=$(pgb "$label" -c "$c" -j "$c" -t "$t" -D batch="$b" -f "$sqldir/$script.sql")
  sleep 0.3
  local c1; c1=$(pgcpu)
  local left; left=$(q "SELECT count(*) FROM bench_floor.floor_job")
  [ "$left" = 0 ] || say "warning: $left floor jobs left after $label"
  awk -v t="$tps" -v b="$b" -v c0="$c0" -v c1="$c1" 'BEGIN { printf "%.0f %.1f\n", t * b, (c1 - c0) / 50000 * 1e6 }'
}
floor_best=0; floor_best_cfg=""
for cfg in "1 500" "2 500" "1 1000" "2 1000"; do
  read -r c b <<<"$cfg"
  vals=()
  for rep in 1 2; do vals+=("$(floor_drain floor_claim_complete "$c" "$b" claim-c$c-b$b-$rep)"); done
  read -r best med < <(printf '%s\n' "${vals[@]}" | stats)
  R[floor.claim_c${c}_b${b}_jobs_per_s]=$best
  R[floor.claim_c${c}_b${b}_jobs_per_s_median]=$med
  R[floor.claim_c${c}_b${b}_pg_cpu]=$(printf '%s\n' "${vals[@]}" | med2)
  if [ "$best" -gt "$floor_best" ]; then floor_best=$best; floor_best_cfg="$c $b"; fi
done
read -r floor_c floor_b <<<"$floor_best_cfg"
CMDS+=("floor (iii)	pgbench -n -M prepared -c C -j C -t 50000/B/C -D batch=B -f bench/sql/floor_claim_complete.sql \"\$DATABASE_URL\"  after psql -v jobs=50000 -f bench/sql/floor_prefill.sql; C in {1,2}, B in {500,1000}, 2 runs each; jobs/s = tps x B")
vals=()
for rep in 1 2; do vals+=("$(floor_drain floor_claim_archive "$floor_c" "$floor_b" archive-$rep)"); done
read -r best med < <(printf '%s\n' "${vals[@]}" | stats)
R[floor.archive_jobs_per_s]=$best
R[floor.archive_pg_cpu]=$(printf '%s\n' "${vals[@]}" | med2)
CMDS+=("floor (iv)	pgbench -n -M prepared -c $floor_c -j $floor_c -t $((50000 / floor_b / floor_c)) -D batch=$floor_b -f bench/sql/floor_claim_archive.sql \"\$DATABASE_URL\"  (2 runs, best)")

# ---- 3. paired drain rounds ----------------------------------------------------------
say "== 3/5 paired drain rounds ($rounds): as is / alt_complete+alt_archive / floor"
# alt_queue.sql (fetch through the primary key, plpgsql send) is the baseline since
# commit 5ea988f; only the completion variants are still compared.
alt_all=(--patch "$sqldir/alt_complete.sql" --patch "$sqldir/alt_archive.sql")
pa=(); pb=(); pc=(); pf=(); pfc=(); pac=(); pbc=(); pcc=()
for r in $(seq 1 "$rounds"); do
  bench pair-base-$r --schema moonq_bench --phases drain --reps 1 --drain "${drain_b}x${drain_k}"
  pa+=("${R[pair-base-$r.drain_best_jobs_per_s]}"); pac+=("0 ${R[pair-base-$r.drain_pg_cpu_us_per_job]}")
  bench pair-altall-$r --schema moonq_alt "${alt_all[@]}" --phases drain --reps 1 --drain "${drain_b}x${drain_k}"
  pc+=("${R[pair-altall-$r.drain_best_jobs_per_s]}"); pcc+=("0 ${R[pair-altall-$r.drain_pg_cpu_us_per_job]}")
  read -r fj fc < <(floor_drain floor_claim_complete "$floor_c" "$floor_b" pair-floor-$r)
  pf+=("$fj"); pfc+=("0 $fc")
done
R[pair.base_cpu]=$(printf '%s\n' "${pac[@]}" | med2)
R[pair.altall_cpu]=$(printf '%s\n' "${pcc[@]}" | med2)
R[pair.floor_cpu]=$(printf '%s\n' "${pfc[@]}" | med2)
for v in base:pa altall:pc floor:pf; do
  declare -n xs=${v#*:}
  read -r best med < <(printf '%s\n' "${xs[@]}" | stats)
  R[pair.${v%%:*}_best]=$best; R[pair.${v%%:*}_median]=$med
  unset -n xs
done
# Per-round ratios (each against the floor of the same round).
pair_ratios() { local -n xs=$1; for i in "${!xs[@]}"; do ratio "${xs[$i]}" "${pf[$i]}"; echo; done | sort -g | tr '\n' ' '; }
R[pair.base_ratios]=$(pair_ratios pa); R[pair.altall_ratios]=$(pair_ratios pc)
R[pair.writes_base]=${R[pair-base-1.drain_tuple_writes_per_job]}
R[pair.writes_alt]=${R[pair-altall-1.drain_tuple_writes_per_job]}

# ---- 5. pg_stat_statements ------------------------------------------------------------------
say "== 4/5 pg_stat_statements around sends and a drain"
if [[ $preload == *pg_stat_statements* ]]; then
  PGOPTIONS='-c pg_stat_statements.track=all' bench profile-base --schema moonq_bench \
    --phases profile --send-n 1000 --drain-jobs 50000 --drain "${drain_b}x${drain_k}"
  mv "$out/pg_stat_statements.txt" "$out/pg_stat_statements-base.txt"
  PGOPTIONS='-c pg_stat_statements.track=all' bench profile-alt --schema moonq_alt "${alt_all[@]}" \
    --phases profile --send-n 1000 --drain-jobs 50000 --drain "${drain_b}x${drain_k}"
  mv "$out/pg_stat_statements.txt" "$out/pg_stat_statements-alt.txt"
fi

# ---- 6. micro: CPU of one fetch and one completion of 1000 jobs ----------------------------------
say "== 5/5 micro: fetch and complete 1000 jobs inside one backend"
declare -A MS=(
  [moonq_m_base]=""
  [moonq_m_altc]="--patch $sqldir/alt_complete.sql"
  [moonq_m_pk]="--patch $sqldir/alt_complete.sql --patch $sqldir/alt_archive_min.sql"
  [moonq_m_del]="--patch $sqldir/alt_delete_only.sql"
)
micro_order="moonq_m_base moonq_m_altc moonq_m_pk moonq_m_del floor floor_archive"
for sch in moonq_m_base moonq_m_altc moonq_m_pk moonq_m_del; do
  # shellcheck disable=SC2086
  "$bq" --schema "$sch" ${MS[$sch]} --phases none >"$out/micro-$sch.log" 2>&1
  psql "$url" -q -v ON_ERROR_STOP=1 -c "SELECT $sch.send_many('drain', (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 20000) g))" \
    -c "VACUUM ANALYZE $sch.job" -c "VACUUM ANALYZE $sch.job_archive" >/dev/null
done
prefill_floor 20000
{ cat "$sqldir/micro.sql"
  for r in $(seq 1 9); do for sch in $micro_order; do echo "SELECT pg_temp.micro('$sch');"; done; done
} | psql "$url" -Atq -v ON_ERROR_STOP=1 >"$out/micro.txt"
while IFS='|' read -r sch f c; do
  if [ -z "${R[micro.$sch.f]:-}" ] || awk -v a="$f" -v b="${R[micro.$sch.f]}" 'BEGIN{exit !(a<b)}'; then R[micro.$sch.f]=$f; fi
  if [ -z "${R[micro.$sch.c]:-}" ] || awk -v a="$c" -v b="${R[micro.$sch.c]}" 'BEGIN{exit !(a<b)}'; then R[micro.$sch.c]=$c; fi
done <"$out/micro.txt"
for sch in $micro_order; do
  R[micro.$sch.sum]=$(awk -v a="${R[micro.$sch.f]}" -v b="${R[micro.$sch.c]}" 'BEGIN{printf "%.2f", a + b}')
done
CMDS+=("micro	for each schema: bench_queue --schema S [--patch ...] --phases none; SELECT S.send_many('drain', <20,000 jobs>); psql -f bench/sql/floor_prefill.sql -v jobs=20000; then psql -f bench/sql/micro.sql + 9 rounds of SELECT pg_temp.micro(S) over all schemas, interleaved; fastest call per schema")
secs=$(( $(date +%s) - t_start ))

# ---- report -------------------------------------------------------------------------------
metyn() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {
  ok = (op == "<=") ? (a <= b) : (a >= b); print ok ? "met" : "**not met**" }'; }
drain_ours=${R[base.drain_best_jobs_per_s]}
many_floor=${R[floor.insert1000_c1_rows_per_s]}; many_floor_c=1
if [ "${R[floor.insert1000_c2_rows_per_s]}" -gt "$many_floor" ]; then
  many_floor=${R[floor.insert1000_c2_rows_per_s]}; many_floor_c=2; fi
pair_ratio=$(ratio "${R[pair.base_median]}" "${R[pair.floor_median]}")
cpu_ratio=$(ratio "${R[pair.floor_cpu]}" "${R[pair.base_cpu]}")
k1=${R[base.many_best_inflight]}

report=$(cat <<EOF
## Run of $stamp

Machine: $ncpu CPUs ($cpu_model), PostgreSQL $pg_version on the same machine,
synchronous_commit=$sync_commit, fsync=$fsync, shared_buffers=$shared_buffers;
load average before the run: $load_before. Whole run: ${secs} s. Raw logs: \`${out#$repo/}/\`.
Throughput figures are the best of their runs, medians in brackets. "PG CPU" is
the CPU time PostgreSQL's processes used per job (median of runs): it does not
count time lost to other programs on the machine, so it compares more steadily
than jobs/s here.

| What | moonq (as is) | SQL floor | ours / floor | Goal | |
|---|---:|---:|---:|---|---|
| send one at a time, p50 latency | ${R[base.send_p50_ms]} ms (${R[base.send_p50_ms_median]}) | ${R[floor.insert1_p50_ms]} ms (i) | $(ratio "${R[base.send_p50_ms]}" "${R[floor.insert1_p50_ms]}")x | p50 <= 0.3 ms | $(metyn "${R[base.send_p50_ms]}" "<=" 0.3) |
| send one at a time, p99 latency | ${R[base.send_p99_ms]} ms | ${R[floor.insert1_p99_ms]} ms (i) | | | |
| send one at a time, jobs/s | $(fmt "${R[base.send_jobs_per_s]}") | $(fmt "${R[floor.insert1_tps]}") (i) | $(ratio "${R[base.send_jobs_per_s]}" "${R[floor.insert1_tps]}") | | |
| send_many 1000/batch, 1 in flight | $(fmt "${R[base.many_inflight1_jobs_per_s]}") jobs/s ($(fmt "${R[base.many_inflight1_jobs_per_s_median]}")); PG CPU ${R[base.many_inflight1_pg_cpu_us_per_job]} us/job | $(fmt "${R[floor.insert1000_c1_rows_per_s]}") rows/s (ii, 1 client); PG CPU ${R[floor.insert1000_c1_pg_cpu]} us/row | $(ratio "${R[base.many_inflight1_jobs_per_s]}" "${R[floor.insert1000_c1_rows_per_s]}") | | |
| send_many, best of 1/2/4 in flight | $(fmt "${R[base.many_best_jobs_per_s]}") jobs/s ($k1 in flight) | $(fmt "$many_floor") rows/s (ii, $many_floor_c clients) | $(ratio "${R[base.many_best_jobs_per_s]}" "$many_floor") | >= 150,000 jobs/s | $(metyn "${R[base.many_best_jobs_per_s]}" ">=" 150000) |
| drain 50,000, best setting | $(fmt "$drain_ours") jobs/s ($(fmt "${R[base.drain_best_jobs_per_s_median]}")), batch $drain_b x $drain_k in flight | $(fmt "$floor_best") jobs/s (iii, $floor_c clients x batch $floor_b) | $(ratio "$drain_ours" "$floor_best") | >= 75,000 (aim 100,000) | $(metyn "$drain_ours" ">=" 75000) |
| drain, paired rounds (median of $rounds) | $(fmt "${R[pair.base_median]}") jobs/s (best $(fmt "${R[pair.base_best]}")) | $(fmt "${R[pair.floor_median]}") jobs/s (best $(fmt "${R[pair.floor_best]}")) | $pair_ratio (rounds: ${R[pair.base_ratios]}) | >= 0.80 of floor | $(metyn "$pair_ratio" ">=" 0.8) |
| drain, PG CPU per job (paired) | ${R[pair.base_cpu]} us | ${R[pair.floor_cpu]} us | floor/ours $cpu_ratio | | |
| drain, tuple writes per job | ${R[pair.writes_base]} (update, delete, archive insert) | 2 (update, delete) | | | |
| drain, moonq process CPU per job | ${R[base.drain_cpu_moonq_us_per_job]} us | | | | |

Drain settings (jobs/s best [median; PG CPU us/job]): batch 500 x 2 in flight $(fmt "${R[base.drain_b500_k2_jobs_per_s]}") [$(fmt "${R[base.drain_b500_k2_jobs_per_s_median]}"); ${R[base.drain_b500_k2_pg_cpu_us_per_job]}],
1000 x 1 $(fmt "${R[base.drain_b1000_k1_jobs_per_s]}") [$(fmt "${R[base.drain_b1000_k1_jobs_per_s_median]}"); ${R[base.drain_b1000_k1_pg_cpu_us_per_job]}],
1000 x 2 $(fmt "${R[base.drain_b1000_k2_jobs_per_s]}") [$(fmt "${R[base.drain_b1000_k2_jobs_per_s_median]}"); ${R[base.drain_b1000_k2_pg_cpu_us_per_job]}].
Floor (iii) (jobs/s best [median; PG CPU us/job]): 1 client x 500 $(fmt "${R[floor.claim_c1_b500_jobs_per_s]}") [$(fmt "${R[floor.claim_c1_b500_jobs_per_s_median]}"); ${R[floor.claim_c1_b500_pg_cpu]}],
2 x 500 $(fmt "${R[floor.claim_c2_b500_jobs_per_s]}") [$(fmt "${R[floor.claim_c2_b500_jobs_per_s_median]}"); ${R[floor.claim_c2_b500_pg_cpu]}],
1 x 1000 $(fmt "${R[floor.claim_c1_b1000_jobs_per_s]}") [$(fmt "${R[floor.claim_c1_b1000_jobs_per_s_median]}"); ${R[floor.claim_c1_b1000_pg_cpu]}],
2 x 1000 $(fmt "${R[floor.claim_c2_b1000_jobs_per_s]}") [$(fmt "${R[floor.claim_c2_b1000_jobs_per_s_median]}"); ${R[floor.claim_c2_b1000_pg_cpu]}].
Floor (iv), claim + move to a minimal archive: $(fmt "${R[floor.archive_jobs_per_s]}") jobs/s, PG CPU ${R[floor.archive_pg_cpu]} us/job.
send_many by batches in flight (best jobs/s; PG CPU us/job): 1: $(fmt "${R[base.many_inflight1_jobs_per_s]}"); ${R[base.many_inflight1_pg_cpu_us_per_job]}, 2: $(fmt "${R[base.many_inflight2_jobs_per_s]}"); ${R[base.many_inflight2_pg_cpu_us_per_job]}, 4: $(fmt "${R[base.many_inflight4_jobs_per_s]}"); ${R[base.many_inflight4_pg_cpu_us_per_job]}.

The remaining proposed SQL (bench/sql/alt_*.sql applied over the migrated schema; alt_queue.sql is now the baseline), same run:

| What | as is | proposed | proposed / floor |
|---|---:|---:|---:|
| drain, paired median: alt_complete.sql + alt_archive.sql | | $(fmt "${R[pair.altall_median]}") jobs/s (best $(fmt "${R[pair.altall_best]}")), PG CPU ${R[pair.altall_cpu]} us | $(ratio "${R[pair.altall_median]}" "${R[pair.floor_median]}") (rounds: ${R[pair.altall_ratios]}); CPU floor/ours $(ratio "${R[pair.floor_cpu]}" "${R[pair.altall_cpu]}") |

CPU of one fetch of 1000 jobs and of completing them, inside one backend (no
network, commit not timed; fastest of 9 interleaved calls; ms per 1000 jobs = us per job):

| Variant | fetch | complete | total | floor / total |
|---|---:|---:|---:|---:|
$(for sch in $micro_order; do
  case $sch in
    moonq_m_base) name="moonq as is" ;;
    moonq_m_altc) name="alt_complete.sql (leaner complete_jobs)" ;;
    moonq_m_pk) name="+ alt_archive_min.sql (archive with its primary key only)" ;;
    moonq_m_del) name="alt_delete_only.sql (no archive row: upper bound)" ;;
    floor) name="floor (iii): claim + DELETE" ;;
    floor_archive) name="floor (iv): claim + move to a minimal archive" ;;
  esac
  printf '| %s | %s | %s | %s | %s |\n' "$name" "${R[micro.$sch.f]}" "${R[micro.$sch.c]}" "${R[micro.$sch.sum]}" "$(ratio "${R[micro.floor.sum]}" "${R[micro.$sch.sum]}")"
done)

Command lines (DATABASE_URL=\`$url\`):

\`\`\`
$(for c in "${CMDS[@]}"; do printf '%-16s %s\n' "${c%%	*}" "${c#*	}"; done)
\`\`\`
EOF
)

printf '%s\n' "$report"
printf '%s\n' "$report" >"$out/report.md"
if [ -z "${BENCH_NO_APPEND:-}" ]; then
  [ -f "$repo/bench/RESULTS.md" ] || printf '# moonq queue benchmark results\n\n' >"$repo/bench/RESULTS.md"
  printf '%s\n' "$report" >>"$repo/bench/RESULTS.md"
  say "appended to bench/RESULTS.md"
fi
