/* moonq.c -- the `moonq` Lua module: open/close a runtime and the
 * submodules (moonq.json, moonq.log, moonq.db, ...).
 *
 * In `moonq run` the runtime already exists and handlers simply use the
 * submodules. A script or busted spec calls moonq.open(config) first, which
 * makes a runtime with a private loop inside the caller's Lua state.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "json.h"
#include "log.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "runtime.h"

static const char *const RUNTIME_MT = "moonq.runtime";

/* The runtime a script opened is owned by a userdata in the registry, so it
 * is closed with the Lua state even if the script never calls close (the
 * stop sequence then gives running jobs back to the queue). */
struct rt_box {
  mq_runtime *rt;
};

static int box_close(lua_State *L) {
  struct rt_box *box = luaL_checkudata(L, 1, RUNTIME_MT);
  if (box->rt) {
    mq_runtime *rt = box->rt;
    box->rt = NULL;
    mq_runtime_close(rt);
    mq_lua_set_runtime(L, NULL);
  }
  return 0;
}

static struct mq_config *config_arg(lua_State *L, char *err, size_t errlen) {
  int t = lua_type(L, 1);
  if (t == LUA_TTABLE)
    return mq_config_from_table(L, 1, "config", err, errlen);
  if (t == LUA_TSTRING)
    return mq_config_load(L, lua_tostring(L, 1), err, errlen);
  if (t == LUA_TNONE || t == LUA_TNIL) {
    if (access("config.lua", R_OK) == 0)
      return mq_config_load(L, "config.lua", err, errlen);
    return mq_config_defaults();
  }
  luaL_argerror(L, 1, "expected a config file path, a table or nil");
  return NULL;
}

/* moonq.open([config]) -> true | nil, err */
static int l_open(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.open");
  if (mq_lua_runtime(L))
    return luaL_error(L, "moonq is already open (call moonq.close() first)");
  char err[4096];
  struct mq_config *cfg = config_arg(L, err, sizeof err);
  if (!cfg) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  mq_log_set_level(cfg->log.level); /* as `moonq run` does */
  struct rt_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->rt = NULL;
  luaL_setmetatable(L, RUNTIME_MT);
  /* Handlers run as coroutines of the main thread, which outlives any
   * coroutine (a busted test, say) that happened to call open. */
  mq_runtime *rt = mq_runtime_new(NULL, cfg, L);
  if (!rt)
    return luaL_error(L, "not enough memory");
  mq_lua_set_runtime(L, rt);
  if (mq_runtime_prepare_db(rt, false, err, sizeof err) != 0 ||
      mq_runtime_open(rt, err, sizeof err) != 0) {
    mq_runtime_close(rt);
    mq_lua_set_runtime(L, NULL);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  box->rt = rt;
  lua_setfield(L, LUA_REGISTRYINDEX, "moonq.runtime_box");
  lua_pushboolean(L, 1);
  return 1;
}

static mq_runtime *open_runtime(lua_State *L) {
  mq_runtime *rt = mq_lua_runtime(L);
  if (!rt)
    luaL_error(L, "moonq is not open (call moonq.open() first)");
  return rt;
}

/* moonq.stop(): stops fetching and waits for running jobs (up to
 * shutdown_grace seconds; the rest go back to the queue). */
static int l_stop(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.stop");
  mq_runtime_stop_worker(open_runtime(L));
  return 0;
}

/* moonq.close(): stops the workers like moonq.stop(), then runs the stop
 * sequence (in-flight statements complete) and closes. */
static int l_close(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.close");
  lua_getfield(L, LUA_REGISTRYINDEX, "moonq.runtime_box");
  if (lua_isnil(L, -1))
    return 0;
  struct rt_box *box = lua_touserdata(L, -1);
  if (box->rt)
    mq_runtime_stop_worker(box->rt);
  lua_pushcfunction(L, box_close);
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, "moonq.runtime_box");
  return 0;
}

/* moonq.start() -> true | nil, err: runs the config's handlers in this
 * process whenever the loop runs (moonq.run_until, or any blocking call). */
static int l_start(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.start");
  mq_runtime *rt = open_runtime(L);
  if (mq_runtime_has_worker(rt))
    return luaL_error(L, "moonq.start: workers already started");
  char err[1024];
  if (mq_runtime_start_worker(rt, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static void tick(struct ev_loop *loop, ev_timer *t, int revents) {}

/* moonq.run_until(fn, timeout) -> true | false, "timeout": runs the loop
 * (handlers, timers, queries) until fn() returns a true value. */
static int l_run_until(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.run_until");
  mq_runtime *rt = open_runtime(L);
  struct ev_loop *loop = mq_runtime_loop(rt);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_Number timeout = luaL_optnumber(L, 2, 10);
  ev_tstamp deadline = ev_time() + timeout;
  ev_timer t; /* wakes the loop so fn is asked again */
  ev_timer_init(&t, tick, 0.01, 0.01);
  ev_timer_start(loop, &t);
  for (;;) {
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
      ev_timer_stop(loop, &t);
      return lua_error(L);
    }
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (ok || ev_time() >= deadline) {
      ev_timer_stop(loop, &t);
      lua_pushboolean(L, ok);
      if (ok)
        return 1;
      lua_pushliteral(L, "timeout");
      return 2;
    }
    ev_run(loop, EVRUN_ONCE);
  }
}

static void signalled(struct ev_loop *loop, ev_signal *w, int revents) {
  *(int *)w->data = w->signum;
}

/* moonq.run_until_signal([done]) -> "SIGINT" | "SIGTERM" | nil: runs the
 * loop (subscriptions, handlers, timers) until one of them arrives, or
 * (nil) until done(), called after each loop iteration, is true. */
static int l_run_until_signal(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.run_until_signal");
  bool has_done = !lua_isnoneornil(L, 1);
  if (has_done)
    luaL_checktype(L, 1, LUA_TFUNCTION);
  struct ev_loop *loop = mq_runtime_loop(open_runtime(L));
  int got = 0;
  ev_signal sigint, sigterm;
  ev_signal_init(&sigint, signalled, SIGINT);
  ev_signal_init(&sigterm, signalled, SIGTERM);
  sigint.data = sigterm.data = &got;
  ev_signal_start(loop, &sigint);
  ev_signal_start(loop, &sigterm);
  int status = LUA_OK;
  bool done = false;
  while (!got && !done) {
    ev_run(loop, EVRUN_ONCE);
    if (has_done && !got) {
      lua_pushvalue(L, 1);
      if ((status = lua_pcall(L, 0, 1, 0)) != LUA_OK)
        break;
      done = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
  }
  ev_signal_stop(loop, &sigint);
  ev_signal_stop(loop, &sigterm);
  if (status != LUA_OK)
    return lua_error(L);
  if (!got)
    lua_pushnil(L);
  else
    lua_pushstring(L, got == SIGINT ? "SIGINT" : "SIGTERM");
  return 1;
}

/* moonq.is_open() -> boolean */
static int l_is_open(lua_State *L) {
  lua_pushboolean(L, mq_lua_runtime(L) != NULL);
  return 1;
}

/* moonq.config() -> table of the effective settings that scripts need. */
static int l_config(lua_State *L) {
  const struct mq_config *cfg = mq_runtime_config(open_runtime(L));
  lua_createtable(L, 0, 4);
  lua_pushstring(L, cfg->schema);
  lua_setfield(L, -2, "schema");
  lua_pushstring(L, cfg->handlers);
  lua_setfield(L, -2, "handlers");
  lua_pushstring(L, cfg->base_dir);
  lua_setfield(L, -2, "base_dir");
  lua_pushinteger(L, cfg->workers);
  lua_setfield(L, -2, "workers");
  return 1;
}

/* A sleep in progress; freed when it fires or is cancelled. */
struct sleeper {
  ev_timer timer;
  struct ev_loop *loop;
  struct mq_lua_wait *wait;
};

static void sleep_fired(struct ev_loop *loop, ev_timer *t, int revents) {
  struct sleeper *s = t->data;
  struct mq_lua_wait *w = s->wait;
  free(s);
  mq_lua_wait_finish(w, NULL, NULL);
}

static void sleep_cancelled(void *arg) {
  struct sleeper *s = arg;
  struct mq_lua_wait *w = s->wait;
  ev_timer_stop(s->loop, &s->timer);
  free(s);
  mq_lua_wait_finish(w, NULL, NULL);
}

/* Pushes clock `id` as seconds (a float, nanoseconds kept to what a double
 * holds: microseconds for wall-clock times). */
static int push_clock(lua_State *L, clockid_t id) {
  struct timespec ts;
  if (clock_gettime(id, &ts) != 0)
    return luaL_error(L, "clock_gettime failed");
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* moonq.now() -> wall-clock time, Unix seconds as a float (µs precision):
 * the time to store or compare with PostgreSQL's. It may jump when the
 * clock is set. */
static int l_now(lua_State *L) { return push_clock(L, CLOCK_REALTIME); }

/* moonq.monotonic() -> seconds since an arbitrary start, as a float; never
 * goes back: the clock for measuring how long something took. */
static int l_monotonic(lua_State *L) { return push_clock(L, CLOCK_MONOTONIC); }

/* moonq.sleep(seconds): in a job it yields (other jobs run meanwhile); in a
 * script it runs the loop for that long. */
static int l_sleep(lua_State *L) {
  lua_Number seconds = luaL_checknumber(L, 1);
  luaL_argcheck(L, seconds >= 0 && seconds < 1e9, 1, "expected seconds >= 0");
  struct ev_loop *loop = mq_runtime_loop(open_runtime(L));
  struct mq_lua_wait *w = mq_lua_wait_new(L, loop);
  struct sleeper *s = malloc(sizeof *s);
  if (!s) {
    mq_lua_wait_free(w);
    return luaL_error(L, "not enough memory");
  }
  s->loop = loop;
  s->wait = w;
  ev_timer_init(&s->timer, sleep_fired, (ev_tstamp)seconds, 0.);
  s->timer.data = s;
  ev_timer_start(loop, &s->timer);
  mq_lua_wait_on_cancel(w, sleep_cancelled, s);
  return mq_lua_wait(L, w);
}

static const luaL_Reg moonq_funcs[] = {
    {"sleep", l_sleep},
    {"now", l_now},
    {"monotonic", l_monotonic},
    {"start", l_start},
    {"stop", l_stop},
    {"run_until", l_run_until},
    {"run_until_signal", l_run_until_signal},
    {"open", l_open},
    {"close", l_close},
    {"is_open", l_is_open},
    {"config", l_config},
    {NULL, NULL}};

static const struct {
  const char *field;
  const char *module;
} submodules[] = {{"json", "moonq.json"}, {"log", "moonq.log"}, {"db", "moonq.db"},
                  {"queue", "moonq.queue"}, {"events", "moonq.events"},
                  {"flow", "moonq.flow"}};

void mq_bindings_preload(lua_State *L) {
  static const luaL_Reg preload[] = {{"moonq.json", luaopen_moonq_json},
                                     {"moonq.log", luaopen_moonq_log},
                                     {"moonq.db", luaopen_moonq_db},
                                     {"moonq.queue", luaopen_moonq_queue},
                                     {"moonq.events", luaopen_moonq_events},
                                     {"moonq.worker", luaopen_moonq_worker},
                                     {"moonq.schedule", luaopen_moonq_schedule},
                                     {NULL, NULL}};
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *r = preload; r->name; r++) {
    lua_pushcfunction(L, r->func);
    lua_setfield(L, -2, r->name);
  }
  lua_pushcfunction(L, mq_luaopen_moonq);
  lua_setfield(L, -2, "moonq");
  lua_pop(L, 1);
}

int mq_luaopen_moonq(lua_State *L) {
  mq_bindings_preload(L);
  if (luaL_newmetatable(L, RUNTIME_MT)) {
    lua_pushcfunction(L, box_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, box_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, moonq_funcs);
  lua_pushliteral(L, MOONQ_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_pushlightuserdata(L, (void *)&mq_lua_host_yield);
  lua_setfield(L, -2, "_host_yield");
  if (lua_getfield(L, LUA_REGISTRYINDEX, MQ_LUA_RESUMING_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L); /* [moonq resuming] */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, MQ_LUA_RESUMING_KEY);
  }
  lua_setfield(L, -2, "_resuming");
  mq_json_push_array_mt(L);
  lua_setfield(L, -2, "array_mt");
  for (size_t i = 0; i < sizeof submodules / sizeof submodules[0]; i++) {
    lua_getglobal(L, "require"); /* [moonq, require] */
    lua_pushstring(L, submodules[i].module);
    lua_call(L, 1, 1); /* [moonq, submodule] */
    lua_setfield(L, -2, submodules[i].field);
  }
  /* moonq.schedule(), moonq.unschedule(), moonq.schedules() */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.schedule");
  lua_call(L, 1, 1); /* [moonq, schedule module] */
  for (lua_pushnil(L); lua_next(L, -2);) { /* [moonq, module, key, fn] */
    lua_pushvalue(L, -2);
    lua_insert(L, -2);   /* [moonq, module, key, key, fn] */
    lua_settable(L, -5); /* [moonq, module, key] */
  }
  lua_pop(L, 1);
  return 1;
}
