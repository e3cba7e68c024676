/* task.h -- handler code running in coroutines, and its deadlines.
 *
 * A task is one attempt of a job: the handler function running in a
 * coroutine of its own. An mq_tasks scheduler resumes tasks: a task runs
 * until it finishes or yields (waiting for the database, a sleep...); when
 * its wait completes it goes on the ready list, which the scheduler empties
 * from an ev_check watcher of the lowest priority (after every other
 * callback of the loop turn) and an ev_idle watcher (so a non-empty list
 * never waits for I/O). No task is ever resumed from inside a completion.
 *
 * Deadlines: a timer ends a task that is waiting in a yield (its wait is
 * cancelled) and a count hook raises in a task stuck in Lua code; the hook
 * keeps raising on every instruction, so a pcall in the handler cannot
 * swallow the timeout.
 *
 * Uses: lua_host, heartbeat (tells it how long a resume may hold the
 * loop), log.
 */
#ifndef MQ_TASK_H
#define MQ_TASK_H

#include <stddef.h>

#include <ev.h>
#include <lua.h>

typedef struct mq_tasks mq_tasks;
typedef struct mq_task mq_task;

enum mq_task_end {
  MQ_TASK_RETURNED,  /* the function returned; its results are on the thread */
  MQ_TASK_RAISED,    /* it raised; the error value is on top of the thread */
  MQ_TASK_TIMED_OUT  /* its timeout passed; nothing on the thread */
};

/* Called once when a task ends, with the number of results (RETURNED).
 * mq_task_thread() is valid during the call; the task is freed when the
 * callback returns. The callback may start other tasks. */
typedef void (*mq_task_end_cb)(mq_task *task, enum mq_task_end how,
                               int nresults, void *data);

/* A scheduler for tasks of Lua state L (its main thread) on loop. Returns
 * NULL when out of memory. */
mq_tasks *mq_tasks_new(struct ev_loop *loop, lua_State *L);

/* Abandons every task left (no end callbacks) and frees the scheduler. */
void mq_tasks_close(mq_tasks *ts);

/* Starts a task. push(L) runs protected on the main thread with `arg` as a
 * light userdata and pushes the function and then its arguments; they move
 * to a new coroutine that first runs on the next drain (never inside this
 * call). `timeout` is in seconds. Returns the task, or NULL with a message
 * in err when push raised or memory ran out (cb is then never called). */
mq_task *mq_task_start(mq_tasks *ts, lua_CFunction push, void *arg,
                       double timeout, mq_task_end_cb cb, void *data,
                       char *err, size_t errlen);

/* The task's coroutine. */
lua_State *mq_task_thread(const mq_task *task);

/* The timeout the task was started with, in seconds. */
double mq_task_timeout(const mq_task *task);

/* Ends a task that has not ended: cancels its wait and frees it without
 * resuming it again. Its end callback is not called. */
void mq_task_abandon(mq_task *task);

#endif
