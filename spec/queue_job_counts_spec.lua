-- counts(q) of waiting, paused and active jobs come from job_counts, the
-- changes that statement triggers of `job` insert and maintain adds up;
-- delayed jobs from job_due_idx past now() (sql/036_job_counts.sql): exact
-- through every way a job is sent, claimed, moved, released, retried,
-- cancelled, purged or archived, without visiting the jobs that are ready.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

local PROCESS = "00000000-0000-0000-0000-0000000000c2"

describe("counts of waiting, delayed and active jobs", function()
  setup(function() H.open({ queue = { retry_limit = 1, retry_delay = 3600, retry_backoff = false } }) end)
  teardown(function() H.close() end)

  local pg_array = H.pg_array

  -- counts(q) and the same counted from the rows of job, job_archive and queue
  local function both(q)
    local c = require("moonq").json.decode(H.row("SELECT @.counts($1)::text AS c", q).c)
    local r = H.row([[
      WITH p AS (SELECT coalesce((SELECT paused FROM @.queue WHERE name = $1), false) AS paused),
      j AS (SELECT count(*) FILTER (WHERE state < 'active' AND start_after <= now())::int AS ready,
                   count(*) FILTER (WHERE state < 'active' AND start_after > now())::int AS delayed,
                   count(*) FILTER (WHERE state = 'active')::int AS active
              FROM @.job WHERE queue = $1),
      a AS (SELECT count(*) FILTER (WHERE state = 'completed')::int AS completed,
                   count(*) FILTER (WHERE state = 'failed')::int AS failed,
                   count(*) FILTER (WHERE state = 'cancelled')::int AS cancelled
              FROM @.job_archive WHERE queue = $1)
      SELECT CASE WHEN p.paused THEN 0 ELSE j.ready END AS waiting,
             CASE WHEN p.paused THEN j.ready ELSE 0 END AS paused,
             j.delayed, j.active, a.completed, a.failed, a.cancelled
        FROM p, j, a]], q)
    return c, r
  end

  local function expect(q, want)
    local got, real = both(q)
    for k, v in pairs(want) do
      assert.equal(v, real[k], ("%s of %s counted from the rows"):format(k, q))
    end
    assert.same(real, got)
  end

  local send_many = H.send_jobs

  local function fetch(q, n)
    return H.claim_ids(q, n, PROCESS)
  end

  local function waiting_ids(q, n)
    local ids = {}
    for _, r in ipairs(H.sql("SELECT id FROM @.job WHERE queue = $1 AND state = 'created'"
        .. " AND start_after <= now() ORDER BY id LIMIT $2::int", q, n)) do
      ids[#ids + 1] = r.id
    end
    return ids
  end

  it("follow every way a job is sent, claimed, moved and leaves", function()
    local q = "live"
    for i = 1, 5 do H.sql("SELECT @.send($1, $2::jsonb)", q, ('{"i": %d}'):format(i)) end
    send_many(q, 10)
    expect(q, { waiting = 15, delayed = 0, active = 0 })

    -- delayed jobs, and a singleton sent twice (the second is refused by its key)
    send_many(q, 2, '{"delay": 3600}')
    H.sql("SELECT @.send($1, '{}', '{\"singleton_key\": \"k\"}')", q)
    H.sql("SELECT @.send($1, '{}', '{\"singleton_key\": \"k\"}')", q)
    expect(q, { waiting = 16, delayed = 2 })

    -- claims, completions, failures (the first failure retries, delayed)
    local ids = fetch(q, 8)
    assert.equal(8, #ids)
    expect(q, { waiting = 8, active = 8 })
    H.sql("SELECT count(*) FROM @.complete_jobs($1::bigint[], '[null, null]', $2::uuid)",
      pg_array({ ids[1], ids[2] }), PROCESS)
    H.sql("SELECT count(*) FROM @.fail_jobs($1::bigint[], ARRAY['{\"message\": \"no\"}'::jsonb,"
      .. " '{\"message\": \"no\"}'::jsonb], $2::uuid)", pg_array({ ids[3], ids[4] }), PROCESS)
    expect(q, { waiting = 8, delayed = 4, active = 4, completed = 2 })

    -- released back to waiting; cancelled while active and while waiting
    H.sql("SELECT @.release_jobs($1::bigint[], $2::uuid)", pg_array({ ids[5] }), PROCESS)
    H.sql("SELECT @.cancel($1)", ids[6])
    H.sql("SELECT @.cancel($1)", waiting_ids(q, 1)[1])
    expect(q, { waiting = 8, delayed = 4, active = 2, cancelled = 2 })

    -- a retried job's second failure is final
    H.sql("UPDATE @.job SET start_after = now() WHERE id = ANY($1::bigint[])", pg_array({ ids[3], ids[4] }))
    local again = fetch(q, 100)
    assert.equal(10, #again)
    expect(q, { waiting = 0, delayed = 2, active = 12 })
    H.sql("SELECT count(*) FROM @.fail_jobs($1::bigint[], ARRAY['{\"message\": \"no\"}'::jsonb,"
      .. " '{\"message\": \"no\"}'::jsonb], $2::uuid)", pg_array({ ids[3], ids[4] }), PROCESS)
    expect(q, { active = 10, failed = 2 })
    H.sql("SELECT @.release_jobs($1::bigint[], $2::uuid)", pg_array(again), PROCESS)
    H.sql("SELECT @.release_jobs($1::bigint[], $2::uuid)", pg_array({ ids[7], ids[8] }), PROCESS)
    expect(q, { waiting = 10, delayed = 2, active = 0 })

    -- moved to another queue (as move_handler_jobs does); a pause; purges
    H.sql("UPDATE @.job SET queue = 'live_other' WHERE id = ANY($1::bigint[])", pg_array(waiting_ids(q, 3)))
    expect(q, { waiting = 7 })
    expect("live_other", { waiting = 3 })
    H.sql("SELECT @.pause($1)", q)
    expect(q, { waiting = 0, paused = 7, delayed = 2 })
    H.sql("SELECT @.resume($1)", q)
    H.sql("SELECT @.purge($1, 'delayed')", q)
    expect(q, { waiting = 7, delayed = 0 })
    H.sql("DELETE FROM @.job WHERE id = $1", waiting_ids(q, 1)[1])
    expect(q, { waiting = 6 })

    -- an UPDATE that moves no job between queues or states writes no change
    local changes = H.row("SELECT count(*)::int AS n FROM @.job_counts").n
    H.sql("UPDATE @.job SET data = data || '{\"seen\": true}' WHERE queue = $1", q)
    assert.equal(changes, H.row("SELECT count(*)::int AS n FROM @.job_counts").n)

    -- maintain adds the changes up without changing a count
    H.sql("SELECT @.maintain(3600, 10000)")
    assert.equal(0, H.row("SELECT count(*)::int AS n FROM (SELECT queue, state FROM @.job_counts"
      .. " GROUP BY queue, state HAVING count(*) > 1) x").n)
    expect(q, { waiting = 6, completed = 2, failed = 2, cancelled = 2 })
    expect("live_other", { waiting = 3 })

    -- no path left a finished state in job (its CHECK is gone, sql/037)
    assert.equal(0, H.row("SELECT count(*)::int AS n FROM @.job WHERE state > 'active'").n)

    -- TRUNCATE forgets the jobs in job and keeps the finished ones
    H.sql("TRUNCATE @.job")
    expect(q, { waiting = 0, delayed = 0, active = 0, completed = 2, failed = 2, cancelled = 2 })
    expect("live_other", { waiting = 0 })
  end)

  it("refuse a TRUNCATE whose snapshot would miss jobs written meanwhile", function()
    -- Under REPEATABLE READ or SERIALIZABLE the trigger's DELETE would not
    -- see the changes of the jobs sent while the TRUNCATE waited for them.
    local q = "truncated_rr"
    send_many(q, 2)
    H.sql("SELECT count(*) FROM @.complete_jobs((SELECT array_agg(id) FROM @.fetch_jobs($1, 1, $2::uuid)),"
      .. " '[null]', $2::uuid)", q, PROCESS)
    for _, t in ipairs({ "job", "job_archive" }) do
      for _, level in ipairs({ "REPEATABLE READ", "SERIALIZABLE" }) do
        local out, ok = H.psql(("BEGIN ISOLATION LEVEL %s; TRUNCATE %s.%s; COMMIT;")
          :format(level, H.schema, t))
        assert.is_falsy(ok, out)
        assert.truthy(out:find(("TRUNCATE of %s needs READ COMMITTED isolation, not %s")
          :format(t, level:lower()), 1, true), out)
      end
    end
    expect(q, { waiting = 1, completed = 1 })
    -- under READ COMMITTED it sees the send it waited for
    local log = H.tmpname()
    local b = H.bg(("{ echo \"BEGIN; SELECT 'sent=' || %s.send('%s', '{}'); SELECT pg_sleep(1); COMMIT;\"; }"
      .. " | psql \"$DATABASE_URL\" -X -q -t -A"):format(H.schema, q), log)
    assert.truthy(H.wait_for(function() return (H.read(log) or ""):find("sent=", 1, true) end, 20), H.read(log))
    H.sql("TRUNCATE @.job")
    H.kill_group(b)
    expect(q, { waiting = 0, completed = 1 })
  end)

  it("do not visit the jobs that are ready", function()
    local q = "live_big"
    send_many(q, 3000)
    send_many(q, 5, '{"delay": 3600}')
    H.sql("ANALYZE @.job")
    local read, out = H.rows_visited("job",
      ("SELECT @.counts('%s')->>'waiting', @.counts('%s')->>'delayed';"):format(q, q))
    assert.equal("3000|5", out:match("^%s*(%d+|%d+)"))
    assert.is_true(read < 100, "counts visited " .. read .. " rows of job")
  end)
end)
