/* lua_host.c -- the process's Lua state; see lua_host.h. */
#include "lua_host.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_bindings/bindings.h"
#include "runtime.h"

static const char runtime_key = 'r';
static struct mq_lua_task *current_task;

/* The address is the marker value (a light userdata) of a host yield. */
const char mq_lua_host_yield = 'y';

void mq_lua_set_current(struct mq_lua_task *task) { current_task = task; }

void mq_lua_set_runtime(lua_State *L, struct mq_runtime *rt) {
  lua_pushlightuserdata(L, (void *)&runtime_key);
  if (rt)
    lua_pushlightuserdata(L, rt);
  else
    lua_pushnil(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

struct mq_runtime *mq_lua_runtime(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&runtime_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  struct mq_runtime *rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int mq_lua_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status == LUA_ERRMEM) {
    lua_pop(L, 1);
    lua_pushliteral(L, "not enough memory");
  }
  return status;
}

/* Prepends dir/?.lua;dir/?/init.lua to package.path. */
static void add_path(lua_State *L, const char *dir) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

lua_State *mq_lua_new(struct mq_runtime *rt, const char *base_dir) {
  lua_State *L = luaL_newstate();
  if (!L)
    return NULL;
  luaL_openlibs(L);
  add_path(L, MOONQ_SOURCE_DIR "/lua");
  if (base_dir && strcmp(base_dir, MOONQ_SOURCE_DIR) != 0) {
    lua_pushfstring(L, "%s/lua", base_dir);
    add_path(L, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  mq_bindings_preload(L);
  mq_lua_set_runtime(L, rt);
  return L;
}

struct mq_lua_wait {
  struct mq_runtime *rt;
  lua_State *L;             /* the calling thread */
  lua_State *main;          /* the state's main thread */
  struct mq_lua_task *task; /* set when the caller yielded */
  void (*on_cancel)(void *arg);
  void *cancel_arg;
  int nresults;
  bool done;
  bool cancelled;
};

void mq_lua_set_task(lua_State *co, struct mq_lua_task *task) {
  *(struct mq_lua_task **)lua_getextraspace(co) = task;
}

struct mq_lua_task *mq_lua_get_task(lua_State *co) {
  return *(struct mq_lua_task **)lua_getextraspace(co);
}

struct mq_lua_wait *mq_lua_wait_new(lua_State *L, struct mq_runtime *rt) {
  struct mq_lua_wait *w = calloc(1, sizeof *w);
  if (!w)
    luaL_error(L, "not enough memory");
  w->rt = rt;
  w->L = L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  w->main = lua_tothread(L, -1);
  lua_pop(L, 1);
  return w;
}

int mq_lua_wait_k(lua_State *L, struct mq_lua_wait *w, lua_KFunction k) {
  int top = lua_gettop(L);
  struct mq_lua_task *task = mq_lua_get_task(L);
  bool nested = false;
  if (!task && current_task && lua_isyieldable(L)) {
    task = current_task; /* a handler's own coroutine inside a job */
    nested = true;
  }
  if (task && lua_isyieldable(L) && !w->done) {
    w->task = task;
    task->wait = w;
    /* Resumed with the results as arguments (passed down by the handler
     * environment's coroutine.resume when nested). */
    if (nested)
      lua_pushlightuserdata(L, (void *)&mq_lua_host_yield);
    return lua_yieldk(L, nested ? 1 : 0, (lua_KContext)top, k);
  }
  while (!w->done)
    ev_run(w->rt->loop, EVRUN_ONCE);
  int n = w->nresults;
  free(w);
  return k ? k(L, LUA_OK, (lua_KContext)top) : n;
}

int mq_lua_wait(lua_State *L, struct mq_lua_wait *w) {
  return mq_lua_wait_k(L, w, NULL);
}

lua_State *mq_lua_wait_state(struct mq_lua_wait *w) {
  if (w->cancelled)
    return NULL;
  return w->task ? w->main : w->L;
}

void mq_lua_wait_done(struct mq_lua_wait *w, int nresults) {
  if (w->cancelled) {
    free(w);
    return;
  }
  w->nresults = nresults;
  w->done = true;
  struct mq_lua_task *task = w->task;
  if (!task)
    return; /* the blocking caller picks the results up and frees w */
  lua_xmove(w->main, task->co, nresults);
  task->wait = NULL;
  free(w);
  task->ready(task, nresults);
}

void mq_lua_wait_on_cancel(struct mq_lua_wait *w, void (*fn)(void *arg),
                           void *arg) {
  w->on_cancel = fn;
  w->cancel_arg = arg;
}

void mq_lua_wait_cancel(struct mq_lua_wait *w) {
  w->cancelled = true;
  if (w->task)
    w->task->wait = NULL;
  w->task = NULL;
  if (w->on_cancel) {
    void (*fn)(void *) = w->on_cancel;
    w->on_cancel = NULL;
    fn(w->cancel_arg); /* may complete the wait, which then frees it */
  }
}
