/* test_pg_restart.c -- the PostgreSQL layer across a server restart.
 *
 * Runs its own cluster (build/test-pg-restart), so stopping it disturbs no
 * other test. While the server is down requests keep coming; afterwards
 * every one of them has either succeeded or failed with an error (none
 * vanished), the pool has reconnected, and LISTEN works again. */
#include "test.h"

#include <unistd.h>

#include "pg.h"

static struct ev_loop *loop;
static char pgdir[1024];
static char script[1024];

static char *cluster(const char *verb) {
  char cmd[2600];
  snprintf(cmd, sizeof cmd, "%s %s %s 2>&1", script, verb, pgdir);
  int status;
  char *out = mq_test_shell(cmd, &status);
  if (status != 0) {
    fprintf(stderr, "%s failed: %s\n", cmd, out);
    exit(1);
  }
  size_t n = strlen(out);
  while (n > 0 && out[n - 1] == '\n')
    out[--n] = '\0';
  return out;
}

struct tally {
  int issued, ok, connlost, unavailable, other, sleeper_status;
  bool sleeper_done;
};

static struct tally t;

static void count_cb(const struct mq_pg_reply *r, void *data) {
  switch (r->status) {
  case MQ_PG_OK: t.ok++; break;
  case MQ_PG_ECONNLOST: t.connlost++; break;
  case MQ_PG_EUNAVAILABLE: t.unavailable++; break;
  default:
    t.other++;
    fprintf(stderr, "unexpected status %d: %s\n", r->status, r->error);
  }
}

static void sleeper_cb(const struct mq_pg_reply *r, void *data) {
  t.sleeper_status = r->status;
  t.sleeper_done = true;
}

static int heard, missed;
static bool heard_flag;

static void listen_cb(const char *channel, const char *payload, void *data) {
  if (payload) {
    heard++;
    heard_flag = true;
  } else {
    missed++;
  }
}

static void issue(mq_pg *pg, int flags) {
  if (mq_pg_query(pg, "SELECT 1", 0, NULL, flags, count_cb, NULL) == 0)
    t.issued++;
}

static void spin(double seconds) {
  bool never = false;
  mq_test_run_until(loop, &never, seconds);
}

static bool settled(void) {
  return t.ok + t.connlost + t.unavailable + t.other == t.issued;
}

static void notify_until_heard(mq_pg *pg) {
  heard_flag = false;
  for (int i = 0; i < 100 && !heard_flag; i++) {
    mq_pg_query(pg, "NOTIFY restart_chan, 'x'", 0, NULL, 0, NULL, NULL);
    spin(0.1);
  }
}

static void test_restart(void) {
  char *url = cluster("start");
  struct mq_pg_options o = {.conninfo = url, .pool_size = 2,
                            .listen = true, .reconnect_max = 0.5};
  mq_pg *pg = mq_pg_new(loop, &o);
  REQUIRE(pg);
  CHECK_INT(mq_pg_listen(pg, "restart_chan", listen_cb, NULL), 0);
  notify_until_heard(pg);
  REQUIRE(heard_flag);
  for (int i = 0; i < 20; i++)
    issue(pg, 0);
  for (int i = 0; i < 200 && !settled(); i++)
    spin(0.05);
  CHECK_INT(t.ok, 20);

  /* A statement in flight when the server stops fails: it may have run. */
  mq_pg_query(pg, "SELECT pg_sleep(30)", 0, NULL, 0, sleeper_cb, NULL);
  spin(0.2);
  free(cluster("stop"));
  for (int i = 0; i < 30; i++) { /* ~1.5 s of traffic while down */
    issue(pg, i % 2 ? MQ_PG_RETRY : 0);
    spin(0.05);
  }
  CHECK(mq_test_run_until(loop, &t.sleeper_done, 10));
  CHECK_INT(t.sleeper_status, MQ_PG_ECONNLOST);
  CHECK(!mq_pg_is_up(pg));
  free(cluster("start"));
  for (int i = 0; i < 10; i++)
    issue(pg, 0);
  for (int i = 0; i < 600 && !settled(); i++)
    spin(0.05);
  fprintf(stderr, "issued=%d ok=%d connlost=%d unavailable=%d other=%d\n",
          t.issued, t.ok, t.connlost, t.unavailable, t.other);
  CHECK(settled()); /* none vanished */
  CHECK_INT(t.other, 0);
  CHECK(t.ok >= 30); /* the 20 before, the 10 after, and those that waited */
  CHECK(mq_pg_is_up(pg));

  /* LISTEN is back, and the subscriber was told it may have missed some. */
  int before = heard;
  notify_until_heard(pg);
  CHECK(heard > before);
  CHECK(missed >= 1);

  /* Later queries simply work. */
  int ok_before = t.ok;
  for (int i = 0; i < 100; i++)
    issue(pg, 0);
  for (int i = 0; i < 200 && !settled(); i++)
    spin(0.05);
  CHECK_INT(t.ok, ok_before + 100);
  mq_pg_close(pg);
  free(url);
}

int main(void) {
  loop = ev_default_loop(0);
  const char *bin = getenv("MOONQ_BINARY_DIR");
  const char *src = getenv("MOONQ_SOURCE_DIR");
  REQUIRE(bin && src);
  snprintf(pgdir, sizeof pgdir, "%s/test-pg-restart", bin);
  snprintf(script, sizeof script, "%s/scripts/pg.sh", src);
  RUN(test_restart);
  free(cluster("stop"));
  return mq_test_done();
}
