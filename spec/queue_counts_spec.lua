-- counts(q) of finished jobs come from job_counts, the changes that
-- statement triggers of job_archive insert and maintain adds up
-- (sql/034_archive_counts.sql, sql/036_job_counts.sql): exact through every
-- way a job is archived or leaves the archive, without reading the archive,
-- whose size is the history's, and without making two archiving
-- transactions wait on each other.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

local PROCESS = "00000000-0000-0000-0000-0000000000c1"

describe("counts of finished jobs", function()
  setup(function() H.open({ queue = { retry_limit = 0 } }) end)
  teardown(function() H.close() end)

  -- counts(q) as a table, and the same counted from job_archive
  local function counts(q)
    local c = require("moonq").json.decode(H.row("SELECT @.counts($1)::text AS c", q).c)
    local real = { completed = 0, failed = 0, cancelled = 0 }
    for _, r in ipairs(H.sql("SELECT state::text AS s, count(*)::int AS n FROM @.job_archive"
        .. " WHERE queue = $1 GROUP BY state", q)) do
      real[r.s] = r.n
    end
    return { completed = c.completed, failed = c.failed, cancelled = c.cancelled }, real
  end

  -- sends n jobs to q and claims them; returns their ids
  local function claimed(q, n)
    H.send_jobs(q, n)
    return H.claim_ids(q, n, PROCESS)
  end

  local pg_array = H.pg_array

  it("follow completions, failures, cancels, retries, purges, retention and truncation", function()
    local q = "counted"
    local ids = claimed(q, 30)
    H.sql("SELECT count(*) FROM @.complete_jobs($1::bigint[], (SELECT jsonb_agg(null::jsonb)"
      .. " FROM generate_series(1, 10)), $2::uuid)", pg_array({ table.unpack(ids, 1, 10) }), PROCESS)
    H.sql("SELECT count(*) FROM @.fail_jobs($1::bigint[], ARRAY(SELECT '{\"message\": \"no\"}'::jsonb"
      .. " FROM generate_series(1, 8)), $2::uuid)", pg_array({ table.unpack(ids, 11, 18) }), PROCESS)
    for i = 19, 21 do H.sql("SELECT @.cancel($1)", ids[i]) end
    local got, real = counts(q)
    assert.same({ completed = 10, failed = 8, cancelled = 3 }, real)
    assert.same(real, got)

    -- a failed job retried leaves the archive; purge deletes the cancelled
    assert.is_true(H.row("SELECT @.retry_job($1) AS ok", ids[11]).ok)
    H.sql("SELECT @.purge($1, 'cancelled')", q)
    got, real = counts(q)
    assert.same({ completed = 10, failed = 7, cancelled = 0 }, real)
    assert.same(real, got)

    -- retention deletes the jobs past their keep_until
    H.sql("UPDATE @.job_archive SET keep_until = now() - interval '1 s' WHERE id = ANY($1::bigint[])",
      pg_array({ table.unpack(ids, 1, 4) }))
    H.sql("SELECT @.maintain(3600, 10000)")
    got, real = counts(q)
    assert.same({ completed = 6, failed = 7, cancelled = 0 }, real)
    assert.same(real, got)

    -- another queue's counts are its own
    local other = claimed("counted_other", 2)
    H.sql("SELECT count(*) FROM @.complete_jobs($1::bigint[], '[null, null]', $2::uuid)", pg_array(other), PROCESS)
    got = counts("counted_other")
    assert.same({ completed = 2, failed = 0, cancelled = 0 }, got)

    H.sql("TRUNCATE @.job_archive")
    got, real = counts(q)
    assert.same({ completed = 0, failed = 0, cancelled = 0 }, real)
    assert.same(real, got)
  end)

  it("do not read job_archive", function()
    local q = "counted_big"
    local ids = claimed(q, 3000)
    H.sql("SELECT count(*) FROM @.complete_jobs($1::bigint[], (SELECT jsonb_agg(null::jsonb)"
      .. " FROM generate_series(1, 3000)), $2::uuid)", pg_array(ids), PROCESS)
    local read, out = H.rows_visited("job_archive", ("SELECT @.counts('%s')->>'completed';"):format(q))
    assert.equal("3000", out:match("^%s*(%d+)"))
    assert.is_true(read < 100, "counts read " .. read .. " rows of job_archive")
  end)

  it("add up in maintain without changing", function()
    local q = "counted_sum"
    for _ = 1, 5 do
      local ids = claimed(q, 3)
      H.sql("SELECT count(*) FROM @.complete_jobs($1::bigint[], '[null, null, null]', $2::uuid)",
        pg_array(ids), PROCESS)
    end
    local rows = function()
      return H.row("SELECT count(*)::int AS n FROM @.job_counts WHERE queue = $1"
        .. " AND state > 'active'", q).n
    end
    assert.is_true(rows() >= 5, "one change a statement: " .. rows())
    H.sql("SELECT @.maintain(3600, 10000)")
    assert.equal(1, rows())
    assert.same({ completed = 15, failed = 0, cancelled = 0 }, (counts(q)))
  end)

  it("hold back no other connection's archiving while a transaction that archived stays open", function()
    local q = "counted_open"
    local ids = claimed(q, 2)
    -- A: archives the first job and stays open for up to a minute
    local log = H.tmpname()
    local a = H.bg(("{ echo \"BEGIN; SELECT 'slot=' || pg_backend_pid() %% 16;"
      .. " SELECT 'done=' || count(*) FROM %s.complete_jobs('{%d}', '[null]', '%s');\"; sleep 60; }"
      .. " | psql \"$DATABASE_URL\" -X -q -t -A"):format(H.schema, ids[1], PROCESS), log)
    local slot = H.wait_for(function()
      local text = H.read(log) or ""
      return text:find("done=1", 1, true) and tonumber(text:match("slot=(%d+)"))
    end, 20)
    assert.truthy(slot, H.read(log))
    -- B: connections until one has A's backend pid modulo 16 (the row of
    -- A's queue that a count kept per pid modulo 16 would hold locked),
    -- which archives the second job, waiting at most 5 s for a lock
    local out, ok
    for _ = 1, 400 do
      out, ok = H.psql(([[SET lock_timeout = '5s';
        DO $$ BEGIN
          IF pg_backend_pid() %% 16 = %d THEN
            PERFORM count(*) FROM %s.complete_jobs('{%d}', '[null]', '%s');
            RAISE NOTICE 'archived';
          END IF;
        END $$;]]):format(slot, H.schema, ids[2], PROCESS))
      if not ok or out:find("archived", 1, true) then break end
    end
    H.kill_group(a)
    assert(ok, out)
    assert.truthy(out:find("archived", 1, true), "no connection shared A's slot")
    assert.equal("completed", H.row("SELECT state::text AS s FROM @.job_archive WHERE id = $1", ids[2]).s)
  end)
end)
