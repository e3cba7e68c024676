#!/usr/bin/env bash
# cli_test.sh -- `moonq test` runs an app's specs with busted on a private
# PostgreSQL it starts under <app>/.moonq/test-pg and stops again: both
# examples pass from a copy outside the repository (as in a fresh clone:
# no .moonq/ yet), found through --config from another directory too; a
# failing spec makes it exit 1 and busted's arguments reach busted; no
# private schema is left behind. The cluster has a directory (and so a
# Unix socket) of its own, apart from the ctest fixture's. Run by ctest as
# sh_cli_test with MOONQ_BIN set.
set -u

bin=${MOONQ_BIN:?MOONQ_BIN is not set (run through ctest)}
src=${MOONQ_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
dir=$(mktemp -d)
stop_all() {
  for app in "$dir"/*/; do
    bash "$src/scripts/pg.sh" stop "$app.moonq/test-pg" >/dev/null 2>&1
  done
  rm -rf "$dir"
}
trap stop_all EXIT
chmod 755 "$dir" # a root caller's PostgreSQL runs as postgres
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

# The examples as a fresh clone has them.
for app in order-flow emails; do
  cp -r "$src/examples/$app" "$dir/$app"
  rm -rf "$dir/$app/.moonq"
done

# In the app's directory, and from elsewhere with --config.
out=$(cd "$dir/order-flow" && env -u MOONQ_TEST_DATABASE_URL timeout 150 "$bin" test 2>&1)
code=$?
[ "$code" -eq 0 ] || fail "moonq test in order-flow exited $code: $out"
[[ "$out" == *" 0 failures / 0 errors"* ]] || fail "order-flow: busted's summary expected: $out"
out=$(cd / && env -u MOONQ_TEST_DATABASE_URL timeout 150 "$bin" --config "$dir/emails/config.lua" test -o TAP 2>&1)
code=$?
[ "$code" -eq 0 ] || fail "moonq --config emails/config.lua test exited $code: $out"
[[ "$out" == *"ok 1 - send-email sends"*"1..5"* ]] || fail "emails: TAP output of 5 tests expected: $out"

# It stopped the cluster it started, and every spec file dropped its schema.
for app in order-flow emails; do
  pgdir=$dir/$app/.moonq/test-pg
  [ -d "$pgdir/data" ] || fail "$app: no cluster under .moonq/test-pg"
  if bash "$src/scripts/pg.sh" status "$pgdir"; then
    fail "$app: the cluster still runs after moonq test"
  fi
  url=$(bash "$src/scripts/pg.sh" start "$pgdir")
  left=$(psql "$url" -qAtX -c "SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname LIKE 'test\_%'")
  [ -z "$left" ] || fail "$app: schemas left behind: $left"
  bash "$src/scripts/pg.sh" stop "$pgdir" >/dev/null
done

# A failing spec: exit 1, and the cluster is stopped all the same.
cat >"$dir/order-flow/spec/wrong_spec.lua" <<'LUA'
local t = require "moonq.testing"
describe("a wrong expectation", function()
  it("fails", function()
    assert.equal("TRK-0", t.run("handlers/order/ship.lua", { data = { order_id = 1 } }).output.tracking)
  end)
end)
LUA
out=$(cd "$dir/order-flow" && timeout 150 "$bin" test spec/wrong_spec.lua 2>&1)
code=$?
[ "$code" -eq 1 ] || fail "a failing spec: exit 1 expected, got $code: $out"
[[ "$out" == *"0 successes / 1 failure"* ]] || fail "a failing spec: only spec/wrong_spec.lua runs: $out"
if bash "$src/scripts/pg.sh" status "$dir/order-flow/.moonq/test-pg"; then
  fail "the cluster still runs after a failing moonq test"
fi

# An app without specs is an error of busted's, reported as its exit code.
mkdir "$dir/empty" && printf 'return {}\n' >"$dir/empty/config.lua"
out=$(cd "$dir/empty" && timeout 150 "$bin" test 2>&1)
[ $? -ne 0 ] || fail "no spec/ directory: a non-zero exit expected: $out"

[ "$failed" -eq 0 ] && echo "cli_test: ok"
exit "$failed"
