-- moonq.testing: run an app's handlers from its busted specs, against a
-- real PostgreSQL (docs/testing.md).
--
--   local t = require "moonq.testing"
--   local res = t.run("handlers/charge.lua", { data = { amount = 40 } })
--   -- res.ok, res.output, res.error, res.emitted, res.enqueued, res.state,
--   -- res.logs, res.job
--   local run, history = t.run_flow("order", { amount = 40 })
--
-- The first call opens moonq with the app's config.lua (or $MOONQ_CONFIG)
-- on a private schema of its own, dropped when busted finishes the spec
-- file (t.close()); t.open(overrides) opens it explicitly. t.run runs one
-- handler file as a worker would run it (the files loaded alike, a task
-- with the handler's timeout, the same ctx) and stores nothing of what it
-- would store with the job's completion: it returns it instead.
-- t.run_flow runs a whole flow with the app's handlers in this process.
local moonq = require "moonq"

local t = {}

local opened = false -- moonq was opened here (and is closed here)
local url            -- the database, for dropping the schema
local handlers_dir   -- absolute
local runs = 0       -- run ids made here

t.schema = nil       -- the private schema while open

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function cwd()
  local p = assert(io.popen("pwd"))
  local dir = p:read("l")
  p:close()
  return dir
end

local function absolute(path, base)
  if path:sub(1, 1) == "/" then return path end
  return (base or cwd()) .. "/" .. path
end

-- a/./b/../c -> a/c
local function normalise(path)
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then
      parts[#parts] = nil
    elseif part ~= "." then
      parts[#parts + 1] = part
    end
  end
  return "/" .. table.concat(parts, "/")
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

-- A copy of a JSON-able value (what is stored is what was given).
local function copy(v)
  return moonq.json.decode(moonq.json.encode(v))
end

-- `over` merged into `base`: tables key by key (one level), the rest replaced.
local function merge(base, over)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(over or {}) do
    if type(v) == "table" and type(out[k]) == "table" then
      local m = {}
      for k2, v2 in pairs(out[k]) do m[k2] = v2 end
      for k2, v2 in pairs(v) do m[k2] = v2 end
      out[k] = m
    else
      out[k] = v
    end
  end
  return out
end

local function random_schema()
  local pid = (function()
    local f = io.open("/proc/self/stat")
    local s = f and f:read("l")
    if f then f:close() end
    return s and s:match("^%d+") or "0"
  end)()
  return ("test_%s_%06x"):format(pid, math.random(0, 0xffffff))
end

-- Closes at the end of the spec file when running under busted.
local function close_with_the_file()
  local ok, busted = pcall(require, "busted")
  if not ok or type(busted) ~= "table" then return end
  local has, subscribe = pcall(function() return busted.subscribe end)
  if not has or type(subscribe) ~= "function" then return end
  local mine = true
  subscribe({ "file", "end" }, function()
    -- a later file's t.open is not ours to close
    if mine then
      mine = false
      t.close()
    end
    return nil, true
  end)
end

-- Opens moonq for the specs: the app's config.lua ($MOONQ_CONFIG, else
-- ./config.lua, else the defaults) with `config` merged over it (a table:
-- its keys replace config.lua's, nested tables key by key) or another
-- config file (a string), on a private schema that t.close() drops.
-- The database is DATABASE_URL or the config's `database`. The log level
-- is "error" unless the overrides say otherwise (t.run returns a
-- handler's ctx.log lines in res.logs). Returns the schema.
function t.open(config)
  if opened then error("moonq.testing: already open (t.close() first)", 2) end
  if moonq.is_open() then
    error("moonq.testing: moonq is open already: let moonq.testing open it", 2)
  end
  local path = type(config) == "string" and config or os.getenv("MOONQ_CONFIG") or "config.lua"
  path = absolute(path)
  local base = {}
  if exists(path) then
    local chunk = assert(loadfile(path, "t"))
    base = chunk()
    if type(base) ~= "table" then error(path .. ": must return a table", 2) end
  elseif type(config) == "string" or os.getenv("MOONQ_CONFIG") then
    error("moonq.testing: no config file " .. path, 2)
  end
  local dir = path:match("^(.*)/[^/]*$")
  local cfg = merge(merge(base, { log = { level = "error" } }),
                    type(config) == "table" and config or nil)
  cfg.database = os.getenv("DATABASE_URL") or cfg.database
  if not cfg.database then
    error("moonq.testing: no database: run the specs with `moonq test`, or set DATABASE_URL", 2)
  end
  cfg.schema = random_schema()
  handlers_dir = normalise(absolute(cfg.handlers or "handlers", dir))
  cfg.handlers = handlers_dir
  local ok, err = moonq.open(cfg)
  if not ok then error("moonq.testing: " .. tostring(err), 2) end
  opened, url, t.schema = true, cfg.database, cfg.schema
  close_with_the_file()
  return t.schema
end

local function ensure_open()
  if not opened then t.open() end
end

-- Stops this process's workers, closes moonq and drops the private schema.
-- Called at the end of each spec file under busted; safe to call again.
function t.close()
  if not opened then return end
  local schema = t.schema
  opened, t.schema = false, nil
  moonq.close()
  local p = io.popen(("psql %s -qAtX -c %s 2>&1"):format(shq(url),
    shq("SET client_min_messages = warning; DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")))
  local out = p:read("a")
  if not p:close() then
    error(("moonq.testing: dropping schema %s failed: %s"):format(schema, out))
  end
end

-- moonq.db.query with "@." standing for the private schema; raises on error.
function t.sql(sql, ...)
  ensure_open()
  local rows, err = moonq.db.query((sql:gsub("@%.", t.schema .. ".")), ...)
  if not rows then error(err, 2) end
  return rows
end

-- The job name of a handler file: its path below the handlers directory.
local function job_name(file)
  local path = normalise(absolute(file))
  if not exists(path) then error(("t.run: no handler file %s"):format(file), 3) end
  local rel = path:sub(#handlers_dir + 2)
  if path:sub(1, #handlers_dir + 1) ~= handlers_dir .. "/" or not rel:match("%.lua$") then
    error(("t.run: %s is not a .lua file in the handlers directory %s"):format(file, handlers_dir), 3)
  end
  return (rel:sub(1, -5):gsub("/", "."))
end

local function new_run_id()
  runs = runs + 1
  return ("test-%s-%d"):format(t.schema, runs)
end

-- Where an event the handler emitted would be stored.
local function stream_of(event, job, step)
  if event.stream then return event.stream end
  if step and job.run_id then return "flow:" .. step.name .. ":" .. job.run_id end
  return "job:" .. job.name .. ":" .. tostring(job.id)
end

-- Runs handler file `file` once with the job `opts` describes:
--   data, attempt (1), run_id, id (a fresh job id), priority (0), queue
--   (the handler's), retry_limit; state = { key = value } stored as the
--   run's state first (a flow step; a run id is made when none is given);
--   timeout = seconds instead of the handler's.
-- Returns { ok, output, error, emitted, enqueued, state, logs, job }.
-- Nothing the worker stores with the completion is stored; calls made
-- with { now = true } and the handler's own queries do happen.
function t.run(file, opts)
  ensure_open()
  opts = opts or {}
  if type(opts) ~= "table" then error("t.run: options must be a table", 2) end
  local name = job_name(file)
  local run_id = opts.run_id
  if opts.state ~= nil then
    run_id = run_id or new_run_id()
    for k, v in pairs(opts.state) do
      t.sql([[INSERT INTO @.queue_flow_state (run_id, key, value) VALUES ($1, $2, $3::jsonb)
              ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value]],
        run_id, k, moonq.json.encode(v))
    end
  end
  local id = opts.id or t.sql("SELECT nextval('@.job_id_seq') AS id")[1].id
  local job = { id = id, name = name, queue = opts.queue, data = opts.data,
                attempt = opts.attempt, priority = opts.priority,
                retry_limit = opts.retry_limit, run_id = run_id }
  local array = moonq.json.array
  local logs, seen, step = array({}), nil, nil
  local function new_ctx(j)
    step = require("moonq.flows").step(j.name)
    -- a flow step's job always has a run id
    if step and not j.run_id then j.run_id = new_run_id() end
    seen = {}
    for k, v in pairs(j) do seen[k] = v end
    seen.data = copy(j.data)
    return require("moonq.ctx").new(j, { on_log = function(level, msg, fields)
      local f = {}
      for k, v in pairs(fields or {}) do f[k] = v end
      logs[#logs + 1] = { level = level, msg = msg, fields = f }
    end })
  end
  local r, err = require("moonq.worker").run_once(handlers_dir, job, new_ctx, opts.timeout)
  if not r then
    -- a load error carries the traceback of the loading call: not the user's
    error("t.run: " .. tostring(err):gsub("\nstack traceback:.*$", ""), 2)
  end
  local effects = r.effects or {}
  local res = { ok = not r.failed, output = r.output, error = r.failed and r.error or nil,
                emitted = array({}), enqueued = array({}), state = {}, logs = logs, job = seen }
  if r.failed and not res.error then res.error = { message = r.message } end
  for i, e in ipairs(effects.events or {}) do
    res.emitted[i] = { stream = stream_of(e, seen, step), type = e.type, data = e.data }
  end
  for i, j in ipairs(effects.jobs or {}) do
    res.enqueued[i] = { name = j.name, data = j.data, options = j.options }
  end
  for k, v in pairs(effects.state or {}) do res.state[k] = v end
  return res
end

-- Runs flow `name` to its end: this process starts workers on the app's
-- handlers, starts a run with `data`, waits until it is no longer running
-- (opts.timeout seconds, default 30) and stops the workers. opts.run_id
-- names the run; opts.options are start's send options. Returns the run
-- (moonq.flow.get's shape) and its history (the events of its stream,
-- also run.history). A run still running at the timeout is returned as it
-- is (status "running") and cancelled.
function t.run_flow(name, data, opts)
  ensure_open()
  opts = opts or {}
  local ok, err = moonq.start()
  if not ok then error("t.run_flow: " .. tostring(err), 2) end
  local run, history
  local done, why = pcall(function()
    local known = {}
    for _, f in ipairs(require("moonq.flows").definitions()) do
      known[#known + 1] = f.flow
      if f.flow == name then known = nil break end
    end
    if known then
      error(("no flow %q among the handlers of %s (flows: %s)"):format(name, handlers_dir,
        #known > 0 and table.concat(known, ", ") or "none"), 0)
    end
    -- the worker stores its flows' steps as it starts
    assert(moonq.run_until(function()
      return #t.sql("SELECT 1 FROM @.queue_flow_steps WHERE flow_name = $1 AND entry", name) > 0
    end, 10), "the flow's steps were not stored")
    local start_opts = {}
    for k, v in pairs(opts.options or {}) do start_opts[k] = v end
    start_opts.run_id = opts.run_id or start_opts.run_id
    local run_id = assert(moonq.flow.start(name, data, start_opts))
    moonq.run_until(function()
      run = assert(moonq.flow.get(run_id))
      return run.status ~= "running"
    end, opts.timeout or 30)
    if run.status == "running" then moonq.flow.cancel(run_id) end
    history = assert(moonq.events.query("flow:" .. name .. ":" .. run_id, { limit = 100000 }))
  end)
  moonq.stop()
  if not done then error("t.run_flow: " .. tostring(why), 2) end
  run.history = history
  return run, history
end

return t
