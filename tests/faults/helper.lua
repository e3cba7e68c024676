-- Shared helpers of the fault-injection suite (tests/faults/*_spec.lua):
-- `moonq run` children on a connection string that carries a password
-- (the test clusters trust local connections, so it is never checked, but
-- it must never show in a log), a drain of short jobs, and the checks every
-- scenario makes once recovery time has passed.
local assert = require "luassert" -- busted gives it to spec files only
local src = assert(os.getenv("MOONQ_SOURCE_DIR"), "MOONQ_SOURCE_DIR is not set")
local W = dofile(src .. "/spec/support/worker_helper.lua")

local F = setmetatable({}, { __index = W })

F.SECRET = "fault_SECRET_pw"
F.src = src

local logs = {}

-- A handlers directory: `short` (sleeps `sleep` s, concurrency `slots`)
-- and `compute` (holds the CPU for data.s s of wall time, timeout 30).
function F.handlers(sleep, slots)
  return W.handlers_dir({
    ["short.lua"] = ([[
return { concurrency = %d, handler = function(job, ctx) ctx.sleep(%g) return job.data.i end }
]]):format(slots, sleep),
    ["compute.lua"] = [[
return { timeout = 30, handler = function(job)
  local t0 = os.time()
  while os.time() - t0 < job.data.s do end
  return true
end }
]],
  })
end

-- Starts `moonq run` with `settings` (a config table) on `url` plus a
-- password; returns pid, log path and a function giving its exit status.
function F.run(url, settings)
  local pid, log, exit_code = W.moonq_run(W.config_file(settings), url .. " password=" .. F.SECRET)
  logs[#logs + 1] = log
  return pid, log, exit_code
end

-- Starts one `moonq run` per entry of `list` (config tables) on the test
-- database and waits until each has registered its process(es) (`count`
-- rows in all); returns their pids.
function F.start(schema, list, count)
  local pids = {}
  for i, settings in ipairs(list) do pids[i] = F.run(F.url, settings) end
  assert.is_truthy(W.poll(function()
    return tonumber(F.psql(F.url, ("SELECT count(*) FROM %s.process WHERE pid <> %d")
      :format(schema, W.read("/proc/self/stat"):match("^%d+"))):match("%d+")) >= count
  end, 30, 0.2), "moonq run did not start")
  return pids
end

-- Every log of the children started so far, joined.
function F.logs()
  local all = {}
  for _, l in ipairs(logs) do all[#all + 1] = W.read(l) or "" end
  return table.concat(all, "\n")
end

-- Runs psql on `url` with `sql`; returns its output (raises on failure).
function F.psql(url, sql)
  local p = assert(io.popen(("psql %s -qAtX -v ON_ERROR_STOP=1 -c %s 2>&1"):format(W.shq(url), W.shq(sql))))
  local out = p:read("a")
  assert(p:close(), "psql failed: " .. out)
  return out
end

-- Sends n `short` jobs with SQL (one statement) on `url`.
function F.send(url, schema, n)
  F.psql(url, ("SELECT %s.send_many('short', jsonb_agg(jsonb_build_object('i', g)), '{}')"
    .. " FROM generate_series(1, %d) g"):format(schema, n))
end

-- Waits until no job of `schema` is left in the hot table, or `timeout`
-- seconds pass; returns true when drained.
function F.drained(url, schema, timeout)
  return W.poll(function()
    return F.psql(url, ("SELECT count(*) FROM %s.job"):format(schema)):match("%d+") == "0"
  end, timeout, 0.5)
end

-- The exact outcome: `n` jobs of `name`, each completed once (the archive
-- has one row per job), none left in the hot table (active or waiting),
-- and the attempts: returns the ids that ran more than once.
function F.check_outcome(url, schema, name, n)
  local left = F.psql(url, ("SELECT count(*) FROM %s.job"):format(schema)):match("%d+")
  assert.equal("0", left, "jobs left in the hot table: "
    .. F.psql(url, ("SELECT string_agg(id || ':' || state, ' ') FROM %s.job"):format(schema)))
  local r = F.psql(url, ("SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE state = 'completed')"
    .. " FROM %s.job_archive WHERE name = '%s'"):format(schema, name))
  local total, distinct, completed = r:match("(%d+)|(%d+)|(%d+)")
  assert.equal(n, tonumber(total))
  assert.equal(n, tonumber(distinct))
  assert.equal(n, tonumber(completed), "not every job completed")
  local again = {}
  for id in F.psql(url, ("SELECT id FROM %s.job_archive WHERE name = '%s' AND attempt > 1"):format(schema, name))
      :gmatch("%d+") do
    again[#again + 1] = tonumber(id)
  end
  return again
end

-- No crash (sanitizer report, Lua panic, signal other than the kills) and
-- no password in any child's log.
function F.check_logs(expected_deaths)
  local text = F.logs()
  assert.is_nil(text:find(F.SECRET, 1, true), "the password is in a log")
  assert.is_nil(text:find("unprotected error", 1, true), "a Lua panic")
  assert.is_nil(text:find("Sanitizer", 1, true), "a sanitizer report")
  local deaths = 0
  for sig in text:gmatch("worker died index=%d+ signal=(%d+)") do
    assert.equal("9", sig, "a worker died of signal " .. sig)
    deaths = deaths + 1
  end
  assert.equal(expected_deaths or 0, deaths, "workers that died")
  return text
end

return F
