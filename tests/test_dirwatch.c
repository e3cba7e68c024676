/* test_dirwatch.c -- directory change notification (src/dirwatch.c).
 *
 * Each case makes a temporary directory, watches parts of it, changes
 * files and counts callbacks. The kernel queues an event during the
 * system call that causes it, so running the loop briefly afterwards
 * delivers every event there is: "no call" is checked that way.
 */
#include "dirwatch.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

static struct ev_loop *loop;
static int calls;
static bool called;

static void on_change(void *data) {
  calls++;
  called = true;
  (*(int *)data)++;
}

/* Runs the loop until a callback (true) or 0.1 s passed (false); resets
 * the flag. */
static bool notified(void) {
  called = false;
  ev_now_update(loop); /* the 0.1 s count from now */
  bool got = mq_test_run_until(loop, &called, 0.1);
  called = false;
  return got;
}

static char base[64];

/* base/<rel>, static buffer (one of two, so two can be used at once). */
static const char *at(const char *rel) {
  static char buf[2][256];
  static int i;
  i ^= 1;
  snprintf(buf[i], sizeof buf[i], "%s/%s", base, rel);
  return buf[i];
}

static mq_dirwatch *setup(int *count) {
  mq_test_mkdtemp(base, sizeof base, "dirwatch");
  char err[256];
  mq_dirwatch *dw = mq_dirwatch_new(loop, on_change, count, err, sizeof err);
  REQUIRE(dw);
  return dw;
}

static void teardown(mq_dirwatch *dw) {
  mq_dirwatch_close(dw);
  mq_test_rmtree(base);
}

static void test_dir(void) {
  int count = 0;
  mq_dirwatch *dw = setup(&count);
  mq_test_write(at("log.txt"), "a");
  mq_dirwatch_begin(dw);
  CHECK_INT(mq_dirwatch_dir(dw, base, ".lua"), 0);
  mq_dirwatch_end(dw);
  CHECK(!notified()); /* nothing happened since */
  mq_test_write(at("a.lua"), "return 1"); /* created */
  CHECK(notified());
  mq_test_write(at("a.lua"), "return 2"); /* written */
  CHECK(notified());
  mq_test_write(at("log.txt"), "more"); /* another file written: no call */
  CHECK(!notified());
  mq_test_write(at(".a.lua.swp"), "x"); /* created: counts */
  CHECK(notified());
  mq_test_write(at(".a.lua.swp"), "y"); /* a dot file written: no call */
  CHECK(!notified());
  CHECK_INT(rename(at(".a.lua.swp"), at("a.lua")), 0); /* renamed into place */
  CHECK(notified());
  CHECK_INT(mkdir(at("sub"), 0700), 0);
  CHECK(notified());
  mq_test_write(at("sub/b.lua"), "x"); /* not watched until named */
  CHECK(!notified());
  CHECK_INT(unlink(at("a.lua")), 0);
  CHECK(notified());
  CHECK(count > 0);
  teardown(dw);
}

/* Entries: the directory renamed away and another renamed into place, a
 * symlink renamed over the watched name; other names do not call. */
static void test_entry(void) {
  int count = 0;
  mq_dirwatch *dw = setup(&count);
  CHECK_INT(mkdir(at("h"), 0700), 0);
  CHECK_INT(mkdir(at("h.new"), 0700), 0);
  mq_dirwatch_begin(dw);
  CHECK_INT(mq_dirwatch_entry(dw, base, "h"), 0);
  CHECK_INT(mq_dirwatch_entry(dw, base, "current"), 0);
  mq_dirwatch_end(dw);
  mq_test_write(at("other"), "x"); /* another entry: no call */
  CHECK(!notified());
  CHECK_INT(rename(at("h"), at("h.old")), 0);
  CHECK(notified());
  CHECK_INT(rename(at("h.new"), at("h")), 0);
  CHECK(notified());
  mq_test_write(at("h/a.lua"), "x"); /* inside: not watched here */
  CHECK(!notified());
  CHECK_INT(symlink("h.old", at("current.tmp")), 0); /* another name */
  CHECK(!notified());
  CHECK_INT(rename(at("current.tmp"), at("current")), 0);
  CHECK(notified());
  teardown(dw);
}

/* A watch not named again in a pass is dropped: its directory's changes
 * no longer call, and dropping it calls nothing. A directory that is
 * deleted calls. */
static void test_pass(void) {
  int count = 0;
  mq_dirwatch *dw = setup(&count);
  CHECK_INT(mkdir(at("a"), 0700), 0);
  CHECK_INT(mkdir(at("b"), 0700), 0);
  mq_dirwatch_begin(dw);
  CHECK_INT(mq_dirwatch_dir(dw, at("a"), NULL), 0);
  CHECK_INT(mq_dirwatch_dir(dw, at("b"), NULL), 0);
  mq_dirwatch_end(dw);
  mq_test_write(at("a/x"), "1");
  CHECK(notified());
  mq_dirwatch_begin(dw);
  CHECK_INT(mq_dirwatch_dir(dw, at("b"), NULL), 0);
  mq_dirwatch_end(dw);
  CHECK(!notified()); /* a's watch removed: its IN_IGNORED is ours */
  mq_test_write(at("a/x"), "2");
  CHECK(!notified());
  mq_test_write(at("b/y"), "1");
  CHECK(notified());
  CHECK_INT(unlink(at("b/y")), 0);
  CHECK(notified());
  CHECK_INT(rmdir(at("b")), 0); /* the watched directory itself */
  CHECK(notified());
  teardown(dw);
}

static void test_errors(void) {
  int count = 0;
  mq_dirwatch *dw = setup(&count);
  mq_dirwatch_begin(dw);
  errno = 0;
  CHECK_INT(mq_dirwatch_dir(dw, at("missing"), NULL), -1);
  CHECK_INT(errno, ENOENT);
  mq_test_write(at("file"), "x");
  errno = 0;
  CHECK_INT(mq_dirwatch_dir(dw, at("file"), NULL), -1);
  CHECK_INT(errno, ENOTDIR);
  mq_dirwatch_end(dw);
  mq_dirwatch_close(NULL);
  teardown(dw);
}

int main(void) {
  loop = ev_default_loop(0);
  RUN(test_dir);
  RUN(test_entry);
  RUN(test_pass);
  RUN(test_errors);
  printf("%d callbacks\n", calls);
  return mq_test_done();
}
