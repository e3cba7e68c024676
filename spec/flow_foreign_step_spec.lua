-- A handler's ctx.enqueue passes its run id on, so a job of another flow's
-- step can carry the run id of a run of this flow. When it is archived in
-- one statement with the run's last step (a batch of completions, a batch
-- of failures), the run still ends (sql/035): flow_steps_archived found the
-- run's outcome by run id alone, took the other flow's entry for it, and
-- the run stayed running with no job left.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

local PROCESS = "00000000-0000-0000-0000-0000000000e1"

-- "zulu" sorts after "alpha": the entry the run was given before the fix
local FLOWS = [[
[{"flow": "alpha", "steps": [{"step": "last", "job": "alpha.last", "entry": true}]},
 {"flow": "zulu", "steps": [{"step": "go", "job": "zulu.go", "entry": true}]}]
]]

describe("a run's last step archived with another flow's step of the same run id", function()
  setup(function()
    H.open({ queue = { retry_limit = 0 } })
    H.sql("SELECT @.store_flows($1::jsonb)", FLOWS)
  end)
  teardown(function() H.close() end)

  -- starts run `run` of alpha, sends zulu.go with the same run id (as
  -- ctx.enqueue in the run's step would), claims both; returns their ids
  -- as a PostgreSQL array literal
  local function two_jobs(run)
    H.sql("SELECT @.start_flow('alpha', '{}', jsonb_build_object('run_id', $1::text))", run)
    H.sql("SELECT @.send('zulu.go', '{}', jsonb_build_object('run_id', $1::text))", run)
    local ids = {}
    for _, q in ipairs({ "alpha.last", "zulu.go" }) do
      ids[#ids + 1] = H.row("SELECT id FROM @.fetch_jobs($1, 1, $2::uuid)", q, PROCESS).id
    end
    assert.equal(0, H.row("SELECT count(*)::int AS n FROM @.job WHERE run_id = $1"
      .. " AND state <> 'active'", run).n)
    return H.pg_array(ids)
  end

  local function run_row(run)
    return H.row("SELECT status, coalesce(failed_step, '') AS failed_step,"
      .. " (SELECT count(*)::int FROM @.queue_events e WHERE e.run_id = $1"
      .. " AND e.type LIKE 'flow.%' AND e.type <> 'flow.started') AS ended"
      .. " FROM @.queue_flow_index WHERE run_id = $1", run)
  end

  it("completes the run when both complete in one batch", function()
    local ids = two_jobs("shared-completed")
    assert.equal(2, H.row("SELECT count(*)::int AS n FROM @.complete_jobs($1::bigint[],"
      .. " '[null, null]', $2::uuid)", ids, PROCESS).n)
    assert.same({ status = "completed", failed_step = "", ended = 1 }, run_row("shared-completed"))
  end)

  it("fails the run when its step fails in one batch with the other", function()
    local ids = two_jobs("shared-failed")
    H.sql("SELECT count(*) FROM @.fail_jobs($1::bigint[], ARRAY['{\"message\": \"no\"}',"
      .. " '{\"message\": \"no\"}']::jsonb[], $2::uuid)", ids, PROCESS)
    assert.same({ status = "failed", failed_step = "last", ended = 1 }, run_row("shared-failed"))
  end)

  it("leaves the run running when the other flow's job alone is archived", function()
    H.sql("SELECT @.start_flow('alpha', '{}', '{\"run_id\": \"shared-alone\"}')")
    H.sql("SELECT @.send('zulu.go', '{}', '{\"run_id\": \"shared-alone\"}')")
    local id = H.row("SELECT id FROM @.fetch_jobs('zulu.go', 1, $1::uuid)", PROCESS).id
    H.sql("SELECT count(*) FROM @.complete_jobs(ARRAY[$1]::bigint[], '[null]', $2::uuid)", id, PROCESS)
    assert.same({ status = "running", failed_step = "", ended = 0 }, run_row("shared-alone"))
  end)
end)
