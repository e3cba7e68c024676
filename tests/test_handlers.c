/* test_handlers.c -- watching a handlers directory (src/handlers.c): a
 * file added, changed and removed is noticed with inotify, and without it
 * (this program's inotify_add_watch fails with ENOSPC when `no_watches`
 * is set, as when fs.inotify.max_user_watches is reached) a warning is
 * logged once and the directory is scanned every 0.5 s instead.
 */
#define _GNU_SOURCE /* syscall */
#include "handlers.h"

#include <errno.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "log.h"
#include "lua_bindings/bindings.h"
#include "test.h"

static bool no_watches;

/* Takes the place of libc's for the whole program (dirwatch.c's calls
 * included). */
int inotify_add_watch(int fd, const char *path, uint32_t mask) {
  if (no_watches) {
    errno = ENOSPC;
    return -1;
  }
  return (int)syscall(SYS_inotify_add_watch, fd, path, mask);
}

static struct ev_loop *loop;
static lua_State *L;
static char dir[256];
static bool changed;

static void on_change(void *data) {
  changed = true;
  (*(int *)data)++;
}

static void write_file(const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  mq_test_write(path, text);
}

static mq_handlers *setup(const char *tag) {
  mq_test_mkdtemp(dir, sizeof dir, tag);
  char err[256];
  mq_handlers *h = mq_handlers_new(L, dir, err, sizeof err);
  REQUIRE(h);
  return h;
}

static void teardown(mq_handlers *h) {
  mq_handlers_free(h);
  mq_test_rmtree(dir);
}

/* Runs the loop until on_change or `timeout` s; resets the flag. */
static bool reloaded(double timeout) {
  changed = false;
  ev_now_update(loop);
  bool got = mq_test_run_until(loop, &changed, timeout);
  changed = false;
  return got;
}

/* A change is picked up, and within 0.5 s: sooner than any poll would. */
static void test_notified(void) {
  int count = 0;
  mq_handlers *h = setup("handlers-notified");
  CHECK_INT(mq_handlers_watch(h, loop, on_change, &count), 0);
  write_file("a.lua", "return function() return 1 end");
  CHECK(reloaded(0.5));
  CHECK(mq_handlers_find(h, "a") != NULL);
  write_file("b.txt", "not a handler"); /* nothing to reload */
  CHECK(!reloaded(0.5));
  char path[512];
  snprintf(path, sizeof path, "%s/a.lua", dir);
  CHECK_INT(unlink(path), 0);
  CHECK(reloaded(0.5));
  CHECK(mq_handlers_find(h, "a") == NULL);
  CHECK_INT(count, 2);
  mq_handlers_unwatch(h);
  write_file("c.lua", "return function() return 1 end"); /* not watching */
  CHECK(!reloaded(1.0));
  teardown(h);
}

static void test_fallback(void) {
  int count = 0;
  char *logged = NULL;
  size_t loglen = 0;
  FILE *log = open_memstream(&logged, &loglen);
  REQUIRE(log);
  mq_log_set_stream(log);
  mq_handlers *h = setup("handlers-fallback");
  no_watches = true;
  CHECK_INT(mq_handlers_watch(h, loop, on_change, &count), 0);
  write_file("a.lua", "return function() return 1 end");
  CHECK(reloaded(2.0));
  CHECK(mq_handlers_find(h, "a") != NULL);
  write_file("b.lua", "return function() return 2 end");
  CHECK(reloaded(2.0));
  CHECK(mq_handlers_find(h, "b") != NULL);
  no_watches = false;
  teardown(h);
  mq_log_set_stream(stderr);
  fclose(log);
  const char *warning = "cannot watch the handlers directory for changes";
  CHECK_CONTAINS(logged, warning);
  CHECK_CONTAINS(logged, "max_user_watches reached");
  CHECK_CONTAINS(logged, "scanning it every 0.5 s instead");
  const char *first = logged ? strstr(logged, warning) : NULL;
  CHECK(first && !strstr(first + 1, warning)); /* once */
  free(logged);
}

int main(void) {
  loop = ev_default_loop(0);
  L = luaL_newstate();
  luaL_openlibs(L);
  REQUIRE(luaL_dostring(L, "package.path = 'lua/?.lua;lua/?/init.lua;' .. "
                           "package.path") == LUA_OK);
  mq_bindings_preload(L);
  RUN(test_notified);
  RUN(test_fallback);
  lua_close(L);
  return mq_test_done();
}
