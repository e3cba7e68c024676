-- maintain's retention pass skips the expired finished jobs that another
-- transaction holds (sql/038_maintain_truncate.sql): it waited for
-- them, and a purge deleting the same rows in another order deadlocked
-- with it.
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

describe("retention in maintain", function()
  setup(function() H.open({ queue = { retention = 0 } }) end)
  teardown(function() H.close() end)

  it("waits for no finished job another transaction holds, and deletes it later", function()
    local q = "kept_locked"
    local ids = {}
    for i = 1, 3 do
      ids[i] = H.row("SELECT @.send($1, '{}') AS id", q).id
      H.sql("SELECT @.cancel($1)", ids[i])
    end
    H.sql("SELECT pg_sleep(0.01)") -- their keep_until (now(), retention 0) is past
    -- A: a purge that has deleted the second job and not committed yet
    local log = H.tmpname()
    local a = H.bg(("{ echo \"BEGIN; DELETE FROM %s.job_archive WHERE id = %d;"
      .. " SELECT 'held=' || pg_backend_pid(); SELECT pg_sleep(60);\"; } | psql \"$DATABASE_URL\" -X -q -t -A")
      :format(H.schema, ids[2]), log)
    local pid = H.wait_for(function() return tonumber((H.read(log) or ""):match("held=(%d+)")) end, 20)
    assert.truthy(pid, H.read(log))
    local out, ok = H.psql(("SET lock_timeout = '5s'; SELECT %s.maintain(3600, 10000)->>'deleted';")
      :format(H.schema))
    H.sql("SELECT pg_terminate_backend($1::int)", pid)
    H.kill_group(a)
    assert(ok, out)
    assert.equal("2", out:match("^%s*(%d+)"))
    assert.equal(1, H.row("SELECT count(*)::int AS n FROM @.job_archive WHERE queue = $1", q).n)
    -- A ended without committing: the next pass deletes the job it held
    assert.truthy(H.wait_for(function()
      return H.row("SELECT @.maintain(3600, 10000)->>'deleted' AS n").n == "1"
    end, 20))
    assert.equal(0, tonumber(H.row("SELECT @.counts($1)->>'cancelled' AS n", q).n))
  end)
end)
