-- The example app's configuration (see docs/config.md for every key).
return {
  -- nil: moonq starts a private PostgreSQL under .moonq/ (DATABASE_URL,
  -- when set, overrides this either way).
  database = os.getenv("DATABASE_URL"),
  schema = "moonq",
  handlers = "handlers",
  workers = 1,
  queue = {
    retry_limit = 3, retry_delay = 60, retry_backoff = true,
    expire_in = 900, retention = 7 * 86400, poll_interval = 2,
    concurrency = 10, timeout = 300,
  },
  queues = {
    -- flaky.lua's first attempt fails; retry it after a second.
    flaky = { retry_delay = 1, retry_backoff = false },
  },
  -- Cron schedules (docs/schedules.md), stored when `moonq run` starts.
  schedules = {
    { name = "nightly-report", cron = "0 3 * * *", tz = "Europe/Berlin",
      job = "send-email", data = { to = "ops@example.com" }, backfill = "6h" },
  },
  memory_limit = 256, -- MB of Lua memory per process (docs/config.md)
  log = { level = "info" },
}
