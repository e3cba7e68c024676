/* worker.c -- runs Lua handlers for jobs; see worker.h.
 *
 * Shapes:
 *  - handlers: registry table "moonq.handlers" maps a job name to its spec
 *    (lua/moonq/handler.lua normalises what a file returns); `files` tracks
 *    each file's mtime and size for hot reload.
 *  - consumer: one per queue; `running` jobs of at most `slots`; one fetch
 *    in flight at a time; `more` says a fetch may find work (a full batch
 *    came back, or a NOTIFY arrived meanwhile).
 *  - run: one job in its coroutine. Its lua_State is anchored by a registry
 *    reference. Completions never resume a coroutine themselves: they put
 *    the run on the ready list, which drain() empties from an ev_check
 *    watcher of the lowest priority (after every other callback of the loop
 *    turn) and an ev_idle watcher (so a non-empty list never waits for I/O).
 */
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"
#include "log.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "queue.h"
#include "runtime.h"

#define HANDLERS_KEY "moonq.handlers"
#define HOOK_COUNT 1000 /* instructions between deadline checks */

struct consumer {
  mq_worker *w;
  char *queue;
  int slots;   /* concurrency */
  int prefetch; /* jobs claimed ahead (config queue.prefetch) */
  int running;
  bool fetching;
  int asked;   /* jobs the fetch in flight asked for */
  bool more;
  bool slots_set; /* a handler gave the concurrency */
  bool live;   /* some handler still names this queue */
  ev_timer poll;
  ev_timer due; /* the next delayed job */
  /* Jobs fetched ahead (at most `prefetch` of them), started as slots
   * free up: the next batch is on its way while the current one runs. */
  struct buffered *buf_head, *buf_tail;
  int nbuf;
};

/* A fetched job waiting for a slot; its strings live after the struct. */
struct buffered {
  struct buffered *next;
  struct mq_job job;
};

struct run {
  struct mq_lua_task task; /* first: task pointers are run pointers */
  mq_worker *w;
  struct consumer *c;
  long long id;
  char *name;
  int ref;       /* registry reference anchoring task.co */
  int nargs;     /* values waiting on co for the next resume */
  double timeout;
  ev_tstamp deadline;
  ev_timer timer;
  bool started;
  bool timed_out;
  bool queued;   /* on the ready list */
  struct run *next_ready;
  struct run *prev, *next; /* all runs */
};

struct file {
  char *path;
  char *name;
  time_t mtime;
  long mtime_ns;
  off_t size;
  bool seen;
};

struct mq_worker {
  struct mq_runtime *rt;
  lua_State *L;
  char *dir;
  struct consumer **consumers;
  int nconsumers;
  struct file *files;
  int nfiles, files_cap;
  struct run *runs;        /* every running job */
  struct run *ready_head, *ready_tail;
  ev_check check;
  ev_idle idle;
  ev_timer scan;
  ev_timer grace;
  int inflight;            /* requests whose callbacks point into us */
  bool dead;               /* freed by the owner; waiting for inflight */
  bool started;
  bool stopping;
  void (*stopped)(void *arg);
  void *stopped_arg;
  int ctx_ref;             /* moonq.ctx.new */
};

static struct run *current; /* the run whose coroutine is executing */

static void consider_fetch(struct consumer *c);
static void start_buffered(struct consumer *c);
static void release_buffer(mq_worker *w, struct consumer *c);
static void finish(struct run *r);
static void check_stopped(mq_worker *w);
static void fail_job(struct run *r);
static void release_memory(mq_worker *w);
static void failed_cb(int status, const char *error, const char *json,
                      void *data);
static void due_cb(int status, const char *error, const char *json,
                   void *data);

/* ---- loading handlers -------------------------------------------------- */

/* "billing/charge.lua" -> "billing.charge" (caller frees). */
static char *job_name(const char *rel) {
  size_t n = strlen(rel) - 4;
  char *name = malloc(n + 1);
  if (!name)
    return NULL;
  for (size_t i = 0; i < n; i++)
    name[i] = rel[i] == '/' ? '.' : rel[i];
  name[n] = '\0';
  return name;
}

/* [] -> []: loads `path` as job `name` and stores its spec in the handler
 * table, or logs why not (the previous version, if any, stays). */
static bool load_file(mq_worker *w, const char *path, const char *name) {
  lua_State *L = w->L;
  int top = lua_gettop(L);
  bool ok = false;
  if (luaL_loadfilex(L, path, "t") != LUA_OK) { /* [chunk | err] */
    mq_log_error("worker", "cannot load handler file=%s error=\"%s\"", path,
                 lua_tostring(L, -1));
    goto done;
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.handler");
  if (mq_lua_pcall(L, 1, 1) != LUA_OK) { /* [chunk handler_mod] */
    mq_log_error("worker", "%s", lua_tostring(L, -1));
    goto done;
  }
  lua_getfield(L, -1, "env");
  lua_pushstring(L, path);
  if (mq_lua_pcall(L, 1, 1) != LUA_OK) /* [chunk mod env] */
    goto fail;
  if (!lua_setupvalue(L, -3, 1)) /* the chunk's _ENV; [chunk mod] */
    lua_pop(L, 1);
  lua_pushvalue(L, -2);
  if (mq_lua_pcall(L, 0, 1) != LUA_OK) /* [chunk mod value] */
    goto fail;
  lua_getfield(L, -2, "normalise"); /* [chunk mod value normalise] */
  lua_pushstring(L, name);
  lua_pushvalue(L, -3);
  lua_pushstring(L, path);
  if (mq_lua_pcall(L, 3, 1) != LUA_OK) /* [chunk mod value spec] */
    goto fail;
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  lua_pushstring(L, name);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  ok = true;
  goto done;
fail:
  mq_log_error("worker", "cannot load handler file=%s error=\"%s\"", path,
               lua_tostring(L, -1));
done:
  lua_settop(L, top);
  return ok;
}

static void unload(mq_worker *w, const char *name) {
  lua_getfield(w->L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  lua_pushnil(w->L);
  lua_setfield(w->L, -2, name);
  lua_pop(w->L, 1);
}

static struct file *find_file(mq_worker *w, const char *path) {
  for (int i = 0; i < w->nfiles; i++)
    if (strcmp(w->files[i].path, path) == 0)
      return &w->files[i];
  return NULL;
}

static struct file *add_file(mq_worker *w, const char *path, const char *rel) {
  if (w->nfiles == w->files_cap) {
    int cap = w->files_cap ? w->files_cap * 2 : 16;
    struct file *f = realloc(w->files, sizeof *f * (size_t)cap);
    if (!f)
      return NULL;
    w->files = f;
    w->files_cap = cap;
  }
  struct file *f = &w->files[w->nfiles];
  memset(f, 0, sizeof *f);
  f->path = strdup(path);
  f->name = job_name(rel);
  if (!f->path || !f->name) {
    free(f->path);
    free(f->name);
    return NULL;
  }
  w->nfiles++;
  return f;
}

/* Walks dir (rel: its path below the handlers directory), loading new and
 * changed files. Returns the number of handlers (re)loaded. */
static int scan_dir(mq_worker *w, const char *dir, const char *rel,
                    ev_tstamp now) {
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  int changed = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    char path[4096], sub[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
    struct stat st;
    if (stat(path, &st) != 0)
      continue;
    if (S_ISDIR(st.st_mode)) {
      changed += scan_dir(w, path, sub, now);
      continue;
    }
    size_t len = strlen(e->d_name);
    if (!S_ISREG(st.st_mode) || len < 5 || strcmp(e->d_name + len - 4, ".lua"))
      continue;
    struct file *f = find_file(w, path);
    if (f) {
      f->seen = true;
      if (f->mtime == st.st_mtim.tv_sec && f->mtime_ns == st.st_mtim.tv_nsec &&
          f->size == st.st_size)
        continue;
      /* An editor may still be writing: wait until it has been quiet. */
      double age = now - ((double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9);
      if (age < 0.1)
        continue;
    } else if (!(f = add_file(w, path, sub))) {
      continue;
    }
    f->seen = true;
    f->mtime = st.st_mtim.tv_sec;
    f->mtime_ns = st.st_mtim.tv_nsec;
    f->size = st.st_size;
    if (load_file(w, path, f->name)) {
      mq_log_info("worker", "loaded handler job=%s file=%s", f->name, path);
      changed++;
    }
  }
  closedir(d);
  return changed;
}

/* ---- consumers --------------------------------------------------------- */

static void poll_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  struct consumer *c = t->data;
  c->more = true;
  consider_fetch(c);
}

static struct consumer *find_consumer(mq_worker *w, const char *queue) {
  for (int i = 0; i < w->nconsumers; i++)
    if (strcmp(w->consumers[i]->queue, queue) == 0)
      return w->consumers[i];
  return NULL;
}

static struct consumer *add_consumer(mq_worker *w, const char *queue) {
  struct consumer **list =
      realloc(w->consumers, sizeof *list * (size_t)(w->nconsumers + 1));
  if (!list)
    return NULL;
  w->consumers = list;
  struct consumer *c = calloc(1, sizeof *c);
  if (!c || !(c->queue = strdup(queue))) {
    free(c);
    return NULL;
  }
  c->w = w;
  c->more = true;
  const struct mq_queue_options *o = mq_config_queue(w->rt->cfg, queue);
  c->slots = o->concurrency;
  c->prefetch = o->prefetch;
  ev_timer_init(&c->poll, poll_cb, o->poll_interval, o->poll_interval);
  c->poll.data = c;
  ev_init(&c->due, poll_cb);
  c->due.data = c;
  w->consumers[w->nconsumers++] = c;
  return c;
}

/* Builds the consumer list from the handler table: one per queue, its
 * concurrency the largest a handler asks for (else the queue's config). */
static void sync_consumers(mq_worker *w) {
  lua_State *L = w->L;
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    c->live = false;
    c->slots_set = false;
    c->slots = mq_config_queue(w->rt->cfg, c->queue)->concurrency;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  lua_pushnil(L);
  while (lua_next(L, -2)) { /* [handlers name spec] */
    lua_getfield(L, -1, "queue");
    const char *queue = lua_tostring(L, -1);
    struct consumer *c = find_consumer(w, queue);
    if (!c)
      c = add_consumer(w, queue);
    if (c) {
      c->live = true;
      if (lua_getfield(L, -2, "concurrency") == LUA_TNUMBER) {
        int n = (int)lua_tointeger(L, -1);
        c->slots = c->slots_set && c->slots > n ? c->slots : n;
        c->slots_set = true;
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    if (c->live && w->started && !w->stopping && !ev_is_active(&c->poll)) {
      ev_timer_again(w->rt->loop, &c->poll);
      c->more = true;
    }
    if (c->live)
      consider_fetch(c);
  }
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    if (!c->live) {
      ev_timer_stop(w->rt->loop, &c->poll);
      ev_timer_stop(w->rt->loop, &c->due);
    }
  }
}

/* Stores handlers' retry options as their queue's defaults, so jobs sent
 * from anywhere (SQL included) get them. Only the retry settings: the
 * queue's expire_in, retention and dead_letter stay config.lua's. An option
 * the handler leaves out is config.lua's again (no delay_max: unset), so a
 * reloaded handler that drops one does not keep its old value. */
static void sync_retry(mq_worker *w) {
  lua_State *L = w->L;
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  lua_pushnil(L);
  while (lua_next(L, -2)) { /* [handlers name spec] */
    if (lua_getfield(L, -1, "retry") == LUA_TTABLE) { /* [.. spec retry] */
      lua_getfield(L, -2, "queue");
      const char *queue = lua_tostring(L, -1);
      const struct mq_queue_options *o = mq_config_queue(w->rt->cfg, queue);
      lua_getfield(L, -2, "limit");
      lua_getfield(L, -3, "delay");
      lua_getfield(L, -4, "backoff");
      lua_getfield(L, -5, "delay_max"); /* [.. retry queue lim del bo max] */
      struct mq_queue_settings s = {
          .has_retry_limit = true,
          .retry_limit =
              lua_isnil(L, -4) ? o->retry_limit : (int)lua_tointeger(L, -4),
          .has_retry_delay = true,
          .retry_delay =
              lua_isnil(L, -3) ? o->retry_delay : (double)lua_tonumber(L, -3),
          .has_retry_backoff = true,
          .retry_backoff =
              lua_isnil(L, -2) ? o->retry_backoff : lua_toboolean(L, -2),
          .has_retry_delay_max = true,
          .retry_delay_max = lua_isnil(L, -1) ? -1 : (double)lua_tonumber(L, -1)};
      /* A failure is logged by the queue. */
      mq_queue_store_settings(w->rt->queue, queue, &s, NULL, NULL, NULL, 0);
      lua_pop(L, 5);
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
}

/* ---- running jobs -------------------------------------------------------- */

static void ready_push(struct run *r) {
  if (r->queued)
    return;
  r->queued = true;
  r->next_ready = NULL;
  mq_worker *w = r->w;
  if (w->ready_tail)
    w->ready_tail->next_ready = r;
  else
    w->ready_head = r;
  w->ready_tail = r;
  ev_idle_start(w->rt->loop, &w->idle);
}

static void ready_remove(struct run *r) {
  mq_worker *w = r->w;
  struct run **p = &w->ready_head, *prev = NULL;
  while (*p && *p != r) {
    prev = *p;
    p = &(*p)->next_ready;
  }
  if (*p) {
    *p = r->next_ready;
    if (w->ready_tail == r)
      w->ready_tail = prev;
  }
  r->queued = false;
}

static void task_ready(struct mq_lua_task *task, int nresults) {
  struct run *r = (struct run *)task;
  r->nargs = nresults;
  ready_push(r);
}

/* The count hook: raises "timeout" once the deadline has passed, and then
 * on every instruction, so a pcall in the handler cannot swallow it. */
static void deadline_hook(lua_State *L, lua_Debug *ar) {
  struct run *r = current;
  if (!r)
    return;
  if (!r->timed_out) {
    if (ev_time() < r->deadline)
      return;
    r->timed_out = true;
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
  }
  luaL_error(L, "timeout after %f s", r->timeout);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  struct run *r = t->data;
  r->timed_out = true;
  if (r->task.wait)
    mq_lua_wait_cancel(r->task.wait);
  ready_remove(r);
  fail_job(r);
  finish(r);
}

static void log_result(int status, const char *error, const char *json,
                       void *data) {
  if (status < 0)
    mq_log_error("worker", "storing a job result failed error=\"%s\"", error);
}

/* Fails the run's job with {message, traceback} built from the error on
 * top of co (or a timeout). */
static void fail_job(struct run *r) {
  lua_State *L = r->w->L, *co = r->task.co;
  char message[1024];
  if (r->timed_out) {
    snprintf(message, sizeof message, "timeout after %g s", r->timeout);
    lua_pushstring(L, message);
    lua_pushnil(L);
  } else {
    lua_xmove(co, L, 1); /* [err] */
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_getfield(L, -1, "message");
      snprintf(message, sizeof message, "%s",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
      lua_pop(L, 1);
    } else {
      snprintf(message, sizeof message, "%s",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "(error object)");
    }
    luaL_traceback(L, co, message, 0); /* [err traceback] */
  }
  /* [err traceback]: store {message, traceback, attempt, ...err fields} */
  lua_createtable(L, 0, 4);
  if (lua_type(L, -3) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -4)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "traceback");
  char err[256];
  char *json = mq_json_encode(L, -1, "error", NULL, err, sizeof err);
  lua_pop(L, 3);
  if (!json) { /* the error table held something JSON cannot carry */
    lua_createtable(L, 0, 1);
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    json = mq_json_encode(L, -1, "error", NULL, err, sizeof err);
    lua_pop(L, 1);
  }
  mq_log_warn("worker", "job failed id=%lld job=%s error=\"%s\"", r->id,
              r->name, message);
  /* Once the failure is stored, a retry's start_after is known: look for
   * the queue's next due job then (asking earlier races the commit). */
  mq_worker *w = r->w;
  if (mq_queue_fail(w->rt->queue, r->id, json ? json : "{}", failed_cb, r->c) == 0)
    w->inflight++;
  free(json);
}

/* Completes the run's job with the handler's first return value. */
static void complete_job(struct run *r, int nres) {
  lua_State *L = r->w->L, *co = r->task.co;
  if (nres == 0)
    lua_pushnil(co);
  else if (nres > 1)
    lua_pop(co, nres - 1);
  lua_xmove(co, L, 1);
  char err[512];
  char *json = NULL;
  if (!lua_isnil(L, -1))
    json = mq_json_encode(L, -1, "output", NULL, err, sizeof err);
  bool bad = !lua_isnil(L, -1) && !json;
  lua_pop(L, 1);
  if (bad) {
    lua_pushfstring(co, "the handler's result cannot be stored: %s", err);
    fail_job(r);
    return;
  }
  mq_log_debug("worker", "job completed id=%lld job=%s", r->id, r->name);
  mq_queue_complete(r->w->rt->queue, r->id, json, log_result, NULL);
  free(json);
}

/* Resumes the run once with its pending values. */
static void step(struct run *r) {
  lua_State *co = r->task.co;
  int nres = 0;
  int nargs = r->nargs;
  r->nargs = 0;
  if (!r->started) {
    r->started = true;
    nargs = 2; /* job, ctx */
  }
  current = r;
  mq_lua_set_current(&r->task);
  int status = lua_resume(co, r->w->L, nargs, &nres);
  mq_lua_set_current(NULL);
  current = NULL;
  if (status == LUA_YIELD) {
    lua_pop(co, nres); /* values a bare coroutine.yield() passed out */
    if (!r->task.wait)
      ready_push(r); /* a plain yield: carry on next turn */
    return;
  }
  if (status == LUA_OK)
    complete_job(r, nres);
  else
    fail_job(r);
  finish(r);
}

static void drain(mq_worker *w) {
  struct run *r;
  while ((r = w->ready_head)) {
    w->ready_head = r->next_ready;
    if (!w->ready_head)
      w->ready_tail = NULL;
    r->queued = false;
    step(r);
  }
  ev_idle_stop(w->rt->loop, &w->idle);
}

static void check_cb(struct ev_loop *loop, ev_check *c, int revents) {
  drain(c->data);
}

static void idle_cb(struct ev_loop *loop, ev_idle *i, int revents) {
  drain(i->data);
}

/* Ends a run whose result was already handed to the queue (or that is
 * abandoned): frees its slot and its coroutine. */
static void finish(struct run *r) {
  mq_worker *w = r->w;
  ev_timer_stop(w->rt->loop, &r->timer);
  lua_resetthread(r->task.co);
  luaL_unref(w->L, LUA_REGISTRYINDEX, r->ref);
  if (r->prev)
    r->prev->next = r->next;
  else
    w->runs = r->next;
  if (r->next)
    r->next->prev = r->prev;
  struct consumer *c = r->c;
  c->running--;
  free(r->name);
  free(r);
  if (w->stopping) {
    check_stopped(w);
  } else {
    start_buffered(c);
    consider_fetch(c);
  }
}

/* Pushes the handler function for `name` onto L, or an error message and
 * returns false. */
static bool push_handler(mq_worker *w, const char *name) {
  lua_State *L = w->L;
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  if (lua_getfield(L, -1, name) == LUA_TTABLE) { /* [handlers spec] */
    lua_getfield(L, -1, "handler");
    lua_replace(L, -3);
    lua_pop(L, 1);
    return true;
  }
  lua_pop(L, 1); /* [handlers] */
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "no handler for job \"");
  luaL_addstring(&b, name);
  luaL_addstring(&b, "\" (known: ");
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, -3)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (n++)
      luaL_addstring(&b, ", ");
    luaL_addvalue(&b);
  }
  luaL_addstring(&b, n ? ")" : "none)");
  luaL_pushresult(&b);
  lua_replace(L, -2);
  return false;
}

static double handler_timeout(mq_worker *w, const char *name,
                              const char *queue) {
  lua_State *L = w->L;
  int top = lua_gettop(L);
  double t = mq_config_queue(w->rt->cfg, queue)->timeout;
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  if (lua_getfield(L, -1, name) == LUA_TTABLE &&
      lua_getfield(L, -1, "timeout") == LUA_TNUMBER)
    t = lua_tonumber(L, -1);
  lua_settop(L, top);
  return t;
}

/* [job] -> []: makes a run for the fetched job table on top of L. */
static void start_job(struct consumer *c, const struct mq_job *job) {
  mq_worker *w = c->w;
  lua_State *L = w->L;
  struct run *r = calloc(1, sizeof *r);
  if (!r || !(r->name = strdup(job->name))) {
    free(r);
    lua_pop(L, 1);
    mq_log_error("worker", "out of memory starting job id=%lld", job->id);
    return;
  }
  r->w = w;
  r->c = c;
  r->id = job->id;
  r->task.ready = task_ready;
  r->task.co = lua_newthread(L); /* [job co] */
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [job] */
  mq_lua_set_task(r->task.co, &r->task);
  r->timeout = handler_timeout(w, job->name, job->queue);
  r->deadline = ev_now(w->rt->loop) + r->timeout;
  ev_timer_init(&r->timer, timeout_cb, r->timeout, 0.);
  r->timer.data = r;
  ev_timer_start(w->rt->loop, &r->timer);
  r->next = w->runs;
  if (w->runs)
    w->runs->prev = r;
  w->runs = r;
  c->running++;
  lua_sethook(r->task.co, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
  if (!push_handler(w, job->name)) { /* [job message] */
    lua_xmove(L, r->task.co, 1);
    lua_pop(L, 1);
    fail_job(r);
    finish(r);
    return;
  }
  /* [job fn] -> co: [fn job ctx] */
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->ctx_ref);
  lua_pushvalue(L, -3);
  if (mq_lua_pcall(L, 1, 1) != LUA_OK) { /* [job fn ctx|err] */
    mq_log_error("worker", "cannot make ctx: %s", lua_tostring(L, -1));
    lua_xmove(L, r->task.co, 1);
    lua_pop(L, 2);
    fail_job(r);
    finish(r);
    return;
  }
  lua_rotate(L, -3, -1); /* [fn ctx job] */
  lua_insert(L, -2);     /* [fn job ctx] */
  lua_xmove(L, r->task.co, 3);
  ready_push(r);
}

static int push_job_protected(lua_State *L) {
  mq_lua_push_job(L, lua_touserdata(L, 1));
  return 1;
}

static void released(int status, const char *error, const char *json,
                     void *data);

/* Gives jobs of this process back to the queue (the worker is stopping):
 * they wait again at once and the attempt does not count. */
static void release_ids(mq_worker *w, const long long *ids, int n) {
  luaL_Buffer b;
  lua_State *L = w->L;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '{');
  for (int i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "%s%lld", i ? "," : "", ids[i]);
    luaL_addstring(&b, id);
  }
  luaL_addchar(&b, '}');
  luaL_pushresult(&b);
  const char *a[5] = {lua_tostring(L, -1)};
  mq_queue_call(w->rt->queue, MQ_QUEUE_RELEASE, a, released, NULL);
  lua_pop(L, 1);
}

/* Every callback holding a consumer starts here: false when the worker is
 * gone (the last such callback frees it) or stopping. */
static bool callback_live(mq_worker *w) {
  w->inflight--;
  if (w->dead) {
    if (w->inflight == 0)
      release_memory(w);
    return false;
  }
  if (w->stopping) {
    check_stopped(w);
    return false;
  }
  return true;
}

static void failed_cb(int status, const char *error, const char *json,
                      void *data) {
  struct consumer *c = data;
  if (status < 0)
    mq_log_error("worker", "storing a job result failed error=\"%s\"", error);
  if (!callback_live(c->w) || status != 0 || !strstr(json, "\"retry\""))
    return;
  const char *a[5] = {c->queue};
  if (mq_queue_call(c->w->rt->queue, MQ_QUEUE_NEXT_DUE, a, due_cb, c) == 0)
    c->w->inflight++;
}

static void due_cb(int status, const char *error, const char *json,
                   void *data) {
  struct consumer *c = data;
  if (!callback_live(c->w) || status != 0 || strcmp(json, "null") == 0)
    return;
  double s = strtod(json, NULL);
  ev_timer_stop(c->w->rt->loop, &c->due);
  ev_timer_set(&c->due, s + 0.001, 0.);
  ev_timer_start(c->w->rt->loop, &c->due);
}

/* Copies a fetched job into the consumer's buffer. */
static bool buffer_push(struct consumer *c, const struct mq_job *j) {
  size_t name = strlen(j->name) + 1, queue = strlen(j->queue) + 1,
         data = strlen(j->data) + 1, run = j->run_id ? strlen(j->run_id) + 1 : 0;
  struct buffered *b = malloc(sizeof *b + name + queue + data + run);
  if (!b)
    return false;
  char *p = (char *)(b + 1);
  b->next = NULL;
  b->job = *j;
  b->job.name = memcpy(p, j->name, name);
  b->job.queue = memcpy(p += name, j->queue, queue);
  b->job.data = memcpy(p += queue, j->data, data);
  b->job.run_id = run ? memcpy(p + data, j->run_id, run) : NULL;
  if (c->buf_tail)
    c->buf_tail->next = b;
  else
    c->buf_head = b;
  c->buf_tail = b;
  c->nbuf++;
  return true;
}

/* Pushes the job table and starts it (see start_job). */
static void run_job(struct consumer *c, const struct mq_job *job) {
  lua_State *L = c->w->L;
  lua_pushcfunction(L, push_job_protected);
  lua_pushlightuserdata(L, (void *)job);
  if (mq_lua_pcall(L, 1, 1) != LUA_OK) {
    mq_log_error("worker", "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return;
  }
  start_job(c, job);
}

/* Starts buffered jobs while slots are free. */
static void start_buffered(struct consumer *c) {
  while (c->buf_head && c->running < c->slots) {
    struct buffered *b = c->buf_head;
    c->buf_head = b->next;
    if (!c->buf_head)
      c->buf_tail = NULL;
    c->nbuf--;
    run_job(c, &b->job);
    free(b);
  }
}

/* Gives every buffered job back to the queue (stopping). */
static void release_buffer(mq_worker *w, struct consumer *c) {
  if (!c->nbuf)
    return;
  long long *ids = malloc(sizeof *ids * (size_t)c->nbuf);
  int n = 0;
  while (c->buf_head) {
    struct buffered *b = c->buf_head;
    c->buf_head = b->next;
    if (ids)
      ids[n++] = b->job.id;
    free(b);
  }
  c->buf_tail = NULL;
  c->nbuf = 0;
  if (ids)
    release_ids(w, ids, n);
  free(ids);
}

static void fetched(int status, const char *error, const struct mq_job *jobs,
                    int n, void *data) {
  struct consumer *c = data;
  mq_worker *w = c->w;
  int asked = c->asked;
  c->fetching = false;
  w->inflight--;
  if (w->dead) {
    if (w->inflight == 0)
      release_memory(w);
    return; /* the jobs come back through crash recovery */
  }
  if (status != 0) {
    mq_log_warn("worker", "fetch failed queue=%s error=\"%s\"", c->queue,
                error);
    return; /* the poll timer tries again */
  }
  if (w->stopping && n > 0) { /* stopped while the fetch was in flight */
    long long *ids = malloc(sizeof *ids * (size_t)n);
    for (int i = 0; ids && i < n; i++)
      ids[i] = jobs[i].id;
    if (ids)
      release_ids(w, ids, n);
    free(ids);
    check_stopped(w);
    return;
  }
  for (int i = 0; i < n; i++) {
    if (c->running < c->slots && !c->buf_head)
      run_job(c, &jobs[i]);
    else if (!buffer_push(c, &jobs[i]))
      mq_log_error("worker", "out of memory buffering job id=%lld "
                   "(crash recovery will retry it)", jobs[i].id);
  }
  if (n >= asked && asked > 0) {
    c->more = true;
  } else if (!w->stopping) {
    /* The queue ran dry: wake again when its next delayed job is due. */
    const char *a[5] = {c->queue};
    if (mq_queue_call(w->rt->queue, MQ_QUEUE_NEXT_DUE, a, due_cb, c) == 0)
      w->inflight++;
  }
  if (w->stopping)
    check_stopped(w);
  else
    consider_fetch(c);
}

/* Fetches free slots' worth of jobs; with `prefetch` up to that many more
 * are claimed ahead (buffered), and a fetch then waits until there is room
 * for half of them, so batches stay large (unless nothing runs). */
static void consider_fetch(struct consumer *c) {
  mq_worker *w = c->w;
  int room = c->slots + c->prefetch - c->running - c->nbuf;
  int worth = c->prefetch / 2 > 0 ? c->prefetch / 2 : 1;
  if (!w->started || w->stopping || !c->live || c->fetching || !c->more ||
      room <= 0 || (room < worth && c->running + c->nbuf > 0))
    return;
  c->more = false;
  c->fetching = true;
  c->asked = room;
  if (mq_queue_fetch(w->rt->queue, c->queue, room, fetched, c) != 0)
    c->fetching = false;
  else
    w->inflight++;
}

/* NOTIFY payload: comma-separated queue names; NULL: maybe missed some. */
static void wake_cb(const char *channel, const char *payload, void *data) {
  mq_worker *w = data;
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    if (payload) {
      size_t n = strlen(c->queue);
      const char *p = payload;
      bool hit = false;
      while ((p = strstr(p, c->queue))) {
        bool start = p == payload || p[-1] == ',';
        bool end = p[n] == '\0' || p[n] == ',';
        if (start && end) {
          hit = true;
          break;
        }
        p += n;
      }
      if (!hit)
        continue;
    }
    c->more = true;
    consider_fetch(c);
  }
}

/* ---- reload, start, stop --------------------------------------------- */

static void rescan(mq_worker *w, bool force) {
  ev_tstamp now = ev_time();
  for (int i = 0; i < w->nfiles; i++) {
    w->files[i].seen = false;
    if (force)
      w->files[i].size = -1;
  }
  int changed = scan_dir(w, w->dir, "", now);
  for (int i = 0; i < w->nfiles;) {
    struct file *f = &w->files[i];
    if (f->seen) {
      i++;
      continue;
    }
    mq_log_info("worker", "handler removed job=%s file=%s", f->name, f->path);
    unload(w, f->name);
    free(f->path);
    free(f->name);
    w->files[i] = w->files[--w->nfiles];
    changed++;
  }
  if (changed) {
    sync_consumers(w);
    sync_retry(w);
  }
}

static void scan_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  rescan(t->data, false);
}

void mq_worker_reload(mq_worker *w) { rescan(w, true); }

mq_worker *mq_worker_new(struct mq_runtime *rt, char *err, size_t errlen) {
  mq_worker *w = calloc(1, sizeof *w);
  if (!w) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  w->rt = rt;
  w->L = rt->L;
  const char *h = rt->cfg->handlers;
  size_t len = strlen(rt->cfg->base_dir) + strlen(h) + 2;
  w->dir = malloc(len);
  if (!w->dir) {
    free(w);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (h[0] == '/')
    snprintf(w->dir, len, "%s", h);
  else
    snprintf(w->dir, len, "%s/%s", rt->cfg->base_dir, h);
  struct stat st;
  if (stat(w->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "handlers directory %s: %s", w->dir,
             errno ? strerror(errno) : "not a directory");
    free(w->dir);
    free(w);
    return NULL;
  }
  lua_State *L = w->L;
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, HANDLERS_KEY);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.ctx");
  if (mq_lua_pcall(L, 1, 1) != LUA_OK) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    free(w->dir);
    free(w);
    return NULL;
  }
  lua_getfield(L, -1, "new");
  w->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  ev_check_init(&w->check, check_cb);
  ev_set_priority(&w->check, EV_MINPRI);
  w->check.data = w;
  ev_idle_init(&w->idle, idle_cb);
  w->idle.data = w;
  ev_timer_init(&w->scan, scan_cb, 0.5, 0.5);
  w->scan.data = w;
  rescan(w, false);
  return w;
}

int mq_worker_start(mq_worker *w) {
  struct ev_loop *loop = w->rt->loop;
  ev_check_start(loop, &w->check);
  ev_unref(loop);
  if (w->rt->cfg->hot_reload) {
    ev_timer_again(loop, &w->scan);
    ev_unref(loop);
  }
  mq_pg_listen(w->rt->pg, w->rt->notify_channel, wake_cb, w);
  w->started = true;
  sync_consumers(w);
  sync_retry(w);
  mq_log_info("worker", "started handlers=%d queues=%d dir=%s", w->nfiles,
              w->nconsumers, w->dir);
  return 0;
}

int mq_worker_running(const mq_worker *w) {
  int n = 0;
  for (struct run *r = w->runs; r; r = r->next)
    n++;
  return n;
}

static void released(int status, const char *error, const char *json,
                     void *data) {
  if (status != 0)
    mq_log_error("worker", "returning jobs to the queue failed error=\"%s\"",
                 error);
  else
    mq_log_info("worker", "returned unfinished jobs to the queue count=%s",
                json);
}

/* Grace period over: the jobs still running go back to the queue. */
static void grace_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  mq_worker *w = t->data;
  int n = mq_worker_running(w), i = 0;
  long long *ids = malloc(sizeof *ids * (size_t)(n ? n : 1));
  for (struct run *r = w->runs; ids && r; r = r->next)
    ids[i++] = r->id;
  if (ids)
    release_ids(w, ids, n);
  else
    mq_log_error("worker", "out of memory: jobs stay active until recovered");
  free(ids);
  while (w->runs) {
    struct run *r = w->runs;
    if (r->task.wait)
      mq_lua_wait_cancel(r->task.wait);
    ready_remove(r);
    finish(r);
  }
}

static void check_stopped(mq_worker *w) {
  if (!w->stopping || w->runs || w->inflight > 0 || !w->stopped)
    return;
  ev_timer_stop(w->rt->loop, &w->grace);
  void (*done)(void *) = w->stopped;
  w->stopped = NULL;
  done(w->stopped_arg);
}

void mq_worker_stop(mq_worker *w, void (*done)(void *arg), void *arg) {
  struct ev_loop *loop = w->rt->loop;
  w->stopping = true;
  w->stopped = done;
  w->stopped_arg = arg;
  for (int i = 0; i < w->nconsumers; i++) {
    ev_timer_stop(loop, &w->consumers[i]->poll);
    ev_timer_stop(loop, &w->consumers[i]->due);
    release_buffer(w, w->consumers[i]);
  }
  mq_pg_unlisten(w->rt->pg, w->rt->notify_channel, wake_cb, w);
  if (ev_is_active(&w->scan)) {
    ev_ref(loop);
    ev_timer_stop(loop, &w->scan);
  }
  if (w->runs)
    mq_log_info("worker", "stopping: waiting for running jobs count=%d "
                "grace_s=%g", mq_worker_running(w), w->rt->cfg->shutdown_grace);
  ev_timer_init(&w->grace, grace_cb, w->rt->cfg->shutdown_grace, 0.);
  w->grace.data = w;
  ev_timer_start(loop, &w->grace);
  check_stopped(w);
}

void mq_worker_free(mq_worker *w) {
  if (!w)
    return;
  struct ev_loop *loop = w->rt->loop;
  while (w->runs) {
    struct run *r = w->runs;
    if (r->task.wait)
      mq_lua_wait_cancel(r->task.wait);
    ready_remove(r);
    w->stopping = true;
    finish(r);
  }
  if (ev_is_active(&w->check)) {
    ev_ref(loop);
    ev_check_stop(loop, &w->check);
  }
  if (ev_is_active(&w->scan)) {
    ev_ref(loop);
    ev_timer_stop(loop, &w->scan);
  }
  ev_idle_stop(loop, &w->idle);
  ev_timer_stop(loop, &w->grace);
  for (int i = 0; i < w->nconsumers; i++) {
    ev_timer_stop(loop, &w->consumers[i]->poll);
    ev_timer_stop(loop, &w->consumers[i]->due);
  }
  if (w->started)
    mq_pg_unlisten(w->rt->pg, w->rt->notify_channel, wake_cb, w);
  luaL_unref(w->L, LUA_REGISTRYINDEX, w->ctx_ref);
  w->dead = true;
  if (w->inflight == 0)
    release_memory(w);
}

/* The last step of freeing, once no callback can reach the worker. */
static void release_memory(mq_worker *w) {
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    while (c->buf_head) { /* left to crash recovery */
      struct buffered *b = c->buf_head;
      c->buf_head = b->next;
      free(b);
    }
    free(c->queue);
    free(c);
  }
  free(w->consumers);
  for (int i = 0; i < w->nfiles; i++) {
    free(w->files[i].path);
    free(w->files[i].name);
  }
  free(w->files);
  free(w->dir);
  free(w);
}
