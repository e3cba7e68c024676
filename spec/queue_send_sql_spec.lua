-- SELECT moonq.send / send_many from SQL (sql/024: a send is one INSERT in
-- the common case): each behaviour the statements around that insert had
-- is kept -- the wake-up, job events, a flow's run, the queue defaults, the
-- options and the refusals of bad input.
local moonq = require "moonq"
local H = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "support/queue_helper.lua")

-- psql with "@." standing for "<schema>."; returns its output and ok.
local function psql(sql)
  return H.psql((sql:gsub("@%.", H.schema .. ".")))
end

local function count(sql, ...)
  return H.row("SELECT count(*)::int AS n FROM " .. sql, ...).n
end

describe("SQL send", function()
  setup(function()
    H.open({ queue = { retry_limit = 4, retry_delay = 30, expire_in = 600 },
             queues = { own = { retry_limit = 9, dead_letter = "own_dead" } } })
  end)
  teardown(H.close)
  before_each(function()
    H.sql("SELECT @.store_job_events(false)")
    H.sql("DELETE FROM @.job")
  end)

  it("wakes the job's queue at commit; not on a moonq.no_wake session, not when refused", function()
    local out, ok = psql(([[
LISTEN "%s_wake";
SELECT @.send('woken', '{}', '{"queue": "wq"}') IS NOT NULL AS sent;
SELECT 'quiet';
SET moonq.no_wake = on;
SELECT @.send('woken', '{}', '{"queue": "nq"}') IS NOT NULL AS sent;
RESET moonq.no_wake;
SELECT @.send('woken', '{}', '{"queue": "sq", "singleton_key": "k"}') IS NOT NULL AS sent;
SELECT 'taken';
SELECT @.send('woken', '{}', '{"queue": "sq", "singleton_key": "k"}') IS NULL AS refused;
SELECT 'end';
]]):format(H.schema))
    assert(ok, out)
    local first, rest = out:match("^(.-)quiet\n(.*)$")
    assert(first, out)
    assert.truthy(first:find('payload "wq"', 1, true), out)
    local before, after = rest:match("^(.-)taken\n(.*)$")
    assert(before, out)
    assert.is_nil(rest:find('payload "nq"', 1, true), out)
    assert.truthy(before:find('payload "sq"', 1, true), out)
    assert.is_nil(after:find("Asynchronous notification", 1, true), out)
  end)

  it("writes job.created when job events are on, with queue, attempt, start_after and run_id", function()
    local off = H.row("SELECT @.send('ev', '{}') AS id").id
    assert.equal(0, count("@.queue_events WHERE stream = $1", "job:ev:" .. off))
    H.sql("SELECT @.store_job_events(true)")
    local r = H.row([[SELECT @.send('ev', '{"n": 1}', '{"queue": "evq", "run_id": "r-1", "delay": 60,
                                                    "singleton_key": "e"}') AS id]])
    local e = H.row([[SELECT e.type, e.run_id, e.attempt, e.data->>'queue' AS queue,
                             (e.data->>'attempt')::int AS data_attempt,
                             (e.data->>'start_after')::timestamptz = j.start_after AS same_start
                        FROM @.queue_events e, @.job j
                       WHERE stream = $1 AND j.id = $2]], "job:ev:" .. r.id, r.id)
    assert.equal("job.created", e.type)
    assert.equal("r-1", e.run_id)
    assert.equal(0, e.attempt)
    assert.equal("evq", e.queue)
    assert.equal(0, e.data_attempt)
    assert.is_true(e.same_start)
    -- refused by its singleton_key: no job, no event
    local n = count("@.queue_events WHERE stream LIKE 'job:ev:%'")
    assert.equal(moonq.null, H.row([[SELECT @.send('ev', '{}', '{"queue": "evq",
                                       "singleton_key": "e"}') AS id]]).id)
    assert.equal(n, count("@.queue_events WHERE stream LIKE 'job:ev:%'"))
  end)

  it("of a flow's entry job without a run_id starts a run; refused by its singleton_key, none", function()
    H.sql([[SELECT @.store_flows('[{"flow": "sqlf", "steps": [{"step": "a", "job": "sqlf.a",
                                  "entry": true}, {"step": "b", "job": "sqlf.b"}]}]')]])
    H.sql("SELECT @.store_job_events(true)")
    local id = H.row([[SELECT @.send('sqlf.a', '{"x": 1}', '{"singleton_key": "once"}') AS id]]).id
    local job = H.row("SELECT run_id FROM @.job WHERE id = $1", id)
    assert.is_string(job.run_id)
    local run = H.row("SELECT flow_name, status, data FROM @.queue_flow_index WHERE run_id = $1",
                      job.run_id)
    assert.equal("sqlf", run.flow_name)
    assert.equal("running", run.status)
    assert.same({ x = 1 }, run.data)
    -- flow.started, then job.created carrying the run
    local ev = H.sql([[SELECT type, run_id FROM @.queue_events WHERE run_id = $1 ORDER BY id]],
                     job.run_id)
    assert.equal(2, #ev)
    assert.equal("flow.started", ev[1].type)
    assert.equal("job.created", ev[2].type)
    local runs = count("@.queue_flow_index")
    assert.equal(moonq.null,
      H.row([[SELECT @.send('sqlf.a', '{}', '{"singleton_key": "once"}') AS id]]).id)
    assert.equal(runs, count("@.queue_flow_index"))
    -- a step that is not the entry, or a job with a run_id, starts none
    H.sql([[SELECT @.send('sqlf.b', '{}'), @.send('sqlf.a', '{}', '{"run_id": "given"}')]])
    assert.equal(runs, count("@.queue_flow_index"))
    assert.equal(1, count("@.job WHERE name = 'sqlf.b' AND run_id IS NULL"))
  end)

  it("takes defaults from the queue's own row, then the '' row, then the built-ins", function()
    local function job(sql)
      local id = H.row("SELECT " .. sql .. " AS id").id
      return H.row([[SELECT queue, retry_limit, retry_delay, retry_backoff, retry_delay_max,
                            expire_in, retention, dead_letter FROM @.job WHERE id = $1]], id)
    end
    local own = job("@.send('own', '{}')")
    assert.equal(9, own.retry_limit)                -- queues.own
    assert.equal("own_dead", own.dead_letter)
    assert.equal(30, own.retry_delay)               -- queue (the '' row)
    assert.equal(600, own.expire_in)
    assert.equal(604800, own.retention)             -- built in
    assert.equal(true, own.retry_backoff)
    assert.equal(moonq.null, own.retry_delay_max)
    local other = job([[@.send('x', '{}', '{"queue": "own", "retry_limit": 1, "retention": 5}')]])
    assert.equal("own", other.queue)
    assert.equal(1, other.retry_limit)
    assert.equal(5, other.retention)
    assert.equal("own_dead", other.dead_letter)
    -- queue_defaults, which dead-letter copies use, says the same
    local d = H.row("SELECT (q).* FROM (SELECT @.queue_defaults('own') AS q) s")
    assert.equal(9, d.retry_limit)
    assert.equal(30, d.retry_delay)
    assert.equal(604800, d.retention)
    assert.equal("own_dead", d.dead_letter)
    local plain = job("(@.send_many('own', '[{}]'))[1]")
    assert.equal(9, plain.retry_limit)
    assert.equal(600, plain.expire_in)
  end)

  it("leaves out options given as JSON null, unknown names too", function()
    local id = H.row([[SELECT @.send('nulls', '{}', '{"priority": null, "queue": null,
                                     "colour": null, "delay": null}') AS id]]).id
    local r = H.row("SELECT queue, priority, start_after <= now() AS due FROM @.job WHERE id = $1", id)
    assert.equal("nulls", r.queue)
    assert.equal(0, r.priority)
    assert.is_true(r.due)
    assert.equal(2, H.row([[SELECT cardinality(@.send_many('nulls', '[1, 2]',
                             '{"retry_limit": null, "colour": null}')) AS n]]).n)
  end)

  it("reads each option in send and send_many alike", function()
    local opts = [[{"queue": "oq", "priority": 5, "delay": 30, "retry_limit": 2,
                    "retry_delay": 7, "retry_backoff": false, "retry_delay_max": 70,
                    "expire_in": 8, "retention": 9, "singleton_key": "sk",
                    "dead_letter": "dl", "run_id": "rid"}]]
    local a = H.row("SELECT @.send('o', '{}', $1::jsonb) AS id", opts).id
    local b = H.row("SELECT (@.send_many('o', '[{}]', $1::jsonb || '{\"queue\": \"oq2\"}'))[1] AS id",
                    opts).id
    local cols = [[queue, priority, round(extract(epoch FROM start_after - created_at))::int AS wait,
                   retry_limit, retry_delay, retry_backoff, retry_delay_max, expire_in,
                   retention, singleton_key, dead_letter, run_id]]
    local ra = H.row("SELECT " .. cols .. " FROM @.job WHERE id = $1", a)
    local rb = H.row("SELECT " .. cols .. " FROM @.job WHERE id = $1", b)
    assert.equal("oq", ra.queue)
    assert.equal("oq2", rb.queue)
    rb.queue = "oq"
    assert.same(ra, rb)
    assert.same({ queue = "oq", priority = 5, wait = 30, retry_limit = 2, retry_delay = 7,
                  retry_backoff = false, retry_delay_max = 70, expire_in = 8, retention = 9,
                  singleton_key = "sk", dead_letter = "dl", run_id = "rid" }, ra)
    local id = H.row([[SELECT @.send('o', '{}', '{"start_after": "2031-02-03T04:05:06Z"}') AS id]]).id
    assert.is_true(H.row([[SELECT start_after = '2031-02-03T04:05:06Z' AS ok FROM @.job
                            WHERE id = $1]], id).ok)
  end)

  it("names an unknown option before a bad value, and of two bad values the first in jsonb's order", function()
    assert.matches('unknown option "colour"',
      H.refusal([[SELECT @.send('bad', '{}', '{"priority": "high", "colour": "red"}')]]), 1, true)
    assert.matches('unknown option "zz"',
      H.refusal([[SELECT @.send('bad', '{}', '{"zz": 1, "aaa": 1}')]]), 1, true)
    -- jsonb orders keys shorter first: "priority" (8) before "retry_limit" (11)
    assert.matches('option "priority" must be an integer',
      H.refusal([[SELECT @.send('bad', '{}', '{"retry_limit": -1, "priority": "x"}')]]), 1, true)
    assert.matches('option "retry_limit" is out of range',
      H.refusal([[SELECT @.send_many('bad', '[1]', '{"retry_limit": -1, "retention": 5}')]]), 1, true)
    assert.matches('option "expire_in" must be > 0',
      H.refusal([[SELECT @.send('bad', '{}', '{"expire_in": 0}')]]), 1, true)
    assert.matches('give either "delay" or "start_after", not both',
      H.refusal([[SELECT @.send('bad', '{}', '{"delay": 1, "start_after": "x"}')]]), 1, true)
    assert.matches('option "start_after" must be a finite timestamp',
      H.refusal([[SELECT @.send_many('bad', '[1]', '{"start_after": "infinity"}')]]), 1, true)
    assert.equal(0, count("@.job WHERE name = 'bad'"))
  end)

  it("refuses bad names, options and data in send and send_many, writing nothing", function()
    for _, fn in ipairs({ "@.send(%s, '{}', %s)", "@.send_many(%s, '[{}]', %s)" }) do
      local function err(name, opts)
        return H.refusal("SELECT " .. fn:format(name, opts))
      end
      assert.matches("job name must be a non-empty string", err("''", "'{}'"), 1, true)
      assert.matches("job name must be a non-empty string", err("NULL", "'{}'"), 1, true)
      assert.matches("job name is 256 bytes, the limit is 255", err("repeat('x', 256)", "'{}'"), 1, true)
      assert.matches("options must be a JSON object, got array", err("'bad'", "'[]'"), 1, true)
      assert.matches('option "queue" is 256 bytes, the limit is 255',
        err("'bad'", [[jsonb_build_object('queue', repeat('q', 256))]]), 1, true)
    end
    assert.matches("job data holds a number beyond",
      H.refusal([[SELECT @.send('bad', '{"n": 1e400}')]]), 1, true)
    assert.matches("job data holds a number beyond",
      H.refusal([[SELECT @.send_many('bad', '[1, {"n": 1e400}]')]]), 1, true)
    assert.matches("send_many needs a JSON array of job data",
      H.refusal([[SELECT @.send_many('bad', '{}')]]), 1, true)
    assert.is_number(H.row("SELECT @.send(repeat('x', 255), NULL, NULL) AS id").id)
    assert.equal(0, count("@.job WHERE name = 'bad'"))
  end)
end)
