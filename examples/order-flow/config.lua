-- The order-flow example's configuration (docs/config.md has every key).
return {
  -- nil: moonq starts a private PostgreSQL under .moonq/ beside this file;
  -- DATABASE_URL, when set, is used instead.
  database = os.getenv("DATABASE_URL"),
  schema = "moonq", -- examples/analytics.sql reads this schema
  handlers = "handlers",
  queue = { retry_limit = 3, retry_delay = 1, retry_backoff = true, timeout = 30 },
  log = { level = "info" },
}
