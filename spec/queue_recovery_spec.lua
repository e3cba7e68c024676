-- The queue across processes, against the real PostgreSQL: a pause in one
-- process holds in another, a kill -9'd process's active jobs run again
-- after stale_after, a live process's jobs are left alone, and two
-- processes fetching one queue never get the same job.
local moonq = require "moonq"
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")
local Q = moonq.queue

local STALE = 2

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

describe("queue across processes", function()
  local tmpname = H.tmpname

  setup(function() H.open({ stale_after = STALE }) end)
  teardown(H.close)

  describe("pause", function()
    -- A child that opens the same schema, pauses first when asked, and
    -- reports is_paused and what fetch gave it.
    local child = [[
      assert(moonq.open({ database = url, schema = schema, stale_after = 30 }))
      if pause then assert(moonq.queue.pause(queue)) end
      local paused = moonq.queue.is_paused(queue)
      local jobs = assert(moonq.queue.fetch(queue, 10))
      local ids = {}
      for _, j in ipairs(jobs) do ids[#ids + 1] = j.id end
      io.write("paused=", tostring(paused), " n=", #jobs, " ids=", table.concat(ids, ","),
               " process=", moonq.queue.process_id(), "\n")
      moonq.close()
    ]]
    local function run_child(queue, pause)
      local out, ok = H.run(child, { url = H.url, schema = H.schema, queue = queue, pause = pause or false })
      assert.is_truthy(ok, out)
      local paused, n, ids, process = out:match("paused=(%a+) n=(%d+) ids=([%d,]*) process=(%S+)")
      assert.is_string(paused, out)
      local list = {}
      for id in ids:gmatch("%d+") do list[#list + 1] = tonumber(id) end
      return paused == "true", tonumber(n), list, process
    end

    it("in this process stops fetch in another; resume lets it fetch", function()
      local ids = assert(Q.send_many("pq", { { n = 1 }, { n = 2 }, { n = 3 } }))
      assert.is_true(Q.pause("pq"))
      local paused, n = run_child("pq")
      assert.is_true(paused)
      assert.equal(0, n)
      assert.same({ waiting = 0, paused = 3, delayed = 0, active = 0, completed = 0,
                    failed = 0, cancelled = 0 }, Q.counts("pq"))
      -- opening a process does not clear the flag
      assert.is_true(Q.is_paused("pq"))
      assert.is_true(Q.resume("pq"))
      local got, process
      paused, n, got, process = run_child("pq")
      assert.is_false(paused)
      assert.equal(3, n)
      assert.same(ids, got)
      local rows = H.sql("SELECT process_id::text AS process_id FROM @.job WHERE id = ANY($1::bigint[]) AND state = 'active'",
        "{" .. table.concat(ids, ",") .. "}")
      assert.equal(3, #rows)
      for _, r in ipairs(rows) do assert.equal(process, r.process_id) end
      assert.are_not.equal(Q.process_id(), process)
      -- the child has gone: leave nothing active for the recovery tests
      for _, id in ipairs(ids) do assert.is_true(Q.cancel(id)) end
    end)

    it("in another process stops fetch in this one", function()
      local id = assert(Q.send("pq2", {}))
      local paused, n = run_child("pq2", true)
      assert.is_true(paused)
      assert.equal(0, n)
      assert.is_true(Q.is_paused("pq2"))
      assert.same({}, assert(Q.fetch("pq2", 10)))
      assert.is_true(Q.resume("pq2"))
      assert.same({ id }, H.ids(assert(Q.fetch("pq2", 10))))
    end)
  end)

  describe("crash recovery", function()
    -- Fetches `count` jobs, writes its pid, process id and the job ids to
    -- `out`, then either blocks (crash test) or keeps its loop driven for
    -- `live` seconds and completes the jobs.
    local child = [[
      assert(moonq.open({ database = url, schema = schema, stale_after = stale }))
      local jobs = assert(moonq.queue.fetch(queue, count))
      local f = assert(io.open(out .. ".tmp", "w"))
      local stat = assert(io.open("/proc/self/stat"))
      f:write(stat:read("n"), "\n", moonq.queue.process_id(), "\n")
      stat:close()
      for _, j in ipairs(jobs) do f:write(j.id, "\n") end
      f:close()
      os.rename(out .. ".tmp", out)
      if live == 0 then
        os.execute("sleep 60")
      else
        local t0 = os.time()
        while os.time() - t0 < live do
          moonq.queue.is_paused(queue)   -- drives the loop: heartbeats go out
          os.execute("sleep 0.1")
        end
        for _, j in ipairs(jobs) do assert(moonq.queue.complete(j.id)) end
        local d = assert(io.open(out .. ".done", "w")); d:write("done\n"); d:close()
      end
    ]]

    local function start_child(queue, count, live)
      local out = tmpname()
      os.remove(out)
      local pid = H.spawn(child, { url = H.url, schema = H.schema, queue = queue, count = count,
                                   stale = STALE, out = out, live = live }, tmpname())
      local text = H.wait_for(function() return H.read(out) end, 10)
      assert.is_string(text, "the child did not fetch")
      local lines = {}
      for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
      local ids = {}
      for i = 3, #lines do ids[#ids + 1] = tonumber(lines[i]) end
      return pid, tonumber(lines[1]), lines[2], ids, out
    end

    it("a kill -9'd process's active jobs run again within stale_after + 5 s", function()
      local sent = assert(Q.send_many("crash", { { i = 1 }, { i = 2 }, { i = 3 }, { i = 4 }, { i = 5 } }))
      local pid, own_pid, process, ids = start_child("crash", 5, 0)
      assert.equal(pid, own_pid)
      assert.same(set_of(sent), set_of(ids))
      assert.equal(5, H.row("SELECT count(*) AS n FROM @.job WHERE process_id = $1::uuid AND state = 'active'", process).n)

      assert.is_true(H.alive(pid))
      H.kill_group(pid)
      local t0 = H.now()
      assert.is_truthy(H.wait_for(function() return not H.alive(pid) end, 2), "the child survived kill -9")
      -- just killed: its heartbeat is fresh, nothing is recovered yet
      assert.equal(0, assert(Q.maintain()).recovered)
      assert.same({}, assert(Q.fetch("crash", 10)))

      local got, recovered = {}, 0
      while #got < 5 and H.now() - t0 < STALE + 8 do
        H.sleep(0.2)
        local r = Q.maintain()
        if r then recovered = recovered + r.recovered end
        for _, j in ipairs(assert(Q.fetch("crash", 10))) do got[#got + 1] = j end
      end
      local elapsed = H.now() - t0
      assert.equal(5, #got, "recovered jobs fetched again")
      assert.is_true(elapsed <= STALE + 5, ("took %.1f s"):format(elapsed))
      assert.is_true(elapsed >= STALE - 0.5, ("recovered after only %.1f s"):format(elapsed))
      assert.equal(5, recovered)
      assert.same(set_of(sent), set_of(H.ids(got)))
      for _, j in ipairs(got) do
        assert.equal(2, j.attempt)
        assert.equal("crash", j.name)
      end
      local rows = H.sql("SELECT process_id::text AS process_id, attempt, error FROM @.job WHERE queue = 'crash'")
      for _, r in ipairs(rows) do
        assert.equal(Q.process_id(), r.process_id)
        assert.equal(2, r.attempt)
        assert.matches("stopped responding", r.error.message)
      end
    end)

    it("a live process's jobs are left alone past stale_after", function()
      local sent = assert(Q.send_many("alive", { {}, {} }))
      local live = STALE + 1.5
      -- the child keeps going a second longer than we watch it
      local pid, _, process, ids, out = start_child("alive", 2, math.ceil(live) + 1)
      assert.same(set_of(sent), set_of(ids))
      local t0 = H.now()
      while H.now() - t0 < live do
        H.sleep(0.3)
        local r = Q.maintain()
        if r then assert.equal(0, r.recovered) end
        assert.same({}, assert(Q.fetch("alive", 10)))
      end
      assert.equal(2, H.row("SELECT count(*) AS n FROM @.job WHERE process_id = $1::uuid AND state = 'active'", process).n)
      local done = H.wait_for(function() return H.read(out .. ".done") end, 15)
      if not done then H.kill_group(pid) end
      assert.is_string(done, "the live child did not complete its jobs")
      assert.equal(2, Q.counts("alive").completed)
    end)
  end)

  describe("concurrent fetch", function()
    -- the budget only bounds the run (two shared cores, sanitizer builds):
    -- it is not a speed check
    local N, BUDGET = 4000, 120
    -- Waits for `go`, then fetches 100 at a time and completes each job
    -- until the queue is empty (or the time budget is spent); writes
    -- "id attempt" lines, then "done <completion failures>".
    local child = [[
      assert(moonq.open({ database = url, schema = schema, stale_after = 30 }))
      local r = assert(io.open(ready, "w")); r:close()
      local t0 = os.time()
      while true do
        local g = io.open(go)
        if g then g:close() break end
        if os.time() - t0 > 20 then error("no go") end
        os.execute("sleep 0.02")
      end
      local f = assert(io.open(out .. ".tmp", "w"))
      local deadline, failures = os.time() + budget, 0
      while os.time() < deadline do
        local jobs = assert(moonq.queue.fetch(queue, 100))
        if #jobs == 0 then break end
        for _, j in ipairs(jobs) do
          f:write(j.id, " ", j.attempt, "\n")
          if os.time() < deadline then
            if not moonq.queue.complete(j.id) then failures = failures + 1 end
          end
        end
      end
      f:write("done ", failures, "\n")
      f:close()
      os.rename(out .. ".tmp", out)
      moonq.close()
    ]]

    it("two processes never get the same job; every job is done once", function()
      local list = {}
      for i = 1, N do list[i] = { i = i } end
      local sent = assert(Q.send_many("race", list))
      assert.equal(N, #sent)
      local go = tmpname()
      os.remove(go)
      local kids = {}
      for k = 1, 2 do
        local kid = { ready = tmpname(), out = tmpname() }
        os.remove(kid.ready)
        os.remove(kid.out)
        kid.pid = H.spawn(child, { url = H.url, schema = H.schema, queue = "race", ready = kid.ready,
                                   go = go, out = kid.out, budget = BUDGET }, tmpname())
        kids[k] = kid
      end
      local ready = H.wait_for(function()
        return H.read(kids[1].ready) and H.read(kids[2].ready)
      end, 15)
      assert.is_truthy(ready, "children did not start")
      assert(io.open(go, "w")):close()

      local outs = H.wait_for(function()
        local a, b = H.read(kids[1].out), H.read(kids[2].out)
        return a and b and { a, b }
      end, BUDGET + 15, 0.2)
      if not outs then
        for _, kid in ipairs(kids) do H.kill_group(kid.pid) end
      end
      assert.is_table(outs, "children did not finish")

      local seen, total, dupes, retried, failures = {}, 0, 0, 0, 0
      local per_child = {}
      for k, text in ipairs(outs) do
        local n = 0
        for id, attempt in text:gmatch("(%d+) (%d+)\n") do
          id = tonumber(id)
          if seen[id] then dupes = dupes + 1 end
          seen[id] = true
          if attempt ~= "1" then retried = retried + 1 end
          n, total = n + 1, total + 1
        end
        local f = text:match("done (%d+)")
        assert.is_string(f, "child " .. k .. " output incomplete")
        failures = failures + tonumber(f)
        per_child[k] = n
      end
      assert.equal(0, dupes, "jobs fetched twice")
      assert.equal(0, retried)
      assert.equal(0, failures, "completions refused")
      assert.is_true(per_child[1] > 0 and per_child[2] > 0,
        ("work split %d / %d"):format(per_child[1], per_child[2]))
      assert.equal(N, total, ("fetched %d of %d jobs within %d s"):format(total, N, BUDGET))
      for _, id in ipairs(sent) do assert.is_true(seen[id]) end
      assert.same({ waiting = 0, paused = 0, delayed = 0, active = 0, completed = N,
                    failed = 0, cancelled = 0 }, Q.counts("race"))
    end)
  end)
end)
