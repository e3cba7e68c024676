-- Shared helpers for the queue specs (spec/queue_*_spec.lua). Load with
--   local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")
-- Each spec file opens moonq on its own random schema (H.open) and drops it
-- in teardown (H.close). H.sql runs SQL with "@." standing for "<schema>.".
local moonq = require "moonq"

local H = {}

-- Temporary files to delete at H.close().
local temps = {}

-- A new temporary file name, deleted (with its ".tmp" and ".done"
-- companions) at H.close().
function H.tmpname()
  local p = os.tmpname()
  temps[#temps + 1] = p
  return p
end

H.url = os.getenv("DATABASE_URL")

-- Opens moonq on a fresh random schema; returns the schema name. The pid
-- keeps apart the specs that ctest runs at once: math.random is seeded from
-- the time and the state's address, and in a sanitizer build heap addresses
-- are the same in every process.
function H.open(config)
  config = config or {}
  config.database = H.url
  local pid = H.read("/proc/self/stat"):match("^%d+")
  config.schema = config.schema or ("t_q_%s_%d"):format(pid, math.random(1, 1e9))
  assert(moonq.open(config))
  H.schema = config.schema
  return config.schema
end

-- Quotes a string for sh.
function H.shq(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command; returns its output (stderr included) and whether
-- it exited 0.
function H.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  return out, p:close()
end

-- Runs psql on DATABASE_URL with the SQL text; returns its output and ok.
function H.psql(sql)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(sql)
  f:close()
  local p = assert(io.popen('psql "$DATABASE_URL" -X -q -t -A -v ON_ERROR_STOP=1 -f '
    .. H.shq(path) .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  os.remove(path)
  return out, ok
end

-- Runs `sql` (with "@." standing for "<schema>.") in one psql session
-- with the plan of every statement logged, statements inside functions
-- included (auto_explain, ANALYZE without timing), and with generic plans
-- forced: the plans a connection's cached statements come to use after
-- five calls, which cannot know how many elements an array parameter has.
-- Returns the most rows any one plan node handled -- the rows it returned
-- plus the rows its filters and join filters removed, over all its loops --
-- with a description of that node ("<node type> in: <statement>"), and
-- psql's output. A statement whose work grows with the square of a batch
-- (a nested loop over two sides of the batch) shows here as a node that
-- handled about n*n/2 rows for a batch of n. Statements whose text holds
-- "/* unmeasured */" (a test's own checks) are left out.
function H.plan_work(sql)
  local cjson = require "cjson"
  local out, ok = H.psql("LOAD 'auto_explain';\n"
    .. "SET auto_explain.log_min_duration = 0;\n"
    .. "SET auto_explain.log_nested_statements = on;\n"
    .. "SET auto_explain.log_analyze = on;\n"
    .. "SET auto_explain.log_timing = off;\n"
    .. "SET auto_explain.log_format = json;\n"
    .. "SET client_min_messages = log;\n"
    .. "SET plan_cache_mode = force_generic_plan;\n"
    .. sql:gsub("@%.", H.schema .. "."))
  assert(ok, out)
  local most, where = 0, nil
  local function walk(node, query)
    local loops = node["Actual Loops"] or 1
    local n = ((node["Actual Rows"] or 0) + (node["Rows Removed by Filter"] or 0)
      + (node["Rows Removed by Join Filter"] or 0)) * loops
    if n > most then
      most, where = n, node["Node Type"] .. " in: " .. query:gsub("%s+", " "):sub(1, 200)
    end
    for _, child in ipairs(node.Plans or {}) do walk(child, query) end
  end
  local plans = 0
  for block in out:gmatch("plan:\n({\n.-\n})\n") do
    local doc = cjson.decode(block)
    local query = doc["Query Text"] or ""
    if not query:find("/* unmeasured */", 1, true) then
      walk(doc.Plan, query)
      plans = plans + 1
    end
  end
  assert(plans > 0, "no plan was logged:\n" .. out)
  return most, where, out
end

-- Runs `sql` (statements; "@." the schema) through H.plan_work in a
-- transaction that is rolled back, and asserts that no plan node handled
-- more than 4 rows an element of a batch of n (work linear in the batch);
-- returns psql's output.
function H.assert_linear_plans(sql, n)
  local most, where, out = H.plan_work("BEGIN;\n" .. sql .. ";\nROLLBACK;")
  require("luassert").is_true(most <= 4 * n,
    ("a plan node handled %d rows for a batch of %d: %s"):format(most, n, where))
  return out
end

-- Closes moonq, then drops the schema (with psql, so the process row can
-- still be unregistered while the schema exists).
function H.close()
  local schema = H.schema
  moonq.close()
  for _, p in ipairs(temps) do
    os.remove(p)
    os.remove(p .. ".tmp")
    os.remove(p .. ".done")
  end
  temps = {}
  if schema then
    H.psql("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE;")
  end
  H.schema = nil
end

-- moonq.db.query with "@." replaced by the schema; raises on error.
function H.sql(sql, ...)
  sql = sql:gsub("@%.", H.schema .. ".")
  local rows, n = moonq.db.query(sql, ...)
  if not rows then error(n, 2) end
  return rows, n
end

-- Rows of table `rel` ("job", "job_archive") that `sql` visits, run in a
-- psql session of its own with "@." standing for "<schema>.": rows read by
-- sequential scans plus rows fetched by index scans, from the statistics
-- (flushed by both sessions). Returns the rows and psql's output.
function H.rows_visited(rel, sql)
  local function visited()
    local out = assert(H.psql(("SELECT pg_stat_force_next_flush();\n"
      .. "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
      .. " WHERE relid = '%s.%s'::regclass;"):format(H.schema, rel)))
    return tonumber(out:match("(%d+)%s*$"))
  end
  local before = visited()
  local out = assert(H.psql(sql:gsub("@%.", H.schema .. ".") .. "\nSELECT pg_stat_force_next_flush();"))
  H.sleep(0.2)
  return visited() - before, out
end

-- The first row of a query.
function H.row(sql, ...)
  return (H.sql(sql, ...))[1]
end

-- The message of the error H.sql(sql, ...) raises (it must raise).
function H.refusal(sql, ...)
  local ok, err = pcall(H.sql, sql, ...)
  assert(not ok, "expected an error from " .. sql)
  return tostring(err)
end

-- Wall-clock seconds (sub-second precision), from the database.
function H.now()
  return moonq.db.query("SELECT extract(epoch FROM clock_timestamp())::float8 AS t")[1].t
end

function H.sleep(s)
  os.execute(("sleep %.3f"):format(s))
end

-- Polls fn() every `every` seconds until it returns a truthy value or
-- `timeout` seconds pass; returns that value (or nil).
function H.wait_for(fn, timeout, every)
  local deadline = os.time() + timeout + 1
  repeat
    local v = fn()
    if v then return v end
    H.sleep(every or 0.05)
  until os.time() > deadline
  return fn()
end

function H.read(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- A child lua5.4 script with this process's module paths; `vars` become
-- locals of the script (strings, numbers and booleans only).
function H.script(body, vars)
  local lines = {
    ("package.path = %q; package.cpath = %q"):format(package.path, package.cpath),
    'local moonq = require "moonq"',
  }
  for k, v in pairs(vars or {}) do
    lines[#lines + 1] = ("local %s = %s"):format(k,
      type(v) == "string" and ("%q"):format(v) or tostring(v))
  end
  lines[#lines + 1] = body
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  return path
end

-- Runs a child script to completion; returns its stdout+stderr and ok.
function H.run(body, vars)
  local path = H.script(body, vars)
  local p = assert(io.popen("lua5.4 " .. H.shq(path) .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  os.remove(path)
  return out, ok
end

-- Starts a child script in the background, in its own process group (so
-- kill -9 -PID also ends what it started); output goes to `log`. Returns
-- its pid.
function H.spawn(body, vars, log)
  local path = H.script(body, vars)
  temps[#temps + 1] = path
  local p = assert(io.popen(("setsid lua5.4 %s >%s 2>&1 </dev/null & echo $!")
    :format(H.shq(path), H.shq(log))))
  local pid = tonumber(p:read("l"))
  p:close()
  return pid
end

-- Runs a shell command in the background in its own process group;
-- output goes to `log`. Returns its pid.
function H.bg(cmd, log)
  local p = assert(io.popen(("setsid sh -c %s >%s 2>&1 </dev/null & echo $!")
    :format(H.shq(cmd), H.shq(log or "/dev/null"))))
  local pid = tonumber(p:read("l"))
  p:close()
  return pid
end

-- Kills a process group started by H.spawn.
function H.kill_group(pid)
  os.execute(("kill -9 -%d 2>/dev/null"):format(pid))
end

-- Whether process pid still runs (a zombie does not).
function H.alive(pid)
  local stat = H.read(("/proc/%d/stat"):format(pid))
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

-- Number of elements of t (any keys).
function H.count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- Ids of a list of jobs, in order.
function H.ids(jobs)
  local out = {}
  for i, j in ipairs(jobs) do out[i] = j.id end
  return out
end

-- A PostgreSQL array literal of a list of ids: "{1,2,3}".
function H.pg_array(ids)
  return "{" .. table.concat(ids, ",") .. "}"
end

-- Sends n jobs {"n": 1..n} to queue q in one send_many; `options` a JSON
-- object as text (default "{}").
function H.send_jobs(q, n, options)
  H.sql("SELECT count(*) FROM @.send_many($1, (SELECT jsonb_agg(jsonb_build_object('n', g))"
    .. " FROM generate_series(1, $2::int) g), $3::jsonb)", q, n, options or "{}")
end

-- Claims up to n jobs of queue q for process `process_id` (fetch_jobs);
-- returns their ids in ascending order.
function H.claim_ids(q, n, process_id)
  local ids = {}
  for _, r in ipairs(H.sql("SELECT id FROM @.fetch_jobs($1, $2::int, $3::uuid) ORDER BY id",
      q, n, process_id)) do
    ids[#ids + 1] = r.id
  end
  return ids
end

-- Rows of the hot table and of the archive.
function H.job_rows()
  return H.row("SELECT count(*) AS n FROM @.job").n
end

return H
