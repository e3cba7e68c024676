/* lua_host.c -- calling into Lua, and waits; see lua_host.h. */
#include "lua_host.h"

#include <assert.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json.h"
#include "queue.h"

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

/* ---- memory ------------------------------------------------------------ */

#define TRIM_GROWTH (16u << 20) /* bytes of growth that make a trim worth it */

/* The allocator's state: bytes held by Lua now, after the last trim and
 * at most since, and the limit. */
struct memory {
  size_t used, base, peak, limit;
  bool reached; /* an allocation was refused for the limit */
};

/* lua_Alloc over malloc: frees and shrinks always succeed; growth that
 * would take `used` past `limit` fails. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  struct memory *m = ud;
  size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
  if (nsize == 0) {
    free(ptr);
    m->used -= old;
    return NULL;
  }
  if (nsize > old && m->limit && m->used - old + nsize > m->limit) {
    m->reached = true;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (!p)
    return NULL;
  m->used = m->used - old + nsize;
  if (m->used > m->peak)
    m->peak = m->used;
  return p;
}

/* The allocator state of L, or NULL when L was not made here. */
static struct memory *memory_of(lua_State *L) {
  void *ud = NULL;
  return lua_getallocf(L, &ud) == limited_alloc ? ud : NULL;
}

static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "moonq: unprotected error in Lua: %s\n",
          msg ? msg : "(not a string)");
  return 0; /* Lua aborts */
}

lua_State *mq_lua_newstate(size_t limit_bytes) {
  struct memory *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  m->limit = limit_bytes;
  lua_State *L = lua_newstate(limited_alloc, m);
  if (!L) {
    free(m);
    return NULL;
  }
  lua_atpanic(L, panic);
  return L;
}

void mq_lua_close(lua_State *L) {
  struct memory *m = memory_of(L);
  lua_close(L);
  free(m);
}

size_t mq_lua_memory_limit(lua_State *L) {
  struct memory *m = memory_of(L);
  return m ? m->limit : 0;
}

bool mq_lua_memory_reached(lua_State *L) {
  struct memory *m = memory_of(L);
  bool reached = m && m->reached;
  if (m)
    m->reached = false;
  return reached;
}

bool mq_lua_memory_trim(lua_State *L, size_t c_bytes) {
  struct memory *m = memory_of(L);
  if (!m || m->peak - m->base + c_bytes < TRIM_GROWTH)
    return false;
  lua_gc(L, LUA_GCCOLLECT);
  malloc_trim(0);
  m->base = m->peak = m->used;
  return true;
}

/* ---- protected calls ---------------------------------------------------- */

/* The message handler: the error with a traceback of where it was raised. */
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
  /* For LUA_ERRMEM Lua skips the handler; the value on top is its
   * preallocated "not enough memory" string. */
  return status;
}

int mq_lua_protect(lua_State *L, lua_CFunction fn, void *arg, int nresults) {
  if (!lua_checkstack(L, 3)) /* never raises, unlike a push beyond the stack */
    return LUA_ERRMEM;
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, arg);
  return mq_lua_pcall(L, 1, nresults);
}

void mq_lua_push_job(lua_State *L, const struct mq_job *j) {
  lua_createtable(L, 0, 9);
  lua_pushinteger(L, j->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, j->name);
  lua_setfield(L, -2, "name");
  lua_pushstring(L, j->queue);
  lua_setfield(L, -2, "queue");
  char err[256];
  if (mq_json_decode(L, j->data, strlen(j->data), err, sizeof err) == 0) {
    lua_setfield(L, -2, "data");
  } else if (strstr(err, "out of memory")) { /* now, not the data's fault */
    if (mq_lua_memory_reached(L))
      luaL_error(L, "memory limit of %d MB reached (reading the job's data)",
                 (int)(mq_lua_memory_limit(L) >> 20));
    luaL_error(L, "not enough memory to read the job's data");
  } else { /* stored before such data was refused at send */
    lua_pushfstring(L, "job data cannot be read in Lua: %s", err);
    lua_setfield(L, -2, "data_error");
  }
  lua_pushinteger(L, j->attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushinteger(L, j->priority);
  lua_setfield(L, -2, "priority");
  lua_pushinteger(L, j->retry_limit);
  lua_setfield(L, -2, "retry_limit");
  lua_pushnumber(L, j->expire_in);
  lua_setfield(L, -2, "expire_in");
  if (j->run_id) {
    lua_pushstring(L, j->run_id);
    lua_setfield(L, -2, "run_id");
  }
}

/* ---- waits ---------------------------------------------------------------- */

struct mq_lua_wait {
  struct ev_loop *loop;
  lua_State *L;             /* the calling thread */
  lua_State *main;          /* the state's main thread */
  struct mq_lua_task *task; /* set when the caller yielded */
  void (*on_cancel)(void *arg);
  void *cancel_arg;
  int nresults;
  bool done;
  bool cancelled;
};

/* True when Lua runs inside a task: the task's own coroutine, or a coroutine
 * the handler made while the task runs. Code runs in a task only while the
 * scheduler resumes it, so the current task tells. */
static bool in_task(void) { return current_task != NULL; }

void mq_lua_check_blocking(lua_State *L, const char *what) {
  if (in_task())
    luaL_error(L, "%s cannot be called from a handler (the loop is already "
               "running)", what);
}

/* True when coroutine L is being resumed by the handler environment's
 * coroutine.resume (lua/moonq/handler.lua), which passes a wait's yield up
 * to the task; a plain coroutine.resume would take it for the
 * coroutine's own yield. */
static bool resumed_by_handler(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, MQ_LUA_RESUMING_KEY);
  lua_pushthread(L);
  lua_rawget(L, -2);
  bool yes = lua_tointeger(L, -1) > 0;
  lua_pop(L, 2);
  return yes;
}

struct mq_lua_wait *mq_lua_wait_new(lua_State *L, struct ev_loop *loop) {
  /* Running the loop from here would resume other tasks, and fire this
   * task's own timeout, while its coroutine is still on the C stack. */
  if (in_task() && !lua_isyieldable(L))
    luaL_error(L, "cannot wait here: called from a C function or metamethod "
               "(such as a table.sort comparator, a string.gsub callback or "
               "__index); call it directly from the handler");
  if (in_task() && current_task->co != L && !resumed_by_handler(L))
    luaL_error(L, "cannot wait here: inside a coroutine resumed by code that "
               "does not pass moonq's waits on (a library's own coroutine."
               "wrap?); call it from the handler or its own coroutines");
  struct mq_lua_wait *w = calloc(1, sizeof *w);
  if (!w)
    luaL_error(L, "not enough memory");
  w->loop = loop;
  w->L = L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  w->main = lua_tothread(L, -1);
  lua_pop(L, 1);
  return w;
}

void mq_lua_wait_free(struct mq_lua_wait *w) { free(w); }

int mq_lua_wait_k(lua_State *L, struct mq_lua_wait *w, lua_KFunction k) {
  int top = lua_gettop(L);
  struct mq_lua_task *task = current_task;
  /* nested: a coroutine the handler made, inside the task */
  bool nested = task && task->co != L;
  if (task && !w->done) {
    assert(lua_isyieldable(L)); /* checked by mq_lua_wait_new */
    w->task = task;
    task->wait = w;
    /* Resumed with the results as arguments (passed down by the handler
     * environment's coroutine.resume when nested). */
    if (nested)
      lua_pushlightuserdata(L, (void *)&mq_lua_host_yield);
    return lua_yieldk(L, nested ? 1 : 0, (lua_KContext)top, k);
  }
  while (!w->done)
    ev_run(w->loop, EVRUN_ONCE);
  int n = w->nresults;
  free(w);
  return k ? k(L, LUA_OK, (lua_KContext)top) : n;
}

int mq_lua_wait(lua_State *L, struct mq_lua_wait *w) {
  return mq_lua_wait_k(L, w, NULL);
}

void mq_lua_wait_finish(struct mq_lua_wait *w, lua_CFunction push, void *arg) {
  if (w->cancelled) {
    free(w);
    return;
  }
  lua_State *L = w->task ? w->main : w->L;
  int top = lua_gettop(L);
  if (push && mq_lua_protect(L, push, arg, LUA_MULTRET) != LUA_OK) {
    if (lua_gettop(L) == top) /* the stack could not grow */
      lua_pushliteral(L, "not enough memory");
    lua_pushnil(L);
    lua_insert(L, -2); /* [nil message] */
  }
  int n = lua_gettop(L) - top;
  w->nresults = n;
  w->done = true;
  struct mq_lua_task *task = w->task;
  if (!task)
    return; /* the blocked caller picks the results up and frees w */
  if (!lua_checkstack(task->co, n)) {
    lua_settop(L, top);
    n = 0;
  }
  lua_xmove(L, task->co, n);
  task->wait = NULL;
  free(w);
  task->ready(task, n);
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
    fn(w->cancel_arg); /* may finish the wait, which then frees it */
  }
}
