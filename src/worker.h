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
 * Uses: runtime (loop, config, pool, queue, scheduler, Lua state),
 * handlers, task, lua_host, json, log.
 */
#ifndef MQ_WORKER_H
#define MQ_WORKER_H

#include <stddef.h>

struct mq_runtime;
typedef struct mq_worker mq_worker;

/* Loads the handlers of rt's config (rt must be open). A file that fails
 * to load is logged and skipped; returns NULL with err only when the
 * handlers directory cannot be read or memory runs out. */
mq_worker *mq_worker_new(struct mq_runtime *rt, char *err, size_t errlen);

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

/* Frees the worker. It must be stopped (done called) or the pool closed,
 * so that no callback can reach it. NULL-safe. */
void mq_worker_close(mq_worker *w);

#endif
