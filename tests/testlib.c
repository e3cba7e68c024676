/* testlib.c -- the harness behind test.h. */
#define _DEFAULT_SOURCE /* mkdtemp */
#include "test.h"

#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

int mq_test_failures;
int mq_test_case_failed;
static int passed;

void mq_test_run(const char *name, void (*fn)(void)) {
  mq_test_case_failed = 0;
  fn();
  if (mq_test_case_failed) {
    mq_test_failures++;
    printf("not ok - %s\n", name);
  } else {
    passed++;
    printf("ok - %s\n", name);
  }
  fflush(stdout);
}

int mq_test_done(void) {
  printf("%d passed, %d failed\n", passed, mq_test_failures);
  return mq_test_failures ? 1 : 0;
}

const char *mq_test_db_url(void) {
  const char *url = getenv("DATABASE_URL");
  if (!url || !*url) {
    fprintf(stderr, "DATABASE_URL is not set (run the tests through ctest)\n");
    exit(1);
  }
  return url;
}

const char *mq_test_schema(const char *tag) {
  static char buf[64];
  snprintf(buf, sizeof buf, "t_%s_%d", tag, (int)getpid());
  return buf;
}

char *mq_test_sql(const char *sql) {
  PGconn *c = PQconnectdb(mq_test_db_url());
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "mq_test_sql: %s", PQerrorMessage(c));
    PQfinish(c);
    return NULL;
  }
  PGresult *r = PQexec(c, sql);
  char *out = NULL;
  ExecStatusType st = PQresultStatus(r);
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0)
      out = strdup(PQgetvalue(r, 0, 0));
    else
      out = strdup("");
  } else {
    fprintf(stderr, "mq_test_sql: %s: %s", sql, PQresultErrorMessage(r));
  }
  PQclear(r);
  PQfinish(c);
  return out;
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  *(bool *)w->data = true;
}

bool mq_test_run_until(struct ev_loop *loop, const bool *flag,
                       double timeout) {
  bool expired = false;
  ev_timer t;
  ev_timer_init(&t, deadline_cb, timeout, 0);
  t.data = &expired;
  ev_timer_start(loop, &t);
  while (!*flag && !expired)
    ev_run(loop, EVRUN_ONCE);
  ev_timer_stop(loop, &t);
  return *flag;
}

void mq_test_mkdtemp(char *buf, size_t len, const char *tag) {
  snprintf(buf, len, "/tmp/moonq-%s-XXXXXX", tag);
  REQUIRE(mkdtemp(buf));
}

void mq_test_rmtree(const char *path) {
  char cmd[600];
  REQUIRE(!strchr(path, '\''));
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  REQUIRE(system(cmd) == 0);
}

void mq_test_write(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  REQUIRE(f);
  fputs(text, f);
  REQUIRE(fclose(f) == 0);
}

char *mq_test_shell(const char *cmd, int *status) {
  FILE *p = popen(cmd, "r");
  if (!p) {
    *status = -1;
    return strdup("");
  }
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += n;
    if (cap - len < 1024) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
  }
  buf[len] = '\0';
  int st = pclose(p);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return buf;
}
