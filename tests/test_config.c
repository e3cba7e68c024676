/* test_config.c -- config.lua loading and validation (no database).
 *
 * Fixtures live in tests/fixtures/config/; cases that need a one-off config
 * write it to a temporary file. Messages are checked exactly where the
 * wording is the interface (unknown keys, type errors), by their key path
 * and expectation elsewhere.
 */
#define _XOPEN_SOURCE 700 /* realpath(), mkdtemp() */

#include "config.h"

#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "log.h"
#include "test.h"

/* Room for a fixture path and the message around it. */
#define MSG_MAX (PATH_MAX + 512)

static char *fixture(const char *name) {
  static char buf[PATH_MAX];
  const char *src = getenv("MOONQ_SOURCE_DIR");
  snprintf(buf, sizeof buf, "%s%stests/fixtures/config/%s", src ? src : "",
           src ? "/" : "", name);
  return buf;
}

/* Loads `path` in a fresh state; checks the stack is left as it was. */
static struct mq_config *load(const char *path, char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_pushinteger(L, 7); /* something the load must leave alone */
  struct mq_config *cfg = mq_config_load(L, path, err, errlen);
  CHECK_INT(lua_gettop(L), 1);
  CHECK_INT(lua_tointeger(L, 1), 7);
  lua_close(L);
  return cfg;
}

/* Writes text to a new temporary file; returns its malloc'd path. */
static char *write_temp(const char *text) {
  char tmpl[] = "/tmp/mq_test_config_XXXXXX";
  int fd = mkstemp(tmpl);
  REQUIRE(fd >= 0);
  size_t n = strlen(text);
  REQUIRE(write(fd, text, n) == (ssize_t)n);
  close(fd);
  return strdup(tmpl);
}

/* Loads a config given as text; *path (caller frees) names the file. */
static struct mq_config *load_text(const char *text, char **path, char *err,
                                   size_t errlen) {
  *path = write_temp(text);
  struct mq_config *cfg = load(*path, err, errlen);
  unlink(*path);
  return cfg;
}

/* Expects text to be rejected with exactly one problem: "<file>: <msg>". */
static void expect_error(const char *text, const char *msg) {
  char err[1024], want[1024], *path;
  struct mq_config *cfg = load_text(text, &path, err, sizeof err);
  CHECK(cfg == NULL);
  snprintf(want, sizeof want, "%s: %s", path, msg);
  CHECK_STR(err, want);
  mq_config_free(cfg);
  free(path);
}

static int count_lines(const char *s) {
  int n = *s ? 1 : 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

static void test_full(void) {
  char err[1024] = "";
  struct mq_config *cfg = load(fixture("full.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_STR(err, "");
  CHECK_STR(cfg->path, fixture("full.lua"));
  CHECK_STR(cfg->database, "postgres://app@db.example/app");
  CHECK_STR(cfg->schema, "jobs_v2");
  CHECK_STR(cfg->handlers, "app/handlers");
  CHECK_INT(cfg->workers, 8);
  CHECK_INT(cfg->pool_size, 16);
  CHECK(!cfg->hot_reload);
  CHECK(cfg->shutdown_grace == 12.5);
  CHECK(cfg->stale_after == 45);
  CHECK_INT(cfg->max_payload, 65536);
  CHECK_INT(cfg->queue.retry_limit, 5);
  CHECK(cfg->queue.retry_delay == 10);
  CHECK(!cfg->queue.retry_backoff);
  CHECK(cfg->queue.expire_in == 600);
  CHECK(cfg->queue.retention == 3600);
  CHECK(cfg->queue.poll_interval == 0.5);
  CHECK_INT(cfg->queue.concurrency, 20);
  CHECK(cfg->queue.timeout == 120);
  CHECK_STR(cfg->queue.dead_letter, "dead");
  CHECK(cfg->events.enabled);
  CHECK(cfg->events.job_events);
  CHECK_INT(cfg->events.pool_size, 2);
  CHECK_INT(cfg->log.level, MQ_LOG_DEBUG);
  CHECK_INT(cfg->nqueues, 2);
  CHECK_INT(cfg->nschedules, 2);
  mq_config_free(cfg);
}

static void test_full_base_dir(void) {
  char err[256], want[PATH_MAX];
  struct mq_config *cfg = load(fixture("full.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  REQUIRE(realpath(fixture(""), want) != NULL);
  CHECK_STR(cfg->base_dir, want);
  CHECK(cfg->base_dir[0] == '/');
  mq_config_free(cfg);
}

static void test_defaults(void) {
  char err[256];
  struct mq_config *cfg = load(fixture("minimal.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK(cfg->database == NULL);
  CHECK_STR(cfg->schema, "moonq");
  CHECK_STR(cfg->handlers, "handlers");
  CHECK_INT(cfg->workers, 1);
  CHECK_INT(cfg->pool_size, 4);
  CHECK(cfg->hot_reload);
  CHECK(cfg->shutdown_grace == 30);
  CHECK(cfg->stale_after == 30);
  CHECK_INT(cfg->max_payload, 1048576);
  CHECK_INT(cfg->queue.retry_limit, 3);
  CHECK(cfg->queue.retry_delay == 60);
  CHECK(cfg->queue.retry_backoff);
  CHECK(cfg->queue.expire_in == 900);
  CHECK(cfg->queue.retention == 604800);
  CHECK(cfg->queue.poll_interval == 2);
  CHECK_INT(cfg->queue.concurrency, 10);
  CHECK(cfg->queue.timeout == 300);
  CHECK(cfg->queue.dead_letter == NULL);
  CHECK(cfg->events.enabled);
  CHECK(!cfg->events.job_events);
  CHECK_INT(cfg->events.pool_size, 4);
  CHECK_INT(cfg->nqueues, 0);
  CHECK_INT(cfg->nschedules, 0);
  CHECK_INT(cfg->log.level, MQ_LOG_INFO);
  CHECK(mq_config_queue(cfg, "anything") == &cfg->queue);
  CHECK(mq_config_queue(cfg, NULL) == &cfg->queue);
  mq_config_free(cfg);
}

static void test_defaults_fn(void) {
  char cwd[PATH_MAX];
  struct mq_config *cfg = mq_config_defaults();
  REQUIRE(cfg != NULL);
  REQUIRE(getcwd(cwd, sizeof cwd) != NULL);
  CHECK(cfg->database == NULL);
  CHECK_STR(cfg->schema, "moonq");
  CHECK_INT(cfg->workers, 1);
  CHECK_INT(cfg->queue.concurrency, 10);
  CHECK(cfg->path != NULL);
  CHECK_STR(cfg->base_dir, cwd);
  mq_config_free(cfg);
  setenv("DATABASE_URL", "host=/tmp dbname=x", 1);
  cfg = mq_config_defaults();
  REQUIRE(cfg != NULL);
  CHECK_STR(cfg->database, "host=/tmp dbname=x");
  mq_config_free(cfg);
  unsetenv("DATABASE_URL");
  mq_config_free(NULL);
}

static void test_unknown_key(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("unknown_key.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want,
           "%s: unknown key \"wokers\" (did you mean \"workers\"?)", path);
  CHECK_STR(err, want);
}

static void test_unknown_nested_key(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("nested_unknown.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want,
           "%s: unknown key \"queue.retry_limt\" "
           "(did you mean \"queue.retry_limit\"?)",
           path);
  CHECK_STR(err, want);
}

static void test_unknown_key_hints(void) {
  expect_error("return { frobnicate = 1 }", "unknown key \"frobnicate\"");
  /* Short keys: distance 1 only. */
  expect_error("return { lg = {} }",
               "unknown key \"lg\" (did you mean \"log\"?)");
  expect_error("return { xy = {} }", "unknown key \"xy\"");
  /* A key of the table one level down. */
  expect_error("return { retry_limit = 3 }",
               "unknown key \"retry_limit\" (did you mean "
               "\"queue.retry_limit\"?)");
  expect_error("return { events = { enabeld = true } }",
               "unknown key \"events.enabeld\" (did you mean "
               "\"events.enabled\"?)");
  expect_error("return { schedules = { { name = 'a', cron = '* * * * *', "
               "crn = 1 } } }",
               "unknown key \"schedules[1].crn\" (did you mean "
               "\"schedules[1].cron\"?)");
  expect_error("return { queues = { ['my q'] = { timout = 1 } } }",
               "unknown key \"queues['my q'].timout\" (did you mean "
               "\"queues['my q'].timeout\"?)");
  expect_error("return { 5 }", "unknown key [1]");
  expect_error("return { ['bad key'] = 1 }", "unknown key \"['bad key']\"");
}

static void test_wrong_type(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("wrong_type.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want,
           "%s: queue.retry_limit: expected an integer >= 0, got string "
           "\"3\"",
           path);
  CHECK_STR(err, want);
  expect_error("return { hot_reload = 'yes' }",
               "hot_reload: expected a boolean, got string \"yes\"");
  expect_error("return { queue = 3 }", "queue: expected a table, got 3");
  expect_error("return { database = {} }",
               "database: expected a string, got table");
  expect_error("return { shutdown_grace = '30' }",
               "shutdown_grace: expected a number > 0, got string \"30\"");
  expect_error("return { events = { enabled = 1 } }",
               "events.enabled: expected a boolean, got 1");
  expect_error("return { workers = 'a\"b\\n' }",
               "workers: expected an integer from 1 to 1024, got string "
               "\"a\\\"b\\10\"");
}

static void test_bad_values(void) {
  char err[1024];
  const char *path = fixture("bad_values.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  CHECK_INT(count_lines(err), 3);
  char want[MSG_MAX];
  snprintf(want, sizeof want, "%s: workers: expected an integer >= 1, got 0",
           path);
  CHECK_CONTAINS(err, want);
  snprintf(want, sizeof want,
           "%s: schema: expected a lowercase SQL identifier", path);
  CHECK_CONTAINS(err, want);
  CHECK_CONTAINS(err, "got string \"Bad-Name\"");
  snprintf(want, sizeof want,
           "%s: log.level: expected one of \"debug\", \"info\", \"warn\", "
           "\"error\", got string \"loud\"",
           path);
  CHECK_CONTAINS(err, want);
}

static void test_numbers(void) {
  char err[512], *path;
  struct mq_config *cfg = load_text(
      "return { workers = 4.0, queue = { retry_delay = 0, retention = 0 } }",
      &path, err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_INT(cfg->workers, 4);
  CHECK(cfg->queue.retry_delay == 0);
  mq_config_free(cfg);
  free(path);
  expect_error("return { workers = 1.5 }",
               "workers: expected an integer from 1 to 1024, got 1.5");
  expect_error("return { workers = 2000 }",
               "workers: expected an integer <= 1024, got 2000");
  cfg = load_text("return { queue = { prefetch = 'auto' }, "
                  "queues = { q = { prefetch = 0 } } }",
                  &path, err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_INT(cfg->queue.prefetch, MQ_PREFETCH_AUTO);
  CHECK_INT(mq_config_queue(cfg, "q")->prefetch, 0);
  CHECK_INT(mq_config_queue(cfg, "other")->prefetch, MQ_PREFETCH_AUTO);
  mq_config_free(cfg);
  free(path);
  expect_error("return { queue = { prefetch = 'lots' } }",
               "queue.prefetch: expected an integer from 0 to 100000 or "
               "\"auto\", got string \"lots\"");
  expect_error("return { queue = { prefetch = -1 } }",
               "queue.prefetch: expected an integer >= 0, got -1");
  expect_error("return { pool_size = 65 }",
               "pool_size: expected an integer <= 64, got 65");
  expect_error("return { max_payload = 0 }",
               "max_payload: expected an integer >= 1, got 0");
  expect_error("return { max_payload = 2^40 }",
               "max_payload: expected an integer <= 2147483647, got "
               "1099511627776");
  expect_error("return { queue = { expire_in = 0 } }",
               "queue.expire_in: expected a number > 0, got 0");
  expect_error("return { queue = { retry_delay = -1 } }",
               "queue.retry_delay: expected a number >= 0, got -1");
  expect_error("return { stale_after = math.huge }",
               "stale_after: expected a finite number > 0, got inf");
  /* durations too short to work: a process declared dead while it lives,
   * a poll that is a storm of statements */
  expect_error("return { stale_after = 0.01 }",
               "stale_after: expected seconds, at least 2, got 0.01");
  expect_error("return { queue = { poll_interval = 0.000001 } }",
               "queue.poll_interval: expected seconds, at least 0.01, got 1e-06");
  expect_error("return { queues = { q = { poll_interval = 0.001 } } }",
               "queues.q.poll_interval: expected seconds, at least 0.01, got 0.001");
  char err2[512];
  struct mq_config *nan =
      load_text("return { stale_after = 0/0 }", &path, err2, sizeof err2);
  CHECK(nan == NULL);
  CHECK_CONTAINS(err2, "stale_after: expected a finite number > 0, got ");
  CHECK_CONTAINS(err2, "nan");
  free(path);
}

static void test_strings(void) {
  expect_error("return { database = '' }",
               "database: expected a non-empty string, got string \"\"");
  expect_error("return { schema = '1abc' }",
               "schema: expected a lowercase SQL identifier "
               "([a-z_][a-z0-9_]*, at most 53 characters, so that its "
               "notification channel <schema>_schedules fits PostgreSQL's "
               "63), got string "
               "\"1abc\"");
  expect_error("return { schema = string.rep('a', 54) }",
               "schema: expected a lowercase SQL identifier "
               "([a-z_][a-z0-9_]*, at most 53 characters, so that its "
               "notification channel <schema>_schedules fits PostgreSQL's "
               "63), got string "
               "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"...");
  char err[256], *path;
  struct mq_config *cfg = load_text(
      "return { schema = '_a9' .. string.rep('z', 50) }", &path, err,
      sizeof err);
  CHECK(cfg != NULL);
  mq_config_free(cfg);
  free(path);
}

static void test_syntax_error(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("syntax_error.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:3: ", path);
  CHECK(strncmp(err, want, strlen(want)) == 0);
  CHECK_CONTAINS(err, "unexpected symbol near '='");
  CHECK_INT(count_lines(err), 1);
}

static void test_runtime_error(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("runtime_error.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:2: boom", path);
  CHECK_STR(err, want);
}

static void test_runtime_error_position_added(void) {
  char err[MSG_MAX], want[MSG_MAX], *path;
  CHECK(load_text("local a = 1\nerror('plain', 0)\n", &path, err,
                  sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:2: plain", path);
  CHECK_STR(err, want);
  free(path);
  CHECK(load_text("\n\nreturn { handlers = os.getenv() }\n", &path, err,
                  sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:3: bad argument #1 to 'getenv'", path);
  CHECK_CONTAINS(err, want);
  free(path);
  CHECK(load_text("error({})\n", &path, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:1: (error object is a table value)",
           path);
  CHECK_STR(err, want);
  free(path);
}

/* Lua cuts chunk names over 60 bytes to "...tail"; messages keep the path. */
static void test_long_path(void) {
  char dir[] = "/tmp/mq_test_config_XXXXXX", sub[256], file[300];
  char err[1024], want[1024];
  REQUIRE(mkdtemp(dir) != NULL);
  snprintf(sub, sizeof sub, "%s/a_rather_long_directory_name_for_testing",
           dir);
  REQUIRE(mkdir(sub, 0700) == 0);
  snprintf(file, sizeof file, "%s/config.lua", sub);
  FILE *f = fopen(file, "w");
  REQUIRE(f != NULL);
  fputs("return {\n  workers = = 1 }\n", f);
  fclose(f);
  CHECK(load(file, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:2: ", file);
  CHECK(strncmp(err, want, strlen(want)) == 0);
  f = fopen(file, "w");
  REQUIRE(f != NULL);
  fputs("local x\nerror('deep')\n", f);
  fclose(f);
  CHECK(load(file, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s:2: deep", file);
  CHECK_STR(err, want);
  unlink(file);
  rmdir(sub);
  rmdir(dir);
}

static void test_not_a_table(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("returns_number.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s must return a table, got number", path);
  CHECK_STR(err, want);
  char *tmp;
  CHECK(load_text("local x = 1\n", &tmp, err, sizeof err) == NULL);
  snprintf(want, sizeof want, "%s must return a table, got nil", tmp);
  CHECK_STR(err, want);
  free(tmp);
}

static void test_missing_file(void) {
  char err[512];
  CHECK(load("/nonexistent/config.lua", err, sizeof err) == NULL);
  CHECK_CONTAINS(err, "cannot open /nonexistent/config.lua");
}

static void test_binary_chunk_rejected(void) {
  char err[512], *path;
  CHECK(load_text("\x1bLua", &path, err, sizeof err) == NULL);
  CHECK_CONTAINS(err, path);
  CHECK_CONTAINS(err, "binary chunk");
  free(path);
}

static void test_database_url(void) {
  char err[512];
  setenv("DATABASE_URL", "postgres://env@host/db", 1);
  struct mq_config *cfg = load(fixture("full.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_STR(cfg->database, "postgres://env@host/db");
  mq_config_free(cfg);
  cfg = load(fixture("minimal.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_STR(cfg->database, "postgres://env@host/db");
  mq_config_free(cfg);
  setenv("DATABASE_URL", "", 1);
  cfg = load(fixture("full.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_STR(cfg->database, "postgres://app@db.example/app");
  mq_config_free(cfg);
  unsetenv("DATABASE_URL");
}

static void test_several_errors(void) {
  char err[2048], *path;
  CHECK(load_text("return {\n"
                  "  wokers = 2, pool_size = 0, hot_reload = 'no',\n"
                  "  queue = { retry_limit = -1, concurrency = 0 },\n"
                  "  events = { pool_size = 100 },\n"
                  "  schedules = { { cron = '* * * * *' } },\n"
                  "}\n",
                  &path, err, sizeof err) == NULL);
  CHECK_INT(count_lines(err), 7);
  CHECK_CONTAINS(err, "unknown key \"wokers\" (did you mean \"workers\"?)");
  CHECK_CONTAINS(err, "pool_size: expected an integer >= 1, got 0");
  CHECK_CONTAINS(err, "hot_reload: expected a boolean, got string \"no\"");
  CHECK_CONTAINS(err, "queue.retry_limit: expected an integer >= 0, got -1");
  CHECK_CONTAINS(err, "queue.concurrency: expected an integer >= 1, got 0");
  CHECK_CONTAINS(err, "events.pool_size: expected an integer <= 64, got 100");
  CHECK_CONTAINS(err, "schedules[1].name: expected a string, got nil");
  /* Every line names the file. */
  for (const char *line = err; line; line = strchr(line, '\n')) {
    if (*line == '\n')
      line++;
    CHECK(strncmp(line, path, strlen(path)) == 0);
  }
  free(path);
}

static void test_small_err_buffer(void) {
  char err[40], *path;
  CHECK(load_text("return { workers = 0, pool_size = 0 }", &path, err,
                  sizeof err) == NULL);
  CHECK(strlen(err) < sizeof err);
  free(path);
}

static void test_queues_merge(void) {
  char err[512];
  struct mq_config *cfg = load(fixture("full.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  REQUIRE(cfg->nqueues == 2);
  /* Sorted by name. */
  CHECK_STR(cfg->queues[0].name, "emails");
  CHECK_STR(cfg->queues[1].name, "reports");
  const struct mq_queue_options *e = mq_config_queue(cfg, "emails");
  CHECK(e == &cfg->queues[0].options);
  CHECK_INT(e->concurrency, 2);
  CHECK(e->timeout == 30);
  CHECK_INT(e->retry_limit, 5); /* from `queue` */
  CHECK(e->poll_interval == 0.5);
  CHECK_STR(e->dead_letter, "dead");
  CHECK(e->dead_letter != cfg->queue.dead_letter); /* its own copy */
  const struct mq_queue_options *r = mq_config_queue(cfg, "reports");
  CHECK_INT(r->retry_limit, 0);
  CHECK_STR(r->dead_letter, "reports_dead");
  CHECK_INT(r->concurrency, 20);
  CHECK(mq_config_queue(cfg, "other") == &cfg->queue);
  mq_config_free(cfg);
}

static void test_queues_errors(void) {
  expect_error("return { queues = { emails = 3 } }",
               "queues.emails: expected a table, got 3");
  expect_error("return { queues = { { concurrency = 1 } } }",
               "queues: expected queue names of 1 to 255 bytes as keys, got 1");
  expect_error("return { queues = { emails = { concurrency = 0 } } }",
               "queues.emails.concurrency: expected an integer >= 1, got 0");
  expect_error("return { queues = 'emails' }",
               "queues: expected a table of queue name = { options }, got "
               "string \"emails\"");
}

static void test_schedules(void) {
  char err[512];
  struct mq_config *cfg = load(fixture("full.lua"), err, sizeof err);
  REQUIRE(cfg != NULL);
  REQUIRE(cfg->nschedules == 2);
  struct mq_schedule_config *s = &cfg->schedules[0];
  CHECK_STR(s->name, "nightly");
  CHECK_STR(s->cron, "0 3 * * *");
  CHECK_STR(s->tz, "Europe/Berlin");
  CHECK_STR(s->job, "cleanup");
  CHECK_STR(s->data_json, "{\"keep\":7}");
  CHECK_STR(s->options_json, "{\"priority\":5}");
  CHECK_STR(s->backfill, "1h");
  s = &cfg->schedules[1];
  CHECK_STR(s->name, "report");
  CHECK_STR(s->cron, "*/15 * * * *");
  CHECK_STR(s->tz, "UTC");
  CHECK_STR(s->job, "report");
  CHECK_STR(s->data_json, "{}");
  CHECK_STR(s->options_json, "{}");
  CHECK(s->backfill == NULL);
  mq_config_free(cfg);
}

static void test_schedules_errors(void) {
  char err[MSG_MAX], want[MSG_MAX];
  const char *path = fixture("schedules.lua");
  CHECK(load(path, err, sizeof err) == NULL);
  snprintf(want, sizeof want,
           "%s: schedules[2].cron: expected a string, got nil", path);
  CHECK_STR(err, want);
  expect_error("return { schedules = {\n"
               "  { name = 'a', cron = '* * * * *' },\n"
               "  { name = 'b', cron = '* * * * *' },\n"
               "  { name = 'a', cron = '0 * * * *' } } }",
               "schedules[3].name: duplicate schedule name \"a\" (also "
               "schedules[1])");
  expect_error("return { schedules = { 'nightly' } }",
               "schedules[1]: expected a table, got string \"nightly\"");
  expect_error("return { schedules = { nightly = { cron = '* * * * *' } } }",
               "schedules: expected an array of tables, found key string "
               "\"nightly\"");
  expect_error("return { schedules = { { name = 'a', cron = 'x', data = 1 "
               "} } }",
               "schedules[1].data: expected a table, got 1");
  expect_error("return { schedules = { { name = 'a', cron = 5 } } }",
               "schedules[1].cron: expected a string, got 5");
  expect_error("return { schedules = { { name = 'a', cron = 'x', backfill = "
               "true } } }",
               "schedules[1].backfill: expected a duration (\"30m\", \"1h\"), "
               "whole seconds >= 0 or a count (\"5 slots\"), got true");
  char *tmp;
  CHECK(load_text("return { schedules = { { name = 'a', cron = 'x', "
                  "data = { f = print } } } }",
                  &tmp, err, sizeof err) == NULL);
  CHECK_CONTAINS(err, tmp);
  CHECK_CONTAINS(err, "schedules[1].data");
  free(tmp);
}

/* Cron expressions, zones and backfills are read at load, each problem
 * named by its key path with cron.c's message. */
static void test_schedules_checked(void) {
  expect_error("return { schedules = { { name = 'a', cron = '* * * * *' },\n"
               "  { name = 'b', cron = '61 * * * *' } } }",
               "schedules[2].cron: \"61 * * * *\": minute field: 61 is out "
               "of range 0-59");
  expect_error("return { schedules = { { name = 'a', cron = '* * * * *', "
               "tz = 'Mars/Olympus' } } }",
               "schedules[1].tz: unknown time zone \"Mars/Olympus\"");
  expect_error("return { schedules = { { name = 'a', cron = '0 0 30 2 *' } } }",
               "schedules[1].cron: \"0 0 30 2 *\" never fires (no fire time "
               "within 8 years)");
  expect_error("return { schedules = { { name = 'a', cron = '@every 0s' } } }",
               "schedules[1].cron: \"@every 0s\": interval \"0s\" must be at "
               "least 1s");
  expect_error("return { schedules = { { name = 'a', cron = '@hourly', "
               "backfill = '1x' } } }",
               "schedules[1].backfill: expected a duration (\"30m\", \"1h\", "
               "\"1d12h\"), seconds or a count (\"5 slots\"), got \"1x\"");
  expect_error("return { schedules = { { name = 'a', cron = '@hourly', "
               "backfill = '0 slots' } } }",
               "schedules[1].backfill: a count of slots must be 1 to 1000, got "
               "0");
  expect_error("return { schedules = { { name = 'a', cron = '@hourly', "
               "backfill = 40000000 } } }",
               "schedules[1].backfill: a duration must be 1s to 366d, got "
               "\"40000000\"");
  expect_error("return { schedules = { { name = 'a', cron = '@hourly', "
               "backfill = -1 } } }",
               "schedules[1].backfill: expected a duration (\"30m\", \"1h\"), "
               "whole seconds >= 0 or a count (\"5 slots\"), got -1");
  expect_error("return { schedules = { { name = string.rep('n', 201), "
               "cron = '@hourly' } } }",
               "schedules[1].name: a schedule name must be 1 to 200 bytes, got "
               "201");
  expect_error("return { schedules = { { name = 'n', job = string.rep('j', "
               "256), cron = '@hourly' } } }",
               "schedules[1].job: job name is 256 bytes, the limit is 255");

  /* Every bad schedule is reported, one line each. */
  char err[2048], *path;
  struct mq_config *cfg = load_text(
      "return { schedules = { { name = 'a', cron = '* * * *' },\n"
      "  { name = 'b', cron = '* * * * *', tz = 'Europe/Berlin ' } } }",
      &path, err, sizeof err);
  CHECK(cfg == NULL);
  CHECK_INT(count_lines(err), 2);
  CHECK_CONTAINS(err, "schedules[1].cron: \"* * * *\": 4 fields, expected 5 "
                      "or 6");
  CHECK_CONTAINS(err, "schedules[2].tz: unknown time zone \"Europe/Berlin \"");
  free(path);

  /* Good backfills of every form. */
  static const char *const good[] = {"'90s'", "'30m'", "'1h'", "'1d12h'",
                                     "'366d'", "3600", "0", "'0'",
                                     "'5 slots'", "'1 slot'", "'1000slots'"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    char text[256];
    snprintf(text, sizeof text,
             "return { schedules = { { name = 'a', cron = '@every 1m', "
             "tz = 'America/New_York', backfill = %s } } }",
             good[i]);
    cfg = load_text(text, &path, err, sizeof err);
    CHECK(cfg != NULL);
    if (!cfg)
      fprintf(stderr, "  backfill %s: %s\n", good[i], err);
    mq_config_free(cfg);
    free(path);
  }
}

static void test_check_schedule(void) {
  char err[512];
  struct mq_schedule_config s = {.name = (char *)"a", .cron = (char *)"@daily"};
  CHECK(mq_config_check_schedule(&s, err, sizeof err) == NULL);
  s.cron = (char *)"@dayly";
  CHECK_STR(mq_config_check_schedule(&s, err, sizeof err), "cron");
  CHECK_CONTAINS(err, "unknown macro \"@dayly\"");
  s.cron = (char *)"30 2 * * *";
  s.tz = (char *)"Europe/Berlin";
  s.backfill = (char *)"2 h";
  CHECK_STR(mq_config_check_schedule(&s, err, sizeof err), "backfill");
  s.backfill = (char *)"2h";
  CHECK(mq_config_check_schedule(&s, err, sizeof err) == NULL);
  s.name = (char *)"";
  CHECK_STR(mq_config_check_schedule(&s, err, sizeof err), "name");
}

static void test_from_table(void) {
  char err[512], cwd[PATH_MAX];
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  REQUIRE(luaL_dostring(L, "return { workers = 3, queue = { timeout = 9 } }") ==
          LUA_OK);
  lua_pushnil(L); /* the table is at -2 */
  struct mq_config *cfg = mq_config_from_table(L, -2, "moonq.open", err,
                                               sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_INT(lua_gettop(L), 2);
  CHECK_STR(cfg->path, "moonq.open");
  REQUIRE(getcwd(cwd, sizeof cwd) != NULL);
  CHECK_STR(cfg->base_dir, cwd);
  CHECK_INT(cfg->workers, 3);
  CHECK(cfg->queue.timeout == 9);
  mq_config_free(cfg);

  REQUIRE(luaL_dostring(L, "return { workrs = 3 }") == LUA_OK);
  CHECK(mq_config_from_table(L, -1, "moonq.open", err, sizeof err) == NULL);
  CHECK_STR(err, "moonq.open: unknown key \"workrs\" (did you mean "
                 "\"workers\"?)");
  CHECK_INT(lua_gettop(L), 3);
  lua_pushinteger(L, 1);
  CHECK(mq_config_from_table(L, -1, "moonq.open", err, sizeof err) == NULL);
  CHECK_STR(err, "moonq.open: config must be a table, got number");
  CHECK_INT(lua_gettop(L), 4);
  lua_close(L);
}

/* Validation reads raw fields: a metatable's __index is not consulted. */
static void test_metatable_ignored(void) {
  char err[512];
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  REQUIRE(luaL_dostring(L, "return setmetatable({}, { __index = function() "
                           "error('consulted') end })") == LUA_OK);
  struct mq_config *cfg = mq_config_from_table(L, -1, "t", err, sizeof err);
  CHECK(cfg != NULL);
  if (cfg)
    CHECK_INT(cfg->workers, 1);
  mq_config_free(cfg);
  lua_close(L);
}

/* A Lua allocator that fails every allocation once `left` of them have
 * been made (left < 0: no limit). */
static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  long *left = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (nsize > osize && *left == 0)
    return NULL; /* and stay failed, through Lua's emergency collection */
  if (nsize > osize && *left > 0)
    (*left)--;
  return realloc(ptr, nsize);
}

/* Lua running out of memory at any point of a load is an error, never a
 * crash or a leak (the sanitizer builds check the latter). */
static void test_out_of_memory(void) {
  char err[1024];
  bool loaded = false;
  for (long n = 0; n < 100000 && !loaded; n++) {
    long left = -1; /* unlimited while the libraries open */
    lua_State *L = lua_newstate(failing_alloc, &left);
    REQUIRE(L != NULL);
    luaL_openlibs(L);
    left = n;
    struct mq_config *cfg =
        mq_config_load(L, fixture("full.lua"), err, sizeof err);
    CHECK_INT(lua_gettop(L), 0);
    if (cfg) {
      loaded = true;
      CHECK_INT(cfg->nschedules, 2);
    } else {
      CHECK(err[0] != '\0');
    }
    mq_config_free(cfg);
    left = -1;
    lua_close(L);
  }
  CHECK(loaded);
}

/* http: off by default; max_body follows max_payload; listen checked as an
 * address; a non-loopback address needs a token of 16 bytes or more. */
static void test_http(void) {
  char err[1024], *path;
  struct mq_config *cfg = load_text("return { max_payload = 1000 }", &path,
                                    err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK(cfg->http.listen == NULL);
  CHECK_INT(cfg->http.max_body, 1000 + 65536);
  CHECK(cfg->http.timeout == 30 && cfg->http.heartbeat == 15);
  mq_config_free(cfg);
  free(path);
  cfg = load_text("return { http = { listen = '[::1]:8081', max_body = 4096, "
                  "timeout = 5, heartbeat = 2 } }",
                  &path, err, sizeof err);
  REQUIRE(cfg != NULL);
  CHECK_STR(cfg->http.listen, "[::1]:8081");
  CHECK_INT(cfg->http.max_body, 4096);
  CHECK(cfg->http.timeout == 5 && cfg->http.heartbeat == 2);
  mq_config_free(cfg);
  free(path);
  cfg = load_text("return { http = { listen = '10.1.2.3:80', token = "
                  "'0123456789abcdef' } }", &path, err, sizeof err);
  CHECK(cfg != NULL);
  mq_config_free(cfg);
  free(path);
  expect_error("return { http = { listen = '0.0.0.0:8080' } }",
               "http.token: required when http.listen (\"0.0.0.0:8080\") is "
               "not a loopback address");
  expect_error("return { http = { listen = 'localhost:8080', token = 'short' } }",
               "http.token: expected at least 16 bytes, got 5");
  expect_error("return { http = { listen = '127.0.0.1' } }",
               "http.listen: expected \"host:port\", got \"127.0.0.1\"");
  expect_error("return { http = { listen = '127.0.0.1:0' } }",
               "http.listen: port must be 1 to 65535, got \"0\"");
  expect_error("return { http = { listen = 'example.com:80' } }",
               "http.listen: host must be an IP address (IPv6 in brackets) or "
               "\"localhost\", got \"example.com\"");
  expect_error("return { http = { listen = 8080 } }",
               "http.listen: expected a string, got 8080");
  expect_error("return { http = { lisen = '127.0.0.1:1' } }",
               "unknown key \"http.lisen\" (did you mean \"http.listen\"?)");
  expect_error("return { http = { max_body = 10 } }",
               "http.max_body: expected an integer >= 1024, got 10");
}

/* mq_config_parse_listen: the loopback is told apart. */
static void test_parse_listen(void) {
  struct sockaddr_in6 addr;
  unsigned len;
  bool loopback;
  char err[256];
  const struct {
    const char *text;
    bool loopback;
  } cases[] = {{"127.0.0.1:1", true},  {"127.9.9.9:80", true},
               {"localhost:80", true}, {"[::1]:80", true},
               {"0.0.0.0:80", false},  {"[::]:80", false},
               {"192.168.1.1:80", false}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK_INT(mq_config_parse_listen(cases[i].text, (struct sockaddr *)&addr,
                                     &len, &loopback, err, sizeof err),
              0);
    CHECK(loopback == cases[i].loopback);
  }
  CHECK_INT(mq_config_parse_listen("[::1:80", (struct sockaddr *)&addr, &len,
                                   &loopback, err, sizeof err),
            -1);
  CHECK_INT(mq_config_parse_listen("1.2.3.4:80x", (struct sockaddr *)&addr,
                                   &len, &loopback, err, sizeof err),
            -1);
}

int main(void) {
  /* ctest sets DATABASE_URL; these cases control it themselves. */
  unsetenv("DATABASE_URL");
  RUN(test_full);
  RUN(test_full_base_dir);
  RUN(test_defaults);
  RUN(test_defaults_fn);
  RUN(test_unknown_key);
  RUN(test_unknown_nested_key);
  RUN(test_unknown_key_hints);
  RUN(test_wrong_type);
  RUN(test_bad_values);
  RUN(test_numbers);
  RUN(test_strings);
  RUN(test_syntax_error);
  RUN(test_runtime_error);
  RUN(test_runtime_error_position_added);
  RUN(test_long_path);
  RUN(test_not_a_table);
  RUN(test_missing_file);
  RUN(test_binary_chunk_rejected);
  RUN(test_database_url);
  RUN(test_several_errors);
  RUN(test_small_err_buffer);
  RUN(test_queues_merge);
  RUN(test_queues_errors);
  RUN(test_schedules);
  RUN(test_schedules_errors);
  RUN(test_schedules_checked);
  RUN(test_check_schedule);
  RUN(test_from_table);
  RUN(test_metatable_ignored);
  RUN(test_out_of_memory);
  RUN(test_http);
  RUN(test_parse_listen);
  return mq_test_done();
}
