#!/usr/bin/env bash
# examples/order-flow/run.sh -- the order flow from start to end: starts
# the private PostgreSQL under .moonq/ (unless DATABASE_URL is set), runs
# `moonq run` on this directory's handlers, starts four runs from SQL (a
# good order, a declined card, a gateway failure that is retried, an order
# without items), waits for them to end, prints their rows of
# queue_flow_index and one run's history, and stops the worker.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# the moonq checkout: MOONQ_BIN's (its build/moonq), else this example's
if [ -n "${MOONQ_BIN:-}" ]; then
  repo=$(cd "$(dirname "$MOONQ_BIN")/.." && pwd)
else
  repo=$(cd "$here/../.." && pwd)
fi
moonq=${MOONQ_BIN:-$repo/build/moonq}
[ -x "$moonq" ] || bash "$repo/scripts/build.sh"
cd "$here"
export DATABASE_URL=${DATABASE_URL:-$(bash "$repo/scripts/pg.sh" start "$here/.moonq")}
sql() { psql "$DATABASE_URL" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }

"$moonq" migrate
"$moonq" run &
worker=$!
trap 'kill -TERM $worker 2>/dev/null || true; wait $worker 2>/dev/null || true' EXIT

# The worker stores the flow's steps as it starts; start_flow needs them.
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM moonq.queue_flow_steps WHERE flow_name = 'order'")" = 4 ] && break
  sleep 0.1
done

start() { # ID CARD [ITEMS]
  local items=${3:-'[{"sku": "mug", "price": 1200, "qty": 2}, {"sku": "tea", "price": 450}]'}
  sql "SELECT moonq.start_flow('order', '{\"id\": $1, \"email\": \"ada@example.com\",
         \"card\": \"$2\", \"address\": {\"city\": \"Berlin\"}, \"items\": $items}')"
}
echo "== starting four runs of flow order"
runs=("$(start 1001 '4242 4242 4242 4242')" "$(start 1002 '4000 0000 0000 0002')"
      "$(start 1003 '4000 0000 0000 0119')" "$(start 1004 '4242 4242 4242 4242' '[]')")
list=$(printf "'%s'," "${runs[@]}")
list=${list%,}

for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM moonq.queue_flow_index WHERE run_id IN ($list) AND status = 'running'")" = 0 ] && break
  sleep 0.1
done

echo "== the runs (queue_flow_index)"
psql "$DATABASE_URL" -qX -c "SELECT data->>'id' AS order_id, status, failed_step,
         error->>'message' AS error, completed_at - started_at AS took
    FROM moonq.queue_flow_index WHERE run_id IN ($list) ORDER BY data->>'id'"
echo "== the history of the retried run (also: moonq events query flow:order:${runs[2]})"
psql "$DATABASE_URL" -qX -c "SELECT id, type, step_name AS step, attempt, data->'error'->>'message' AS error
    FROM moonq.queue_events WHERE stream = 'flow:order:${runs[2]}' ORDER BY id"
