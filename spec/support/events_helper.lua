-- Shared helpers for the event store specs (spec/events_*_spec.lua). Load with
--   local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")
-- V has every function of worker_helper.lua (V.open, V.close, V.sql, V.row,
-- V.bg, ...) plus: subscriptions that record what they get (V.record,
-- V.live, V.wait_events), refusals (V.refusal), psql sessions in the
-- background (V.psql_bg, V.wait_exit) and the check that a subscriber got
-- every stored event exactly once and each stream in order (V.delivery).
local moonq = require "moonq"
local here = debug.getinfo(1, "S").source:match("^@(.*/)")
local W = dofile(here .. "worker_helper.lua")

local V = setmetatable({}, { __index = W })

-- Calls fn(...) expecting a refusal: nil and a message, or an error raised
-- (arguments of the wrong type raise). Returns the message; fails the test
-- when fn returned a result.
function V.refusal(fn, ...)
  local ok, res, err = pcall(fn, ...)
  if not ok then return tostring(res) end
  assert(res == nil, ("expected a refusal, got a result%s"):format(
    type(res) == "table" and res.id and (" (event " .. res.id .. " stored)") or ""))
  assert(type(err) == "string", "a refusal without a message")
  return err
end

-- Subscribes a recorder to `pattern` (subscribe options `opts`): every
-- event delivered is added to rec.events in delivery order. Returns rec
-- ({sub, events}).
function V.record(pattern, opts)
  local rec = { events = {} }
  rec.sub = assert(moonq.events.subscribe(pattern, function(e)
    rec.events[#rec.events + 1] = e
  end, opts))
  return rec
end

-- Runs the loop until rec holds at least n events or `timeout` seconds
-- pass (30 by default); returns true when it does.
function V.wait_events(rec, n, timeout)
  return (moonq.run_until(function() return #rec.events >= n end, timeout or 30))
end

-- A live subscription to `pattern` from "end": subscribes, appends a
-- marker event to stream `marker` (which the pattern must match) and waits
-- until the marker arrives, so that every event committed from then on is
-- delivered. rec.events starts empty (the marker is taken out); rec.marker
-- is the marker event.
function V.live(pattern, marker)
  local rec = V.record(pattern, { from = "end" })
  rec.marker = assert(moonq.events.append(marker, { type = "marker" }))
  assert(moonq.run_until(function()
    for _, e in ipairs(rec.events) do
      if e.id == rec.marker.id then return true end
    end
  end, 30), "the marker event was not delivered")
  assert(#rec.events == 1, "events before the marker of a subscription from \"end\"")
  rec.events = {}
  return rec
end

-- Starts psql in the background on DATABASE_URL running `sql` ("@."
-- stands for "<schema>.") with application_name `app` (its own process
-- group, killed at V.close() if still running). Returns its pid and a
-- function that returns psql's exit status once it has exited (nil
-- before) and its output.
function V.psql_bg(sql, app)
  local dir = V.tmpdir()
  local script, rc = dir .. "/script.sql", dir .. "/rc"
  V.write(script, (sql:gsub("@%.", V.schema .. ".")))
  local cmd = ('PGAPPNAME=%s psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -f %s; echo $? > %s')
    :format(V.shq(app or "moonq_spec"), V.shq(script), V.shq(rc))
  local pid = V.own(V.bg(cmd, dir .. "/log"))
  return pid, function()
    local s = V.read(rc)
    return s and tonumber(s:match("%d+")), V.read(dir .. "/log")
  end
end

-- What a psql session LISTENing on `channel` for `seconds` printed while
-- fn() ran (fn must finish within that time): its notifications, each a
-- line 'Asynchronous notification "<channel>" with payload "..." ...'.
function V.notifications_during(channel, seconds, fn)
  local _, exit = V.psql_bg(('LISTEN "%s";\nSELECT pg_sleep(%g);\nSELECT 1;\n'):format(channel, seconds),
                            "moonq_spec_listen")
  -- it listens once it runs its pg_sleep
  assert(V.wait_for(function()
    return V.row([[SELECT count(*) AS n FROM pg_stat_activity
                    WHERE application_name = 'moonq_spec_listen'
                      AND query LIKE '%pg_sleep%']]).n > 0
  end, 5), "the listening session did not start")
  fn()
  V.wait_exit({ exit }, seconds + 10)
  local _, out = exit()
  return out
end

-- Runs the loop until every exit function of `exits` returns a status or
-- `timeout` seconds pass; asserts they all exited with 0.
function V.wait_exit(exits, timeout)
  local done = moonq.run_until(function()
    for _, exit in ipairs(exits) do
      if not exit() then return false end
    end
    return true
  end, timeout)
  assert(done, "psql sessions still running after " .. timeout .. " s")
  for i, exit in ipairs(exits) do
    local rc, out = exit()
    assert(rc == 0, ("psql session %d exited with %s:\n%s"):format(i, tostring(rc), out or ""))
  end
end

-- The stored events whose stream matches the SQL LIKE pattern `like`, as
-- a list of {id, stream} in id order.
function V.stored(like)
  return (V.sql("SELECT id, stream FROM @.queue_events WHERE stream LIKE $1 ORDER BY id", like))
end

-- What is wrong with a delivery: compares the events delivered (in
-- delivery order) with the stored events whose stream matches `like`.
-- Returns nil when every stored event was delivered exactly once, nothing
-- else was, and each stream's events came in increasing id order;
-- otherwise a description of the missing, duplicate, unexpected and
-- out-of-order ids (the first few of each).
function V.delivery(events, like)
  local problems = { missing = {}, duplicate = {}, unexpected = {}, out_of_order = {} }
  local seen, last = {}, {}
  for _, e in ipairs(events) do
    if seen[e.id] then table.insert(problems.duplicate, e.id) end
    seen[e.id] = true
    if last[e.stream] and e.id <= last[e.stream] then
      table.insert(problems.out_of_order, ("%s: %d after %d"):format(e.stream, e.id, last[e.stream]))
    end
    last[e.stream] = e.id
  end
  local stored = {}
  for _, r in ipairs(V.stored(like)) do
    stored[r.id] = true
    if not seen[r.id] then table.insert(problems.missing, r.id) end
  end
  for id in pairs(seen) do
    if not stored[id] then table.insert(problems.unexpected, id) end
  end
  local lines = {}
  for _, kind in ipairs({ "missing", "duplicate", "unexpected", "out_of_order" }) do
    local list = problems[kind]
    if #list > 0 then
      local first = {}
      for i = 1, math.min(#list, 10) do first[i] = tostring(list[i]) end
      lines[#lines + 1] = ("%d %s (%s%s)"):format(#list, kind, table.concat(first, ", "),
        #list > 10 and ", ..." or "")
    end
  end
  if #lines == 0 then return nil end
  return ("%d delivered, %d stored: %s"):format(#events, V.count(stored), table.concat(lines, "; "))
end

return V
