-- Config of the scale benchmark (bench/bench_scale.sh). Settings come from
-- the environment so that one file serves every run; a variable left unset
-- or empty leaves moonq's default (workers 1, concurrency 10, prefetch "auto").
local env = os.getenv
local function num(name)
  local v = env(name)
  if v == nil or v == "" then return nil end
  return math.tointeger(tonumber(v)) or tonumber(v)
end
return {
  database = env("DATABASE_URL"),
  schema = env("SCALE_SCHEMA") or "bench_scale",
  handlers = env("SCALE_HANDLERS"),
  workers = num("SCALE_WORKERS"),
  hot_reload = false,
  queue = { concurrency = num("SCALE_CONCURRENCY"), prefetch = num("SCALE_PREFETCH") },
  log = { level = "warn" },
}
