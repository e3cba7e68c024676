/* test_runtime.c -- closing a runtime with work in flight: every request's
 * callback runs exactly once, what was reported stored is stored, no job is
 * left active, and (under ASan) nothing is touched after it is freed. */
#include "test.h"

#include <lauxlib.h>
#include <lualib.h>
#include <unistd.h>

#include "config.h"
#include "queue.h"
#include "runtime.h"

static char dir[256];

/* A config in a fresh directory with `handlers` files; schema `tag`. */
static struct mq_config *make_config(const char *tag, const char *handler) {
  snprintf(dir, sizeof dir, "/tmp/moonq-rt-%s-%d", tag, (int)getpid());
  char cmd[600], path[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s/handlers", dir, dir);
  REQUIRE(system(cmd) == 0);
  snprintf(path, sizeof path, "%s/config.lua", dir);
  FILE *f = fopen(path, "w");
  REQUIRE(f);
  fprintf(f, "return { database = os.getenv('DATABASE_URL'), schema = '%s',\n"
             "  shutdown_grace = 30, hot_reload = false,\n"
             "  queue = { retry_limit = 0, concurrency = 20 } }\n",
          mq_test_schema(tag));
  fclose(f);
  if (handler) {
    snprintf(path, sizeof path, "%s/handlers/chain.lua", dir);
    REQUIRE((f = fopen(path, "w")));
    fputs(handler, f);
    fclose(f);
  }
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  char err[1024];
  snprintf(path, sizeof path, "%s/config.lua", dir);
  struct mq_config *cfg = mq_config_load(L, path, err, sizeof err);
  lua_close(L);
  if (!cfg)
    fprintf(stderr, "%s\n", err);
  REQUIRE(cfg);
  return cfg;
}

static mq_runtime *open_runtime(const char *tag, const char *handler) {
  mq_runtime *rt = mq_runtime_new(NULL, make_config(tag, handler), NULL);
  REQUIRE(rt);
  char err[1024];
  if (mq_runtime_prepare_db(rt, false, err, sizeof err) != 0 ||
      mq_runtime_open(rt, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    REQUIRE(0);
  }
  return rt;
}

static long long count(const char *tag, const char *where) {
  char sql[512];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.job WHERE %s",
           mq_test_schema(tag), where);
  char *v = mq_test_sql(sql);
  REQUIRE(v);
  long long n = atoll(v);
  free(v);
  return n;
}

static void drop(const char *tag) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SET client_min_messages = warning; DROP SCHEMA %s CASCADE",
           mq_test_schema(tag));
  free(mq_test_sql(sql));
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  (void)system(cmd);
}

/* ---- sends in flight at close ---------------------------------------- */

enum { NSEND = 300 };

struct sent {
  int calls;
  int ok;
};

static void sent_cb(int status, const char *error, long long id, void *data) {
  struct sent *s = data;
  s->calls++;
  s->ok += status == MQ_QUEUE_OK;
}

static void close_with_sends_in_flight(void) {
  mq_runtime *rt = open_runtime("sends", NULL);
  static struct sent sent[NSEND];
  memset(sent, 0, sizeof sent);
  char err[256];
  for (int i = 0; i < NSEND; i++)
    CHECK_INT(mq_queue_send(mq_runtime_queue(rt), "x", "{}", NULL, sent_cb,
                            &sent[i], err, sizeof err), 0);
  mq_runtime_close(rt); /* not one loop turn ran since the sends */
  int ok = 0, once = 0;
  for (int i = 0; i < NSEND; i++) {
    once += sent[i].calls == 1;
    ok += sent[i].ok;
  }
  CHECK_INT(once, NSEND);
  CHECK_INT(count("sends", "true"), ok);
  CHECK(ok > 0); /* the stop sequence let them complete */
  drop("sends");
}

/* ---- completions batched, not flushed, at close ------------------------ */

struct fetched {
  bool done;
  long long ids[50];
  int n;
};

static void fetched_cb(int status, const char *error,
                       const struct mq_job *jobs, int n, void *data) {
  struct fetched *f = data;
  for (int i = 0; i < n && i < 50; i++)
    f->ids[f->n++] = jobs[i].id;
  f->done = true;
}

static void completed_cb(int status, const char *error, const char *json,
                         void *data) {
  int *calls = data;
  calls[status == MQ_QUEUE_OK ? 0 : 1]++;
}

static void close_with_completions_batched(void) {
  mq_runtime *rt = open_runtime("batch", NULL);
  mq_queue *q = mq_runtime_queue(rt);
  char err[256];
  static struct sent sent[50];
  memset(sent, 0, sizeof sent);
  for (int i = 0; i < 50; i++)
    mq_queue_send(q, "x", "{}", NULL, sent_cb, &sent[i], err, sizeof err);
  struct fetched f = {0};
  bool ready = false;
  while (!ready) { /* every send stored before the fetch */
    ev_run(mq_runtime_loop(rt), EVRUN_ONCE);
    ready = true;
    for (int i = 0; i < 50; i++)
      ready = ready && sent[i].calls == 1;
  }
  REQUIRE(mq_queue_fetch(q, "x", 50, NULL, fetched_cb, &f) == 0);
  REQUIRE(mq_test_run_until(mq_runtime_loop(rt), &f.done, 30));
  CHECK_INT(f.n, 50);
  int calls[2] = {0, 0};
  for (int i = 0; i < f.n; i++)
    mq_queue_complete(q, f.ids[i], "{\"ok\":true}", completed_cb, calls);
  mq_runtime_close(rt); /* the batch is still waiting for its flush */
  CHECK_INT(calls[0] + calls[1], 50);
  CHECK_INT(calls[0], 50);
  CHECK_INT(count("batch", "state = 'active'"), 0);
  drop("batch");
}

/* ---- handlers running and enqueueing at close -------------------------- */

static const char chain[] =
    "return function(job, ctx)\n"
    "  for i = 1, 200 do\n"
    "    assert(ctx.enqueue('child', { parent = job.id, i = i }))\n"
    "    ctx.sleep(0.01)\n"
    "  end\n"
    "end\n";

static void tick(struct ev_loop *loop, ev_timer *t, int revents) {
  *(bool *)t->data = true;
}

static void close_with_handlers_running(void) {
  mq_runtime *rt = open_runtime("run", chain);
  char err[1024];
  if (mq_runtime_start_worker(rt, err, sizeof err) != 0)
    fprintf(stderr, "%s\n", err);
  static struct sent sent[10];
  memset(sent, 0, sizeof sent);
  for (int i = 0; i < 10; i++)
    mq_queue_send(mq_runtime_queue(rt), "chain", "{}", NULL, sent_cb, &sent[i],
                  err, sizeof err);
  bool later = false; /* jobs are mid-way, enqueueing, when we close */
  ev_timer t;
  ev_timer_init(&t, tick, 0.5, 0.);
  t.data = &later;
  ev_timer_start(mq_runtime_loop(rt), &t);
  mq_test_run_until(mq_runtime_loop(rt), &later, 10);
  CHECK(count("run", "name = 'chain' AND state = 'active'") > 0);
  mq_runtime_close(rt); /* no stop first: jobs go back to the queue */
  CHECK_INT(count("run", "state = 'active'"), 0);
  CHECK_INT(count("run", "name = 'chain' AND state = 'created'"), 10);
  drop("run");
}

int main(void) {
  RUN(close_with_sends_in_flight);
  RUN(close_with_completions_batched);
  RUN(close_with_handlers_running);
  return mq_test_done();
}
