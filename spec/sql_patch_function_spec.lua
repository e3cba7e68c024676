-- patch_function (sql/026): migrations change a few words of a long stored
-- function by rewriting its definition; a text that is not there exactly
-- once is refused, and the function is left as it was.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

describe("patch_function", function()
  setup(function()
    H.open({})
    H.sql(("CREATE FUNCTION %s.patch_me(x int) RETURNS int LANGUAGE plpgsql"
      .. " SET work_mem = '1MB' AS $$ BEGIN RETURN x + 1 + 1; END $$"):format(H.schema))
  end)
  teardown(H.close)

  local fn = function() return H.schema .. ".patch_me(integer)" end

  it("replaces a text that occurs once, keeping the function's settings", function()
    H.sql("SELECT @.patch_function($1::regprocedure, 'RETURN x', 'RETURN 10 * x')", fn())
    assert.equal(32, H.row("SELECT @.patch_me(3) AS n").n)
    assert.equal("work_mem=1MB", H.row("SELECT array_to_string(proconfig, ',') AS c FROM pg_proc"
      .. " WHERE oid = $1::regprocedure", fn()).c)
  end)

  it("refuses a text that is missing or occurs twice, and changes nothing", function()
    assert.matches('does not hold "RETURN y" exactly once',
      H.refusal("SELECT @.patch_function($1::regprocedure, 'RETURN y', 'RETURN 0')", fn()))
    assert.matches('does not hold "%+ 1" exactly once',
      H.refusal("SELECT @.patch_function($1::regprocedure, '+ 1', '- 1')", fn()))
    assert.equal(32, H.row("SELECT @.patch_me(3) AS n").n)
  end)

  it("patched the statements of migrations 026, 028 and 031", function()
    for _, f in ipairs({ "complete_jobs", "complete_jobs_with", "archive", "fail_jobs",
                         "fail_jobs_guarded", "fail_jobs_at" }) do
      local src = H.row("SELECT string_agg(prosrc, '') AS s FROM pg_proc WHERE proname = $1"
        .. " AND pronamespace = $2::regnamespace", f, H.schema).s
      -- each finds its jobs by key: ids, again_ids, or ids chosen from ids (031)
      assert.matches("j%.id = ANY%(", src, nil, f)
    end
    local start = H.row("SELECT prosrc AS s FROM pg_proc WHERE oid = $1::regprocedure",
      H.schema .. ".start_flow(text,jsonb,jsonb)").s
    assert.matches("exists already', rid USING ERRCODE = '23505'", start, nil, true)
  end)
end)
