-- Hot reload of handler files (hot_reload = true) against the real
-- PostgreSQL: a changed file takes effect within about a second while the
-- job that was running finishes with the code it started with; a broken
-- version is refused and the previous one keeps running; an added file is
-- picked up (its waiting jobs run); a deleted file's job name is unknown;
-- a handler that changes its queue (by a reload, a removal and a new file,
-- or a restart of `moonq run`) takes the jobs already sent to its old queue
-- along: they run. Changes are noticed by inotify: a file added to an empty
-- directory, a file renamed into place (even one with the old file's mtime
-- and size), a new subdirectory and files added to it later, the handlers
-- directory renamed into place and a symlink to it swapped.
local moonq = require "moonq"
local W = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/worker_helper.lua")
local Q = moonq.queue

-- A change notified is scanned 0.15 s later, and a file is read once it
-- has been quiet for 0.1 s (without inotify the scan runs every 0.5 s): a
-- change is live after at most ~0.7 s; wait a little longer.
local SETTLE = 1.2

local V1 = [[
-- version 1: slow
return { handler = function(job, ctx) ctx.sleep(2) return "v1" end }
]]
local V2 = [[
-- version 2: fast, and a different size than version 1
return { timeout = 10, handler = function(job, ctx) return "v2" end }
]]
local BROKEN_SYNTAX = [[
return { handler = function(job, ctx) return "v3" end
]]
local BROKEN_SPEC = [[
return { concurrency = 0, handler = function(job, ctx) return "v4" end }
]]
local BROKEN_RUNTIME = [[
error("this file cannot load")
]]
-- Never finishes loading: stopped after 5 s (handlers.c LOAD_TIMEOUT).
local BROKEN_LOOP = [[
while true do end
return function() return "never" end
]]

-- Waits for each job of `ids` and checks that it completed with `output`
-- in queue `queue` (`log`: a file shown when one did not).
local function assert_ran(ids, output, queue, log)
  for _, id in ipairs(ids) do
    local job = W.wait_job(id, nil, 15)
    assert.equal("completed", job.state,
                 "job " .. id .. " was left in the old queue\n" .. (log and W.read(log) or ""))
    assert.equal(output, job.output)
    assert.equal(queue, job.queue)
  end
end

describe("worker hot reload", function()
  local dir

  setup(function()
    dir = W.handlers_dir({
      ["hot.lua"] = V1,
      ["shared/a.lua"] = [[return { queue = "shared", handler = function(job) return "a" end }]],
      ["shared/b.lua"] = [[return { queue = "shared", handler = function(job) return "b" end }]],
      ["gone.lua"] = [[return function(job) return "gone" end]],
    })
    W.open({ handlers = dir, hot_reload = true, queue = { retry_limit = 0 } })
    assert(moonq.start())
  end)
  teardown(W.close)

  it("a changed file serves the next job; the running job finishes with the old code", function()
    local first = assert(Q.send("hot", { n = 1 }))
    assert.equal("active", W.wait_job(first, "active", 5).state)
    W.write(dir .. "/hot.lua", V2)
    W.run_for(SETTLE)
    -- version 1 sleeps 2 s: the first job still runs
    assert.equal("active", Q.get(first).state, "the running job was disturbed by the reload")
    local second = assert(Q.send("hot", { n = 2 }))
    local job2 = W.wait_job(second, nil, 5)
    assert.equal("completed", job2.state)
    assert.equal("v2", job2.output)
    assert.equal("active", Q.get(first).state, "v2 should have finished while v1 still slept")
    local job1 = W.wait_job(first, nil, 5)
    assert.equal("completed", job1.state)
    assert.equal("v1", job1.output)
  end)

  it("a broken version is refused: the previous one keeps serving", function()
    for _, broken in ipairs({ BROKEN_SYNTAX, BROKEN_SPEC, BROKEN_RUNTIME }) do
      W.write(dir .. "/hot.lua", broken)
      W.run_for(SETTLE)
      local id = assert(Q.send("hot", {}))
      local job = W.wait_job(id, nil, 5)
      assert.equal("completed", job.state)
      assert.equal("v2", job.output)
    end
    -- a file whose top level never finishes is stopped, not hung on
    W.write(dir .. "/hot.lua", BROKEN_LOOP)
    W.run_for(SETTLE + 5.5)
    local id = assert(Q.send("hot", {}))
    local job = W.wait_job(id, nil, 10)
    assert.equal("completed", job.state)
    assert.equal("v2", job.output)
    -- fixing the file again takes effect
    W.write(dir .. "/hot.lua", [[return function() return "v5, fixed" end]])
    W.run_for(SETTLE)
    local id = assert(Q.send("hot", {}))
    assert.equal("v5, fixed", W.wait_job(id, nil, 5).output)
  end)

  it("a file added later is picked up, and its waiting jobs run", function()
    local early = assert(Q.send("added.later", { early = true }))
    W.run_for(0.7)
    assert.equal("waiting", Q.get(early).state)
    W.write(dir .. "/added/later.lua", [[return function(job) return { added = job.data } end]])
    local job = W.wait_job(early, nil, 5)
    assert.equal("completed", job.state)
    assert.same({ added = { early = true } }, job.output)
    local late = assert(Q.send("added.later", { early = false }))
    assert.same({ added = { early = false } }, W.wait_job(late, nil, 5).output)
  end)

  it("a deleted file's job name becomes unknown", function()
    local before = assert(Q.send("shared.b", {}, { queue = "shared" }))
    assert.equal("b", W.wait_job(before, nil, 5).output)
    assert(os.remove(dir .. "/shared/b.lua"))
    W.run_for(SETTLE)
    local after = assert(Q.send("shared.b", {}, { queue = "shared" }))
    local job = W.wait_job(after, nil, 5)
    assert.equal("failed", job.state)
    assert.matches('no handler for job "shared.b"', job.error.message, 1, true)
    assert.matches("shared.a", job.error.message, 1, true)
    assert.not_matches("shared.b,", job.error.message, 1, true)
    -- the other handler of the queue still works
    local a = assert(Q.send("shared.a", {}, { queue = "shared" }))
    assert.equal("a", W.wait_job(a, nil, 5).output)
  end)

  it("a deleted file's own queue is no longer consumed: its jobs wait", function()
    local before = assert(Q.send("gone", {}))
    assert.equal("gone", W.wait_job(before, nil, 5).output)
    assert(os.remove(dir .. "/gone.lua"))
    W.run_for(SETTLE)
    local after = assert(Q.send("gone", {}))
    W.run_for(0.7)
    assert.equal("waiting", Q.get(after).state)
    -- putting it back runs the waiting job
    W.write(dir .. "/gone.lua", [[return function(job) return "back" end]])
    assert.equal("back", W.wait_job(after, nil, 5).output)
  end)

  -- Jobs sent to a queue whose handler moved to another queue were never
  -- fetched again: the old queue's consumer was gone.
  it("a handler that changes its queue takes the jobs waiting in the old one along", function()
    local V = [[
return { queue = "%s", concurrency = 1,
         handler = function(job, ctx) if job.data.slow then ctx.sleep(1.5) end return "%s" end }
]]
    W.write(dir .. "/mover.lua", V:format("mover.before", "before"))
    W.run_for(SETTLE)
    local opts = { queue = "mover.before" }
    local slow = assert(Q.send("mover", { slow = true }, opts))
    assert.equal("active", W.wait_job(slow, "active", 5).state)
    -- the one slot is taken: these wait, one of them delayed
    local waiting = { assert(Q.send("mover", { n = 1 }, opts)), assert(Q.send("mover", { n = 2 }, opts)) }
    local delayed = assert(Q.send("mover", { n = 3 }, { queue = "mover.before", delay = 2 }))
    W.write(dir .. "/mover.lua", V:format("mover.after", "after"))
    assert.equal("before", W.wait_job(slow, nil, 5).output)
    assert_ran({ waiting[1], waiting[2], delayed }, "after", "mover.after")
  end)

  it("a removed handler added again under another queue runs the jobs sent meanwhile", function()
    W.write(dir .. "/back.lua", [[return { queue = "back.first", handler = function() return "first" end }]])
    W.run_for(SETTLE)
    local first = assert(Q.send("back", {}, { queue = "back.first" }))
    assert.equal("first", W.wait_job(first, nil, 5).output)
    assert(os.remove(dir .. "/back.lua"))
    W.run_for(SETTLE)
    local sent = { assert(Q.send("back", { n = 1 }, { queue = "back.first" })),
                   assert(Q.send("back", { n = 2 }, { queue = "back.first" })) }
    W.run_for(0.5)
    assert.equal("waiting", Q.get(sent[1]).state)
    W.write(dir .. "/back.lua", [[return { queue = "back.second", handler = function() return "second" end }]])
    assert_ran(sent, "second", "back.second")
  end)

  it("a job sent to the old queue after the change is moved by maintenance", function()
    W.write(dir .. "/late.lua", [[return { queue = "late.one", handler = function() return "one" end }]])
    W.run_for(SETTLE)
    W.write(dir .. "/late.lua", [[return { queue = "late.two", handler = function() return "two" end }]])
    W.run_for(SETTLE)
    -- a sender that still follows the old file
    local id = assert(Q.send("late", {}, { queue = "late.one" }))
    assert(Q.maintain())
    local job = W.wait_job(id, nil, 5)
    assert.equal("completed", job.state)
    assert.equal("two", job.output)
  end)
end)

-- Waits for job `id` and checks that it completed with `output`.
local function assert_output(id, output)
  local job = W.wait_job(id, nil, 5)
  assert.equal("completed", job.state)
  assert.same(output, job.output)
end

describe("worker hot reload by change notification", function()
  local base, dir

  setup(function()
    base = W.tmpdir()
    dir = base .. "/handlers"
    assert(os.execute("mkdir " .. W.shq(dir)))
    W.open({ handlers = dir, hot_reload = true, queue = { retry_limit = 0 } })
    assert(moonq.start())
  end)
  teardown(W.close)

  it("a file added to an empty directory is picked up", function()
    local id = assert(Q.send("first", {}))
    W.run_for(0.7)
    assert.equal("waiting", Q.get(id).state)
    W.write(dir .. "/first.lua", [[return function() return "first" end]])
    assert_output(id, "first")
  end)

  it("a file renamed into place serves the next job, even with the old mtime and size", function()
    W.write(dir .. "/saved.lua", [[return function() return "one" end]])
    W.run_for(SETTLE)
    assert_output(assert(Q.send("saved", {})), "one")
    -- an editor's save: a temporary file renamed over the old one; this
    -- one has the old file's size and (touch -r) its modification time
    local tmp = dir .. "/.saved.lua.swp"
    W.write(tmp, [[return function() return "two" end]])
    assert(os.execute(("touch -r %s %s"):format(W.shq(dir .. "/saved.lua"), W.shq(tmp))))
    assert(os.rename(tmp, dir .. "/saved.lua"))
    W.run_for(SETTLE)
    assert_output(assert(Q.send("saved", {})), "two")
  end)

  it("a new subdirectory's files are picked up, and files added to it later", function()
    local first = assert(Q.send("sub.one", {}))
    local second = assert(Q.send("sub.two", {}))
    W.write(dir .. "/sub/one.lua", [[return function() return "sub one" end]])
    assert_output(first, "sub one")
    assert.equal("waiting", Q.get(second).state)
    W.write(dir .. "/sub/two.lua", [[return function() return "sub two" end]])
    assert_output(second, "sub two")
    -- a subdirectory renamed into the tree with its files
    local ready = W.tmpdir()
    W.write(ready .. "/three.lua", [[return function() return "moved in" end]])
    local third = assert(Q.send("moved.three", {}))
    assert(os.execute(("mv %s %s"):format(W.shq(ready), W.shq(dir .. "/moved"))))
    assert_output(third, "moved in")
  end)

  it("the handlers directory replaced by another renamed into place", function()
    local new = base .. "/handlers.new"
    W.write(new .. "/first.lua", [[return function() return "replaced" end]])
    assert(os.rename(dir, base .. "/handlers.old"))
    assert(os.rename(new, dir))
    W.run_for(SETTLE)
    assert_output(assert(Q.send("first", {})), "replaced")
    -- the new directory is watched: a change in it is picked up
    W.write(dir .. "/first.lua", [[return function() return "changed in the new one" end]])
    W.run_for(SETTLE)
    assert_output(assert(Q.send("first", {})), "changed in the new one")
    -- the old one is not: a change there is not
    W.write(base .. "/handlers.old/first.lua", [[return function() return "old" end]])
    W.run_for(SETTLE)
    assert_output(assert(Q.send("first", {})), "changed in the new one")
  end)

  it("a symlink on the path to the handlers directory swapped", function()
    -- handlers -> release1, then handlers -> release2 (ln -sfn: the link
    -- removed and made again)
    W.write(base .. "/release1/first.lua", [[return function() return "release 1" end]])
    W.write(base .. "/release2/first.lua", [[return function() return "release 2" end]])
    assert(os.execute(("rm -rf %s && ln -s release1 %s"):format(W.shq(dir), W.shq(dir))))
    W.run_for(SETTLE)
    assert_output(assert(Q.send("first", {})), "release 1")
    assert(os.execute(("ln -sfn release2 %s"):format(W.shq(dir))))
    W.run_for(SETTLE)
    assert_output(assert(Q.send("first", {})), "release 2")
    -- a file changed in the release the link points to
    W.write(base .. "/release2/first.lua", [[return function() return "release 2, changed" end]])
    W.run_for(SETTLE)
    assert_output(assert(Q.send("first", {})), "release 2, changed")
  end)
end)

describe("moonq run restarted with a handler on another queue", function()
  setup(function()
    assert.is_string(W.bin, "MOONQ_BIN is not set")
    W.open({ handlers = W.handlers_dir({}), hot_reload = false })
  end)
  teardown(W.close)

  it("runs the jobs sent to the old queue while it was down", function()
    local dir = W.handlers_dir({
      ["resize.lua"] = [[return { queue = "images", handler = function() return "old" end }]],
    })
    local config = W.config_file({ schema = W.schema, handlers = dir, hot_reload = false,
                                   log = { level = "info" } })
    local pid, log, rc = W.moonq_run(config)
    local first = assert(Q.send("resize", {}, { queue = "images" }))
    assert.equal("old", W.wait_job(first, nil, 10).output, W.read(log))
    W.signal(pid, "TERM")
    assert(W.poll(rc, 10), "moonq run did not stop")
    local sent = { assert(Q.send("resize", { n = 1 }, { queue = "images" })),
                   assert(Q.send("resize", { n = 2 }, { queue = "images", delay = 1 })) }
    W.write(dir .. "/resize.lua", [[return { queue = "thumbnails", handler = function() return "new" end }]])
    local pid2, log2 = W.moonq_run(config)
    assert_ran(sent, "new", "thumbnails", log2)
    W.signal(pid2, "TERM")
  end)
end)
