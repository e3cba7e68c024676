-- moonq.flow: runs of flows (sql/012_flows.sql).
--
--   run_id = moonq.flow.start(name, data, opts)  -- opts: send options, run_id
--   ok = moonq.flow.cancel(run_id)
--   run = moonq.flow.get(run_id)    -- {flow, run_id, status, started_at,
--                                   --  completed_at, data, failed_step,
--                                   --  error, steps = {{id, step, name,
--                                   --  state, attempt, ...}}} or nil
--   runs = moonq.flow.list(name, {status =, limit =, before =})
--
-- Each returns its result or nil and a message. A run starts in one
-- transaction: its index row, its flow.started event and the entry step's
-- job. The flows are the ones the handler files of a running `moonq run`
-- (or moonq.start()) declared and stored.
local M = {}

local function moonq() return require "moonq" end

local function query(sql, ...)
  local m = moonq()
  return m.db.query((sql:gsub("@%.", m.config().schema .. ".")), ...)
end

local function null_to_nil(v)
  if v == moonq().null then return nil end
  return v
end

function M.start(name, data, opts)
  if type(name) ~= "string" or name == "" then
    error("moonq.flow.start: the flow name must be a non-empty string", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("moonq.flow.start: options must be a table", 2)
  end
  local m = moonq()
  local rows, err = query("SELECT @.start_flow($1, $2::jsonb, $3::jsonb) AS run_id",
    name, m.json.encode(data == nil and {} or data), m.json.encode(opts or {}))
  if not rows then return nil, err end
  return rows[1].run_id
end

function M.cancel(run_id)
  local rows, err = query("SELECT @.cancel_flow($1) AS ok", run_id)
  if not rows then return nil, err end
  return rows[1].ok
end

function M.get(run_id)
  local rows, err = query("SELECT @.get_flow($1) AS run", run_id)
  if not rows then return nil, err end
  return null_to_nil(rows[1].run)
end

-- The statuses of a run (list's `status`; the CLI checks --status by it).
M.statuses = { running = true, completed = true, failed = true, cancelled = true }
local LIST_MAX = 10000

function M.list(name, opts)
  opts = opts or {}
  if opts.status ~= nil and not M.statuses[opts.status] then
    return nil, ("moonq.flow.list: status must be running, completed, failed or cancelled, got %s")
      :format(type(opts.status) == "string" and ("%q"):format(opts.status:sub(1, 40)) or type(opts.status))
  end
  local limit = opts.limit
  if limit ~= nil and (math.type(limit) ~= "integer" or limit < 1 or limit > LIST_MAX) then
    return nil, ("moonq.flow.list: limit must be an integer from 1 to %d, got %s")
      :format(LIST_MAX, tostring(limit):sub(1, 40))
  end
  local rows, err = query([[SELECT flow_name AS flow, run_id, status, started_at, completed_at,
                                   failed_step, error
                              FROM @.list_flows($1, $2, $3::integer, $4::timestamptz, $5)]],
    name, opts.status, opts.limit or 100, opts.before, opts.before_run)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    for k, v in pairs(r) do r[k] = null_to_nil(v) end
  end
  return rows
end

return M
