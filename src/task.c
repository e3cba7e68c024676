/* task.c -- coroutines for handler code, and their deadlines; see task.h.
 *
 * Each task's coroutine is anchored by a registry reference until the task
 * is freed. `current` is the task whose coroutine runs now: the count hook
 * reads its deadline; lua_host is told of it (mq_lua_set_current) to route
 * waits made from coroutines the handler created.
 */
#include "task.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/queue.h>

#include <lauxlib.h>

#include "heartbeat.h"
#include "log.h"
#include "lua_host.h"

#define HOOK_COUNT 1000 /* instructions between deadline checks */

struct mq_task {
  struct mq_lua_task lt; /* first: lua_host's task pointers are task pointers */
  mq_tasks *ts;
  int ref;       /* registry reference anchoring lt.co */
  int nargs;     /* values waiting on the coroutine for the next resume */
  double timeout;
  ev_tstamp deadline;
  ev_timer timer;
  bool timed_out;
  bool queued;   /* on the ready list */
  mq_task_end_cb cb;
  void *data;
  TAILQ_ENTRY(mq_task) ready;
  LIST_ENTRY(mq_task) all;
};

struct mq_tasks {
  struct ev_loop *loop;
  lua_State *L;
  TAILQ_HEAD(, mq_task) ready;
  LIST_HEAD(, mq_task) all;
  ev_check check;
  ev_idle idle;
};

static mq_task *current;

static void drain(mq_tasks *ts);
static void deadline_hook(lua_State *L, lua_Debug *ar);
static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents);

static void check_cb(struct ev_loop *loop, ev_check *c, int revents) {
  drain(c->data);
}

static void idle_cb(struct ev_loop *loop, ev_idle *i, int revents) {
  drain(i->data);
}

mq_tasks *mq_tasks_new(struct ev_loop *loop, lua_State *L) {
  mq_tasks *ts = calloc(1, sizeof *ts);
  if (!ts)
    return NULL;
  ts->loop = loop;
  ts->L = L;
  TAILQ_INIT(&ts->ready);
  LIST_INIT(&ts->all);
  ev_check_init(&ts->check, check_cb);
  ev_set_priority(&ts->check, EV_MINPRI);
  ts->check.data = ts;
  ev_check_start(loop, &ts->check);
  ev_unref(loop); /* the check alone does not keep the loop running */
  ev_idle_init(&ts->idle, idle_cb);
  ts->idle.data = ts;
  return ts;
}

void mq_tasks_close(mq_tasks *ts) {
  if (!ts)
    return;
  while (!LIST_EMPTY(&ts->all))
    mq_task_abandon(LIST_FIRST(&ts->all));
  ev_ref(ts->loop);
  ev_check_stop(ts->loop, &ts->check);
  ev_idle_stop(ts->loop, &ts->idle);
  free(ts);
}

lua_State *mq_task_thread(const mq_task *t) { return t->lt.co; }

double mq_task_timeout(const mq_task *t) { return t->timeout; }

static void ready_push(mq_task *t) {
  if (t->queued)
    return;
  t->queued = true;
  TAILQ_INSERT_TAIL(&t->ts->ready, t, ready);
  ev_idle_start(t->ts->loop, &t->ts->idle);
}

static void ready_remove(mq_task *t) {
  if (!t->queued)
    return;
  t->queued = false;
  TAILQ_REMOVE(&t->ts->ready, t, ready);
}

/* lua_host calls this when a wait completed with n results on the
 * coroutine. */
static void wait_ready(struct mq_lua_task *lt, int nresults) {
  mq_task *t = (mq_task *)lt;
  t->nargs = nresults;
  ready_push(t);
}

/* Frees a task that will never run again. */
static void task_free(mq_task *t) {
  mq_tasks *ts = t->ts;
  ev_timer_stop(ts->loop, &t->timer);
  ready_remove(t);
  LIST_REMOVE(t, all);
  /* A wait can still be pending when its yield never reached the
   * scheduler (swallowed by a coroutine.resume moonq does not see). */
  if (t->lt.wait)
    mq_lua_wait_cancel(t->lt.wait);
  /* Closing to-be-closed variables runs the handler's __close code: it
   * runs as the task, so its deadline still holds and a wait there raises
   * "cannot wait here" (the coroutine cannot yield while closing). */
  mq_task *was = current;
  current = t;
  mq_lua_set_current(&t->lt);
  lua_resetthread(t->lt.co); /* protected */
  mq_lua_set_current(was ? &was->lt : NULL);
  current = was;
  luaL_unref(ts->L, LUA_REGISTRYINDEX, t->ref);
  free(t);
}

static void end(mq_task *t, enum mq_task_end how, int nresults) {
  ev_timer_stop(t->ts->loop, &t->timer);
  ready_remove(t);
  t->cb(t, how, nresults, t->data);
  task_free(t);
}

struct spawn {
  lua_CFunction push;
  void *arg;
  lua_State *co;
  int ref;
  int nargs;
};

/* [] -> []: makes the coroutine, lets push fill it, anchors it. */
static int spawn(lua_State *L) {
  struct spawn *s = lua_touserdata(L, 1);
  s->co = lua_newthread(L); /* [s co] */
  int base = lua_gettop(L);
  lua_pushcfunction(L, s->push);
  lua_pushlightuserdata(L, s->arg);
  lua_call(L, 1, LUA_MULTRET); /* [s co fn args...] */
  int n = lua_gettop(L) - base;
  if (n < 1 || !lua_isfunction(L, base + 1))
    return luaL_error(L, "task: nothing to run");
  s->nargs = n - 1;
  lua_xmove(L, s->co, n); /* [s co] */
  s->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

mq_task *mq_task_start(mq_tasks *ts, lua_CFunction push, void *arg,
                       double timeout, mq_task_end_cb cb, void *data,
                       char *err, size_t errlen) {
  mq_task *t = calloc(1, sizeof *t);
  if (!t) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  struct spawn s = {.push = push, .arg = arg, .ref = LUA_NOREF};
  lua_State *L = ts->L;
  if (mq_lua_protect(L, spawn, &s, 0) != LUA_OK) {
    snprintf(err, errlen, "%s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "out of memory");
    lua_pop(L, 1);
    if (s.ref != LUA_NOREF)
      luaL_unref(L, LUA_REGISTRYINDEX, s.ref);
    free(t);
    return NULL;
  }
  t->ts = ts;
  t->lt.co = s.co;
  t->lt.ready = wait_ready;
  t->ref = s.ref;
  t->nargs = s.nargs;
  t->timeout = timeout;
  t->deadline = ev_now(ts->loop) + timeout;
  t->cb = cb;
  t->data = data;
  lua_sethook(s.co, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
  ev_timer_init(&t->timer, timeout_cb, timeout, 0.);
  t->timer.data = t;
  ev_timer_start(ts->loop, &t->timer);
  LIST_INSERT_HEAD(&ts->all, t, all);
  ready_push(t);
  return t;
}

void mq_task_abandon(mq_task *t) {
  if (t->lt.wait)
    mq_lua_wait_cancel(t->lt.wait);
  task_free(t);
}

/* The count hook. Once the deadline has passed it yields the task's
 * coroutine out of whatever Lua code runs (a pcall cannot catch a yield),
 * and step() ends the task as timed out. Where the coroutine cannot yield
 * (a nested coroutine, a C call such as table.sort, __close handlers while
 * the task is being freed) it raises instead, on every instruction from
 * then on, so a pcall in the handler cannot swallow it. Yielding rather
 * than raising out of the coroutine also keeps Lua's hooks enabled on it:
 * an error thrown from a hook through lua_resume leaves them off, and the
 * __close handlers run when the task is freed would run unbounded. */
static void deadline_hook(lua_State *L, lua_Debug *ar) {
  mq_task *t = current;
  if (!t)
    return;
  if (!t->timed_out) {
    if (ev_time() < t->deadline)
      return;
    t->timed_out = true;
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
  }
  if (L == t->lt.co && lua_isyieldable(L)) {
    lua_yield(L, 0);
    return;
  }
  luaL_error(L, "timeout after %f s", t->timeout);
}

/* The deadline passed while the task waits in a yield (a task running Lua
 * code is stopped by the hook instead: the loop does not run meanwhile). */
static void timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents) {
  mq_task *t = timer->data;
  t->timed_out = true;
  if (t->lt.wait)
    mq_lua_wait_cancel(t->lt.wait);
  end(t, MQ_TASK_TIMED_OUT, 0);
}

/* Resumes the task once with its pending values. */
static void step(mq_task *t) {
  lua_State *co = t->lt.co;
  int nres = 0, nargs = t->nargs;
  t->nargs = 0;
  current = t;
  mq_lua_set_current(&t->lt);
  mq_heartbeat_busy_until(t->deadline); /* the loop waits for this resume */
  int status = lua_resume(co, t->ts->L, nargs, &nres);
  mq_heartbeat_busy_until(0);
  mq_lua_set_current(NULL);
  current = NULL;
  if (status == LUA_YIELD && t->timed_out) { /* the deadline hook */
    end(t, MQ_TASK_TIMED_OUT, 0);
    return;
  }
  if (status == LUA_YIELD) {
    lua_pop(co, nres); /* values a bare coroutine.yield() passed out */
    if (!t->lt.wait)
      ready_push(t); /* a plain yield: carry on next turn */
    return;
  }
  if (status == LUA_OK)
    end(t, MQ_TASK_RETURNED, nres);
  else if (t->timed_out)
    end(t, MQ_TASK_TIMED_OUT, 0);
  else
    end(t, MQ_TASK_RAISED, 0);
}

static void drain(mq_tasks *ts) {
  mq_task *t;
  while ((t = TAILQ_FIRST(&ts->ready))) {
    ready_remove(t);
    step(t);
  }
  ev_idle_stop(ts->loop, &ts->idle);
}
