-- Config of the worker benchmark (bench/bench_worker.sh). Settings come from
-- the environment so that one file serves every run.
local env = os.getenv
local dir = env("BENCH_WORKER_DIR") or "bench/worker"
return {
  database = env("DATABASE_URL"),
  schema = env("BENCH_SCHEMA") or "moonq_wbench",
  handlers = env("BENCH_HANDLERS") or (dir .. "/handlers"),
  workers = tonumber(env("BENCH_WORKERS") or "1"),
  hot_reload = false,
  queue = {
    concurrency = tonumber(env("BENCH_CONCURRENCY") or "10"),
    prefetch = tonumber(env("BENCH_PREFETCH") or "") or "auto", -- BENCH_PREFETCH=N, else "auto"
    poll_interval = 2,
    retention = tonumber(env("BENCH_RETENTION") or "604800"), -- 0: completed jobs not kept
  },
  events = { job_events = env("BENCH_JOB_EVENTS") ~= "0" },
  log = { level = "warn" },
}
