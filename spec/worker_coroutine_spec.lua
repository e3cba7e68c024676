-- A handler's own coroutines (coroutine.wrap iterators) can call moonq's
-- asynchronous functions: the host's yields pass through to the scheduler,
-- and other jobs keep running meanwhile.
local moonq = require "moonq"

local schema = ("t_co_%d"):format(math.random(1, 1e9))
local dir = os.tmpname()

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("handler coroutines", function()
  setup(function()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    write(dir .. "/nested.lua", [[
      return function(job, ctx)
        local gen = coroutine.wrap(function()
          for i = 1, 3 do
            ctx.sleep(0.1)
            local rows = require("moonq").db.query("SELECT $1::int * 10 AS v", i)
            coroutine.yield(rows[1].v)
          end
        end)
        local out = {}
        for v in gen do out[#out + 1] = v end
        local co = coroutine.create(function(a) ctx.sleep(0.05); return a + 1 end)
        local ok, b = coroutine.resume(co, 41)
        out[#out + 1] = ok and b
        return out
      end
    ]])
    write(dir .. "/quick.lua", "return function(job) return job.data.n end")
    assert(moonq.open({ database = os.getenv("DATABASE_URL"), schema = schema,
                        handlers = dir, hot_reload = false }))
    assert(moonq.start())
  end)

  teardown(function()
    moonq.stop()
    moonq.db.query("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")
    moonq.close()
    os.execute("rm -rf " .. dir)
  end)

  it("passes host yields from nested coroutines to the scheduler", function()
    local id = assert(moonq.queue.send("nested", {}))
    local quick = {}
    for i = 1, 5 do quick[i] = assert(moonq.queue.send("quick", { n = i })) end
    assert(moonq.run_until(function()
      local j = moonq.queue.get(id)
      return j.state == "completed" or j.state == "failed"
    end, 10))
    local job = moonq.queue.get(id)
    assert.equal("completed", job.state)
    assert.same({ 10, 20, 30, 42 }, job.output)
    -- the quick jobs were not held up behind the sleeping one
    for i, qid in ipairs(quick) do
      local q = moonq.queue.get(qid)
      assert.equal("completed", q.state)
      assert.equal(i, q.output)
      assert.is_true(q.completed_at < job.completed_at)
    end
  end)
end)
