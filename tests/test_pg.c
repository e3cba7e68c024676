/* test_pg.c -- the asynchronous PostgreSQL layer against a real server:
 * pipelining and order, prepared statements, error isolation, NOTIFY from
 * another client, closing with work pending, an unreachable database. */
#include "test.h"

#include <unistd.h>

#include "log.h"
#include "pg.h"

static struct ev_loop *loop;

static mq_pg *open_pool(int size) {
  struct mq_pg_options o = {.conninfo = mq_test_db_url(), .pool_size = size,
                            .listen = true};
  mq_pg *pg = mq_pg_new(loop, &o);
  REQUIRE(pg);
  return pg;
}

/* ---- 1,000 pipelined queries complete in order with correct results ---- */

struct seq {
  int next;     /* index expected next */
  int done;
  int wrong;
  int n;
  bool all;
};

struct seq_item {
  struct seq *seq;
  int i;
};

static void seq_cb(const struct mq_pg_reply *r, void *data) {
  struct seq_item *it = data;
  struct seq *s = it->seq;
  if (r->status != MQ_PG_OK || it->i != s->next ||
      mq_pg_getll(r->result, 0, 0) != (long long)it->i * 2)
    s->wrong++;
  s->next++;
  if (++s->done == s->n)
    s->all = true;
}

static void run_sequence(mq_pg *pg, int stmt) {
  enum { N = 1000 };
  static struct seq_item items[N];
  struct seq s = {.n = N};
  char buf[16];
  for (int i = 0; i < N; i++) {
    items[i] = (struct seq_item){&s, i};
    snprintf(buf, sizeof buf, "%d", i);
    const char *p[] = {buf};
    int rc = stmt < 0 ? mq_pg_query(pg, "SELECT $1::int * 2", 1, p, 0, seq_cb,
                                    &items[i])
                      : mq_pg_exec(pg, stmt, 1, p, 0, seq_cb, &items[i]);
    CHECK_INT(rc, 0);
  }
  CHECK(mq_pg_pending(pg) == N);
  CHECK(mq_test_run_until(loop, &s.all, 30));
  CHECK_INT(s.done, N);
  CHECK_INT(s.wrong, 0);
  CHECK_INT(mq_pg_pending(pg), 0);
}

static void test_pipelined_in_order(void) {
  mq_pg *pg = open_pool(1);
  run_sequence(pg, -1);
  int stmt = mq_pg_prepare(pg, "SELECT $1::int * 2");
  CHECK(stmt >= 0);
  run_sequence(pg, stmt);
  run_sequence(pg, stmt); /* now already prepared on the connection */
  mq_pg_close(pg);
}

/* ---- with a pool of 4 every request completes exactly once ------------- */

static int pool_done, pool_ok;
static bool pool_all;

static void pool_cb(const struct mq_pg_reply *r, void *data) {
  if (r->status == MQ_PG_OK && PQntuples(r->result) == 1)
    pool_ok++;
  if (++pool_done == 2000)
    pool_all = true;
}

static void test_pool_spreads_work(void) {
  mq_pg *pg = open_pool(4);
  for (int i = 0; i < 2000; i++)
    CHECK_INT(mq_pg_query(pg, "SELECT pg_backend_pid()", 0, NULL, 0, pool_cb,
                          NULL), 0);
  CHECK(mq_test_run_until(loop, &pool_all, 30));
  CHECK_INT(pool_ok, 2000);
  mq_pg_close(pg);
}

/* ---- an error fails its own request only ------------------------------- */

struct outcome {
  int status;
  char sqlstate[6];
  char error[256];
  long long value;
  bool done;
};

static void outcome_cb(const struct mq_pg_reply *r, void *data) {
  struct outcome *o = data;
  o->status = r->status;
  snprintf(o->sqlstate, sizeof o->sqlstate, "%s", r->sqlstate);
  snprintf(o->error, sizeof o->error, "%s", r->error ? r->error : "");
  if (r->status == MQ_PG_OK && PQntuples(r->result) > 0)
    o->value = mq_pg_getll(r->result, 0, 0);
  o->done = true;
}

static void test_error_isolated(void) {
  mq_pg *pg = open_pool(1);
  struct outcome a = {0}, b = {0}, c = {0}, d = {0};
  CHECK_INT(mq_pg_query(pg, "SELECT 1", 0, NULL, 0, outcome_cb, &a), 0);
  CHECK_INT(mq_pg_query(pg, "SELECT 1/0", 0, NULL, 0, outcome_cb, &b), 0);
  CHECK_INT(mq_pg_query(pg, "SELECT 3", 0, NULL, 0, outcome_cb, &c), 0);
  int bad = mq_pg_prepare(pg, "SELEKT nonsense");
  CHECK_INT(mq_pg_exec(pg, bad, 0, NULL, 0, outcome_cb, &d), 0);
  CHECK(mq_test_run_until(loop, &d.done, 10));
  CHECK(a.done && b.done && c.done);
  CHECK_INT(a.status, MQ_PG_OK);
  CHECK_INT(a.value, 1);
  CHECK_INT(b.status, MQ_PG_ESQL);
  CHECK_STR(b.sqlstate, "22012");
  CHECK_CONTAINS(b.error, "division by zero");
  CHECK_INT(c.status, MQ_PG_OK);
  CHECK_INT(c.value, 3);
  CHECK_INT(d.status, MQ_PG_ESQL);
  CHECK_STR(d.sqlstate, "42601");
  /* The connection is still usable and the bad statement is retried. */
  struct outcome e = {0};
  CHECK_INT(mq_pg_query(pg, "SELECT 5", 0, NULL, 0, outcome_cb, &e), 0);
  CHECK(mq_test_run_until(loop, &e.done, 10));
  CHECK_INT(e.value, 5);
  mq_pg_close(pg);
}

/* ---- parameters: NULLs and text survive -------------------------------- */

static void text_cb(const struct mq_pg_reply *r, void *data) {
  struct outcome *o = data;
  o->status = r->status;
  if (r->status == MQ_PG_OK)
    snprintf(o->error, sizeof o->error, "%s|%s", PQgetvalue(r->result, 0, 0),
             PQgetisnull(r->result, 0, 1) ? "NULL" : "?");
  o->done = true;
}

static void test_params(void) {
  mq_pg *pg = open_pool(1);
  struct outcome o = {0};
  const char *p[] = {"it's \"quoted\"; DROP TABLE x; --", NULL};
  CHECK_INT(mq_pg_query(pg, "SELECT $1::text, $2::text", 2, p, 0, text_cb, &o),
            0);
  CHECK(mq_test_run_until(loop, &o.done, 10));
  CHECK_STR(o.error, "it's \"quoted\"; DROP TABLE x; --|NULL");
  mq_pg_close(pg);
}

/* ---- a NOTIFY sent by psql reaches the subscriber ---------------------- */

struct heard {
  int count;
  char payload[128];
  bool got;
};

static void heard_cb(const char *channel, const char *payload, void *data) {
  struct heard *h = data;
  if (!payload)
    return;
  h->count++;
  snprintf(h->payload, sizeof h->payload, "%s", payload);
  h->got = true;
}

static void test_notify_from_psql(void) {
  mq_pg *pg = open_pool(1);
  char channel[64];
  snprintf(channel, sizeof channel, "chan_%d", (int)getpid());
  struct heard h = {0};
  CHECK_INT(mq_pg_listen(pg, channel, heard_cb, &h), 0);
  /* Our own NOTIFY proves the LISTEN is in place before psql sends. */
  char sql[128];
  snprintf(sql, sizeof sql, "NOTIFY %s, 'self'", channel);
  for (int i = 0; i < 50 && !h.got; i++) {
    struct outcome o = {0};
    mq_pg_query(pg, sql, 0, NULL, 0, outcome_cb, &o);
    mq_test_run_until(loop, &o.done, 5);
    bool never = false;
    ev_tstamp until = ev_time() + 0.1;
    while (!h.got && ev_time() < until)
      mq_test_run_until(loop, &never, 0.02);
  }
  REQUIRE(h.got);
  CHECK_STR(h.payload, "self");
  h.got = false;
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "psql \"$DATABASE_URL\" -qAtc \"NOTIFY %s, 'from psql'\" 2>&1",
           channel);
  int status;
  char *out = mq_test_shell(cmd, &status);
  CHECK_INT(status, 0);
  free(out);
  CHECK(mq_test_run_until(loop, &h.got, 10));
  CHECK_STR(h.payload, "from psql");
  CHECK_INT(h.count, 2);
  /* After unlisten nothing more arrives. */
  CHECK_INT(mq_pg_unlisten(pg, channel, heard_cb, &h), 0);
  struct outcome o = {0};
  mq_pg_query(pg, sql, 0, NULL, 0, outcome_cb, &o);
  mq_test_run_until(loop, &o.done, 5);
  bool never = false;
  mq_test_run_until(loop, &never, 0.3);
  CHECK_INT(h.count, 2);
  mq_pg_close(pg);
}

/* ---- closing completes everything pending ------------------------------ */

static int closed_count;

static void closed_cb(const struct mq_pg_reply *r, void *data) {
  if (r->status == MQ_PG_ECLOSED)
    closed_count++;
}

static void test_close_pending(void) {
  mq_pg *pg = open_pool(2);
  for (int i = 0; i < 10; i++)
    mq_pg_query(pg, "SELECT pg_sleep(0.2)", 0, NULL, 0, closed_cb, NULL);
  mq_pg_close(pg);
  CHECK_INT(closed_count, 10);
}

/* ---- an unreachable database: requests fail after queue_timeout -------- */

static void test_unreachable(void) {
  struct mq_pg_options o = {
      .conninfo = "host=/nonexistent/moonq port=1 dbname=x password=hunter2",
      .pool_size = 1,
      .queue_timeout = 1,
      .reconnect_max = 0.2};
  char logbuf[8192] = "";
  FILE *log = fmemopen(logbuf, sizeof logbuf - 1, "w");
  mq_log_set_stream(log);
  mq_pg *pg = mq_pg_new(loop, &o);
  struct outcome r = {0};
  CHECK_INT(mq_pg_query(pg, "SELECT 1", 0, NULL, 0, outcome_cb, &r), 0);
  CHECK(mq_test_run_until(loop, &r.done, 5));
  CHECK_INT(r.status, MQ_PG_EUNAVAILABLE);
  CHECK_CONTAINS(r.error, "database unavailable");
  CHECK(!mq_pg_is_up(pg));
  mq_pg_close(pg);
  fflush(log);
  mq_log_set_stream(NULL);
  fclose(log);
  CHECK_CONTAINS(logbuf, "cannot connect");
  CHECK_CONTAINS(logbuf, "password=***");
  CHECK(strstr(logbuf, "hunter2") == NULL);
}

int main(void) {
  loop = ev_default_loop(0);
  RUN(test_pipelined_in_order);
  RUN(test_pool_spreads_work);
  RUN(test_error_isolated);
  RUN(test_params);
  RUN(test_notify_from_psql);
  RUN(test_close_pending);
  RUN(test_unreachable);
  return mq_test_done();
}
