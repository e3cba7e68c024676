-- moonq.cli: the queue commands of the `moonq` executable.
--
--   moonq enqueue NAME JSON [--delay S] [--priority N] [--queue Q] ...
--   moonq jobs QUEUE [--state S] [--limit N] [--after ID] [--oldest]
--   moonq job ID
--   moonq counts QUEUE
--   moonq pause QUEUE | moonq resume QUEUE
--   moonq events query STREAM [--type T]... [--run R] [--after ID] [--limit N]
--   moonq events tail STREAM|PATTERN [--from start|end|ID]
--   moonq events tail PATTERN --group G --consumer C
--   moonq events groups [GROUP]
--   moonq events parked GROUP [--limit N]
--   moonq events replay GROUP [ID]...
--   moonq flow start NAME [JSON] [--run-id R] | runs NAME [--status S]
--             [--limit N] | show RUN_ID | cancel RUN_ID
--   moonq schedules
--   moonq schedule NAME CRON [JSON] [--tz Z] [--job J] [--backfill B] [send options]
--   moonq unschedule NAME
--
-- A JSON argument may be given as is, as "-" (read from standard input) or
-- as "@FILE" (read from FILE), for payloads too long for a command line.
--
-- main() returns the process exit code: 0 success, 1 runtime error, 2 usage.
-- A command checks its arguments before it calls connect(), so wrong usage
-- is exit 2 whether or not the database can be reached.
local moonq = require "moonq"

local M = {}

-- The longest duration a send accepts (sql/014_limits.sql): 100 years.
local DURATION_MAX = 3155760000

-- A number of seconds from 0 to DURATION_MAX.
local function number(flag, s)
  local n = tonumber(s)
  if not n or n ~= n then error({ usage = ("--%s expects a number, got %q"):format(flag, s) }) end
  if n < 0 or n > DURATION_MAX then
    error({ usage = ("--%s must be 0 to %d seconds, got %s"):format(flag, DURATION_MAX, s) })
  end
  return n
end

-- An integer in [min, max] (default: a 32-bit integer). `flag` names a
-- flag ("limit": "--limit") or, with a space or capitals, an argument.
local function integer(flag, s, min, max)
  min, max = min or -2147483648, max or 2147483647
  local name = flag:find("^[%l%-]+$") and "--" .. flag or flag
  local n = math.tointeger(tonumber(s))
  if not n then error({ usage = ("%s expects an integer, got %q"):format(name, s) }) end
  if n < min or n > max then
    error({ usage = ("%s must be %d to %d, got %s"):format(name, min, max, s) })
  end
  return n
end

-- A job or event id: a positive 64-bit integer.
local function id(what, s)
  return integer(what, s, 1, math.maxinteger)
end

-- The text of a JSON argument: itself, standard input for "-", or the
-- content of FILE for "@FILE". A file that cannot be read is a runtime
-- error.
local function json_text(arg)
  if arg == "-" then
    return io.stdin:read("a") or ""
  elseif arg:sub(1, 1) == "@" then
    local f, err = io.open(arg:sub(2), "rb")
    if not f then error({ runtime = ("cannot read %s"):format(err) }) end
    local text, rerr = f:read("a")
    f:close()
    if not text then -- a directory opens, but does not read
      error({ runtime = ("cannot read %s: %s"):format(arg:sub(2), rerr or "not a file") })
    end
    return text
  end
  return arg
end

-- The decoded JSON argument, or a runtime error naming `what`.
local function json_arg(arg, what)
  local v, err = moonq.json.decode(json_text(arg))
  if err then error({ runtime = ("%s is not valid JSON: %s"):format(what, err) }) end
  return v
end

-- Set by main(): opens the database (or raises a runtime error).
local connect

local function boolean(flag, s)
  if s == "true" then return true elseif s == "false" then return false end
  error({ usage = ("--%s expects true or false, got %q"):format(flag, s) })
end

local function text(_, s) return s end

-- A duration that must be above 0 (expire_in: a job must get some time).
local function positive(flag, s)
  local n = number(flag, s)
  if n == 0 then error({ usage = ("--%s must be more than 0 seconds"):format(flag) }) end
  return n
end

-- A name: 1 to 255 bytes (queues, dead-letter queues).
local function name_text(flag, s)
  if #s == 0 or #s > 255 then
    error({ usage = ("--%s must be 1 to 255 bytes, got %d"):format(flag, #s) })
  end
  return s
end

-- enqueue flags -> send option names and their parsers
local send_flags = {
  delay = { "delay", number },
  priority = { "priority", function(f, v) return integer(f, v) end },
  queue = { "queue", name_text },
  ["start-after"] = { "start_after", text },
  ["retry-limit"] = { "retry_limit", function(f, v) return integer(f, v, 0) end },
  ["retry-delay"] = { "retry_delay", number },
  ["retry-backoff"] = { "retry_backoff", boolean },
  ["retry-delay-max"] = { "retry_delay_max", number },
  ["expire-in"] = { "expire_in", positive },
  retention = { "retention", number },
  ["singleton-key"] = { "singleton_key", text },
  ["dead-letter"] = { "dead_letter", name_text },
  ["run-id"] = { "run_id", text },
}

-- Splits args into positionals and --flag value pairs (known is the set of
-- flags that take a value; others are switches).
local function parse(args, known, switches)
  local pos, opts = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local flag, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    flag = flag or a:match("^%-%-([%w%-]+)$")
    if flag then
      if switches and switches[flag] then
        opts[flag] = true
      elseif known[flag] then
        local v = inline
        if not v then
          i = i + 1
          v = args[i]
          if v == nil then error({ usage = ("--%s needs a value"):format(flag) }) end
        end
        if known[flag] == "many" then -- repeatable: a list of values
          opts[flag] = opts[flag] or {}
          table.insert(opts[flag], v)
        else
          opts[flag] = v
        end
      else
        error({ usage = ("unknown option --%s"):format(flag) })
      end
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return pos, opts
end

local function need(pos, n, what)
  if #pos ~= n then error({ usage = ("expected %s"):format(what) }) end
end

local function check(value, err)
  if value == nil then error({ runtime = err }) end
  return value
end

local commands = {}

function commands.enqueue(args)
  local pos, flags = parse(args, send_flags)
  need(pos, 2, "NAME JSON")
  local opts = {}
  for flag, value in pairs(flags) do
    local spec = send_flags[flag]
    opts[spec[1]] = spec[2](flag, value)
  end
  if opts.delay and opts.start_after then
    error({ usage = "give either --delay or --start-after, not both" })
  end
  local data = json_arg(pos[2], "job data")
  connect()
  local new_id, serr = moonq.queue.send(pos[1], data, opts)
  if new_id == nil then error({ runtime = serr }) end
  print(new_id)
end

local function fmt_job(j)
  return ("%-10s %-9s %-24s %3d  %s"):format(j.id, j.state, j.name, j.attempt,
    j.created_at or "")
end

function commands.jobs(args)
  local pos, flags = parse(args, { state = true, limit = true, after = true },
    { oldest = true })
  need(pos, 1, "QUEUE")
  local opts = {
    state = flags.state,
    limit = flags.limit and integer("limit", flags.limit, 1, 100000) or 50,
    after = flags.after and id("after", flags.after) or nil,
    order = flags.oldest and "oldest" or "newest",
  }
  connect()
  local list = check(moonq.queue.list(pos[1], opts))
  print(("%-10s %-9s %-24s %3s  %s"):format("ID", "STATE", "NAME", "TRY", "CREATED"))
  for _, j in ipairs(list) do print(fmt_job(j)) end
end

function commands.job(args)
  local pos = parse(args, {})
  need(pos, 1, "ID")
  local job_id = id("ID", pos[1])
  connect()
  print(moonq.json.encode(check(moonq.queue.get(job_id))))
end

function commands.counts(args)
  local pos = parse(args, {})
  need(pos, 1, "QUEUE")
  connect()
  local c = check(moonq.queue.counts(pos[1]))
  for _, k in ipairs({ "waiting", "delayed", "paused", "active", "completed", "failed", "cancelled" }) do
    print(("%-10s %d"):format(k, c[k]))
  end
end

function commands.pause(args)
  local pos = parse(args, {})
  need(pos, 1, "QUEUE")
  connect()
  check(moonq.queue.pause(pos[1]))
  print(("queue %s paused"):format(pos[1]))
end

function commands.resume(args)
  local pos = parse(args, {})
  need(pos, 1, "QUEUE")
  connect()
  check(moonq.queue.resume(pos[1]))
  print(("queue %s resumed"):format(pos[1]))
end

-- ---- schedules -------------------------------------------------------------

-- v, or nil for JSON null
local function present(v)
  if v == moonq.null then return nil end
  return v
end

-- One line per schedule: NAME CRON TZ NEXT LAST (times in the schedule's
-- zone); a disabled schedule shows why under it.
function commands.schedules(args)
  local pos = parse(args, {})
  need(pos, 0, "no arguments")
  connect()
  local list = check(moonq.schedules())
  -- columns as wide as their longest value (at least the defaults)
  local w = { name = 24, cron = 18, tz = 18 }
  for _, s in ipairs(list) do
    for k, min in pairs(w) do w[k] = math.max(min, #tostring(s[k])) end
  end
  local fmt = ("%%-%ds %%-%ds %%-%ds %%-26s %%s"):format(w.name, w.cron, w.tz)
  print(fmt:format("NAME", "CRON", "TZ", "NEXT", "LAST"))
  for _, s in ipairs(list) do
    local next = s.enabled and (present(s.next) or "-") or "disabled"
    print(fmt:format(s.name, s.cron, s.tz, next, present(s.last) or "-"))
    if present(s.error) then print(("  error: %s"):format(s.error)) end
  end
end

-- schedule's own flags, then the send options of its jobs (enqueue's, but
-- for --start-after and --run-id, which each fire sets)
local schedule_flags = { tz = { "tz", text }, job = { "job", text },
                         backfill = { "backfill", text } }
for flag, spec in pairs(send_flags) do
  if flag ~= "start-after" and flag ~= "run-id" then schedule_flags[flag] = spec end
end

function commands.schedule(args)
  local pos, flags = parse(args, schedule_flags)
  if #pos ~= 2 and #pos ~= 3 then error({ usage = "expected NAME CRON [JSON]" }) end
  local opts = {}
  for flag, value in pairs(flags) do
    local spec = schedule_flags[flag]
    opts[spec[1]] = spec[2](flag, value)
  end
  local data = pos[3] and json_arg(pos[3], "schedule data")
  connect()
  local s = check(moonq.schedule(pos[1], pos[2], data, opts))
  print(("schedule %s stored; next %s"):format(s.name, present(s.next) or "-"))
end

function commands.unschedule(args)
  local pos = parse(args, {})
  need(pos, 1, "NAME")
  connect()
  if not check(moonq.unschedule(pos[1])) then
    error({ runtime = ("no schedule %q"):format(pos[1]) })
  end
  print(("schedule %s deleted"):format(pos[1]))
end

-- moonq events query|tail ...: events as JSON lines, oldest first.
local events = {}

local function limit(s)
  return integer("limit", s, 1, 100000)
end

function events.query(args)
  local pos, flags = parse(args, { type = "many", run = true, after = true, limit = true })
  need(pos, 1, "STREAM")
  local opts = {
    types = flags.type,
    run_id = flags.run,
    after = flags.after and integer("after", flags.after, 0, math.maxinteger) or nil,
    limit = flags.limit and limit(flags.limit) or 100,
  }
  connect()
  local list = check(moonq.events.query(pos[1], opts))
  for _, e in ipairs(list) do print(moonq.json.encode(e)) end
end

-- Follows a stream or pattern like `tail -f` until SIGINT or SIGTERM; with
-- --group, as member --consumer of that consumer group, from the group's
-- checkpoints.
function events.tail(args)
  local pos, flags = parse(args, { from = true, group = true, consumer = true })
  need(pos, 1, "STREAM or PATTERN")
  local function print_event(e)
    io.stdout:write(moonq.json.encode(e), "\n")
    io.stdout:flush()
  end
  local sub
  if flags.group then
    if flags.from then
      error({ usage = "--from does not go with --group (a group reads from its checkpoints)" })
    end
    if not flags.consumer then
      error({ usage = "--group needs --consumer NAME (this member's name in the group)" })
    end
    for _, flag in ipairs({ "group", "consumer" }) do -- as event_groups.c bounds them
      if #flags[flag] == 0 or #flags[flag] > 200 then
        error({ usage = ("--%s must be 1 to 200 bytes, got %d"):format(flag, #flags[flag]) })
      end
    end
    connect()
    sub = check(moonq.events.subscribe_group(pos[1], flags.group, flags.consumer, print_event))
    if not moonq.run_until_signal(function() return not sub:is_open() end) then
      error({ runtime = ("member %s of group %s ended (another process joined under its name?)")
        :format(flags.consumer, flags.group) })
    end
    sub:close()
    return
  elseif flags.consumer then
    error({ usage = "--consumer needs --group" })
  else
    local from = flags.from or "end"
    if from ~= "start" and from ~= "end" then from = integer("from", from, 0, math.maxinteger) end
    connect()
    sub = check(moonq.events.subscribe(pos[1], print_event, { from = from }))
  end
  moonq.run_until_signal()
  sub:close()
end

-- Consumer groups: one line each with members, progress, lag and parked.
function events.groups(args)
  local pos = parse(args, {})
  if #pos > 1 then error({ usage = "expected at most one GROUP" }) end
  connect()
  local list = check(moonq.events.groups(pos[1]))
  print(("%-24s %-24s %5s %-30s %10s %8s %7s"):format(
    "GROUP", "PATTERN", "PARTS", "MEMBERS (PARTITIONS)", "HANDLED", "LAG", "PARKED"))
  for _, g in ipairs(list) do
    local members = {}
    for _, m in ipairs(g.members) do
      members[#members + 1] = ("%s(%d)%s"):format(m.consumer, #m.partitions,
        m.live and "" or " expired")
    end
    print(("%-24s %-24s %5d %-30s %10d %8d %7d"):format(g.group_name, g.pattern,
      g.partitions, #members > 0 and table.concat(members, ",") or "-",
      g.handled, g.lag, g.parked))
  end
end

-- A group's parked events as JSON lines, oldest first.
function events.parked(args)
  local pos, flags = parse(args, { limit = true })
  need(pos, 1, "GROUP")
  local opts = { limit = flags.limit and limit(flags.limit) or 1000 }
  connect()
  local list = check(moonq.events.parked(pos[1], opts))
  for _, p in ipairs(list) do print(moonq.json.encode(p)) end
end

-- Marks a group's parked events (all, or the ids given) for a replay.
function events.replay(args)
  local pos = parse(args, {})
  if #pos < 1 then error({ usage = "expected GROUP [ID]..." }) end
  local ids
  for i = 2, #pos do
    ids = ids or {}
    ids[#ids + 1] = id("event ID", pos[i])
  end
  connect()
  local n = check(moonq.events.replay(pos[1], ids))
  print(("%d parked events of group %s marked for a replay"):format(n, pos[1]))
end

function commands.events(args)
  local sub = table.remove(args, 1)
  local fn = events[sub or ""]
  if not fn then
    error({ usage = "expected `events query|tail|groups|parked|replay ...`" })
  end
  return fn(args)
end

-- moonq flow start|runs|show|cancel ...
local flow = {}

function flow.start(args)
  local pos, flags = parse(args, { ["run-id"] = true })
  if #pos < 1 or #pos > 2 then error({ usage = "expected NAME [JSON]" }) end
  local data = pos[2] and json_arg(pos[2], "run data") or {}
  connect()
  print(check(moonq.flow.start(pos[1], data, { run_id = flags["run-id"] })))
end

function flow.runs(args)
  local pos, flags = parse(args, { status = true, limit = true })
  need(pos, 1, "NAME")
  if flags.status and not moonq.flow.statuses[flags.status] then
    error({ usage = ("--status must be running, completed, failed or cancelled, got %q")
      :format(flags.status) })
  end
  local opts = { status = flags.status, limit = flags.limit and limit(flags.limit) or 20 }
  connect()
  local runs = check(moonq.flow.list(pos[1], opts))
  print(("%-36s %-10s %-32s %-32s %s"):format("RUN", "STATUS", "STARTED", "COMPLETED", "FAILED STEP"))
  for _, r in ipairs(runs) do
    print(("%-36s %-10s %-32s %-32s %s"):format(r.run_id, r.status, r.started_at,
      r.completed_at or "-", r.failed_step or ""))
  end
end

-- A run as JSON (its steps included), then its history, one event a line.
function flow.show(args)
  local pos = parse(args, {})
  need(pos, 1, "RUN_ID")
  connect()
  local run, err = moonq.flow.get(pos[1])
  if err then error({ runtime = err }) end
  if run == nil then error({ runtime = ("no run %q"):format(pos[1]) }) end
  print(moonq.json.encode(run))
  for _, e in ipairs(check(moonq.events.query("flow:" .. run.flow .. ":" .. run.run_id,
                                                { limit = 100000 }))) do
    print(moonq.json.encode(e))
  end
end

function flow.cancel(args)
  local pos = parse(args, {})
  need(pos, 1, "RUN_ID")
  connect()
  if check(moonq.flow.cancel(pos[1])) then
    print(("run %s cancelled"):format(pos[1]))
  else
    local run, err = moonq.flow.get(pos[1])
    if err then error({ runtime = err }) end
    error({ runtime = run and ("run %s is not running"):format(pos[1])
                          or ("no run %q"):format(pos[1]) })
  end
end

function commands.flow(args)
  local sub = table.remove(args, 1)
  local fn = flow[sub or ""]
  if not fn then error({ usage = "expected `flow start|runs|show|cancel ...`" }) end
  return fn(args)
end

-- Runs `command` with its argument list; returns the exit code.
-- open() opens the database: true, or nil and a message (called once the
-- arguments are checked).
function M.main(command, args, open)
  local fn = commands[command]
  if not fn then
    io.stderr:write(("moonq: unknown command %q\n"):format(command))
    return 2
  end
  connect = function()
    local ok, err = open()
    if not ok then error({ runtime = err }) end
  end
  local ok, err = pcall(fn, args)
  if ok then return 0 end
  if type(err) == "table" and err.usage then
    io.stderr:write(("moonq %s: %s\n"):format(command, err.usage))
    return 2
  elseif type(err) == "table" and err.runtime then
    io.stderr:write(("moonq %s: %s\n"):format(command, err.runtime))
    return 1
  end
  io.stderr:write(("moonq %s: %s\n"):format(command, tostring(err)))
  return 1
end

M.commands = commands

return M
