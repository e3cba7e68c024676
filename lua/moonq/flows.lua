-- moonq.flows: the flows declared by the handler files of this process.
--
-- A handler file joins a flow with
--   flow = { name = "order", step = "charge", entry = true|nil,
--            subscribes = { "order.validated" }, emits = { "order.charged" } }
-- (`step` defaults to the job name). handlers.c asks check() before it
-- takes a file's new version and keeps the old one when the flow graph it
-- would make has errors; set() and remove() keep the table of loaded
-- steps; to_store() is what store_flows (sql/021_store_flows.sql) stores.
local M = {}

-- job name -> { file, flow = { name, step, entry, subscribes, emits } }
local steps = {}

-- Checks a `flow` table of a handler file; returns it normalised or
-- raises a message naming the file.
function M.normalise(job, flow, file)
  local known = { name = "string", step = "string", entry = "boolean",
                  subscribes = "table", emits = "table" }
  for k, v in pairs(flow) do
    if type(k) ~= "string" or not known[k] then
      error(("%s: flow: unknown key %q (known: name, step, entry, subscribes, emits)")
        :format(file, tostring(k)), 0)
    end
    if type(v) ~= known[k] then
      error(("%s: flow.%s must be a %s, got %s"):format(file, k, known[k], type(v)), 0)
    end
  end
  if not flow.name or flow.name == "" or #flow.name > 200 or flow.name:find("[:*]") then
    error(("%s: flow.name must be 1 to 200 bytes without ':' or '*'"):format(file), 0)
  end
  local step = flow.step or job
  if step == "" or #step > 200 then
    error(("%s: flow.step must be 1 to 200 bytes"):format(file), 0)
  end
  local out = { name = flow.name, step = step, entry = flow.entry == true,
                subscribes = {}, emits = {} }
  for _, key in ipairs({ "subscribes", "emits" }) do
    local list = flow[key] or {}
    for k in pairs(list) do
      if math.type(k) ~= "integer" or k < 1 or k > #list then
        error(("%s: flow.%s must be a list of event types"):format(file, key), 0)
      end
    end
    for i, t in ipairs(list) do
      if type(t) ~= "string" or t == "" or #t > 200 then
        error(("%s: flow.%s[%d] must be an event type (1 to 200 bytes)"):format(file, key, i), 0)
      end
      out[key][i] = t
    end
  end
  return out
end

-- The steps of flow `name` with job `job` given `flow` (nil: removed).
local function graph(name, job, file, flow)
  local list = {}
  for j, s in pairs(steps) do
    if j ~= job and s.flow.name == name then list[#list + 1] = { job = j, file = s.file, flow = s.flow } end
  end
  if flow and flow.name == name then list[#list + 1] = { job = job, file = file, flow = flow } end
  table.sort(list, function(a, b) return a.job < b.job end)
  return list
end

-- What flow `name` would be with job's step: errors (refuse the file) and
-- warnings, as lists of messages naming the files.
local function judge(list, name)
  local errors, warnings = {}, {}
  local entries, by_step, emitted = {}, {}, {}
  for _, s in ipairs(list) do
    if s.flow.entry then entries[#entries + 1] = s.file end
    if by_step[s.flow.step] then
      errors[#errors + 1] = ("flow %q: two steps named %q (%s, %s)"):format(name, s.flow.step,
        by_step[s.flow.step], s.file)
    end
    by_step[s.flow.step] = s.file
    for _, t in ipairs(s.flow.emits) do emitted[t] = true end
  end
  if #entries > 1 then
    errors[#errors + 1] = ("flow %q: two entry steps (%s)"):format(name, table.concat(entries, ", "))
  end
  if #entries == 0 and #list > 0 then
    warnings[#warnings + 1] = ("flow %q: no entry step yet (its runs cannot start)"):format(name)
  end
  for _, s in ipairs(list) do
    if not s.flow.entry and #s.flow.subscribes == 0 then
      warnings[#warnings + 1] = ("flow %q: %s is not the entry and subscribes to nothing: "
        .. "nothing starts it"):format(name, s.file)
    end
    for _, t in ipairs(s.flow.subscribes) do
      if not emitted[t] then
        warnings[#warnings + 1] = ("flow %q: %s subscribes to %q, which no step emits")
          :format(name, s.file, t)
      end
    end
  end
  -- a cycle with no way out: steps all of whose emitted types lead back
  -- into the cycle and none to a type nobody subscribes to
  local subscribers = {}
  for _, s in ipairs(list) do
    for _, t in ipairs(s.flow.subscribes) do
      subscribers[t] = subscribers[t] or {}
      table.insert(subscribers[t], s)
    end
  end
  local function exits(s, seen)
    if #s.flow.emits == 0 then return true end
    for _, t in ipairs(s.flow.emits) do
      local subs = subscribers[t]
      if not subs then return true end -- a final event
      for _, n in ipairs(subs) do
        if not seen[n] then
          seen[n] = true
          if exits(n, seen) then return true end
        end
      end
    end
    return false
  end
  -- true when s is on a cycle: some path of events leads back to it
  local function in_cycle(s)
    local seen, stack = {}, { s }
    while #stack > 0 do
      local n = table.remove(stack)
      for _, t in ipairs(n.flow.emits) do
        for _, m in ipairs(subscribers[t] or {}) do
          if m == s then return true end
          if not seen[m] then
            seen[m] = true
            stack[#stack + 1] = m
          end
        end
      end
    end
    return false
  end
  -- (steps that only lead into such a cycle are not named: the cycle's are)
  for _, s in ipairs(list) do
    if in_cycle(s) and not exits(s, { [s] = true }) then
      warnings[#warnings + 1] = ("flow %q: %s is in a cycle with no way out"):format(name, s.file)
    end
  end
  return errors, warnings
end

-- The warnings of every flow, for after a whole directory was loaded (a
-- flow's files load one at a time: checked file by file, a correct flow
-- would warn until its last file is in).
function M.warnings()
  local names, out = {}, {}
  for _, s in pairs(steps) do names[s.flow.name] = true end
  local sorted = {}
  for name in pairs(names) do sorted[#sorted + 1] = name end
  table.sort(sorted)
  for _, name in ipairs(sorted) do
    local _, w = judge(graph(name, nil, nil, nil), name)
    for _, m in ipairs(w) do out[#out + 1] = m end
  end
  return out
end

-- Errors and warnings of the flows touched if `job` (from `file`) had
-- `flow` (nil: the file is gone or has no flow).
function M.check(job, file, flow)
  local names = {}
  if flow then names[flow.name] = true end
  if steps[job] then names[steps[job].flow.name] = true end
  local errors, warnings = {}, {}
  for name in pairs(names) do
    local e, w = judge(graph(name, job, file, flow), name)
    for _, m in ipairs(e) do errors[#errors + 1] = m end
    for _, m in ipairs(w) do warnings[#warnings + 1] = m end
  end
  return errors, warnings
end

-- Takes job's step (flow nil: none); `queue` is the queue its handler
-- fetches from.
function M.set(job, file, flow, queue)
  steps[job] = flow and { file = file, flow = flow, queue = queue or job } or nil
end

function M.remove(job) steps[job] = nil end

-- The step of job `name`: { name, step, entry, subscribes, emits } or nil.
function M.step(job) return steps[job] and steps[job].flow end

-- Every flow of this process as store_flows takes it.
function M.definitions()
  local flows, order = {}, {}
  for job, s in pairs(steps) do
    local f = flows[s.flow.name]
    if not f then
      f = { flow = s.flow.name, steps = {} }
      flows[s.flow.name] = f
      order[#order + 1] = s.flow.name
    end
    local array = require("moonq.json").array
    f.steps[#f.steps + 1] = { step = s.flow.step, job = job, queue = s.queue,
                              entry = s.flow.entry,
                              subscribes = array({ table.unpack(s.flow.subscribes) }),
                              emits = array({ table.unpack(s.flow.emits) }) }
  end
  table.sort(order)
  local out = {}
  for i, name in ipairs(order) do
    table.sort(flows[name].steps, function(a, b) return a.job < b.job end)
    out[i] = flows[name]
  end
  return out
end

-- What store_flows stores for this process: { flows = definitions(),
-- dropped = names of the flows it stored before and declares no more (their
-- files were deleted) }, or nil when both are empty. Remembers the flows
-- as stored.
local stored = {}
function M.to_store()
  local array = require("moonq.json").array
  local flows, now, dropped = M.definitions(), {}, {}
  for _, f in ipairs(flows) do now[f.flow] = true end
  for name in pairs(stored) do
    if not now[name] then dropped[#dropped + 1] = name end
  end
  table.sort(dropped)
  stored = now
  if #flows == 0 and #dropped == 0 then return nil end
  return { flows = array(flows), dropped = array(dropped) }
end

return M
