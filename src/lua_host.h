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

/* A coroutine the runtime schedules (a job). The worker owns it; lua_host
 * only needs to know how to hand it results. */
struct mq_lua_task {
  lua_State *co;             /* the coroutine */
  struct mq_lua_wait *wait;  /* what it waits for, or NULL */
  /* Called when the wait completed with n results already moved onto co:
   * the scheduler resumes co later (never from inside this call). */
  void (*ready)(struct mq_lua_task *task, int nresults);
};

/* The task whose coroutine runs now (set by the scheduler around each
 * resume). A moonq call from a coroutine the handler made itself yields a
 * marker (moonq._host_yield) that the handler environment's
 * coroutine.resume passes up to the task, so it reaches the scheduler. */
void mq_lua_set_current(struct mq_lua_task *task);
extern const char mq_lua_host_yield;

/* Marks co as a runtime-managed task (NULL: a plain thread). */
void mq_lua_set_task(lua_State *co, struct mq_lua_task *task);
struct mq_lua_task *mq_lua_get_task(lua_State *co);

/* An asynchronous operation a Lua caller waits for.
 *
 * A binding makes one with mq_lua_wait_new(), starts the operation with the
 * wait as its callback data, and returns mq_lua_wait(L, w). The completion
 * asks mq_lua_wait_state(w) where to push its results (NULL: the waiter is
 * gone, push nothing), pushes them and calls mq_lua_wait_done(w, n).
 *
 * In a task (a job's coroutine) the call yields and the task is resumed
 * with the results; anywhere else (a script, a busted spec) it drives the
 * loop until the results are there. */
struct mq_lua_wait;

/* Allocates a wait for the calling thread L; raises on out of memory. */
struct mq_lua_wait *mq_lua_wait_new(lua_State *L, struct mq_runtime *rt);

/* Yields or blocks until done; returns the number of results for the
 * calling lua_CFunction to return. */
int mq_lua_wait(lua_State *L, struct mq_lua_wait *w);

/* Like mq_lua_wait() with a continuation that post-processes the results:
 * k(L, status, top) runs with the results above stack index `top` (the top
 * when the wait began) and returns what the C function returns; it runs
 * after a yield and after blocking alike. */
int mq_lua_wait_k(lua_State *L, struct mq_lua_wait *w, lua_KFunction k);

lua_State *mq_lua_wait_state(struct mq_lua_wait *w);
void mq_lua_wait_done(struct mq_lua_wait *w, int nresults);

/* Called (once) if the waiting task is cancelled, e.g. by its timeout,
 * before the operation completes: stop a timer, forget a request. */
void mq_lua_wait_on_cancel(struct mq_lua_wait *w, void (*fn)(void *arg),
                           void *arg);

/* Cancels the wait of a task that is being abandoned: runs its cancel
 * hook; a completion arriving later pushes nothing and frees the wait. */
void mq_lua_wait_cancel(struct mq_lua_wait *w);

#endif
