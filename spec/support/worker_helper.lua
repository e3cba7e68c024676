-- Shared helpers for the worker specs (spec/worker_*_spec.lua). Load with
--   local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
-- W has every function of queue_helper.lua (W.sql, W.row, W.now, W.spawn,
-- ...) plus: temporary handler directories (W.handlers_dir, W.write),
-- statements run so far (W.statement_calls),
-- W.open/W.close for an in-process runtime whose handlers live in such a
-- directory, W.wait_job/W.wait_all/W.run_for, background process groups
-- that W.close() kills (W.own), and `moonq run` child processes
-- (W.config_file, W.moonq_run, W.signal, W.children).
local moonq = require "moonq"
local here = debug.getinfo(1, "S").source:match("^@(.*/)")
local H = dofile(here .. "queue_helper.lua")

local W = setmetatable({}, { __index = H })

local dirs = {}   -- temp directories removed at W.close()
local pids = {}   -- process groups killed at W.close() if still alive
local logs = {}   -- `moonq run` logs checked at W.close()

-- A new empty temporary directory (absolute path), removed at W.close().
function W.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. H.shq(p)))
  dirs[#dirs + 1] = p
  return p
end

-- Writes `text` to `path` (creating parent directories).
function W.write(path, text)
  local parent = path:match("^(.*)/[^/]+$")
  if parent then os.execute("mkdir -p " .. H.shq(parent)) end
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- A temporary handlers directory holding `files` ({ ["name.lua"] = source }).
function W.handlers_dir(files)
  local dir = W.tmpdir()
  for name, text in pairs(files or {}) do W.write(dir .. "/" .. name, text) end
  return dir
end

-- Opens moonq on a fresh random schema with `config` (its `handlers`
-- directory must be absolute); returns the schema name.
function W.open(config)
  return H.open(config)
end

-- Stops the workers, closes moonq, drops the schema, removes temp dirs and
-- kills child process groups that still run. Raises if a `moonq run` log
-- holds a sanitizer report (a sanitizer build's child may report, and a
-- prefork worker be restarted, without the spec seeing a wrong result).
function W.close()
  for _, pid in ipairs(pids) do
    if H.alive(pid) then H.kill_group(pid) end
  end
  pids = {}
  local reports = {}
  for _, log in ipairs(logs) do
    local text = H.read(log) or ""
    if text:find("ERROR: %a+Sanitizer") or text:find(": runtime error: ") then
      reports[#reports + 1] = log .. ":\n" .. text
    end
  end
  logs = {}
  H.close()
  for _, d in ipairs(dirs) do os.execute("rm -rf " .. H.shq(d)) end
  dirs = {}
  assert(#reports == 0, "sanitizer report in moonq run's log\n" .. table.concat(reports, "\n"))
end

-- Runs the loop until job `id` is in one of `states` (a string or a list;
-- default the finished states) or `timeout` seconds (30) pass; returns the
-- job.
function W.wait_job(id, states, timeout)
  if type(states) == "string" then states = { states } end
  states = states or { "completed", "failed", "cancelled" }
  local want = {}
  for _, s in ipairs(states) do want[s] = true end
  local job
  moonq.run_until(function()
    job = moonq.queue.get(id)
    return job and want[job.state]
  end, timeout or 30)
  return job
end

-- Runs the loop until every job of `ids` is finished (or timeout); returns
-- true when they all are.
function W.wait_all(ids, timeout)
  local list = "{" .. table.concat(ids, ",") .. "}"
  return (moonq.run_until(function()
    return H.row("SELECT count(*) AS n FROM @.job_archive WHERE id = ANY($1::bigint[])", list).n == #ids
  end, timeout or 10))
end

-- Runs the loop (handlers included) for `s` seconds.
function W.run_for(s)
  moonq.run_until(function() return false end, s)
end

-- Calls so far of this schema's statements that call SQL function `fn`
-- (pg_stat_statements, which scripts/pg.sh loads; moonq must be open), or
-- nil when the extension cannot be had.
function W.statement_calls(fn)
  local ok = pcall(H.sql, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
  if not ok and not pcall(H.sql, "SELECT 1 FROM pg_stat_statements LIMIT 1") then
    return nil
  end
  local rows = H.sql("SELECT coalesce(sum(calls), 0)::int AS n FROM pg_stat_statements"
    .. " WHERE query LIKE $1", '%"' .. H.schema .. '".' .. fn .. "(%")
  return rows[1].n
end

-- Makes pid's process group one that W.close() kills if it still runs.
function W.own(pid)
  pids[#pids + 1] = pid
  return pid
end

-- ---- `moonq run` children ------------------------------------------------

W.bin = os.getenv("MOONQ_BIN")

-- Writes a config file for `moonq run` (into a temp dir) from a table of
-- settings: string values are quoted, numbers and booleans as they are,
-- nested tables one level deep. Returns its path.
function W.config_file(settings)
  local function value(v)
    if type(v) == "string" then return ("%q"):format(v) end
    if type(v) == "table" then
      local parts = {}
      for k, x in pairs(v) do parts[#parts + 1] = ("%s = %s"):format(k, value(x)) end
      return "{ " .. table.concat(parts, ", ") .. " }"
    end
    return tostring(v)
  end
  local lines = { "return {" }
  for k, v in pairs(settings) do lines[#lines + 1] = ("  %s = %s,"):format(k, value(v)) end
  lines[#lines + 1] = "}"
  local path = W.tmpdir() .. "/config.lua"
  W.write(path, table.concat(lines, "\n") .. "\n")
  return path
end

-- Starts "$MOONQ_BIN run --config <config>" in the background (its own
-- process group, killed at W.close() if still running) with DATABASE_URL
-- set to `url` (default: the test database). Returns moonq's pid, its log
-- file (stdout and stderr) and a function that returns its exit status
-- once it has exited (nil before): a shell waits for it and records the
-- status.
function W.moonq_run(config, url)
  local dir = W.tmpdir()
  local log, rcfile, pidfile = dir .. "/moonq.log", dir .. "/rc", dir .. "/pid"
  local cmd = ("DATABASE_URL=%s %s run --config %s & echo $! > %s; wait $!; echo $? > %s")
    :format(H.shq(url or H.url), H.shq(W.bin), H.shq(config), H.shq(pidfile), H.shq(rcfile))
  W.own(H.bg(cmd, log))
  logs[#logs + 1] = log
  local pid = H.wait_for(function()
    local s = H.read(pidfile)
    return s and tonumber(s:match("%d+"))
  end, 5)
  assert(pid, "moonq run did not start")
  return pid, log, function()
    local s = H.read(rcfile)
    return s and tonumber(s:match("%d+"))
  end
end

-- Sends signal `sig` ("TERM", "HUP", "KILL") to process pid.
function W.signal(pid, sig)
  return os.execute(("kill -%s %d 2>/dev/null"):format(sig, pid))
end

-- Child pids of pid (via pgrep -P).
function W.children(pid)
  local p = assert(io.popen(("pgrep -P %d"):format(pid)))
  local out = {}
  for l in p:lines() do out[#out + 1] = tonumber(l) end
  p:close()
  table.sort(out)
  return out
end

-- Waits (without the loop) until `fn()` is truthy or `timeout` passes,
-- measuring time with the database clock; returns the value.
function W.poll(fn, timeout, every)
  local t0 = H.now()
  repeat
    local v = fn()
    if v then return v end
    H.sleep(every or 0.05)
  until H.now() - t0 > timeout
  return fn()
end

return W
