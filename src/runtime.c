/* runtime.c -- one moonq process and the subsystems it owns; see
 * runtime.h.
 *
 * Adding a subsystem: a handle field below, its init in mq_runtime_open()
 * (or its own start function like the worker's), its stop in the stop
 * sequence (stop_worker_done / drain_cb) and its close in
 * mq_runtime_close(), after the pool is closed.
 */
#define _GNU_SOURCE /* pipe2 */
#include "runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "heartbeat.h"
#include "http.h"
#include "http_api.h"
#include "http_metrics.h"
#include "http_web.h"
#include "log.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "migrate.h"
#include "supervisor.h"
#include "task.h"
#include "worker.h"

#define DRAIN_MAX 10.0 /* seconds in-flight requests get when stopping */

enum phase {
  PHASE_NEW,      /* not open */
  PHASE_OPEN,     /* handles open */
  PHASE_STOPPING, /* the worker is stopping */
  PHASE_DRAINING, /* waiting for in-flight requests */
  PHASE_STOPPED   /* the stop sequence is done */
};

struct mq_runtime {
  struct ev_loop *loop;
  bool own_loop;
  struct mq_config *cfg; /* owned */
  char *conninfo;        /* the database actually used */
  lua_State *L;          /* the Lua state served (main thread) */
  bool own_lua;
  /* Handles, in order of opening; closed in reverse. */
  mq_pg *pg;
  mq_queue *queue;
  mq_heartbeat *heartbeat; /* keeps the queue's process row fresh */
  mq_scheduler *scheduler;
  mq_events *events;  /* NULL with events.enabled = false */
  mq_schedules *schedules; /* fires only where handlers run (start_worker) */
  mq_tasks *tasks;    /* coroutines of handlers and subscribers; made on
                         first use */
  mq_worker *worker;  /* when this process runs handlers */
  mq_http_api *http_api; /* with http: the API's routes */
  mq_http_metrics *http_metrics; /* with http: GET /metrics */
  mq_http_counts *http_counts; /* with http: the job counts of both */
  mq_http *http;      /* the HTTP server, when one is started */
  mq_metrics *metrics; /* this process's job counters (owned) */
  enum phase phase;
  bool serving;      /* mq_runtime_serve's loop runs */
  bool supervised;   /* a prefork child: the supervisor forwards signals */
  int child_index;   /* which prefork child (0..workers-1); 0 otherwise */
  bool stop_asked;   /* a signal came before the loop ran */
  int exit_code;
  ev_signal sighup;
  pid_t supervisor;      /* a prefork child's parent */
  ev_timer orphan;       /* a prefork child: looks for its supervisor */
  ev_async stop_signal;  /* SIGINT or SIGTERM came (stop_signals counts) */
  sig_atomic_t handled;  /* of stop_signals, those acted on */
  ev_timer drain;          /* polls for idle while draining */
  ev_tstamp drain_deadline;
  char channel[80];        /* "<schema>_wake" */
};

mq_runtime *mq_runtime_new(struct ev_loop *loop, struct mq_config *cfg,
                           lua_State *L) {
  mq_runtime *rt = calloc(1, sizeof *rt);
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
  if (!(rt->metrics = mq_metrics_new())) {
    if (rt->own_loop)
      ev_loop_destroy(rt->loop);
    mq_config_free(cfg);
    free(rt);
    return NULL;
  }
  if (L) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    rt->L = lua_tothread(L, -1);
    lua_pop(L, 1);
  }
  snprintf(rt->channel, sizeof rt->channel, "%s_wake", cfg->schema);
  ev_init(&rt->drain, NULL);
  return rt;
}

struct ev_loop *mq_runtime_loop(const mq_runtime *rt) { return rt->loop; }
const struct mq_config *mq_runtime_config(const mq_runtime *rt) {
  return rt->cfg;
}
mq_pg *mq_runtime_pg(const mq_runtime *rt) { return rt->pg; }
mq_queue *mq_runtime_queue(const mq_runtime *rt) { return rt->queue; }
mq_scheduler *mq_runtime_scheduler(const mq_runtime *rt) {
  return rt->scheduler;
}
mq_events *mq_runtime_events(const mq_runtime *rt) { return rt->events; }
mq_schedules *mq_runtime_schedules(const mq_runtime *rt) {
  return rt->schedules;
}
bool mq_runtime_has_worker(const mq_runtime *rt) { return rt->worker != NULL; }
mq_metrics *mq_runtime_metrics(const mq_runtime *rt) { return rt->metrics; }

mq_tasks *mq_runtime_tasks(mq_runtime *rt) {
  if (!rt->tasks && mq_runtime_lua(rt))
    rt->tasks = mq_tasks_new(rt->loop, rt->L);
  return rt->tasks;
}
const char *mq_runtime_channel(const mq_runtime *rt) { return rt->channel; }

/* Prepends dir/?.lua;dir/?/init.lua to package.path. */
static void add_path(lua_State *L, const char *dir) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

/* [] -> []: the executable's Lua state: libraries, lua/ of the source tree
 * and of the app on package.path, the moonq modules preloaded. */
static int init_lua(lua_State *L) {
  mq_runtime *rt = lua_touserdata(L, 1);
  luaL_openlibs(L);
  add_path(L, MOONQ_SOURCE_DIR "/lua");
  if (strcmp(rt->cfg->base_dir, MOONQ_SOURCE_DIR) != 0) {
    lua_pushfstring(L, "%s/lua", rt->cfg->base_dir);
    add_path(L, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  mq_bindings_preload(L);
  mq_lua_set_runtime(L, rt);
  return 0;
}

lua_State *mq_runtime_lua(mq_runtime *rt) {
  if (rt->L)
    return rt->L;
  lua_State *L = mq_lua_newstate((size_t)rt->cfg->memory_limit << 20);
  if (!L)
    return NULL;
  if (mq_lua_protect(L, init_lua, rt, 0) != LUA_OK) {
    mq_log_error("runtime", "cannot set up Lua: %s", lua_tostring(L, -1));
    mq_lua_close(L);
    return NULL;
  }
  rt->L = L;
  rt->own_lua = true;
  return L;
}

/* Runs argv, returning its stdout (malloc'd, trailing newline removed) when
 * it exits 0; otherwise NULL with its stderr's last line in err. */
static char *run_capture(char *const argv[], char *err, size_t errlen) {
  int out[2], errp[2];
  /* Close-on-exec: only the copies on 1 and 2 reach the script, so a
   * server it starts in the background cannot hold the pipes open (the
   * reads below would never see their end). */
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0) {
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

static int resolve_db(mq_runtime *rt, char *err, size_t errlen) {
  if (rt->conninfo)
    return 0;
  if (rt->cfg->database) {
    if (mq_pg_check_conninfo(rt->cfg->database, err, errlen) != 0)
      return -1;
    rt->conninfo = strdup(rt->cfg->database);
    return rt->conninfo ? 0 : -1;
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/.moonq", rt->cfg->base_dir);
  rt->conninfo = mq_runtime_local_db(dir, err, errlen);
  return rt->conninfo ? 0 : -1;
}

int mq_runtime_prepare_db(mq_runtime *rt, bool wait_for_db, char *err,
                          size_t errlen) {
  if (resolve_db(rt, err, errlen) != 0)
    return -1;
  double delay = 0.5;
  for (int attempt = 1;; attempt++) {
    int n = mq_migrate(rt->conninfo, rt->cfg->schema, err, errlen);
    if (n >= 0)
      return 0;
    /* libpq checks some settings only when it connects ("invalid sslmode
     * value", "invalid port number", "invalid integer value ... for
     * connection option"): those never get better by waiting */
    if (!wait_for_db || strncmp(err, "cannot connect", 14) != 0 ||
        strstr(err, ": invalid ") || strstr(err, "\ninvalid "))
      return -1;
    mq_log_warn("runtime", "database not reachable attempt=%d retry_in_s=%.1f "
                "error=\"%s\"", attempt, delay, err);
    struct timespec ts = {(time_t)delay,
                          (long)((delay - (double)(time_t)delay) * 1e9)};
    nanosleep(&ts, NULL);
    delay = delay * 2 > 10 ? 10 : delay * 2;
  }
}

struct configured {
  const char *what;
  bool done;
  int status;
  char *err;
  size_t errlen;
};

/* Runs the loop until `done` says a request made with configured_cb
 * completed; returns its status. */
static int wait_configured(mq_runtime *rt, struct configured *done) {
  while (!done->done)
    ev_run(rt->loop, EVRUN_ONCE);
  return done->status == 0 ? 0 : -1;
}

static void configured_cb(int status, const char *error, const char *json,
                          void *data) {
  struct configured *c = data;
  c->done = true;
  c->status = status;
  if (status != 0)
    snprintf(c->err, c->errlen, "cannot store %s: %s", c->what, error);
}

/* Stores config.lua's queue settings (only_new: for queues without a row
 * yet), running the loop until they are stored. */
static int store_settings(mq_runtime *rt, bool only_new, char *err,
                          size_t errlen) {
  struct configured done = {"queue settings", .err = err, .errlen = errlen};
  if (mq_queue_configure(rt->queue, only_new, configured_cb, &done) != 0) {
    snprintf(err, errlen, "the connection pool is closed");
    return -1;
  }
  return wait_configured(rt, &done);
}

/* In the one process of a prefork group that fires schedules (the first
 * child; every process without prefork): stores config.lua's schedules,
 * running the loop until they are stored, and starts firing. */
static int start_schedules(mq_runtime *rt, char *err, size_t errlen) {
  if (rt->child_index != 0 || mq_schedules_firing(rt->schedules))
    return 0;
  struct configured done = {"schedules", .err = err, .errlen = errlen};
  if (mq_schedules_sync_config(rt->schedules, configured_cb, &done) != 0 ||
      (wait_configured(rt, &done) == 0 &&
       mq_schedules_start(rt->schedules) != 0)) {
    snprintf(err, errlen, "the connection pool is closed");
    return -1;
  }
  return done.status == 0 ? 0 : -1;
}

/* Warns, in the process that fires schedules, of config.lua schedules
 * whose jobs no handler of this process runs: they queue up unless
 * another process runs them. */
static void warn_unhandled_schedules(mq_runtime *rt) {
  if (rt->child_index != 0)
    return;
  for (size_t i = 0; i < rt->cfg->nschedules; i++) {
    const struct mq_schedule_config *s = &rt->cfg->schedules[i];
    const char *job = s->job ? s->job : s->name;
    if (!mq_worker_handles(rt->worker, job))
      mq_log_warn("schedules", "no handler here for a schedule's job "
                  "name=%s job=%s (its jobs wait until a process with a "
                  "handler of that job runs)", s->name, job);
  }
}

int mq_runtime_open(mq_runtime *rt, char *err, size_t errlen) {
  if (rt->phase != PHASE_NEW)
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
  char masked[512];
  mq_log_debug("runtime", "database target=\"%s\" schema=%s pool=%d",
               mq_log_mask_conninfo(rt->conninfo, masked, sizeof masked),
               rt->cfg->schema, rt->cfg->pool_size);
  if (!(rt->pg = mq_pg_new(rt->loop, &opts)) ||
      !(rt->queue = mq_queue_new(rt->loop, rt->pg, rt->cfg)) ||
      !(rt->scheduler = mq_scheduler_new(rt->loop, rt->queue)) ||
      (rt->cfg->events.enabled &&
       !(rt->events = mq_events_new(rt->loop, rt->pg, rt->cfg))) ||
      !(rt->schedules = mq_schedules_new(rt->loop, rt->pg, rt->cfg))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  struct mq_heartbeat_options beat = {
      .conninfo = rt->conninfo, .schema = rt->cfg->schema,
      .process_id = mq_queue_process_id(rt->queue),
      .host = mq_queue_host(rt->queue), .stale_after = rt->cfg->stale_after};
  if (!(rt->heartbeat = mq_heartbeat_start(rt->loop, &beat, err, errlen)))
    return -1;
  rt->phase = PHASE_OPEN;
  return store_settings(rt, true, err, errlen);
}

int mq_runtime_start_worker(mq_runtime *rt, char *err, size_t errlen) {
  if (rt->phase != PHASE_OPEN) {
    snprintf(err, errlen, "the runtime is not open");
    return -1;
  }
  if (rt->worker) {
    snprintf(err, errlen, "workers already started");
    return -1;
  }
  if (!mq_runtime_lua(rt)) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  /* A process that runs handlers applies config.lua's settings, before
   * its handlers store their retry options over them. */
  if (store_settings(rt, false, err, errlen) != 0 ||
      start_schedules(rt, err, errlen) != 0)
    return -1;
  if (!(rt->worker = mq_worker_new(rt, err, errlen)))
    return -1;
  warn_unhandled_schedules(rt);
  return mq_worker_start(rt->worker);
}

static void set_flag(void *arg) { *(bool *)arg = true; }

void mq_runtime_stop_worker(mq_runtime *rt) {
  if (!rt->worker || rt->phase != PHASE_OPEN)
    return;
  mq_schedules_stop(rt->schedules);
  bool done = false;
  mq_worker_stop(rt->worker, set_flag, &done);
  while (!done)
    ev_run(rt->loop, EVRUN_ONCE);
  mq_worker_close(rt->worker);
  rt->worker = NULL;
  /* The last results are stored before this returns. */
  while (!mq_queue_flushed(rt->queue) || mq_pg_pending(rt->pg) > 0)
    ev_run(rt->loop, EVRUN_ONCE);
}

int mq_runtime_start_http(mq_runtime *rt, char *err, size_t errlen) {
  if (rt->phase != PHASE_OPEN) {
    snprintf(err, errlen, "the runtime is not open");
    return -1;
  }
  if (rt->http || !rt->cfg->http.listen)
    return 0;
  if (!(rt->http_counts = mq_http_counts_new(rt->loop, rt->pg,
                                             rt->cfg->schema))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  struct mq_http_api_deps deps = {rt->cfg, rt->pg, rt->queue, rt->events,
                                  rt->schedules, rt->http_counts};
  if (!(rt->http_api = mq_http_api_new(&deps))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  struct mq_http_metrics_deps mdeps = {rt->loop, rt->cfg, rt->pg,
                                       rt->events, rt->metrics,
                                       rt->worker ? rt->L : NULL,
                                       rt->http_counts};
  if (!(rt->http_metrics = mq_http_metrics_new(&mdeps))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  struct mq_http_routes tables[] = {mq_http_api_routes(rt->http_api),
                                    mq_http_metrics_routes(rt->http_metrics),
                                    mq_http_web_routes()};
  rt->http = mq_http_new(rt->loop, rt->cfg, rt->events, tables, 3, err,
                         errlen);
  return rt->http ? 0 : -1;
}

/* ---- the stop sequence ---------------------------------------------------- */

/* Step 3: in-flight requests complete, for at most DRAIN_MAX seconds. */
static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_runtime *rt = w->data;
  bool idle = mq_pg_pending(rt->pg) == 0 && mq_queue_flushed(rt->queue) &&
              mq_http_pending(rt->http) == 0;
  if (!idle && ev_now(loop) < rt->drain_deadline)
    return;
  if (!idle)
    mq_log_warn("runtime", "stopping with requests in flight pending=%zu "
                "http_pending=%zu", mq_pg_pending(rt->pg),
                mq_http_pending(rt->http));
  ev_timer_stop(loop, w);
  rt->phase = PHASE_STOPPED;
  if (rt->serving)
    ev_break(loop, EVBREAK_ALL);
}

/* Step 2, once the worker has stopped. */
static void worker_stopped(void *arg) {
  mq_runtime *rt = arg;
  rt->phase = PHASE_DRAINING;
  mq_schedules_stop(rt->schedules);
  mq_scheduler_stop(rt->scheduler);
  if (rt->events)
    mq_events_stop(rt->events);
  mq_heartbeat_stop(rt->heartbeat); /* before the process row goes */
  rt->heartbeat = NULL;
  mq_queue_stop(rt->queue);
  rt->drain_deadline = ev_now(rt->loop) + DRAIN_MAX;
  ev_timer_init(&rt->drain, drain_cb, 0., 0.02);
  rt->drain.data = rt;
  ev_timer_start(rt->loop, &rt->drain);
}

void mq_runtime_stop(mq_runtime *rt, int exit_code) {
  if (rt->phase == PHASE_STOPPING) {
    if (rt->worker)
      mq_worker_hurry(rt->worker);
    return;
  }
  if (rt->phase != PHASE_OPEN)
    return;
  rt->phase = PHASE_STOPPING;
  rt->exit_code = exit_code;
  mq_schedules_stop(rt->schedules); /* no new jobs while stopping */
  mq_http_stop(rt->http);           /* no new requests, streams end */
  if (rt->worker)
    mq_worker_stop(rt->worker, worker_stopped, rt);
  else
    worker_stopped(rt);
}

static void sighup_cb(struct ev_loop *loop, ev_signal *w, int revents) {
  mq_runtime *rt = w->data;
  mq_log_info("runtime", "SIGHUP: reloading handlers");
  if (rt->worker)
    mq_worker_reload(rt->worker);
}

/* SIGINT and SIGTERM are counted by their own handler rather than by an
 * ev_signal: while a handler holds the loop, a second signal would merge
 * with the first one still pending, and the running jobs would wait out
 * the whole grace period. The handler only counts and wakes the loop
 * (ev_async_send is async-signal-safe). One serving runtime a process. */
static volatile sig_atomic_t stop_signals, last_stop_signal;
static struct ev_loop *stop_loop;
static ev_async *stop_async;

static void on_stop_signal(int signum) {
  int saved = errno;
  stop_signals++;
  last_stop_signal = signum;
  ev_async_send(stop_loop, stop_async);
  errno = saved;
}

/* Acts on each stop signal counted since the last call: the first stops,
 * a second gives running jobs back to the queue now. */
static void stop_signal_cb(struct ev_loop *loop, ev_async *w, int revents) {
  mq_runtime *rt = w->data;
  while (rt->handled < stop_signals) {
    rt->handled++;
    const char *name = last_stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
    if (!rt->serving) { /* still starting: stop once running */
      rt->stop_asked = true;
      continue;
    }
    if (rt->phase == PHASE_OPEN)
      mq_log_info("runtime", "stopping signal=%s", name);
    else
      mq_log_warn("runtime", "second signal=%s: running jobs go back to the "
                  "queue now", name);
    mq_runtime_stop(rt, 0);
  }
}

/* A prefork child whose supervisor died (the SIGTERM it asked for at
 * death, supervisor.c, may be lost) stops as on SIGTERM. */
static void orphan_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_runtime *rt = w->data;
  if (getppid() == rt->supervisor || rt->phase != PHASE_OPEN || !rt->serving)
    return;
  mq_log_warn("runtime", "the supervisor is gone: stopping");
  mq_runtime_stop(rt, 0);
}

/* Installs (on) or removes the SIGINT (unless supervised: a terminal's
 * Ctrl-C reaches the whole process group and the supervisor forwards it as
 * SIGTERM, which must not count as a second signal) and SIGTERM handlers. */
static void watch_stop_signals(mq_runtime *rt, bool on) {
  struct sigaction sa = {.sa_handler = on ? on_stop_signal : SIG_DFL};
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (on) {
    ev_async_init(&rt->stop_signal, stop_signal_cb);
    rt->stop_signal.data = rt;
    ev_async_start(rt->loop, &rt->stop_signal);
    stop_loop = rt->loop;
    stop_async = &rt->stop_signal;
    rt->handled = stop_signals;
  }
  sigaction(SIGTERM, &sa, NULL);
  if (rt->supervised)
    signal(SIGINT, SIG_IGN);
  else
    sigaction(SIGINT, &sa, NULL);
  if (!on)
    ev_async_stop(rt->loop, &rt->stop_signal);
}

void mq_runtime_close(mq_runtime *rt) {
  if (!rt)
    return;
  if (rt->phase == PHASE_OPEN || rt->phase == PHASE_STOPPING) {
    /* Closed without a stop (a script that ended without moonq.close()):
     * running jobs go back to the queue instead of finishing. */
    mq_runtime_stop(rt, 0);
    if (rt->worker)
      mq_worker_hurry(rt->worker);
  }
  while (rt->phase == PHASE_STOPPING || rt->phase == PHASE_DRAINING)
    ev_run(rt->loop, EVRUN_ONCE);
  ev_timer_stop(rt->loop, &rt->drain);
  /* Step 4: what is still in flight fails now, its callbacks finding every
   * handle alive; step 5: free in reverse order of opening. */
  if (rt->pg)
    mq_pg_close(rt->pg);
  mq_heartbeat_stop(rt->heartbeat); /* opened, then failed before OPEN */
  mq_http_close(rt->http);
  mq_http_api_close(rt->http_api);
  mq_http_metrics_close(rt->http_metrics);
  mq_http_counts_close(rt->http_counts);
  mq_worker_close(rt->worker);
  mq_schedules_close(rt->schedules);
  mq_events_close(rt->events);
  mq_scheduler_close(rt->scheduler);
  mq_queue_close(rt->queue);
  mq_tasks_close(rt->tasks);
  if (rt->own_loop)
    ev_loop_destroy(rt->loop);
  if (rt->own_lua)
    mq_lua_close(rt->L);
  mq_config_free(rt->cfg);
  mq_metrics_free(rt->metrics);
  free(rt->conninfo);
  free(rt);
}

/* ---- serving ----------------------------------------------------------- */

/* Runs handlers (with_worker) and the HTTP server (when configured; in a
 * prefork group the first child's) in this process until stopped; the
 * same in `moonq run`, each prefork child and `moonq web` (the server
 * only). Returns the exit code. */
static int serve_here(mq_runtime *rt, bool with_worker) {
  /* Signals are watched from the start, so one that comes while opening
   * stops the process once it is open. */
  watch_stop_signals(rt, true);
  ev_signal_init(&rt->sighup, sighup_cb, SIGHUP);
  rt->sighup.data = rt;
  ev_signal_start(rt->loop, &rt->sighup);
  if (rt->supervised) {
    ev_timer_init(&rt->orphan, orphan_cb, 1., 1.);
    rt->orphan.data = rt;
    ev_timer_start(rt->loop, &rt->orphan);
    ev_unref(rt->loop);
  }
  char err[4096];
  int code = 0;
  if (mq_runtime_open(rt, err, sizeof err) != 0 ||
      (with_worker && mq_runtime_start_worker(rt, err, sizeof err) != 0) ||
      (rt->child_index == 0 && mq_runtime_start_http(rt, err, sizeof err) != 0)) {
    fprintf(stderr, "moonq: %s\n", err);
    code = 1;
    goto done;
  }
  if (with_worker) {
    mq_queue_start_maintenance(rt->queue);
    if (rt->events)
      mq_events_start_retention(rt->events);
  }
  mq_log_info("moonq", "running version=%s schema=%s handlers=%s pid=%d",
              MOONQ_VERSION, rt->cfg->schema, rt->cfg->handlers,
              (int)getpid());
  rt->serving = true;
  if (rt->stop_asked)
    mq_runtime_stop(rt, 0);
  if (rt->phase != PHASE_STOPPED)
    ev_run(rt->loop, 0);
  rt->serving = false;
  code = rt->exit_code;
  mq_log_info("moonq", "stopped");
done:
  watch_stop_signals(rt, false);
  ev_signal_stop(rt->loop, &rt->sighup);
  if (rt->supervised) {
    ev_ref(rt->loop);
    ev_timer_stop(rt->loop, &rt->orphan);
  }
  return code;
}

/* A prefork child: the runtime (a copy of the supervisor's, never opened)
 * gets the child's own loop; it opens its own Lua state and connections. */
static int serve_child(void *arg, int index, struct ev_loop *loop) {
  mq_runtime *rt = arg;
  rt->loop = loop;
  rt->own_loop = false;
  rt->supervised = true;
  rt->child_index = index;
  rt->supervisor = getppid();
  int code = serve_here(rt, true);
  mq_runtime_close(rt);
  return code;
}

int mq_runtime_serve(mq_runtime *rt) {
  char err[4096];
  if (mq_runtime_prepare_db(rt, true, err, sizeof err) != 0) {
    fprintf(stderr, "moonq: %s\n", err);
    return 1;
  }
  if (rt->cfg->workers > 1)
    return mq_supervisor_run(rt->loop, rt->cfg->workers,
                             rt->cfg->shutdown_grace, serve_child, rt);
  return serve_here(rt, true);
}

int mq_runtime_serve_http(mq_runtime *rt) {
  char err[4096];
  if (mq_runtime_prepare_db(rt, true, err, sizeof err) != 0) {
    fprintf(stderr, "moonq: %s\n", err);
    return 1;
  }
  return serve_here(rt, false);
}
