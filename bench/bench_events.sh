#!/usr/bin/env bash
# bench/bench_events.sh -- the event store benchmark.
#
#   bench/bench_events.sh     build moonq + moonq.so, start the private
#                             PostgreSQL (or use DATABASE_URL), run, print
#   BASE_REF=REF              also build git REF (from `git archive`, into
#                             $BUILD_DIR/base-<sha>) and measure it on a schema
#                             of its own in the same rounds: before/after in
#                             one run
#   ROUNDS=N                  rounds of the throughput measures (default 3)
#   PARTS="1 3"               run only these parts (default: 1 2 3 4 5)
#   BENCH_EXPLAIN_ROWS=N      events in the EXPLAIN table (default 1000000)
#   BUILD_DIR=DIR             build directory (default build-bench)
#
# What runs:
#   1. 8 concurrent clients (pgbench, 10 s each) appending one event per
#      transaction: through moonq's SQL append (the base's too with
#      BASE_REF), into a table with the handed design's per-row NOTIFY
#      trigger (payload = the row id), and plain INSERTs into queue_events
#      with no wake-up at all (the ceiling), interleaved, ROUNDS times.
#   2. The SQL floor of a batch: 1000-row INSERT ... SELECT into a copy of
#      queue_events (its indexes, no wake-up) and into a table with a
#      primary key only, 1 and 2 clients; PostgreSQL CPU per row.
#   3. bench/events/bench.lua, interleaved with the base, ROUNDS times:
#      append_many (batched; PostgreSQL CPU per event), 2 and 4 calls in
#      flight, the loop-turn batches of 64 jobs' single appends, single
#      append latency, append -> subscriber delivery; then once how late
#      SQL appends of 8 clients reach a subscriber.
#   4. EXPLAIN (ANALYZE, BUFFERS) of the readers' statements on a table of
#      BENCH_EXPLAIN_ROWS events.
#   5. micro: the time of one append statement of 1, 64 and 1000 events
#      inside one backend (bench/sql/events_micro.sql), base / moonq / the
#      floor's INSERT, on emptied tables, interleaved, 25 times each.
# Raw outputs go to $BUILD_DIR/bench-out/events-<timestamp>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup events moonq_exe moonq_module
url=$DATABASE_URL
s=ev_bench
rounds=${ROUNDS:-3}
parts=" ${PARTS:-1 2 3 4 5} "
part() { [[ $parts == *" $1 "* ]]; }
q() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
say() { echo "$*" | tee -a "$out/summary.txt"; }
# The builds in round $1's order: reversed every other round, so that
# neither always runs first.
in_order() { if (( $1 % 2 )); then printf '%s\n' "${builds[@]}"; else printf '%s\n' "${builds[@]}" | tac; fi; }

pm_pid=$(head -1 "$(q "SHOW data_directory")/postmaster.pid" 2>/dev/null || echo 0)
pgcpu() { bench_pg_cpu "$pm_pid"; }
us_per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) / n * 1e6 }'; }
# median and best of the numbers on stdin (best: the highest; with "low",
# the lowest)
med_best() { sort -n | awk -v low="${1:-}" '{ v[NR] = $1 }
  END { printf "median %s best %s", v[int((NR + 1) / 2)], low ? v[1] : v[NR] }'; }

say "commit $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet || echo +changes)," \
    "PostgreSQL $(q "SHOW server_version"), fsync $(q "SHOW fsync")," \
    "synchronous_commit $(q "SHOW synchronous_commit"), load $(cut -d' ' -f1-3 /proc/loadavg)"

q "DROP SCHEMA IF EXISTS $s CASCADE" 2>/dev/null || true
printf 'return { database = os.getenv("DATABASE_URL"), schema = "%s" }\n' "$s" >"$out/config.lua"
"$build/moonq" -c "$out/config.lua" migrate >"$out/migrate.log" 2>&1

# The base build and its schema.
builds=(cur)
declare -A bdir=([cur]=$build) bschema=([cur]=$s)
if [ -n "${BASE_REF:-}" ]; then
  sha=$(git -C "$repo" rev-parse --short "$BASE_REF")
  base=$build/base-$sha
  if [ ! -x "$base/build/moonq" ]; then
    rm -rf "$base"; mkdir -p "$base/src"
    git -C "$repo" archive "$sha" | tar -x -C "$base/src"
    cmake -S "$base/src" -B "$base/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/base-cmake.log" 2>&1
    cmake --build "$base/build" --target moonq_exe moonq_module -j"$(nproc)" >"$out/base-build.log" 2>&1 || {
      tail -30 "$out/base-build.log" >&2; exit 1; }
  fi
  builds=(base cur)
  bdir[base]=$base/build
  bschema[base]=ev_base
  q "DROP SCHEMA IF EXISTS ev_base CASCADE" 2>/dev/null || true
  printf 'return { database = os.getenv("DATABASE_URL"), schema = "ev_base" }\n' >"$out/config-base.lua"
  "$base/build/moonq" -c "$out/config-base.lua" migrate >"$out/migrate-base.log" 2>&1
  say "base: $BASE_REF ($sha), schema ev_base"
fi

# ---- 1. eight concurrent single-event appenders ---------------------------
if part 1; then
psql "$url" -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
DROP TABLE IF EXISTS $s.trigger_events;
CREATE TABLE $s.trigger_events (id bigserial PRIMARY KEY, stream text NOT NULL,
  type text NOT NULL, data jsonb NOT NULL, ts timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION $s.notify_row() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN PERFORM pg_notify('trigger_events', NEW.id::text); RETURN NEW; END \$\$;
CREATE TRIGGER notify_row AFTER INSERT ON $s.trigger_events
  FOR EACH ROW EXECUTE FUNCTION $s.notify_row();
SQL
for b in "${builds[@]}"; do
  echo "SELECT ${bschema[$b]}.append('bench:' || :client_id, 'bench.sql', '{\"n\": 1}');" >"$out/append-$b.sql"
done
echo "INSERT INTO $s.trigger_events (stream, type, data) VALUES ('bench:' || :client_id, 'bench.sql', '{\"n\": 1}');" >"$out/trigger.sql"
# The ceiling: the same row into queue_events, no wake-up at all (moonq's
# own setting turns the table's wake-up trigger off).
echo "INSERT INTO $s.queue_events (stream, type, data) VALUES ('bench:' || :client_id, 'bench.sql', '{\"n\": 1}');" >"$out/insert.sql"
tps() { PGOPTIONS=${2:-} pgbench "$url" -n -c 8 -j 2 -T 10 -f "$1" 2>&1 | tee -a "$out/$(basename "$1").log" | awk '/^tps/ { printf "%.0f", $3 }'; }
declare -A tp
for round in $(seq 1 "$rounds"); do
  line="round $round: 8-client single appends/s"
  for b in $(in_order "$round"); do
    v=$(tps "$out/append-$b.sql"); tp[append-$b]+="$v "; line+=" append($b) $v"
  done
  v=$(tps "$out/trigger.sql"); tp[trigger]+="$v "; line+=", per-row NOTIFY trigger $v"
  v=$(tps "$out/insert.sql" "-c moonq.no_wake=on"); tp[insert]+="$v "; line+=", INSERT without wake-up $v"
  say "$line"
done
for k in $(printf '%s\n' "${!tp[@]}" | sort); do
  say "8 clients $k: $(printf '%s\n' ${tp[$k]} | med_best)"
done
fi

# ---- 2. the SQL floor of a batch ------------------------------------------
if part 2; then
psql "$url" -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
DROP TABLE IF EXISTS $s.floor_events, $s.floor_pk;
CREATE TABLE $s.floor_events (LIKE $s.queue_events INCLUDING ALL);
CREATE TABLE $s.floor_pk (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  stream text NOT NULL, ts timestamptz NOT NULL DEFAULT now(), type text NOT NULL,
  data jsonb NOT NULL DEFAULT '{}');
SQL
for t in floor_events floor_pk; do
  echo "INSERT INTO $s.$t (stream, type, data) SELECT 'bench-floor', 'bench.batch', jsonb_build_object('n', g, 's', 'some text') FROM generate_series(1, 1000) g;" >"$out/$t.sql"
  for c in 1 2; do
    vals=""; cpus=""
    for round in $(seq 1 "$rounds"); do
      c0=$(pgcpu)
      log=$(pgbench "$url" -n -M prepared -c $c -j $c -T 5 -f "$out/$t.sql" 2>&1)
      c1=$(pgcpu)
      tpsv=$(awk '/^tps/ { printf "%.0f", $3 * 1000 }' <<<"$log")
      vals+="$tpsv "; cpus+="$(us_per "$c0" "$c1" "$(awk -v t="$tpsv" 'BEGIN { print t * 5 }')") "
    done
    say "floor $t 1000-row INSERT, $c client(s): rows/s $(printf '%s\n' $vals | med_best); PG CPU us/row $(printf '%s\n' $cpus | med_best low)"
  done
done
fi

# ---- 3. moonq.events from Lua --------------------------------------------
if part 3; then
lua_part() { # build part... -> the "name value" lines
  local b=$1; shift
  LUA_CPATH="${bdir[$b]}/?.so;;" LUA_PATH="$repo/lua/?.lua;;" \
    lua5.4 "$repo/bench/events/bench.lua" "${bschema[$b]}" "$@" 2>>"$out/lua-$b.log"
}
declare -A lv
for round in $(seq 1 "$rounds"); do
  for b in $(in_order "$round"); do
    c0=$(pgcpu)
    r=$(lua_part "$b" batch)
    c1=$(pgcpu)
    r+=$'\n'"append_many_pg_cpu_us_per_event $(us_per "$c0" "$c1" 50000)"
    r+=$'\n'$(lua_part "$b" inflight turn single delivery)
    echo "$r" | sed "s/^/round $round $b: /" >>"$out/summary.txt"
    while read -r k v; do lv[$k-$b]+="$v "; done <<<"$r"
  done
done
# latencies and CPU: best is the lowest
for k in $(printf '%s\n' "${!lv[@]}" | sort); do
  say "$k: $(printf '%s\n' ${lv[$k]} | med_best "$([[ $k == *cpu* || $k == *_ms-* ]] && echo low)")"
done
for b in "${builds[@]}"; do
  lua_part "$b" sqlwake | sed "s/^/$b: /" | tee -a "$out/summary.txt"
done
fi

# ---- 4. EXPLAIN on a big table -------------------------------------------
if part 4; then
rows=${BENCH_EXPLAIN_ROWS:-1000000}
psql "$url" -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
TRUNCATE $s.queue_events;
INSERT INTO $s.queue_events (stream, type, data, run_id, ts)
SELECT 'orders:' || (g % 10000), 'order.t' || (g % 20), jsonb_build_object('n', g),
       CASE WHEN g % 4 = 0 THEN 'run-' || (g % 50000) END,
       now() - (($rows - g) || ' ms')::interval
  FROM generate_series(1, $rows) g;
VACUUM ANALYZE $s.queue_events;
SQL
{
  echo "-- by stream"
  q "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM $s.queue_events WHERE stream = 'orders:42' ORDER BY id LIMIT 100"
  echo "-- by pattern"
  q "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM $s.queue_events WHERE stream LIKE 'orders:4%' ORDER BY id LIMIT 100"
  echo "-- by run"
  q "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM $s.queue_events WHERE run_id = 'run-42' ORDER BY id"
  echo "-- by type and time"
  q "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT count(*) FROM $s.queue_events WHERE type = 'order.t3' AND ts > now() - interval '1 minute'"
  snap=$(q "SELECT pg_current_snapshot()")
  echo "-- read_events: a live step (base = a snapshot taken just now), then a history page"
  q "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) WITH fresh AS MATERIALIZED (
       SELECT e.* FROM $s.queue_events e WHERE e.tx >= pg_snapshot_xmax('$snap') AND e.tx < pg_snapshot_xmax(pg_current_snapshot()) AND e.id > 0
       UNION ALL SELECT e.* FROM $s.queue_events e WHERE cardinality(ARRAY(SELECT pg_snapshot_xip('$snap'))) > 0 AND e.tx = ANY(ARRAY(SELECT pg_snapshot_xip('$snap'))) AND e.tx < pg_snapshot_xmax('$snap') AND e.id > 0)
     SELECT id FROM fresh WHERE pg_visible_in_snapshot(tx, pg_current_snapshot()) ORDER BY id LIMIT 500"
  psql "$url" -qAtX -c "\\timing on" \
    -c "SELECT count(*) FROM $s.read_events(NULL, '$snap', NULL, 0, 0, 500)" \
    -c "SELECT count(*) FROM $s.read_events(NULL, '$snap', NULL, 0, 0, 500)" \
    -c "SELECT count(*) FROM $s.read_events('orders:4*', '1:1:', NULL, 500000, 0, 500)"
} >"$out/explain.txt" 2>&1
echo "EXPLAIN on $rows events: $out/explain.txt" | tee -a "$out/summary.txt"
fi
# ---- 5. micro: one append statement inside one backend -------------------
if part 5; then
q "CREATE TABLE IF NOT EXISTS $s.floor_events (LIKE $s.queue_events INCLUDING ALL)"
variants="cur floor"; base_schema=$s
if [ -n "${BASE_REF:-}" ]; then variants="base cur floor"; base_schema=${bschema[base]}; fi
# the same start for each: empty tables
q "TRUNCATE $s.queue_events, $s.floor_events, $base_schema.queue_events"
{ sed "s/@cur@/$s/g; s/@base@/$base_schema/g" "$repo/bench/sql/events_micro.sql"
  for r in $(seq 1 25); do for n in 1 64 1000; do for v in $variants; do
    echo "SELECT pg_temp.micro('$v', $n);"; done; done; done
} | psql "$url" -qAtX -v ON_ERROR_STOP=1 >"$out/micro.txt"
for n in 1 64 1000; do for v in $variants; do
  say "micro $v $n events: ms $(awk -F'|' -v v="$v" -v n="$n" '$1 == v && $2 == n { print $3 }' "$out/micro.txt" | med_best low)"
done; done
fi
echo "raw outputs: $out"
