/* lua_host.h -- the process's Lua state and the rules for calling into it.
 *
 * Provides the Lua state of the executable (standard libraries, lua/ on
 * package.path, the moonq modules preloaded), the protected-call helper that
 * every entry into Lua goes through (traceback attached, memory errors told
 * apart), the runtime a Lua state serves, and the wait used by moonq's
 * asynchronous calls.
 *
 * Waiting: a binding starts an operation whose completion callback pushes
 * its results on the waiting thread and marks it done. Outside a
 * runtime-managed coroutine (a script, a busted spec) mq_lua_wait() drives
 * the loop until then; the calls simply return their results.
 *
 * Uses: runtime, log, bindings.
 */
#ifndef MQ_LUA_HOST_H
#define MQ_LUA_HOST_H

#include <stdbool.h>

#include <lua.h>

struct mq_runtime;

/* A Lua state for the executable: libraries opened, package.path starting
 * with <base_dir>/lua and the source tree's lua/, moonq modules preloaded,
 * bound to rt. Returns NULL when out of memory. */
lua_State *mq_lua_new(struct mq_runtime *rt, const char *base_dir);

/* Binds L to rt (rt NULL unbinds); the moonq modules find it there. */
void mq_lua_set_runtime(lua_State *L, struct mq_runtime *rt);
struct mq_runtime *mq_lua_runtime(lua_State *L);

/* lua_pcall with a traceback handler. On error the message (with
 * traceback) is on top of the stack; returns the Lua status. */
int mq_lua_pcall(lua_State *L, int nargs, int nresults);

/* An asynchronous operation a Lua caller waits for. */
struct mq_lua_wait {
  lua_State *L; /* the waiting thread: completion pushes results here */
  int nresults; /* set by the completion */
  bool done;
};

/* Waits for w (see above) and returns the number of results now on top of
 * L's stack, for a lua_CFunction to return. */
int mq_lua_wait(lua_State *L, struct mq_runtime *rt, struct mq_lua_wait *w);

#endif
