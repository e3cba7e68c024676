-- The emails example's configuration (docs/config.md has every key).
return {
  -- nil: moonq starts a private PostgreSQL under .moonq/ beside this file;
  -- DATABASE_URL, when set, is used instead.
  database = os.getenv("DATABASE_URL"),
  schema = "moonq",
  handlers = "handlers",
  queue = { retry_limit = 3, retry_delay = 5, timeout = 30 },
  -- Job "digest" every morning at 08:00 in Berlin (summer and winter time
  -- alike), with this data; `moonq run` fires it (docs/schedules.md).
  schedules = {
    { name = "digest", cron = "0 8 * * *", tz = "Europe/Berlin",
      data = { to = "team@example.com" } },
  },
  log = { level = "info" },
}
