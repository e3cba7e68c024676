-- Every completion function takes `outputs` as a JSON array with one entry
-- per id and refuses anything else before it writes (sql/035): since each
-- job finds its output at its place in the array (sql/031), a job past the
-- end of a short array found none and was archived without its output by
-- complete_jobs_with (with effects) and complete_jobs_guarded.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

local PROCESS = "00000000-0000-0000-0000-0000000000d1"

describe("a batch's outputs", function()
  setup(function() H.open({ queue = { retry_limit = 0 } }) end)
  teardown(function() H.close() end)

  -- sends n jobs to q and claims them; returns their ids as a PostgreSQL
  -- array literal
  local function claimed(q, n)
    H.send_jobs(q, n)
    return H.pg_array(H.claim_ids(q, n, PROCESS))
  end

  -- the queue's jobs still active, and archived
  local function left(q)
    return H.row("SELECT (SELECT count(*) FROM @.job WHERE queue = $1 AND state = 'active')::int"
      .. " AS active, (SELECT count(*) FROM @.job_archive WHERE queue = $1)::int AS archived", q)
  end

  -- each call, and the function that refuses its outputs
  local calls = {
    { "complete_jobs", "complete_jobs",
      "SELECT count(*) FROM @.complete_jobs($1::bigint[], $2::jsonb, $3::uuid)" },
    { "complete_jobs_with", "complete_jobs_with",
      "SELECT count(*) FROM @.complete_jobs_with($1::bigint[], $2::jsonb, $3::uuid,"
      .. " '[[{\"type\": \"made\"}], [], []]')" },
    { "complete_jobs_with without effects", "complete_jobs_with",
      "SELECT count(*) FROM @.complete_jobs_with($1::bigint[], $2::jsonb, $3::uuid)" },
    { "complete_jobs_guarded", "complete_jobs_guarded",
      "SELECT count(*) FROM @.complete_jobs_guarded($1::bigint[], $2::jsonb, $3::uuid, NULL,"
      .. " '{1,1,1}')" },
    { "complete_jobs_guarded with effects", "complete_jobs_guarded",
      "SELECT count(*) FROM @.complete_jobs_guarded($1::bigint[], $2::jsonb, $3::uuid,"
      .. " '[[{\"type\": \"made\"}], [], []]', '{1,1,1}')" },
    { "complete_jobs_sent", "complete_jobs_guarded",
      "SELECT count(*) FROM @.complete_jobs_sent($1::bigint[], $2::jsonb, $3::uuid,"
      .. " '[[{\"type\": \"made\"}], [], []]', '{1,1,1}')" },
  }

  for _, c in ipairs(calls) do
    local name, fn, call = c[1], c[2], c[3]
    it("are refused by " .. name .. " when short, long or not an array, and nothing is written", function()
      local q = "outputs_" .. name:gsub("%W", "_")
      local ids = claimed(q, 3)
      for bad, got in pairs({ ['[{"o": 1}]'] = "an array of 1", ['[1, 2, 3, 4]'] = "an array of 4",
                              ['{"o": 1}'] = "a JSON object", ['"o"'] = "a JSON string" }) do
        assert.matches(fn .. ": outputs must be a JSON array with one entry per id (3 ids, got "
          .. got .. ")", H.refusal(call, ids, bad, PROCESS), nil, true)
        assert.same({ active = 3, archived = 0 }, left(q))
      end
      -- a batch that holds one entry per id completes each job with its own
      assert.equal(3, H.row(call, ids, '[{"o": 1}, {"o": 2}, {"o": 3}]', PROCESS).count)
      assert.same({ active = 0, archived = 3 }, left(q))
      local wrong = H.row("SELECT count(*)::int AS n FROM @.job_archive WHERE queue = $1"
        .. " AND output IS DISTINCT FROM jsonb_build_object('o', (data->>'n')::int)", q).n
      assert.equal(0, wrong)
    end)
  end
end)
