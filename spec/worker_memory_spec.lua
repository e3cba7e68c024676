-- The Lua memory limit of a `moonq run` process (config `memory_limit`,
-- MB): a handler that allocates past it fails with "memory limit of N MB
-- reached" (growing a table, or one big allocation in a C function), the
-- process goes on running jobs, and the memory a big job used goes back
-- to the system once it ends.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- Resident memory of process pid, in MB.
local function rss_mb(pid)
  local status = W.read(("/proc/%d/status"):format(pid)) or ""
  return tonumber(status:match("VmRSS:%s*(%d+)")) / 1024
end

describe("memory_limit", function()
  local pid, log

  setup(function()
    local dir = W.handlers_dir({
      -- about 160 MB of strings if nothing stops it
      ["hog.lua"] = [[
return function(job)
  local t = {}
  for i = 1, 1500000 do t[i] = ("x"):rep(64) .. i end
  return #t
end
]],
      ["rep.lua"] = [[return function(job) return #string.rep("x", job.data.mb * 1048576) end]],
      ["big.lua"] = [[
return function(job)
  local t = {}
  for i = 1, job.data.n do t[i] = ("y"):rep(64) .. i end
  return #t
end
]],
      ["small.lua"] = [[return function(job) return { ok = true } end]],
      -- grows without bound, small strings at a time: the limit is reached
      -- with the memory full of live data
      ["grow.lua"] = [[
return function(job)
  local t = {}
  while true do t[#t + 1] = ("x"):rep(100) .. #t end
end
]],
      -- holds its (big) data a while, so many are decoded at once
      ["hold.lua"] = [[return function(job) return #job.data.s end]],
      -- takes the memory up to the limit for a while (what is left is less
      -- than a megabyte), then lets it go
      ["fill.lua"] = [[
local FILL
return function(job, ctx)
  FILL = {}
  for _, size in ipairs({ 1048576, 65536, 4096 }) do
    while pcall(function() FILL[#FILL + 1] = ("f"):rep(size - 32 - #FILL) end) do end
  end
  ctx.sleep(job.data.hold)
  FILL = nil
  collectgarbage()
  return "released"
end
]],
    })
    local schema = W.open({ hot_reload = false })
    local config = W.config_file({ schema = schema, handlers = dir, hot_reload = false,
                                   memory_limit = 64, queue = { retry_limit = 0 } })
    pid, log = W.moonq_run(config)
    assert.is_truthy(W.poll(function()
      return W.row("SELECT count(*) AS n FROM @.process WHERE pid = $1", pid).n == 1
    end, 20, 0.1), "moonq run did not start: " .. (W.read(log) or ""))
  end)
  teardown(W.close)

  it("fails the job that crosses it, and the process goes on", function()
    local id = assert(Q.send("hog", {}, { retry_limit = 0 }))
    local job = W.wait_job(id, nil, 60)
    assert.equal("failed", job.state, W.read(log))
    assert.equal("memory limit of 64 MB reached", job.error.message)
    assert.is_string(job.error.traceback)
    assert.is_true(W.alive(pid))
    local ok = W.wait_job(assert(Q.send("small", {})), nil, 20)
    assert.equal("completed", ok.state, W.read(log))
  end)

  it("a job that fills the memory with live data fails naming the limit, with a traceback", function()
    for _ = 1, 3 do
      local id = assert(Q.send("grow", {}, { retry_limit = 0 }))
      local job = W.wait_job(id, nil, 60)
      assert.equal("failed", job.state)
      assert.matches("memory limit of 64 MB reached", job.error.message, 1, true)
      assert.is_string(job.error.traceback)
    end
  end)

  it("fails one allocation over it made by a C function", function()
    local job = W.wait_job(assert(Q.send("rep", { mb = 100 }, { retry_limit = 0 })), nil, 30)
    assert.equal("failed", job.state, W.read(log))
    assert.equal("memory limit of 64 MB reached", job.error.message)
    assert.equal("completed", W.wait_job(assert(Q.send("small", {})), nil, 20).state)
  end)

  it("data too big for the memory left now is a retried failure, not unreadable data", function()
    local fill = assert(Q.send("fill", { hold = 3 }, { retry_limit = 0 }))
    assert.is_truthy(W.wait_job(fill, { "active" }, 20))
    moonq.sleep(1) -- the memory is taken
    local id = assert(Q.send("hold", { s = ("z"):rep(1000000) }, { retry_limit = 20, retry_delay = 0.3 }))
    local job = W.wait_job(id, { "completed", "failed" }, 60)
    assert.equal("completed", job.state, job.error and job.error.message)
    local f = Q.get(fill)
    assert.is_true(job.attempt > 1, "the data was read at once: the limit was not reached; fill: "
      .. f.state .. " " .. require("moonq").json.encode(f.error or f.output or {}))
    assert.equal("completed", W.wait_job(fill).state)
  end)

  it("gives the memory of a big job back", function()
    if os.getenv("ASAN_OPTIONS") then
      pending("AddressSanitizer keeps freed memory in quarantine: resident memory says nothing")
      return
    end
    W.wait_job(assert(Q.send("small", {})), nil, 20)
    local before = rss_mb(pid)
    local job = W.wait_job(assert(Q.send("big", { n = 400000 })), nil, 60) -- ~40 MB
    assert.equal("completed", job.state, W.read(log))
    assert.equal(400000, job.output)
    W.sleep(1)
    local after = rss_mb(pid)
    assert.is_true(after < before + 15,
      ("resident memory %.0f MB before the big job, %.0f MB after"):format(before, after))
  end)
end)
