-- A consumer group across processes: three member processes share 20,000
-- events on 50 streams while another session appends them; one member is
-- killed with SIGKILL in the middle. Afterwards every event was handled,
-- duplicates are only events the killed member had handled past its last
-- checkpoint, each member saw each stream in order, and the killed member
-- restarted under its name resumes from the group's checkpoints (it
-- handles none of the events handled before again).
local moonq = require "moonq"
local V = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/events_helper.lua")

local TOTAL, STREAMS, BATCH = 20000, 50, 100

describe("a consumer group of three processes", function()
  local dir
  setup(function()
    V.open()
    dir = V.tmpdir()
  end)
  teardown(V.close)

  -- Starts member `name`: a process that writes "id stream" per event to
  -- dir/<name>.<run> (flushed at once, so what it handled survives kill).
  local function start(name, run)
    local out = ("%s/%s.%d"):format(dir, name, run)
    local pid = V.own(V.spawn([[
      assert(moonq.open({ database = url, schema = schema, log = { level = "warn" } }))
      local f = assert(io.open(out, "w"))
      assert(moonq.events.subscribe_group("gp:*", "gp", name, function(e)
        f:write(e.id, " ", e.stream, "\n")
        f:flush()
      end, { lease = 2, batch = batch }))
      moonq.run_until(function() return false end, 300)
    ]], { url = V.url, schema = V.schema, out = out, name = name, batch = BATCH },
      out .. ".log"))
    return pid, out
  end

  -- {id -> count} and the per-file order check over `files`.
  local function read_all(files)
    local seen, per_file = {}, {}
    for _, path in ipairs(files) do
      local ids, last = {}, {}
      for line in (V.read(path) or ""):gmatch("[^\n]+") do
        local id, stream = line:match("^(%d+) (%S+)$")
        id = tonumber(id)
        assert(not last[stream] or id > last[stream],
          ("%s: stream %s out of order: %d after %d"):format(path, stream, id, last[stream] or 0))
        last[stream] = id
        seen[id] = (seen[id] or 0) + 1
        ids[id] = true
      end
      per_file[path] = ids
    end
    return seen, per_file
  end

  local function handled(files)
    local seen = read_all(files)
    return V.count(seen)
  end

  it("shares the work, survives a SIGKILL and resumes from the checkpoints", function()
    -- the group exists with its pattern before the members race to create it
    local g = assert(moonq.events.subscribe_group("gp:*", "gp", "setup", function() end, { lease = 2 }))
    g:close()
    local files, pids = {}, {}
    for i, name in ipairs({ "m1", "m2", "m3" }) do
      pids[i], files[i] = start(name, 1)
    end
    assert.is_truthy(V.poll(function()
      local row = V.row("SELECT count(*) AS n FROM @.queue_event_group_members WHERE group_name = 'gp'")
      return row.n == 3
    end, 30), "the members did not join")

    -- 20 transactions of 1,000 events, 50 ms apart
    local lines = {}
    for t = 0, 19 do
      lines[#lines + 1] = ([[SELECT @.append('gp:' || (g %% %d), 'n', jsonb_build_object('g', g))
        FROM generate_series(%d, %d) g;]]):format(STREAMS, t * 1000 + 1, t * 1000 + 1000)
      lines[#lines + 1] = "SELECT pg_sleep(0.05);"
    end
    local _, exit = V.psql_bg(table.concat(lines, "\n") .. "\n", "moonq_group_append")

    -- kill m2 once a quarter of the events were handled
    assert.is_truthy(V.poll(function() return handled(files) >= TOTAL / 4 end, 60, 0.05),
      "not a quarter handled")
    V.kill_group(pids[2])
    local killed_file = files[2]
    local at_kill = read_all({ killed_file })
    assert.is_true(handled(files) < TOTAL, "the kill came after the last event")
    assert.is_true(V.count(at_kill) > 0, "the killed member had handled nothing")

    V.wait_exit({ exit }, 120)
    assert.equal(TOTAL, V.row("SELECT count(*) AS n FROM @.queue_events WHERE stream LIKE 'gp:%'").n)
    assert.is_truthy(V.poll(function() return handled(files) >= TOTAL end, 60, 0.1),
      ("handled %d of %d after the kill"):format(handled(files), TOTAL))

    local seen, per_file = read_all(files)
    local dups = {}
    for id, n in pairs(seen) do
      if n > 1 then dups[#dups + 1] = id end
    end
    -- every duplicate was handled by the killed member (in flight at the
    -- kill) and by the member that took its partition over
    for _, id in ipairs(dups) do
      assert.is_truthy(per_file[killed_file][id] and at_kill[id],
        ("event %d handled twice, not by the killed member"):format(id))
    end
    assert.is_true(#dups <= BATCH * 16, #dups .. " duplicates")
    assert.is_nil(V.delivery((function()
      local list = {}
      for _, r in ipairs(V.stored("gp:%")) do
        if seen[r.id] then list[#list + 1] = r end
      end
      return list
    end)(), "gp:%"))

    -- m2 again, under its name: it takes a share and handles only new events
    local pid, again = start("m2", 2)
    assert.is_truthy(pid)
    assert.is_truthy(V.poll(function()
      local row = assert(V.row([[SELECT count(*) AS n FROM @.queue_event_checkpoints
                                  WHERE group_name = 'gp' AND consumer = 'm2']]))
      return row.n > 0
    end, 30), "the restarted member got no partitions")
    local out = V.psql(([[SELECT %s.append('gp:' || (g %% %d), 'n', '{}') FROM generate_series(1, 1000) g;]])
      :format(V.schema, STREAMS))
    assert.is_truthy(out)
    local all = { files[1], files[2], files[3], again }
    assert.is_truthy(V.poll(function() return handled(all) >= TOTAL + 1000 end, 60, 0.1),
      "the new events were not all handled")
    local after = read_all({ again })
    for id in pairs(after) do
      assert.is_true(id > 0 and not seen[id],
        ("the restarted member handled event %d again"):format(id))
    end
    assert.is_true(V.count(after) > 0, "the restarted member handled nothing")
  end)
end)

describe("a consumer group member paused past its lease", function()
  setup(function() V.open() end)
  teardown(V.close)

  -- T7 of the research: SIGSTOP a member while it handles an event, let
  -- another member take its partitions over, SIGCONT it. Its checkpoint
  -- write is refused (the epoch moved on), no checkpoint goes backwards, and
  -- it handles nothing the other member handled, beyond the event it was in.
  it("cannot move a checkpoint it lost, and handles nothing twice", function()
    local dir = V.tmpdir()
    local out = dir .. "/a"
    local pid = V.own(V.spawn([[
      assert(moonq.open({ database = url, schema = schema, log = { level = "warn" } }))
      local f = assert(io.open(out, "w"))
      assert(moonq.events.subscribe_group("st:*", "st", "a", function(e)
        f:write("start ", e.id, "\n") f:flush()
        moonq.sleep(0.5)
        f:write("done ", e.id, "\n") f:flush()
      end, { lease = 1, partitions = 1 }))
      moonq.run_until(function() return false end, 300)
    ]], { url = V.url, schema = V.schema, out = out }, out .. ".log"))
    assert.is_truthy(V.poll(function()
      return V.row("SELECT count(*) AS n FROM @.queue_event_checkpoints WHERE consumer = 'a'").n == 1
    end, 30), "a did not join")
    -- a takes a batch of 10 and is stopped in the middle of the first
    local batch = {}
    for i = 1, 10 do batch[i] = { type = "t", data = { i = i } } end
    local held = assert(moonq.events.append_many("st:1", batch))
    local first = held[1]
    assert.is_truthy(V.poll(function() return (V.read(out) or ""):find("start " .. first.id, 1, true) end, 10))
    V.signal(pid, "STOP")
    -- b takes the partition once a's lease ran out, and handles from a's
    -- last checkpoint: the event a is stuck in, then the rest
    local got = {}
    local b = assert(moonq.events.subscribe_group("st:*", "st", "b", function(e)
      got[#got + 1] = e.id
    end, { lease = 1 }))
    local more = {}
    for i = 1, 5 do more[i] = assert(moonq.events.append("st:1", { type = "t" })).id end
    assert.is_true(moonq.run_until(function() return #got >= 15 end, 20), "b did not take over")
    -- (b writes its checkpoint just after its function returns)
    assert.is_truthy(moonq.run_until(function()
      return V.row("SELECT last_id FROM @.queue_event_checkpoints WHERE group_name = 'st'").last_id == more[5]
    end, 10), "b's checkpoint was not written")
    local mark = V.row("SELECT last_id, epoch FROM @.queue_event_checkpoints WHERE group_name = 'st'")
    V.signal(pid, "CONT")
    -- a finishes its event and starts no other (its lease ran out while it
    -- was stopped); its checkpoint is refused; the two share again
    V.run_for(3)
    local row = V.row("SELECT last_id, epoch FROM @.queue_event_checkpoints WHERE group_name = 'st'")
    assert.is_true(row.last_id >= mark.last_id, "the checkpoint went backwards")
    local handled_by_a = {}
    for id in (V.read(out) or ""):gmatch("done (%d+)") do handled_by_a[#handled_by_a + 1] = tonumber(id) end
    assert.same({ first.id }, handled_by_a)
    local want = V.ids(held)
    for _, id in ipairs(more) do want[#want + 1] = id end
    assert.same(want, got)
    b:close()
  end)
end)
