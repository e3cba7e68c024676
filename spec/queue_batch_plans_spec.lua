-- A worker completes its jobs in batches of up to 1,000 (one statement), and
-- the plan of each statement inside the completion functions is the generic
-- one after a few calls: it cannot know the batch's size and assumes ten
-- ids. A join of the batch's arrays to the batch's jobs then became a
-- nested loop over both: 500,000 comparisons for 1,000 jobs, 70 ms of a
-- 90 ms completion (sql/031_batch_positions.sql). These tests run each
-- completion path on a batch of 1,000 claimed jobs and check that no plan
-- node handles more than a few rows per job.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

local N = 1000
local PROCESS = "00000000-0000-0000-0000-0000000000b1"

describe("completing a batch of 1,000 jobs", function()
  local q = "batch_plans"

  setup(function()
    H.open({ queue = { retry_limit = 2 } })
    -- 50,000 other jobs waiting: with the statistics of a big table the
    -- planner expects a handful of rows from 10 ids, as in a worker's drain
    assert(H.psql(([[SET moonq.no_wake = on;
      SELECT count(*) FROM @.send_many('other', (SELECT jsonb_agg(jsonb_build_object('n', g))
                                                  FROM generate_series(1, 50000) g));
      SELECT count(*) FROM @.send_many('%s', (SELECT jsonb_agg(jsonb_build_object('n', g))
                                               FROM generate_series(1, %d) g));
      SELECT count(*) FROM @.fetch_jobs('%s', %d, '%s');
      ANALYZE @.job;
      -- the batch, as a worker would send it (a table of one row: the
      -- plans checked are those of the functions only)
      CREATE TABLE @.batch_args AS
        SELECT array_agg(id ORDER BY id DESC) AS ids,
               jsonb_agg(jsonb_build_object('done', id) ORDER BY id DESC) AS outputs,
               array_agg(attempt ORDER BY id DESC) AS attempts
          FROM @.job WHERE queue = '%s' AND state = 'active';]]):format(q, N, q, N, PROCESS, q):gsub("@%.", H.schema .. ".")))
  end)

  teardown(function() H.close() end)

  -- Runs `call` (a statement returning one count) on the claimed jobs,
  -- then `verify` (another count), in a transaction that is rolled back;
  -- asserts that both return `want` and that no plan node handled more
  -- than 4 rows a job.
  local function check(call, want, verify)
    local out = H.assert_linear_plans(("%s;\n/* unmeasured */ %s"):format(call:gsub("%%s", PROCESS),
      verify or ("SELECT " .. want)), N)
    local counts = {}
    for n in out:gmatch("\n(%d+)\n") do counts[#counts + 1] = tonumber(n) end
    assert.same({ want, want }, { counts[#counts - 1], counts[#counts] })
  end

  -- archived jobs whose output (or error) names their own id
  local own_output = "SELECT count(*) FROM @.job_archive a WHERE a.output->>'done' = a.id::text"
  local own_error = "SELECT count(*) FROM @.job_archive a WHERE a.error->>'message' = a.id::text"
  local function errors(extra)
    return ("ARRAY(SELECT jsonb_build_object('message', id::text)%s FROM unnest(b.ids) AS id)"):format(extra or "")
  end

  it("without effects (complete_jobs)", function()
    check("SELECT count(*) FROM @.batch_args b, @.complete_jobs(b.ids, b.outputs, '%s')", N, own_output)
  end)

  it("as a worker sends it, with attempts (complete_jobs_guarded)", function()
    check("SELECT count(*) FROM @.batch_args b, @.complete_jobs_guarded(b.ids, b.outputs, '%s', NULL, b.attempts)", N,
      own_output)
  end)

  it("with events emitted by each job (complete_jobs_with)", function()
    check([[SELECT count(*) FROM @.batch_args b, @.complete_jobs_with(b.ids, b.outputs, '%s',
      (SELECT jsonb_agg(jsonb_build_array(jsonb_build_object('type', 'x.done', 'data', jsonb_build_object('i', i)))) FROM generate_series(1, 1000) i),
      b.attempts)]], N, own_output)
  end)

  it("with jobs enqueued by each job (complete_jobs_with)", function()
    check([[SELECT count(*) FROM @.batch_args b, @.complete_jobs_with(b.ids, b.outputs, '%s',
      (SELECT jsonb_agg(jsonb_build_object('jobs', jsonb_build_array(jsonb_build_object('name', 'next', 'data', jsonb_build_object('i', i))))) FROM generate_series(1, 1000) i),
      b.attempts)]], N)
  end)

  it("with some jobs past their attempt (complete_jobs_with)", function()
    check([[SELECT count(*) FROM @.batch_args b, @.complete_jobs_with(b.ids, b.outputs, '%s', NULL,
      ARRAY(SELECT CASE WHEN i % 10 = 0 THEN 99 ELSE 1 END FROM generate_series(1, 1000) i))]], 900)
  end)

  it("failing, with a retry (fail_jobs_at, as a worker sends it)", function()
    check("SELECT count(*) FROM @.batch_args b, @.fail_jobs_at(b.ids, " .. errors() .. ", '%s', b.attempts)", N,
      "SELECT count(*) FROM @.batch_args b, @.job j WHERE j.id = ANY(b.ids) AND j.state = 'retry'"
      .. " AND j.error->>'message' = j.id::text")
  end)

  it("failing for good (fail_jobs_guarded, errors that ask for no retry)", function()
    check("SELECT count(*) FROM @.batch_args b, @.fail_jobs_guarded(b.ids, "
      .. errors(" || '{\"retry\": false}'") .. ", '%s')", N, own_error)
  end)

  it("cancelling (archive)", function()
    check([[SELECT count(*) FROM @.batch_args b, @.archive(b.ids, 'cancelled',
      ARRAY(SELECT jsonb_build_object('done', id) FROM unnest(b.ids) AS id), ]] .. errors() .. ")", N,
      "SELECT count(*) FROM @.job_archive a WHERE a.output->>'done' = a.id::text AND a.error->>'message' = a.id::text")
  end)
end)
