-- moonq.ctx: the second argument of every handler.
--
--   ctx.job                 the job (id, name, queue, data, attempt, run_id)
--   ctx.log.info(msg, f)    logging tagged with the job (debug/info/warn/error)
--   ctx.sleep(seconds)      yields to the loop; other jobs keep running
--   ctx.enqueue(name, data, opts)   a job, sent with the job's completion
--                                   (same run_id by default)
--   ctx.emit(type, data, opts)  an event, stored with the job's completion
--   ctx.flow                {run_id, name, step} in a flow step's job
--   ctx.state.get/set/del(key)  the run's state (a flow step's job): writes
--                           are stored with the job's completion
--
-- Every call that waits yields the job's coroutine; none blocks the loop.
local moonq = require "moonq"

local M = {}
local Ctx = {}
-- ctx -> function(level, msg, fields) told of every ctx.log line (see new)
local log_hooks = setmetatable({}, { __mode = "k" })
local closures -- (ctx): sets ctx.enqueue and ctx.emit; defined below
local flows    -- moonq.flows, required at the first ctx
local no_run_state -- (step): ctx.state of a step's job with no run
Ctx.__index = function(ctx, key)
  local method = Ctx[key]
  if method then return method end
  if key == "log" then
    local job = rawget(ctx, "job")
    local hook = log_hooks[ctx]
    local log = {}
    for _, level in ipairs({ "debug", "info", "warn", "error" }) do
      local write = moonq.log[level]
      log[level] = function(msg, fields)
        local f = { job_id = job.id, job = job.name }
        if fields then for k, v in pairs(fields) do f[k] = v end end
        write(msg, f)
        if hook then hook(level, msg, fields) end
      end
    end
    rawset(ctx, "log", log)
    return log
  end
  if key == "enqueue" or key == "emit" then
    closures(ctx)
    return rawget(ctx, key)
  end
  if key == "emitted" or key == "enqueued" or key == "state_writes" then
    local list = {}
    rawset(ctx, key, list)
    return list
  end
end

Ctx.sleep = moonq.sleep

-- ctx.state of a run: reads see the run's committed state and this job's
-- own writes; writes wait in ctx.state_writes (JSON null: deleted) for the
-- job's completion, so a failed attempt keeps none.
local function run_state(ctx, run_id)
  local function check_key(key)
    if type(key) ~= "string" or key == "" or #key > 200 then
      error("ctx.state: the key must be a string of 1 to 200 bytes", 3)
    end
  end
  local state = {}
  function state.get(key)
    check_key(key)
    local mine = ctx.state_writes[key]
    if mine ~= nil then
      if mine == moonq.null then return nil end
      return moonq.json.decode(moonq.json.encode(mine))
    end
    local rows, err = moonq.db.query(("SELECT value FROM %s.queue_flow_state WHERE run_id = $1 AND key = $2")
      :format(moonq.config().schema), run_id, key)
    if not rows then error("ctx.state.get: " .. tostring(err), 2) end
    return rows[1] and rows[1].value
  end
  function state.set(key, value)
    check_key(key)
    if value == nil then value = moonq.null end
    local ok, copy = pcall(function() return moonq.json.decode(moonq.json.encode(value)) end)
    if not ok then error("ctx.state.set: " .. tostring(copy), 2) end
    ctx.state_writes[key] = copy
  end
  function state.del(key)
    check_key(key)
    ctx.state_writes[key] = moonq.null
  end
  return state
end

-- ctx.state of a step's job that has no run (sent outside one, not as
-- its flow's entry): every call raises saying so.
function no_run_state(step)
  local function refuse()
    error(("ctx.state: this job of step %q of flow %q has no run (it was sent without "
      .. "a run id; start runs with moonq.flow.start or the entry step's job)")
      :format(step.step, step.name), 2)
  end
  return { get = refuse, set = refuse, del = refuse }
end

-- ctx.enqueue and ctx.emit of `ctx` (made at their first use: most jobs
-- use neither, and each job gets a ctx).
function closures(ctx)
  local job = rawget(ctx, "job")
  -- Closures, so handlers call ctx.enqueue(...) without a colon.
  -- Jobs are sent with the job's completion, in its transaction, like
  -- events: a failed attempt sends none, a retried job sends once. The
  -- options are send's; opts.now = true sends at once instead (and
  -- returns the new job's id).
  ctx.enqueue = function(name, data, opts)
    if type(name) ~= "string" or name == "" then
      error("ctx.enqueue: the job name must be a non-empty string", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error("ctx.enqueue: options must be a table", 2)
    end
    local o = {}
    if opts then for k, v in pairs(opts) do o[k] = v end end
    if job.run_id and o.run_id == nil then o.run_id = job.run_id end
    local now = o.now
    o.now = nil
    if now then
      local id, why = moonq.queue.send(name, data, o)
      if not id then error("ctx.enqueue: " .. tostring(why), 2) end
      return id
    end
    -- copies, checked now: what is sent is what was given at this call
    local ok, copy = pcall(function()
      return { name = name,
               data = data == nil and {} or moonq.json.decode(moonq.json.encode(data)),
               options = moonq.json.decode(moonq.json.encode(o)) }
    end)
    if not ok then error("ctx.enqueue: " .. tostring(copy), 2) end
    local list = ctx.enqueued
    list[#list + 1] = copy
    return true
  end
  -- Events go to the job's stream (opts.stream to choose another) and are
  -- stored with the job's completion, in its transaction: a failed attempt
  -- leaves none, a retried job emits once. opts.now = true appends at once
  -- instead (progress a dashboard should see while the job runs).
  -- (a flow step's own stream is its run's: progress appended at once
  -- belongs to the run's history too; it triggers no step)
  local flow = rawget(ctx, "flow")
  local own_stream = flow and ("flow:" .. flow.name .. ":" .. flow.run_id)
    or ("job:" .. job.name .. ":" .. tostring(job.id))
  ctx.emit = function(type_, data, opts)
    if opts ~= nil and type(opts) ~= "table" then
      error("ctx.emit: options must be a table", 2)
    end
    if opts and opts.stream ~= nil and type(opts.stream) ~= "string" then
      error(("ctx.emit: stream must be a string, got %s"):format(type(opts.stream)), 2)
    end
    local stream = opts and opts.stream or own_stream
    local ok, err = pcall(moonq.events._check, stream, type_, data)
    if not ok then error("ctx.emit: " .. tostring(err), 2) end
    -- What is stored is the data as it is now, not as the handler may
    -- change the table later.
    if type(data) == "table" then data = moonq.json.decode(moonq.json.encode(data)) end
    if opts and opts.now then
      local stored, why = moonq.events.append(stream, { type = type_, data = data, run_id = job.run_id })
      if not stored then error("ctx.emit: " .. tostring(why), 2) end
      return stored
    end
    local list = ctx.emitted
    list[#list + 1] = { stream = opts and opts.stream or nil, type = type_, data = data }
    return true
  end
end

-- The ctx of `job`. opts.on_log(level, msg, fields) is called after each
-- ctx.log line is written, whatever the log level (moonq.testing keeps
-- them); the worker passes no opts.
function M.new(job, opts)
  local ctx = setmetatable({ job = job }, Ctx)
  if opts and opts.on_log then log_hooks[ctx] = opts.on_log end
  flows = flows or require("moonq.flows")
  local step = flows.step(job.name)
  if step and job.run_id then
    ctx.flow = { run_id = job.run_id, name = step.name, step = step.step }
    ctx.state = run_state(ctx, job.run_id)
  elseif step then -- a step's job sent outside a run: no state to read
    ctx.state = no_run_state(step)
  end
  return ctx
end

return M
