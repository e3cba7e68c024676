/* worker.h -- runs handlers for jobs: consumers, slots, dispatch.
 *
 * A worker holds the handler files of the config's `handlers` directory
 * (handlers.h) and runs one consumer per queue they name: fetch as many
 * jobs as there are free slots (the queue's concurrency; with `prefetch`,
 * claim some ahead), start each as a task (task.h), then complete the job
 * with what the handler returned or fail it with what it raised. Idle
 * consumers wake on NOTIFY, on the poll interval and when the queue's next
 * delayed job is due (scheduler.h).
 *
 * Hot reload re-scans the directory every 0.5 s; running jobs finish with
 * the code they started with. Stopping stops fetching, returns jobs
 * claimed ahead, lets running jobs finish for shutdown_grace seconds and
 * returns the rest to the queue (their attempt does not count).
 *
 * mq_worker_run_once runs one job through a handler the same way (the
 * handler files loaded alike, a task with the same timeout, the same ctx)
 * without fetching or storing anything: moonq.testing's t.run.
 *
 * Uses: runtime (loop, config, pool, queue, scheduler, Lua state),
 * handlers, task, lua_host, json, log.
 */
#ifndef MQ_WORKER_H
#define MQ_WORKER_H

#include <stdbool.h>
#include <stddef.h>

struct mq_runtime;
struct mq_job;
typedef struct mq_worker mq_worker;

/* What one attempt of a job came to: what the worker stores. */
struct mq_worker_outcome {
  bool failed;
  char message[1024]; /* failed: the error's message */
  char *error;        /* failed: {message, traceback, ...} as JSON, or NULL */
  char *output;       /* the handler's first result as JSON; NULL: none */
  char *effects;      /* {"events", "jobs", "state"} of its ctx (ctx.emit,
                         ctx.enqueue, ctx.state) as JSON; NULL: none */
};

/* Called once with the outcome (valid until it returns). */
typedef void (*mq_worker_once_cb)(const struct mq_worker_outcome *out,
                                  void *data);

/* Loads the handlers of rt's config (rt must be open). A file that fails
 * to load is logged and skipped; returns NULL with err only when the
 * handlers directory cannot be read or memory runs out. */
mq_worker *mq_worker_new(struct mq_runtime *rt, char *err, size_t errlen);

/* True when a handler of job `name` is loaded. */
bool mq_worker_handles(const mq_worker *w, const char *name);

/* Starts the consumers, the NOTIFY subscription and the reload watcher,
 * and stores the handlers' retry settings as their queues' settings. */
int mq_worker_start(mq_worker *w);

/* Stops fetching; calls done(arg) once no job runs and no request of the
 * worker is in flight (running jobs get shutdown_grace seconds, then go
 * back to the queue). Calling it again only replaces done. */
void mq_worker_stop(mq_worker *w, void (*done)(void *arg), void *arg);

/* While stopping: ends the grace period now (a second SIGINT, a close
 * without stop); running jobs go back to the queue. */
void mq_worker_hurry(mq_worker *w);

/* Re-reads every handler file now (SIGHUP). */
void mq_worker_reload(mq_worker *w);

/* Runs `job` once through the handler of job->name among the files of
 * `dir`, loaded as a worker loads them, in a task with the handler's
 * timeout (or the queue's; `timeout` > 0 overrides both). The ctx is what
 * the function at registry reference `new_ctx_ref` returns for the job
 * (the worker uses moonq.ctx.new). Nothing is fetched or stored: cb gets
 * the outcome, on a later loop turn (rt's loop must run). Job fields left
 * unset take the handler's values: queue NULL is the handler's queue,
 * retry_limit < 0 and expire_in < 0 its queue's settings. Returns 0, or
 * -1 with err (dir unreadable, no such handler or the file's load error)
 * and cb is never called. The handler files stay loaded until cb returns:
 * rt must not run a worker meanwhile, whose flow steps they would share. */
int mq_worker_run_once(struct mq_runtime *rt, const char *dir,
                       const struct mq_job *job, double timeout,
                       int new_ctx_ref, mq_worker_once_cb cb, void *data,
                       char *err, size_t errlen);

/* Frees the worker. It must be stopped (done called) or the pool closed,
 * so that no callback can reach it. NULL-safe. */
void mq_worker_close(mq_worker *w);

#endif
