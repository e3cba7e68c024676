-- moonq.handler: what a handler file may return, checked with clear errors.
--
-- A file returns a function (job, ctx) or a table:
--   { handler = fn, queue = "q", concurrency = 10, timeout = 30,
--     retry = { limit = 3, delay = 5, backoff = true, delay_max = 3600 },
--     flow = { ... } }
local M = {}

local fields = {
  handler = "function", queue = "string", concurrency = "integer",
  timeout = "number", retry = "table", flow = "table",
}
local retry_fields = { limit = "integer", delay = "number", backoff = "boolean", delay_max = "number" }

local function distance(a, b)
  local la, lb = #a, #b
  local prev = {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur = { [0] = i }
    for j = 1, lb do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[lb]
end

local function unknown(where, key, known)
  local best, best_d
  for k in pairs(known) do
    local d = distance(key, k)
    if d <= 2 and (not best_d or d < best_d or (d == best_d and k < best)) then best, best_d = k, d end
  end
  if best then
    return ("%s: unknown key %q (did you mean %q?)"):format(where, key, best)
  end
  return ("%s: unknown key %q"):format(where, key)
end

local function kind(v)
  if math.type(v) == "integer" then return "integer" end
  return type(v)
end

local function check(where, key, v, want)
  local got = kind(v)
  if want == "number" and got == "integer" then return end
  if want == "integer" and got == "number" and math.tointeger(v) then return end
  if got ~= want then
    error(("%s: %s must be %s %s, got %s"):format(where, key,
      want == "integer" and "an" or "a", want, got), 0)
  end
end

-- Limits shared with config.lua and SQL (sql/014_limits.sql).
local DURATION_MAX = 3155760000 -- seconds: 100 years
local QUEUE_NAME_MAX = 255      -- bytes

-- Raises unless v (seconds, may be nil) is finite and at most DURATION_MAX.
local function duration(file, key, v)
  if v and not (v <= DURATION_MAX) then
    error(("%s: %s must be at most %d seconds (100 years), got %s")
      :format(file, key, DURATION_MAX, v), 0)
  end
end

-- Returns the normalised spec { handler, queue, concurrency, timeout,
-- retry, flow } for job `name` from the value a file returned, or raises
-- a message naming `file`.
function M.normalise(name, value, file)
  if type(value) == "function" then
    return { handler = value, queue = name }
  end
  if type(value) ~= "table" then
    error(("%s: must return a function or a table with a handler, got %s"):format(file, type(value)), 0)
  end
  for k, v in pairs(value) do
    if type(k) ~= "string" or not fields[k] then
      error(unknown(file, tostring(k), fields), 0)
    end
    check(file, k, v, fields[k])
  end
  if type(value.handler) ~= "function" then
    error(("%s: the table needs a handler function"):format(file), 0)
  end
  local spec = {
    handler = value.handler, queue = value.queue or name,
    flow = value.flow and require("moonq.flows").normalise(name, value.flow, file),
    concurrency = value.concurrency and math.tointeger(value.concurrency),
    timeout = value.timeout,
  }
  if spec.concurrency and spec.concurrency < 1 then
    error(("%s: concurrency must be >= 1, got %d"):format(file, spec.concurrency), 0)
  end
  if spec.timeout and not (spec.timeout > 0) then
    error(("%s: timeout must be > 0, got %s"):format(file, spec.timeout), 0)
  end
  duration(file, "timeout", spec.timeout)
  if spec.queue == "" then error(("%s: queue must not be empty"):format(file), 0) end
  if #spec.queue > QUEUE_NAME_MAX then
    error(("%s: queue is %d bytes, the limit is %d"):format(file, #spec.queue, QUEUE_NAME_MAX), 0)
  end
  if value.retry then
    for k, v in pairs(value.retry) do
      if type(k) ~= "string" or not retry_fields[k] then
        error(unknown(file .. ": retry", tostring(k), retry_fields), 0)
      end
      check(file, "retry." .. k, v, retry_fields[k])
    end
    local r = value.retry
    if r.limit and r.limit < 0 then error(("%s: retry.limit must be >= 0"):format(file), 0) end
    if r.delay and r.delay < 0 then error(("%s: retry.delay must be >= 0"):format(file), 0) end
    if r.delay_max and r.delay_max < 0 then
      error(("%s: retry.delay_max must be >= 0"):format(file), 0)
    end
    duration(file, "retry.delay", r.delay)
    duration(file, "retry.delay_max", r.delay_max)
    if r.limit and r.limit > 2147483647 then
      error(("%s: retry.limit must be <= 2147483647, got %s"):format(file, r.limit), 0)
    end
    spec.retry = { limit = r.limit and math.tointeger(r.limit), delay = r.delay,
                   backoff = r.backoff, delay_max = r.delay_max }
  end
  return spec
end

-- coroutine.resume/wrap for handlers: a moonq call inside a coroutine the
-- handler made yields moonq._host_yield; pass it up to the job's coroutine
-- (and so to the scheduler), then hand the results back down.
-- `resuming` counts the resumes in progress per coroutine: a moonq call in
-- a coroutine that something else resumes (a library's own
-- coroutine.wrap) raises "cannot wait here" instead of yielding the marker
-- into code that would take it for a value.
local host_yield = require("moonq")._host_yield
local resuming = require("moonq")._resuming
local co_resume, co_yield, co_status = coroutine.resume, coroutine.yield, coroutine.status

local function resume(co, ...)
  resuming[co] = (resuming[co] or 0) + 1
  local r = table.pack(co_resume(co, ...))
  while r[1] and r[2] == host_yield and co_status(co) == "suspended" do
    r = table.pack(co_resume(co, co_yield(host_yield)))
  end
  local n = resuming[co] - 1
  resuming[co] = n > 0 and n or nil
  return table.unpack(r, 1, r.n)
end

local function wrap(f)
  local co = coroutine.create(f)
  return function(...)
    local r = table.pack(resume(co, ...))
    if not r[1] then error(r[2], 2) end
    return table.unpack(r, 2, r.n)
  end
end

local handler_coroutine = setmetatable({ resume = resume, wrap = wrap },
  { __index = coroutine })

-- A fresh environment for a handler file: reads fall through to the
-- globals, writes are an error (a handler must keep state in locals).
function M.env(file)
  return setmetatable({ coroutine = handler_coroutine }, {
    __index = _G,
    __newindex = function(_, k)
      error(("%s: assignment to undeclared global %q (use local)"):format(file, tostring(k)), 2)
    end,
  })
end

return M
