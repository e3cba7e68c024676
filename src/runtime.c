/* runtime.c -- one moonq process's loop, config, database and Lua state;
 * see runtime.h. */
#include "runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "migrate.h"
#include "worker.h"

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents);

struct mq_runtime *mq_runtime_new(struct ev_loop *loop, struct mq_config *cfg,
                                  lua_State *L) {
  struct mq_runtime *rt = calloc(1, sizeof *rt);
  if (!rt) {
    mq_config_free(cfg);
    return NULL;
  }
  rt->own_loop = loop == NULL;
  rt->loop = loop ? loop : ev_loop_new(EVFLAG_AUTO);
  if (!rt->loop) {
    mq_config_free(cfg);
    free(rt);
    return NULL;
  }
  rt->cfg = cfg;
  rt->L = L;
  snprintf(rt->notify_channel, sizeof rt->notify_channel, "%s_wake",
           cfg->schema);
  return rt;
}

/* Runs argv, returning its stdout (malloc'd, trailing newline removed) when
 * it exits 0; otherwise NULL with its stderr's last line in err. */
static char *run_capture(char *const argv[], char *err, size_t errlen) {
  int out[2], errp[2];
  if (pipe(out) != 0 || pipe(errp) != 0) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    return NULL;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork: %s", strerror(errno));
    return NULL;
  }
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(errp[1], 2);
    close(out[0]);
    close(errp[0]);
    execv(argv[0], argv);
    fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(out[1]);
  close(errp[1]);
  char obuf[1024] = "", ebuf[2048] = "";
  size_t on = 0, en = 0;
  ssize_t n;
  while ((n = read(out[0], obuf + on, sizeof obuf - 1 - on)) > 0)
    on += (size_t)n;
  while ((n = read(errp[0], ebuf + en, sizeof ebuf - 1 - en)) > 0)
    en += (size_t)n;
  obuf[on] = ebuf[en] = '\0';
  close(out[0]);
  close(errp[0]);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  while (on > 0 && obuf[on - 1] == '\n')
    obuf[--on] = '\0';
  while (en > 0 && ebuf[en - 1] == '\n')
    ebuf[--en] = '\0';
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const char *last = strrchr(ebuf, '\n');
    snprintf(err, errlen, "%s", last ? last + 1 : ebuf);
    return NULL;
  }
  const char *line = strrchr(obuf, '\n');
  return strdup(line ? line + 1 : obuf);
}

char *mq_runtime_local_db(const char *dir, char *err, size_t errlen) {
  char script[4096];
  const char *env = getenv("MOONQ_PG_SCRIPT");
  if (env && *env)
    snprintf(script, sizeof script, "%s", env);
  else
    snprintf(script, sizeof script, "%s/scripts/pg.sh", MOONQ_SOURCE_DIR);
  if (access(script, X_OK) != 0) {
    snprintf(err, errlen,
             "no database configured and %s is missing: set `database` in "
             "config.lua or DATABASE_URL",
             script);
    return NULL;
  }
  mq_log_debug("runtime", "starting the private PostgreSQL dir=%s", dir);
  char *argv[] = {script, (char *)"start", (char *)dir, NULL};
  char why[1024];
  char *url = run_capture(argv, why, sizeof why);
  if (!url)
    snprintf(err, errlen, "cannot start the private PostgreSQL in %s: %s", dir,
             why);
  return url;
}

static int resolve_db(struct mq_runtime *rt, char *err, size_t errlen) {
  if (rt->conninfo)
    return 0;
  if (rt->cfg->database) {
    rt->conninfo = strdup(rt->cfg->database);
    return rt->conninfo ? 0 : -1;
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/.moonq", rt->cfg->base_dir);
  rt->conninfo = mq_runtime_local_db(dir, err, errlen);
  return rt->conninfo ? 0 : -1;
}

int mq_runtime_prepare_db(struct mq_runtime *rt, bool wait_for_db, char *err,
                          size_t errlen) {
  if (resolve_db(rt, err, errlen) != 0)
    return -1;
  double delay = 0.5;
  for (int attempt = 1;; attempt++) {
    int n = mq_migrate(rt->conninfo, rt->cfg->schema, err, errlen);
    if (n >= 0)
      return 0;
    if (!wait_for_db || strncmp(err, "cannot connect", 14) != 0)
      return -1;
    mq_log_warn("runtime", "database not reachable attempt=%d retry_in_s=%.1f error=\"%s\"",
                attempt, delay, err);
    struct timespec ts = {(time_t)delay,
                          (long)((delay - (double)(time_t)delay) * 1e9)};
    nanosleep(&ts, NULL);
    delay = delay * 2 > 10 ? 10 : delay * 2;
  }
}

struct configured {
  bool done;
  int status;
  char *err;
  size_t errlen;
};

static void configured_cb(int status, const char *error, const char *json,
                          void *data) {
  struct configured *c = data;
  c->done = true;
  c->status = status;
  if (status != 0)
    snprintf(c->err, c->errlen, "cannot store queue settings: %s", error);
}

int mq_runtime_open(struct mq_runtime *rt, char *err, size_t errlen) {
  if (rt->pg)
    return 0;
  if (resolve_db(rt, err, errlen) != 0)
    return -1;
  struct mq_pg_options opts = {
      .conninfo = rt->conninfo,
      .pool_size = rt->cfg->pool_size,
      .listen = true,
      /* moonq batches its wake-ups (queue.c) instead of one NOTIFY per send */
      .init_sql = "SET moonq.no_wake = on",
  };
  rt->pg = mq_pg_new(rt->loop, &opts);
  if (!rt->pg) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  char masked[512];
  mq_log_debug("runtime", "database target=\"%s\" schema=%s pool=%d",
               mq_log_mask_conninfo(rt->conninfo, masked, sizeof masked),
               rt->cfg->schema, rt->cfg->pool_size);
  rt->queue = mq_queue_new(rt->loop, rt->pg, rt->cfg);
  if (!rt->queue) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  struct configured done = {.err = err, .errlen = errlen};
  if (mq_queue_configure(rt->queue, configured_cb, &done) != 0) {
    snprintf(err, errlen, "the connection pool is closed");
    return -1;
  }
  while (!done.done)
    ev_run(rt->loop, EVRUN_ONCE);
  return done.status == 0 ? 0 : -1;
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents) {
  struct mq_runtime *rt = w->data;
  if (w->signum == SIGHUP) {
    mq_log_info("runtime", "SIGHUP: reloading handlers");
    if (rt->worker)
      mq_worker_reload(rt->worker);
    return;
  }
  if (rt->stopping) {
    mq_log_warn("runtime", "second signal: stopping now");
    ev_break(loop, EVBREAK_ALL);
    return;
  }
  mq_log_info("runtime", "stopping signal=%s",
              w->signum == SIGINT ? "SIGINT" : "SIGTERM");
  mq_runtime_stop(rt, 0);
}

/* Waits for in-flight database work before leaving the loop, for at most
 * shutdown_grace seconds. */
static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct mq_runtime *rt = w->data;
  bool idle = !rt->pg || mq_pg_pending(rt->pg) == 0;
  if (idle || ev_now(loop) >= rt->stop_deadline) {
    if (!idle)
      mq_log_warn("runtime", "stopping with requests in flight pending=%zu",
                  mq_pg_pending(rt->pg));
    ev_timer_stop(loop, w);
    ev_break(loop, EVBREAK_ALL);
  }
}

static void start_drain(void *arg) {
  struct mq_runtime *rt = arg;
  rt->stop_deadline = ev_now(rt->loop) + 10;
  ev_timer_init(&rt->drain, drain_cb, 0., 0.02);
  rt->drain.data = rt;
  ev_timer_start(rt->loop, &rt->drain);
}

void mq_runtime_stop(struct mq_runtime *rt, int exit_code) {
  if (rt->stopping)
    return;
  rt->stopping = true;
  rt->exit_code = exit_code;
  if (rt->worker)
    mq_worker_stop(rt->worker, start_drain, rt);
  else
    start_drain(rt);
}

int mq_runtime_run(struct mq_runtime *rt) {
  ev_signal_init(&rt->sigint, signal_cb, SIGINT);
  ev_signal_init(&rt->sigterm, signal_cb, SIGTERM);
  ev_signal_init(&rt->sighup, signal_cb, SIGHUP);
  ev_signal *sigs[] = {&rt->sigint, &rt->sigterm, &rt->sighup};
  for (int i = 0; i < 3; i++) {
    sigs[i]->data = rt;
    ev_signal_start(rt->loop, sigs[i]);
  }
  ev_run(rt->loop, 0);
  for (int i = 0; i < 3; i++)
    ev_signal_stop(rt->loop, sigs[i]);
  return rt->exit_code;
}

void mq_runtime_free(struct mq_runtime *rt) {
  if (!rt)
    return;
  ev_timer_stop(rt->loop, &rt->drain);
  mq_worker_free(rt->worker);
  rt->worker = NULL;
  if (rt->queue) {
    mq_queue_close(rt->queue);
    rt->queue = NULL;
    /* Let the final statements (flushed results, unregistering) finish. */
    ev_tstamp until = ev_time() + 5;
    while (rt->pg && mq_pg_pending(rt->pg) > 0 && mq_pg_is_up(rt->pg) &&
           ev_time() < until)
      ev_run(rt->loop, EVRUN_ONCE);
  }
  if (rt->pg)
    mq_pg_close(rt->pg);
  rt->pg = NULL;
  if (rt->own_loop)
    ev_loop_destroy(rt->loop);
  mq_config_free(rt->cfg);
  free(rt->conninfo);
  free(rt);
}
