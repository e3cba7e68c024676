-- Inspection and control of the job queue against the real PostgreSQL:
-- pause/resume, cancel, retry, purge, list, counts, queues, get, and maintain()
-- (expiry, retention, process clean-up, the maintenance lock).
local moonq = require "moonq"
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")
local Q = moonq.queue

-- A job of queue q in the given generic state, made through the API.
local function make(q, state)
  if state == "waiting" then
    return assert(Q.send(q, { s = state }))
  elseif state == "delayed" then
    return assert(Q.send(q, { s = state }, { delay = 3600 }))
  end
  -- the highest priority, so fetch(q, 1) takes this one
  local id = assert(Q.send(q, { s = state }, { priority = 1000, retry_limit = 0 }))
  if state == "cancelled" then
    assert.is_true(Q.cancel(id))
    return id
  end
  local jobs = assert(Q.fetch(q, 1))
  assert.equal(id, jobs[1].id)
  if state == "completed" then
    assert.is_true(Q.complete(id, { done = true }))
  elseif state == "failed" then
    assert.equal("failed", assert(Q.fail(id, "broken")).state)
  else
    assert.equal("active", state)
  end
  return id
end

local function where(id)
  local r = H.row([[SELECT (SELECT state::text FROM @.job WHERE id = $1) AS hot,
                           (SELECT state::text FROM @.job_archive WHERE id = $1) AS archived]], id)
  return r.hot ~= moonq.null and r.hot or nil, r.archived ~= moonq.null and r.archived or nil
end

describe("queue control", function()
  setup(function() H.open({ stale_after = 30 }) end)
  teardown(H.close)

  describe("pause and resume", function()
    it("stop and restart fetch, with the flag in the queue table", function()
      local a = make("pz", "waiting")
      local b = make("pz", "waiting")
      local other = make("pz_other", "waiting")
      assert.is_false(Q.is_paused("pz"))
      assert.is_true(Q.pause("pz"))
      assert.is_true(Q.is_paused("pz"))
      assert.is_true(H.row("SELECT paused FROM @.queue WHERE name = 'pz'").paused)
      assert.same({}, assert(Q.fetch("pz", 10)))
      assert.equal("paused", Q.get(a).state)
      assert.equal("created", Q.get(a).stored_state)
      local c = Q.counts("pz")
      assert.equal(2, c.paused)
      assert.equal(0, c.waiting)
      -- other queues run on
      assert.same({ other }, H.ids(assert(Q.fetch("pz_other", 10))))
      assert.is_true(Q.resume("pz"))
      assert.is_false(Q.is_paused("pz"))
      assert.is_false(H.row("SELECT paused FROM @.queue WHERE name = 'pz'").paused)
      assert.same({ a, b }, H.ids(assert(Q.fetch("pz", 10))))
    end)

    it("is_paused of an unknown queue is false; resume of one is harmless", function()
      assert.is_false(Q.is_paused("never_seen"))
      assert.is_true(Q.resume("never_seen"))
      assert.is_false(Q.is_paused("never_seen"))
    end)
  end)

  describe("cancel", function()
    it("a waiting job: true, archived as cancelled", function()
      local id = make("cx", "waiting")
      assert.is_true(Q.cancel(id))
      local hot, archived = where(id)
      assert.is_nil(hot)
      assert.equal("cancelled", archived)
      assert.equal("cancelled", Q.get(id).state)
      assert.same({}, assert(Q.fetch("cx", 10)))
    end)

    it("an active job: true, and its completion is then refused", function()
      local id = make("cx", "active")
      assert.is_true(Q.cancel(id))
      assert.equal("cancelled", select(2, where(id)))
      local ok, err = Q.complete(id, { late = true })
      assert.is_nil(ok)
      assert.is_string(err)
      assert.equal("cancelled", select(2, where(id)))
      assert.equal(moonq.null, H.row("SELECT output FROM @.job_archive WHERE id = $1", id).output)
    end)

    it("a finished or unknown job: false, nothing changes", function()
      local done = make("cx", "completed")
      assert.is_false(Q.cancel(done))
      assert.equal("completed", select(2, where(done)))
      local cancelled = make("cx", "cancelled")
      assert.is_false(Q.cancel(cancelled))
      assert.is_false(Q.cancel(876543210))
    end)
  end)

  describe("retry", function()
    it("a failed job: true, back to waiting with the same id and attempt 0", function()
      local id = assert(Q.send("rt", { k = 1 }, { retry_limit = 1, retry_delay = 0 }))
      assert(Q.fetch("rt", 1))
      assert.equal("retry", assert(Q.fail(id, "one")).state)
      assert(Q.fetch("rt", 1))
      assert.equal("failed", assert(Q.fail(id, "two")).state)
      assert.is_true(Q.retry(id))
      local hot, archived = where(id)
      assert.equal("created", hot)
      assert.is_nil(archived)
      local r = H.row("SELECT attempt, retry_limit, data FROM @.job WHERE id = $1", id)
      assert.equal(0, r.attempt)
      assert.equal(1, r.retry_limit)
      assert.same({ k = 1 }, r.data)
      assert.equal("waiting", Q.get(id).state)
      local jobs = assert(Q.fetch("rt", 1))
      assert.equal(id, jobs[1].id)
      assert.equal(1, jobs[1].attempt)
    end)

    it("a cancelled job: true", function()
      local id = make("rt2", "cancelled")
      assert.is_true(Q.retry(id))
      assert.equal("created", (where(id)))
    end)

    it("a completed, waiting, active or unknown job: false", function()
      local done = make("rt3", "completed")
      assert.is_false(Q.retry(done))
      assert.equal("completed", select(2, where(done)))
      local active = make("rt3", "active")
      assert.is_false(Q.retry(active))
      assert.equal("active", (where(active)))
      local waiting = make("rt3", "waiting")
      assert.is_false(Q.retry(waiting))
      assert.is_false(Q.retry(765432109))
    end)
  end)

  describe("counts, get, list and purge", function()
    local q = "cq"
    local ids = {}
    setup(function()
      ids.completed = make(q, "completed")
      ids.failed = make(q, "failed")
      ids.cancelled = make(q, "cancelled")
      ids.active = make(q, "active")
      ids.delayed = make(q, "delayed")
      ids.waiting1 = make(q, "waiting")
      ids.waiting2 = make(q, "waiting")
    end)

    it("counts every generic state", function()
      assert.same({ waiting = 2, delayed = 1, active = 1, completed = 1, failed = 1,
                    cancelled = 1, paused = 0 }, Q.counts(q))
      assert(Q.pause(q))
      assert.same({ waiting = 0, delayed = 1, active = 1, completed = 1, failed = 1,
                    cancelled = 1, paused = 2 }, Q.counts(q))
      assert(Q.resume(q))
      assert.same({ waiting = 0, delayed = 0, active = 0, completed = 0, failed = 0,
                    cancelled = 0, paused = 0 }, Q.counts("empty_queue"))
    end)

    it("queues lists every queue with a row or jobs, with its counts", function()
      assert(Q.pause("cq_row_only")) -- a row, no jobs
      local by_name, names = {}, {}
      for _, e in ipairs(assert(Q.queues())) do
        by_name[e.name] = e
        names[#names + 1] = e.name
      end
      assert.same({ waiting = 2, delayed = 1, active = 1, completed = 1, failed = 1,
                    cancelled = 1, paused = 0 }, by_name[q].counts)
      assert.is_false(by_name[q].paused)
      assert.is_true(by_name.cq_row_only.paused)
      assert.equal(0, by_name.cq_row_only.counts.waiting)
      assert.is_nil(by_name[""]) -- the defaults row is no queue
      local sorted = { table.unpack(names) }
      table.sort(sorted)
      assert.same(sorted, names)
      -- a queue whose jobs all finished is still known
      local done = assert(Q.send("cq_done", {}))
      assert.is_true(Q.cancel(done))
      local found
      for _, e in ipairs(assert(Q.queues())) do
        if e.name == "cq_done" then found = e end
      end
      assert.equal(1, found.counts.cancelled)
      assert(Q.resume("cq_row_only"))
    end)

    it("get shows the generic state, stored state, attempt and result", function()
      local expect = { completed = "completed", failed = "failed", cancelled = "cancelled",
                       active = "active", delayed = "delayed", waiting1 = "waiting" }
      -- the cancelled job was cancelled before it ran
      local ran = { completed = true, failed = true, active = true }
      for k, state in pairs(expect) do
        local j = assert(Q.get(ids[k]))
        assert.equal(state, j.state, k)
        assert.equal(ids[k], j.id)
        assert.equal(q, j.queue)
        assert.same({ s = k == "waiting1" and "waiting" or k }, j.data)
        assert.equal(ran[k] and 1 or 0, j.attempt, k)
      end
      assert.equal("created", Q.get(ids.delayed).stored_state)
      assert.equal("active", Q.get(ids.active).stored_state)
      assert.same({ done = true }, Q.get(ids.completed).output)
      assert.equal("broken", Q.get(ids.failed).error.message)
    end)

    it("get of an unknown id", function()
      local j, err = Q.get(999999999)
      assert.is_nil(j)
      assert.equal("job 999999999 not found", err)
    end)

    it("list filters by each state", function()
      local function list_ids(state)
        return H.ids(assert(Q.list(q, { state = state })))
      end
      assert.same({ ids.waiting2, ids.waiting1 }, list_ids("waiting"))
      assert.same({ ids.delayed }, list_ids("delayed"))
      assert.same({ ids.active }, list_ids("active"))
      assert.same({ ids.completed }, list_ids("completed"))
      assert.same({ ids.failed }, list_ids("failed"))
      assert.same({ ids.cancelled }, list_ids("cancelled"))
      assert.same({}, list_ids("paused"))
      assert(Q.pause(q))
      assert.same({ ids.waiting2, ids.waiting1 }, list_ids("paused"))
      assert.same({}, list_ids("waiting"))
      assert(Q.resume(q))
      local all = assert(Q.list(q))
      assert.equal(7, #all)
      assert.equal("completed", all[#all].state)
      local none, err = Q.list(q, { state = "exploded" })
      assert.is_nil(none)
      assert.matches('unknown state "exploded"', err, 1, true)
    end)

    it("list orders newest or oldest first and pages by id", function()
      local sorted = {}
      for _, id in pairs(ids) do sorted[#sorted + 1] = id end
      table.sort(sorted)
      local newest = H.ids(assert(Q.list(q)))
      local oldest = H.ids(assert(Q.list(q, { order = "oldest" })))
      assert.same(sorted, oldest)
      local reversed = {}
      for i = #sorted, 1, -1 do reversed[#reversed + 1] = sorted[i] end
      assert.same(reversed, newest)
      for _, order in ipairs({ "oldest", "newest" }) do
        local seen, after, pages = {}, nil, 0
        repeat
          local page = assert(Q.list(q, { limit = 3, after = after, order = order }))
          assert.is_true(#page <= 3)
          for _, j in ipairs(page) do seen[#seen + 1] = j.id end
          after = page[#page] and page[#page].id
          pages = pages + 1
        until #page == 0
        assert.equal(4, pages) -- 3 + 3 + 1 + empty
        assert.same(order == "oldest" and sorted or reversed, seen)
      end
      assert.same({ sorted[4], sorted[5] },
        H.ids(assert(Q.list(q, { after = sorted[3], limit = 2, order = "oldest" }))))
      assert.same({ sorted[2], sorted[1] },
        H.ids(assert(Q.list(q, { after = sorted[3], order = "newest" }))))
      assert.has_error(function() Q.list(q, { order = "sideways" }) end)
    end)

    it("purge deletes one state at a time, never active jobs", function()
      assert.equal(1, Q.purge(q, "delayed"))
      assert.equal(nil, (where(ids.delayed)))
      assert.equal(1, Q.purge(q, "completed"))
      assert.equal(nil, select(2, where(ids.completed)))
      assert.equal(0, Q.purge(q, "completed"))
      local none, err = Q.purge(q, "active")
      assert.is_nil(none)
      assert.matches('cannot purge state "active"', err, 1, true)
      local keep = make("cq_other", "waiting")
      -- nil: every state but active
      assert.equal(4, Q.purge(q))
      assert.same({ waiting = 0, delayed = 0, active = 1, completed = 0, failed = 0,
                    cancelled = 0, paused = 0 }, Q.counts(q))
      assert.equal("active", (where(ids.active)))
      assert.equal("created", (where(keep)))
    end)

    it("purge of waiting or paused follows the pause flag, as list and counts do", function()
      local a, b = make("pp", "waiting"), make("pp", "waiting")
      -- not paused: the jobs are waiting, none is paused
      assert.equal(0, Q.purge("pp", "paused"))
      assert.equal(2, Q.counts("pp").waiting)
      assert(Q.pause("pp"))
      -- paused: the jobs are paused, none is waiting
      assert.same({}, assert(Q.list("pp", { state = "waiting" })))
      assert.equal(0, Q.purge("pp", "waiting"))
      assert.equal(2, Q.counts("pp").paused)
      assert.equal(2, Q.purge("pp", "paused"))
      assert.is_nil((where(a)))
      assert.is_nil((where(b)))
      assert(Q.resume("pp"))
    end)
  end)

  describe("maintain", function()
    it("returns its counts", function()
      local r = assert(Q.maintain())
      for _, k in ipairs({ "recovered", "expired", "deleted", "processes_removed" }) do
        assert.equal("integer", math.type(r[k]), k)
      end
    end)

    it("an expired active job comes back", function()
      local id = assert(Q.send("exp", { e = 1 }, { expire_in = 1, retry_delay = 0 }))
      local long = assert(Q.send("exp_long", {}))
      assert.equal(1, assert(Q.fetch("exp", 1))[1].attempt)
      assert(Q.fetch("exp_long", 1))
      H.sleep(1.5)
      local r = assert(Q.maintain())
      assert.equal(1, r.expired)
      assert.equal(0, r.recovered)
      local row = H.row("SELECT state::text, attempt, error, process_id FROM @.job WHERE id = $1", id)
      assert.equal("retry", row.state)
      assert.equal(1, row.attempt)
      assert.matches("expire", row.error.message)
      assert.equal(moonq.null, row.process_id)
      assert.equal("active", (where(long)))
      local jobs = assert(Q.fetch("exp", 1))
      assert.equal(1, #jobs)
      assert.equal(id, jobs[1].id)
      assert.equal(2, jobs[1].attempt)
      assert.same({ e = 1 }, jobs[1].data)
    end)

    it("an expired job without retries left fails", function()
      local id = assert(Q.send("exp0", {}, { expire_in = 0.5, retry_limit = 0 }))
      assert(Q.fetch("exp0", 1))
      H.sleep(0.8)
      assert.equal(1, assert(Q.maintain()).expired)
      assert.equal("failed", select(2, where(id)))
    end)

    it("retention deletes only old finished jobs", function()
      local old_done = make("ret", "completed")
      local new_done = make("ret", "completed")
      local old_failed = make("ret", "failed")
      local new_failed = make("ret", "failed")
      local old_cancelled = make("ret", "cancelled")
      local w1, w2 = make("ret", "waiting"), make("ret", "delayed")
      H.sql("UPDATE @.job_archive SET keep_until = now() - interval '1 second' WHERE id = ANY($1::bigint[])",
        ("{%d,%d,%d}"):format(old_done, old_failed, old_cancelled))
      local r = assert(Q.maintain())
      assert.equal(3, r.deleted)
      for _, id in ipairs({ old_done, old_failed, old_cancelled }) do
        assert.is_nil(select(2, where(id)), "kept " .. id)
        assert.is_nil((where(id)))
      end
      assert.equal("completed", select(2, where(new_done)))
      assert.equal("failed", select(2, where(new_failed)))
      assert.equal("created", (where(w1)))
      assert.equal("created", (where(w2)))
      assert.same({ waiting = 1, delayed = 1, active = 0, completed = 1, failed = 1,
                    cancelled = 0, paused = 0 }, Q.counts("ret"))
    end)

    it("the retention option sets keep_until; retention 0 keeps no completed job", function()
      local id = assert(Q.send("ret2", {}, { retention = 3600 }))
      local gone = assert(Q.send("ret2", {}, { retention = 0 }))
      local failed = assert(Q.send("ret2", {}, { retention = 0, retry_limit = 0 }))
      assert.equal(3, #assert(Q.fetch("ret2", 3)))
      assert(Q.complete(id))
      assert.is_true(Q.complete(gone))
      assert(Q.fail(failed, { message = "no" }))
      local kept = H.row("SELECT extract(epoch FROM keep_until - completed_at)::float8 AS s FROM @.job_archive WHERE id = $1", id)
      assert.equal(3600, kept.s)
      -- completed with retention 0: deleted at once, never archived
      assert.is_nil(select(2, where(gone)))
      assert.is_nil(Q.get(gone))
      -- failed with retention 0: archived, deleted by the next maintenance
      assert.equal("failed", select(2, where(failed)))
      assert.equal(1, assert(Q.maintain()).deleted)
      assert.is_nil(select(2, where(failed)))
      assert.equal("completed", select(2, where(id)))
    end)

    it("removes processes long silent, keeps this one", function()
      H.sql([[INSERT INTO @.process (host, pid, version, heartbeat_at)
              VALUES ('gone-host', 1, 'x', now() - interval '1 hour')]])
      local r = assert(Q.maintain())
      assert.equal(1, r.processes_removed)
      assert.equal(0, H.row("SELECT count(*) AS n FROM @.process WHERE host = 'gone-host'").n)
      assert.equal(1, H.row("SELECT count(*) AS n FROM @.process WHERE id = $1::uuid", Q.process_id()).n)
    end)

    it("returns nil while another session runs maintenance", function()
      local app = "mqlock_" .. H.schema
      local pid = H.bg(('PGAPPNAME=%s psql "$DATABASE_URL" -X -q -c %s -c %s')
        :format(app, H.shq("BEGIN; SELECT " .. H.schema .. ".maintain(30); SELECT pg_sleep(2); COMMIT;"), "SELECT 1"))
      local held = H.wait_for(function()
        return H.row([[SELECT count(*) AS n FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                        WHERE a.application_name = $1 AND l.locktype = 'advisory' AND l.granted]], app).n > 0
      end, 5)
      assert.is_truthy(held)
      local r, err = Q.maintain()
      assert.is_nil(r)
      assert.equal("another process is running maintenance", err)
      assert.is_truthy(H.wait_for(function()
        return H.row("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1", app).n == 0
      end, 5))
      assert.is_table(Q.maintain())
      H.kill_group(pid)
    end)
  end)
end)
