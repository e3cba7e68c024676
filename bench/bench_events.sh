#!/usr/bin/env bash
# bench/bench_events.sh -- the event store benchmark.
#
#   bench/bench_events.sh     build moonq + moonq.so, start the private
#                             PostgreSQL (or use DATABASE_URL), run, print
#   BENCH_EXPLAIN_ROWS=N      events in the EXPLAIN table (default 1000000)
#   BUILD_DIR=DIR             build directory (default build-bench)
#
# What runs:
#   1. 8 concurrent clients (pgbench, 10 s each) appending one event per
#      transaction: through moonq's SQL append (one NOTIFY per transaction,
#      constant payload), and into a table with the handed design's per-row
#      NOTIFY trigger (payload = the row id), in the same run.
#   2. bench/events/bench.lua: append_many (batched) events/s, single
#      append latency, append -> subscriber delivery latency.
#   3. EXPLAIN (ANALYZE, BUFFERS) of the readers' statements on a table of
#      BENCH_EXPLAIN_ROWS events.
# Raw outputs go to $BUILD_DIR/bench-out/events-<timestamp>/.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$repo/build-bench}
out=$build/bench-out/events-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1
fi
cmake --build "$build" --target moonq_exe moonq_module -j"$(nproc)" >"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log" >&2; exit 1; }
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$("$repo/scripts/pg.sh" start "$build/pg")
fi
export DATABASE_URL
url=$DATABASE_URL
s=ev_bench
q() { psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

q "DROP SCHEMA IF EXISTS $s CASCADE" 2>/dev/null || true
printf 'return { database = os.getenv("DATABASE_URL"), schema = "%s" }\n' "$s" >"$out/config.lua"
"$build/moonq" -c "$out/config.lua" migrate >"$out/migrate.log" 2>&1

# ---- 1. eight concurrent single-event appenders ---------------------------
psql "$url" -qX -v ON_ERROR_STOP=1 >/dev/null <<SQL
DROP TABLE IF EXISTS $s.trigger_events;
CREATE TABLE $s.trigger_events (id bigserial PRIMARY KEY, stream text NOT NULL,
  type text NOT NULL, data jsonb NOT NULL, ts timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION $s.notify_row() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN PERFORM pg_notify('trigger_events', NEW.id::text); RETURN NEW; END \$\$;
CREATE TRIGGER notify_row AFTER INSERT ON $s.trigger_events
  FOR EACH ROW EXECUTE FUNCTION $s.notify_row();
SQL
echo "SELECT $s.append('bench:' || :client_id, 'bench.sql', '{\"n\": 1}');" >"$out/append.sql"
echo "INSERT INTO $s.trigger_events (stream, type, data) VALUES ('bench:' || :client_id, 'bench.sql', '{\"n\": 1}');" >"$out/trigger.sql"
tps() { pgbench "$url" -n -c 8 -j 2 -T 10 -f "$1" 2>&1 | tee "$out/$(basename "$1").log" | awk '/^tps/ { printf "%.0f", $3 }'; }
for round in 1 2; do
  a=$(tps "$out/append.sql"); t=$(tps "$out/trigger.sql")
  echo "round $round: 8-client single appends/s moonq.append $a, per-row NOTIFY trigger $t" | tee -a "$out/summary.txt"
done

# ---- 2. moonq.events from Lua --------------------------------------------
LUA_CPATH="$build/?.so;;" LUA_PATH="$repo/lua/?.lua;;" lua5.4 "$repo/bench/events/bench.lua" "$s" \
  2>"$out/lua.log" | tee -a "$out/summary.txt"

# ---- 3. EXPLAIN on a big table -------------------------------------------
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
echo "raw outputs: $out"
