/* lua_host.h -- the rules for calling into Lua from C, and for Lua calls
 * that wait.
 *
 * Provides the one protected-call path (mq_lua_pcall and mq_lua_protect:
 * every entry into Lua from a libev or libpq callback goes through them, so
 * no Lua error, out of memory included, unwinds through C frames), the
 * runtime a Lua state serves, the job table handlers see, and the wait used
 * by moonq's asynchronous calls.
 *
 * Waiting: a binding makes a wait, starts an operation whose completion
 * calls mq_lua_wait_finish(), and returns mq_lua_wait(). Inside a task (a
 * job's coroutine, see task.h) the call yields and the task is resumed with
 * the results; anywhere else (a script, a busted spec) it drives the loop
 * until the results are there. A call made inside a task where the
 * coroutine cannot yield (a table.sort comparator, a string.gsub callback,
 * a metamethod) raises "cannot wait here" instead of running the loop
 * nested.
 *
 * Uses: queue (the job shape), json.
 */
#ifndef MQ_LUA_HOST_H
#define MQ_LUA_HOST_H

#include <stdbool.h>

#include <ev.h>
#include <lua.h>

struct mq_runtime;
struct mq_job;

/* Binds L (any thread of the state) to rt; rt NULL unbinds. The moonq
 * modules find their runtime there. */
void mq_lua_set_runtime(lua_State *L, struct mq_runtime *rt);
struct mq_runtime *mq_lua_runtime(lua_State *L);

/* A Lua state whose allocator keeps the memory it holds under
 * `limit_bytes` (0: no limit): an allocation that would cross it fails,
 * which Lua raises as an out-of-memory error (LUA_ERRMEM, "not enough
 * memory") in the code that asked. Returns NULL when out of memory. Close
 * it with mq_lua_close(). */
lua_State *mq_lua_newstate(size_t limit_bytes);

/* Closes a state made by mq_lua_newstate() (or any other: lua_close). */
void mq_lua_close(lua_State *L);

/* The memory limit of L in bytes (0: none). */
size_t mq_lua_memory_limit(lua_State *L);

/* True when the allocator of L refused an allocation for the limit since
 * the last call (which clears it): an out-of-memory error raised since
 * then is the limit's. */
bool mq_lua_memory_reached(lua_State *L);

/* After a job: when L's memory grew by more than 16 MiB over what it held
 * after the last trim, counting c_bytes that the C side allocated for jobs
 * meanwhile (big results encoded and stored), a full garbage collection,
 * then the C allocator gives free memory back to the system (malloc_trim),
 * so a big job does not leave the process big. Returns whether it trimmed.
 * Call it outside any Lua call. */
bool mq_lua_memory_trim(lua_State *L, size_t c_bytes);

/* lua_pcall with a traceback handler. On error the message (traceback
 * included; "not enough memory" for LUA_ERRMEM) is on top of the stack;
 * returns the Lua status. */
int mq_lua_pcall(lua_State *L, int nargs, int nresults);

/* Calls fn protected with `arg` as its only argument (a light userdata),
 * keeping nresults results (LUA_MULTRET: all). Returns the Lua status; on
 * error the message is on top, as with mq_lua_pcall(). The way C code that
 * creates Lua values from a callback reaches Lua. */
int mq_lua_protect(lua_State *L, lua_CFunction fn, void *arg, int nresults);

/* Pushes a fetched job as handlers see it: id, name, queue, data
 * (decoded), attempt, priority, retry_limit, expire_in, run_id. Data that
 * Lua cannot represent (a number beyond a double's range, nesting deeper
 * than 128) leaves data nil and sets data_error to a message naming the
 * problem. Raises on out of memory: call it from a protected function. */
void mq_lua_push_job(lua_State *L, const struct mq_job *job);

/* A coroutine the runtime schedules (a task). task.c owns it; lua_host
 * only needs to know how to hand it results. */
struct mq_lua_task {
  lua_State *co;             /* the coroutine */
  struct mq_lua_wait *wait;  /* what it waits for, or NULL */
  /* Called when the wait completed with n results already moved onto co:
   * the scheduler resumes co later (never from inside this call). */
  void (*ready)(struct mq_lua_task *task, int nresults);
};

/* The task whose coroutine runs now (set by the scheduler around each
 * resume), or NULL. A moonq call from a coroutine the handler made itself
 * yields a marker (moonq._host_yield) that the handler environment's
 * coroutine.resume passes up to the task, so it reaches the scheduler. */
void mq_lua_set_current(struct mq_lua_task *task);
extern const char mq_lua_host_yield;

/* Registry field: a weak-keyed table, coroutine -> how many of the handler
 * environment's coroutine.resume calls are resuming it now. A wait from a
 * coroutine not in it would yield to code that does not pass it on, so it
 * raises instead. */
#define MQ_LUA_RESUMING_KEY "moonq.resuming"

/* Raises unless L may run the event loop itself: inside a task the loop
 * is already running (a handler calling moonq.run_until, moonq.stop...).
 * `what` names the call in the message. */
void mq_lua_check_blocking(lua_State *L, const char *what);

/* An asynchronous operation a Lua caller waits for. */
struct mq_lua_wait;

/* Allocates a wait for the calling thread L on `loop`. Raises (before
 * anything is started, so nothing leaks) when L is inside a task but
 * cannot yield, and on out of memory. Call it before allocating anything
 * the operation needs. */
struct mq_lua_wait *mq_lua_wait_new(lua_State *L, struct ev_loop *loop);

/* Frees a wait whose operation could not be started. */
void mq_lua_wait_free(struct mq_lua_wait *w);

/* Yields or blocks until finished; returns the number of results for the
 * calling lua_CFunction to return. */
int mq_lua_wait(lua_State *L, struct mq_lua_wait *w);

/* Like mq_lua_wait() with a continuation that post-processes the results:
 * k(L, status, top) runs with the results above stack index `top` (the top
 * when the wait began) and returns what the C function returns; it runs
 * after a yield and after blocking alike. */
int mq_lua_wait_k(lua_State *L, struct mq_lua_wait *w, lua_KFunction k);

/* Completes the wait from the operation's callback: push(L) runs protected
 * with `arg` as a light userdata and returns how many results it pushed
 * (push NULL: no results). If it raises, the caller gets nil and the
 * message. When the waiter is gone (its task was cancelled) push is not
 * called. Frees w (or hands it to the blocked caller, who frees it). */
void mq_lua_wait_finish(struct mq_lua_wait *w, lua_CFunction push, void *arg);

/* Called (once) if the waiting task is cancelled, e.g. by its timeout,
 * before the operation completes: stop a timer, forget a request. */
void mq_lua_wait_on_cancel(struct mq_lua_wait *w, void (*fn)(void *arg),
                           void *arg);

/* Cancels the wait of a task that is being abandoned: runs its cancel
 * hook; a completion arriving later pushes nothing and frees the wait. */
void mq_lua_wait_cancel(struct mq_lua_wait *w);

#endif
