-- Claims that start past the queue's claimed head (sql/023_fetch_after.sql,
-- fetch_start in src/worker.c): while a transaction holds the horizon back,
-- the index entries of claimed jobs cannot be removed, and a claim from the
-- head of the queue walks them all. A worker's claims start past a job it
-- claimed a moment ago, and a claim from the head, made now and then, still
-- takes any job that became runnable behind that place.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")

-- Opens moonq with one no-op handler for queue `name` and starts its worker.
local function start(name)
  W.open({ handlers = W.handlers_dir({ [name .. ".lua"] = "return { handler = function() end }" }),
           hot_reload = false, queue = { retry_limit = 0 } })
  assert(moonq.start())
end

-- Index entries read by scans so far (this session's statistics flushed
-- first) of the indexes of job named in `names` (default: those on waiting
-- jobs, job_fetch_idx and job_due_idx).
local function entries_read(names)
  local list = {}
  for i, n in ipairs(names or { "job_fetch_idx", "job_due_idx" }) do
    list[i] = ("'%s.%s'::regclass"):format(W.schema, n)
  end
  local out = assert(W.psql("SELECT pg_stat_force_next_flush();\n"
    .. "SELECT sum(idx_tup_read) FROM pg_stat_user_indexes WHERE indexrelid IN ("
    .. table.concat(list, ", ") .. ");"))
  return tonumber(out:match("(%d+)%s*$"))
end

-- Pages of job and its indexes read so far (from shared buffers or not),
-- this session's statistics flushed first.
local function job_pages_read()
  local out = assert(W.psql(("SELECT pg_stat_force_next_flush();\n"
    .. "SELECT heap_blks_hit + heap_blks_read + idx_blks_hit + idx_blks_read"
    .. " FROM pg_statio_user_tables WHERE relid = '%s.job'::regclass;"):format(W.schema)))
  return tonumber(out:match("(%d+)%s*$"))
end

-- Runs `sql` in one psql session, then the statistics flush, and returns
-- how much the counter `read` (a function) grew by meanwhile, and the
-- session's output.
local function read_by(sql, read)
  local before = read()
  local out, ok = W.psql((sql .. "\nSELECT pg_stat_force_next_flush();\n"):gsub("@%.", W.schema .. "."))
  assert(ok, out)
  W.sleep(0.2)
  return read() - before, out
end

-- read_by counting index entries (entries_read(names)).
local function entries_read_by(sql, names)
  return read_by(sql, function() return entries_read(names) end)
end

-- read_by counting pages of job and its indexes (job_pages_read).
local function job_pages_read_by(sql)
  return read_by(sql, job_pages_read)
end

-- Ends this process's sessions (moonq reconnects), so that they report
-- their statistics, and returns the index entries read so far.
local function settle_stats()
  assert(W.psql(("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%%%s%%'"
    .. " AND pid <> pg_backend_pid();"):format(W.schema)))
  W.run_for(1.0)
  return entries_read()
end

-- Starts a session that holds a snapshot (and so the horizon) until killed;
-- returns once PostgreSQL shows it holding one.
local function hold_horizon()
  local pid = W.bg("{ echo 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;'; "
    .. "sleep 600; } | PGAPPNAME=moonq_spec_hold psql \"$DATABASE_URL\" -X -q >/dev/null")
  W.own(pid)
  assert(W.wait_for(function()
    return W.row("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'moonq_spec_hold' AND backend_xmin IS NOT NULL").n == 1
  end, 20), "the holding session did not start")
  return pid
end

describe("claims past the claimed head", function()
  after_each(W.close)

  it("take higher priorities, then later ids of the position's priority, then lower priorities", function()
    W.open({ hot_reload = false })
    local q = "after_order"
    local function send(p) return assert(moonq.queue.send(q, {}, { priority = p })) end
    local lo1, mid1, hi1, mid2, lo2, mid3, hi2 = send(-1), send(0), send(5), send(0), send(-1), send(0), send(5)
    -- Position (0, mid2): mid1 lies behind it and is left out.
    local rows = W.sql("SELECT id FROM @.fetch_jobs($1, 10, $2::uuid, 0, $3)", q,
      moonq.queue.process_id(), mid2)
    local got = {}
    for i, r in ipairs(rows) do got[i] = r.id end
    assert.same({ hi1, hi2, mid3, lo1, lo2 }, got)
    -- n bounds the claim across the three ranges; the head claim takes mid1.
    assert.equal(mid1, W.row("SELECT id FROM @.fetch_jobs($1, 5, $2::uuid)", q, moonq.queue.process_id()).id)
    assert.same({}, W.sql("SELECT id FROM @.fetch_jobs($1, 5, $2::uuid, 5, 0)", q, moonq.queue.process_id()))
  end)

  it("reads a handful of index entries where a claim from the head walks every claimed job's", function()
    W.open({ hot_reload = false })
    local q = "after_held"
    hold_horizon()
    local ids = assert(moonq.queue.send_many(q, (function()
      local t = {}
      for i = 1, 3000 do t[i] = { n = i } end
      return t
    end)()))
    local last = ids[#ids]
    -- Claim and complete them all: each leaves an entry no scan can remove.
    local pid = moonq.queue.process_id()
    W.sql("SELECT count(*) FROM @.fetch_jobs($1, 3000, $2::uuid)", q, pid)
    W.sql([[SELECT count(*) FROM @.complete_jobs(ARRAY(SELECT id FROM @.job WHERE queue = $1),
              (SELECT jsonb_agg(NULL::jsonb) FROM @.job WHERE queue = $1), $2::uuid)]], q, pid)
    assert.equal(0, W.row("SELECT count(*)::int AS n FROM @.job WHERE queue = $1", q).n)
    for _, n in ipairs({ "a", "b", "c", "d", "e", "f" }) do assert(moonq.queue.send(q, { n = n })) end
    -- Statistics of a table of six live rows, as autovacuum leaves them
    -- under a held horizon (it removes nothing): the planner then takes any
    -- plan for cheap, and a bitmap scan of job_due_idx and a sort, or a
    -- whole index read into a hash join, read every entry.
    assert(W.psql(("VACUUM ANALYZE %s.job;"):format(W.schema)))
    local after, out = entries_read_by(("SELECT count(*) FROM @.fetch_jobs('%s', 1, '%s', 0, %d);"):format(q, pid, last))
    assert.equal("1", out:match("^%s*(%d+)"))
    local head = entries_read_by(("SELECT count(*) FROM @.fetch_jobs('%s', 1, '%s');"):format(q, pid))
    assert.is_true(head >= 3000, "the claim from the head read " .. head .. " entries")
    assert.is_true(after <= 20, "the claim past the position read " .. after .. " entries")
    -- The check of idle queues (worker.c probe_cb, sql/029) looks each
    -- queue up from its newest due entry: it reads a handful, where the
    -- semi-join it was read every due entry of every queue into memory.
    local ready, out4 = entries_read_by(([[SET plan_cache_mode = force_generic_plan;
      PREPARE ready(text[]) AS SELECT to_jsonb(@.ready_queues($1))::text;
      EXECUTE ready('{other,%s,none}');]]):format(q))
    assert.equal("[2]", out4:match("(%[[%d, ]*%])"))
    assert.is_true(ready <= 20, "the check of idle queues read " .. ready .. " entries")
    -- Completing and failing claimed jobs finds them by primary key: not
    -- through job_active_idx, whose 3,000 dead entries (one per completed
    -- job) a scan of it would read (sql/025), nor by reading all of job,
    -- as the plan for any ids did (sql/026). That plan is the one a
    -- worker's connection comes to use after a few calls: forced here.
    local more = W.sql("SELECT id FROM @.fetch_jobs($1, 4, $2::uuid, 0, $3)", q, pid, last)
    assert.equal(4, #more)
    local running = W.sql("SELECT id FROM @.job WHERE queue = $1 AND state = 'active' ORDER BY id", q)
    assert.equal(6, #running)
    local calls = {
      completion = "SELECT count(*) FROM @.complete_jobs_guarded(ARRAY[%d]::bigint[], '[null]'::jsonb, '%s'::uuid, NULL::jsonb, NULL::integer[])",
      ["completion with effects"] = "SELECT count(*) FROM @.complete_jobs_guarded(ARRAY[%d]::bigint[], '[null]'::jsonb, '%s'::uuid, '[[]]'::jsonb, ARRAY[1])",
      ["failure at its attempt"] = [[SELECT count(*) FROM @.fail_jobs_at(ARRAY[%d]::bigint[], ARRAY['{"message": "x"}'::jsonb], '%s'::uuid, ARRAY[1])]],
      ["failure without a retry"] = [[SELECT count(*) FROM @.fail_jobs_guarded(ARRAY[%d]::bigint[], ARRAY['{"message": "x", "retry": false}'::jsonb], '%s'::uuid)]],
      ["failure"] = [[SELECT count(*) FROM @.fail_jobs_guarded(ARRAY[%d]::bigint[], ARRAY['{"message": "x"}'::jsonb], '%s'::uuid)]],
    }
    local names = { "completion", "completion with effects", "failure at its attempt", "failure without a retry", "failure" }
    -- A write reads a few dozen pages (the new row's, index pages it goes
    -- in); a read of the whole table, all of them.
    local pages = W.row("SELECT relpages::int AS n FROM pg_class WHERE oid = $1::regclass", W.schema .. ".job").n
    assert.is_true(pages >= 100, "job has " .. pages .. " pages")
    for k, name in ipairs(names) do
      local read, out = job_pages_read_by("SET plan_cache_mode = force_generic_plan;\n"
        .. calls[name]:format(running[k].id, pid) .. ";")
      assert.equal("1", out:match("(%d+)%s*$"), name)
      assert.is_true(read < pages / 2, ("the %s read %d pages of job and its indexes (%d in job)"):format(name, read, pages))
    end
    local function state(k)
      local r = W.row("SELECT state::text AS s FROM @.job WHERE id = $1", running[k].id)
        or W.row("SELECT state::text AS s FROM @.job_archive WHERE id = $1", running[k].id)
      return r and r.s
    end
    assert.same({ "completed", "completed", "retry", "failed", "retry", "active" },
      { state(1), state(2), state(3), state(4), state(5), state(6) })
  end)

  it("a worker claims past the head while the horizon is held, and still runs every job", function()
    start("held")
    W.sql("ANALYZE @.job")
    hold_horizon()
    local ids = assert(moonq.queue.send_many("held", (function()
      local t = {}
      for i = 1, 3000 do t[i] = { n = i } end
      return t
    end)()))
    assert(W.wait_all(ids, 60))
    W.run_for(1.5) -- the last claim becomes where claims start
    -- A backend reports its statistics when it ends: end this process's
    -- (moonq reconnects) to count only what the claims below read.
    local before = settle_stats()
    -- One job at a time for 3 s: a claim from the head would read 3,000
    -- entries each; claims past the position, all but about one a second
    -- (and one after each reconnect).
    local more = {}
    for i = 1, 60 do
      more[i] = assert(moonq.queue.send("held", { i = i }))
      W.run_for(0.05)
    end
    assert(W.wait_all(more, 30))
    local read = settle_stats() - before
    assert.is_true(read < 60 * 3000 / 4, "60 claims read " .. read .. " index entries")
  end)

  it("runs a job whose sending transaction committed after later jobs were claimed", function()
    start("late")
    -- The job takes its id now and commits 3 s later, while the worker
    -- claims jobs with greater ids past it.
    local pid = W.bg("{ echo \"BEGIN; SELECT " .. W.schema .. ".send('late', '{\\\"n\\\": \\\"late\\\"}');\"; "
      .. "sleep 3; echo 'COMMIT;'; } | psql \"$DATABASE_URL\" -X -q >/dev/null")
    W.own(pid)
    assert(W.wait_for(function()
      return W.row("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'idle in transaction' AND query LIKE '%.send(''late''%'").n == 1
    end, 20), "the sending transaction did not start")
    local ids = {}
    local t0 = W.now()
    while W.now() - t0 < 8 do
      ids[#ids + 1] = assert(moonq.queue.send("late", {}))
      W.run_for(0.05)
    end
    assert(W.wait_all(ids, 30))
    local late = W.wait_for(function()
      W.run_for(0.1)
      return W.row("SELECT count(*)::int AS n FROM @.job_archive WHERE queue = 'late' AND data->>'n' = 'late'").n == 1
    end, 20)
    assert.is_true(late, "the late job never ran")
    -- And it did not wait for the queue to go idle: it ran while jobs sent
    -- after it were still arriving.
    assert.is_true(W.row([[SELECT (SELECT started_at FROM @.job_archive WHERE data->>'n' = 'late')
                                  < (SELECT max(started_at) FROM @.job_archive WHERE queue = 'late') AS ok]]).ok)
  end)
  -- The interval between claims from the head follows how long PostgreSQL
  -- took for the last one, not how long the loop took to read its reply:
  -- handlers that do not yield hold the loop for their whole run, and
  -- 40 ms of them once made the next claim from the head wait 8 s.
  it("claims from the head about once a second while handlers keep the loop busy", function()
    local schema = W.open({ hot_reload = false })
    local dir = W.handlers_dir({ ["spin.lua"] = [[
return { concurrency = 2, handler = function(job)
  if job.data.fail and job.attempt == 1 then error("first attempt fails") end
  local t = os.clock() + (job.data.cpu or 0)
  while os.clock() < t do end
end }
]] })
    W.moonq_run(W.config_file({ schema = schema, handlers = dir, hot_reload = false,
      queue = { retry_limit = 1, retry_delay = 0, retry_backoff = false, poll_interval = 2 },
      log = { level = "info" } }))
    W.sleep(1.5)
    -- The late job takes its id now and commits 4 s later.
    local out = W.tmpdir() .. "/late"
    W.own(W.bg("{ echo \"BEGIN; SELECT " .. schema .. ".send('spin', '{\\\"n\\\": \\\"late\\\"}');\"; "
      .. "sleep 4; echo \"COMMIT; \\\\o " .. out .. "\"; echo 'SELECT extract(epoch FROM clock_timestamp());'; }"
      .. " | psql \"$DATABASE_URL\" -X -q -t -A >/dev/null"))
    W.sleep(0.5)
    -- 1,500 jobs of 20 ms of CPU each (15 s of work on 2 slots); 150 of
    -- them in, the first attempt of job `retried` fails, and its retry is
    -- due at once, behind where claims start.
    W.sql("SELECT @.send_many('spin', (SELECT jsonb_agg(jsonb_build_object('cpu', 0.02)) FROM generate_series(1, 150)))")
    local retried = W.row("SELECT @.send('spin', '{\"fail\": true}') AS id").id
    W.sql("SELECT @.send_many('spin', (SELECT jsonb_agg(jsonb_build_object('cpu', 0.02)) FROM generate_series(1, 1350)))")
    local committed = W.poll(function()
      local s = W.read(out)
      return s and tonumber(s:match("[%d.]+"))
    end, 20, 0.1)
    assert.is_truthy(committed, "the sending transaction did not commit")
    -- Seconds from a job's being runnable to its claim (nil: not yet).
    local function waited(where)
      local r = W.row(([[SELECT extract(epoch FROM started_at)::float8 AS t FROM @.job_archive WHERE %s
                         UNION ALL SELECT extract(epoch FROM started_at)::float8 FROM @.job
                          WHERE %s AND state = 'active' AND attempt = 2]]):format(where, where))
      return r and r.t
    end
    local late = W.poll(function() return waited("data->>'n' = 'late'") end, 60, 0.1)
    assert.is_truthy(late, "the late job never ran")
    assert.is_true(late - committed < 3, ("the late job was claimed %.2f s after its commit"):format(late - committed))
    -- When the retry was due (its start_after; the row may be waiting,
    -- running its second attempt, or archived already: a slow build takes
    -- long over the checks above).
    local failed_at = W.poll(function()
      local r = W.row("SELECT extract(epoch FROM start_after)::float8 AS t FROM @.job WHERE id = $1 AND attempt = 1 AND state = 'retry'", retried)
        or W.row("SELECT extract(epoch FROM start_after)::float8 AS t FROM @.job WHERE id = $1 AND attempt = 2", retried)
        or W.row("SELECT extract(epoch FROM start_after)::float8 AS t FROM @.job_archive WHERE id = $1 AND attempt = 2", retried)
      return r and r.t
    end, 30, 0.02)
    assert.is_truthy(failed_at, "the first attempt did not fail")
    local again = W.poll(function()
      local r = W.row("SELECT extract(epoch FROM started_at)::float8 AS t FROM @.job WHERE id = $1 AND attempt = 2"
        .. " UNION ALL SELECT extract(epoch FROM started_at)::float8 FROM @.job_archive WHERE id = $1", retried)
      return r and r.t
    end, 60, 0.05)
    assert.is_truthy(again, "the retry never ran")
    assert.is_true(again - failed_at < 3, ("the retry was claimed %.2f s after it was due"):format(again - failed_at))
    assert.is_true(W.row("SELECT count(*)::int AS n FROM @.job WHERE queue = 'spin'").n > 200,
      "the queue ran dry before the checks: they prove nothing")
  end)
  -- Only the worker's claim statement, its own transaction, commits
  -- without waiting for the WAL flush; a SQL caller's transaction that
  -- claims and writes its own rows keeps its setting.
  it("leaves synchronous_commit alone in a caller's transaction that does more than claim", function()
    W.open({ hot_reload = false })
    assert(moonq.queue.send("sync_caller", {}))
    local out, ok = W.psql(([[
BEGIN;
SELECT count(*) FROM %s.fetch_jobs('sync_caller', 1, gen_random_uuid());
SHOW synchronous_commit;
COMMIT;]]):format(W.schema))
    assert(ok, out)
    local claimed, setting = out:match("^%s*(%d+)%s+(%a+)")
    assert.equal("1", claimed)
    assert.equal("on", setting)
  end)
end)
