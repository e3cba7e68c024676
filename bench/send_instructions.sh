#!/usr/bin/env bash
# bench/send_instructions.sh -- CPU instructions PostgreSQL executes per
# single send, counted by valgrind (callgrind), so that the figure does not
# swing with this machine's load as timings do.
#
#   bench/send_instructions.sh      build bench_queue, make a scratch cluster
#                                   in $BUILD_DIR/pg-callgrind, print the counts
#   BENCH_BASE=FILE                 a bench_queue built from an earlier commit:
#                                   its schema send_base is counted too
#   BENCH_MANY=1                    also send_many of 1,000 jobs (per job;
#                                   2 and 7 calls, a few minutes more)
#   BENCH_DRAIN=1                   also a worker's drain: a claim of 500
#                                   jobs (fetch_jobs) and their completion
#                                   (complete_jobs_guarded), and of 10, per job
#   BENCH_PATCH="f.sql ..."         also a schema send_patch: the current
#                                   migrations, then these files (@schema@
#                                   replaced by send_patch), counted too
#   BENCH_JOB_EVENTS=1              the drain with job events on
#   BENCH_SEND=0                    leave the single sends out
#   BUILD_DIR=DIR                   build directory (default build-bench)
#
# Each statement runs inside a plpgsql loop in a single-user backend
# (`postgres --single`, one transaction: no client, no commit), 50 and then
# 250 times in two runs; the difference over 200 is the count per call. The
# drain commits each claim and completion, so that the claims' old index
# entries are dead to all and skipped as in a running worker.
# Needs valgrind and root (the backend runs as the postgres user).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup instructions bench_queue
command -v valgrind >/dev/null || { echo "send_instructions.sh: needs valgrind" >&2; exit 1; }
pgdir=$build/pg-callgrind
url=$("$repo/scripts/pg.sh" start "$pgdir")
schemas=(send_cur)
DATABASE_URL=$url "$build/bench/bench_queue" --schema send_cur --phases none >"$out/migrate.log" 2>&1
if [ -n "${BENCH_BASE:-}" ]; then
  DATABASE_URL=$url "$BENCH_BASE" --schema send_base --phases none >>"$out/migrate.log" 2>&1
  schemas=(send_base send_cur)
fi
if [ -n "${BENCH_PATCH:-}" ]; then
  DATABASE_URL=$url "$build/bench/bench_queue" --schema send_patch --phases none >>"$out/migrate.log" 2>&1
  for f in $BENCH_PATCH; do
    sed 's/@schema@/send_patch/g' "$f" | psql "$url" -q -v ON_ERROR_STOP=1 >>"$out/migrate.log" 2>&1
  done
  schemas+=(send_patch)
fi
psql "$url" -q -v ON_ERROR_STOP=1 -f "$repo/bench/sql/floor_setup.sql" >/dev/null 2>&1
job_events=false
[ -n "${BENCH_JOB_EVENTS:-}" ] && job_events=true
if [ -n "${BENCH_DRAIN:-}" ]; then
  # the jobs drain() claims below: (6 + 2) + (6 + 7) calls of 500 and
  # (10 + 50) + (10 + 250) of 10
  for s in "${schemas[@]}"; do
    psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "SET moonq.no_wake = on" -c "SELECT count(*) FROM (
      SELECT $s.send_many('bench_drain', (SELECT jsonb_agg(jsonb_build_object('n', g))
                                            FROM generate_series(1, 1000) g), '{}')
        FROM generate_series(1, 14)) x" >/dev/null
    psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "VACUUM ANALYZE $s.job" >/dev/null
    psql "$url" -qAtX -v ON_ERROR_STOP=1 \
      -c "SELECT $s.store_job_events($job_events)" >/dev/null
  done
fi
data=$(psql "$url" -qAtX -c "SHOW data_directory")
"$repo/scripts/pg.sh" stop "$pgdir"
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V -r | head -1)
work=$(mktemp -d) && chmod 755 "$work" && chown postgres "$work"

# total instructions of a single-user session running $1 $3 (default 20)
# times to warm up, then $2 times; all in one transaction, or with
# COUNT_COMMIT=1 a transaction each time (as a worker's statements commit)
count() {
  local body=${1/#SELECT/PERFORM} commit=
  [ -n "${COUNT_COMMIT:-}" ] && commit=" COMMIT;"
  cat >"$work/in.sql" <<SQL
SET moonq.no_wake = on;

CREATE PROCEDURE pg_temp.l(n int) LANGUAGE plpgsql AS \$f\$
BEGIN FOR i IN 1..n LOOP $body;$commit END LOOP; END \$f\$;

CALL pg_temp.l(${3:-20});

CALL pg_temp.l($2);

SQL
  rm -f "$work"/cg.*
  runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
    --collect-atstart=no --toggle-collect=PortalRun \
    "$bindir/postgres" --single -j -D "$data" moonq <"$work/in.sql" >"$work/out.txt" 2>"$work/err.txt"
  if grep -q ERROR "$work/err.txt"; then grep ERROR "$work/err.txt" >&2; exit 1; fi
  grep -h '^summary:' "$work"/cg.* | awk '{s += $2} END {print s}'
}

stmts=()
for s in "${schemas[@]}"; do
  stmts+=("SELECT $s.send('bench_send', '{\"n\": 1}', '{}')")
  stmts+=("SELECT $s.send('bench_send', '{\"n\": 1}', '{\"queue\": \"other\", \"priority\": 1}')")
done
stmts+=("INSERT INTO send_cur.job (queue, name, data, retry_limit, retry_delay, retry_backoff, expire_in, retention) VALUES ('bench_send', 'bench_send', '{\"n\": 1}', 3, 60, true, 900, 604800)")
stmts+=("INSERT INTO bench_floor.floor_job (queue, data) VALUES ('floor', '{\"n\": 1}')")
echo "instructions per call (callgrind, single-user backend, inside one transaction):" | tee "$out/summary.txt"
[ "${BENCH_SEND:-1}" = 0 ] && stmts=()
for s in "${stmts[@]}"; do
  a=$(count "$s" 50); b=$(count "$s" 250)
  printf '%9.0f  %s\n' "$(awk -v a="$a" -v b="$b" 'BEGIN {print (b - a) / 200}')" "$s" | tee -a "$out/summary.txt"
done
if [ -n "${BENCH_MANY:-}" ]; then
  echo "per job of send_many of 1,000:" | tee -a "$out/summary.txt"
  for sch in "${schemas[@]}"; do
    s="SELECT $sch.send_many('bench_many', (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 1000) g), '{}')"
    a=$(count "$s" 2 1); b=$(count "$s" 7 1)
    printf '%9.0f  %s\n' "$(awk -v a="$a" -v b="$b" 'BEGIN {print (b - a) / 5000}')" "$s" | tee -a "$out/summary.txt"
  done
fi
if [ -n "${BENCH_DRAIN:-}" ]; then
  pid=00000000-0000-0000-0000-000000000001
  # batch jobs claimed and completed, warm-up calls, calls counted (twice)
  drain() {
    for sch in "${schemas[@]}"; do
      s="SELECT $sch.complete_jobs_guarded(c.ids, c.outputs, '$pid') FROM (SELECT array_agg(f.id) AS ids, jsonb_agg('null'::jsonb) AS outputs FROM $sch.fetch_jobs('bench_drain', $1, '$pid', NULL, NULL) f) c"
      a=$(COUNT_COMMIT=1 count "$s" "$3" "$2"); b=$(COUNT_COMMIT=1 count "$s" "$4" "$2")
      printf '%9.0f  %s\n' "$(awk -v a="$a" -v b="$b" -v n="$(( ($4 - $3) * $1 ))" 'BEGIN {print (b - a) / n}')" "$s" | tee -a "$out/summary.txt"
    done
  }
  echo "per job of a claim of 500 jobs and its completion, each its own transaction (a worker at concurrency 500):" | tee -a "$out/summary.txt"
  drain 500 6 2 7
  echo "per job of a claim of 10 jobs and its completion, each its own transaction (the default concurrency):" | tee -a "$out/summary.txt"
  drain 10 10 50 250
fi
rm -rf "$work"
