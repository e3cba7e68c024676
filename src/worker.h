/* worker.h -- runs Lua handlers for jobs: one coroutine per job.
 *
 * A worker loads every handlers/<path>.lua (job name: the path with '/'
 * turned into '.', without .lua), each into its own environment, and runs
 * one consumer per queue its handlers name: fetch as many jobs as there are
 * free slots (the queue's concurrency), start each in its own coroutine,
 * complete or fail it from what the handler returned or raised. Idle
 * consumers wake on NOTIFY, on the poll interval and when the next delayed
 * job is due.
 *
 * Timeouts stop a handler waiting in a yield (its wait is cancelled) and a
 * handler stuck in Lua code (a count hook checks the deadline). Changed,
 * added or deleted handler files take effect within a second (hot_reload);
 * running jobs finish with the code they started with. Stopping stops
 * fetching, lets running jobs finish for shutdown_grace seconds and
 * returns the rest to the queue.
 *
 * Uses: runtime, queue, lua_host, json, log.
 */
#ifndef MQ_WORKER_H
#define MQ_WORKER_H

#include <stdbool.h>
#include <stddef.h>

struct mq_runtime;
typedef struct mq_worker mq_worker;

/* Loads the handlers of rt's config (rt must be open). A file that fails
 * to load is logged and skipped; returns NULL with err only when the
 * handlers directory cannot be read or memory runs out. */
mq_worker *mq_worker_new(struct mq_runtime *rt, char *err, size_t errlen);

/* Starts the consumers, the NOTIFY subscription and the reload watcher. */
int mq_worker_start(mq_worker *w);

/* Stops fetching; calls done(arg) once no job runs any more (at most
 * shutdown_grace seconds later, the remaining jobs returned to the queue). */
void mq_worker_stop(mq_worker *w, void (*done)(void *arg), void *arg);

/* Re-reads every handler file now (SIGHUP). */
void mq_worker_reload(mq_worker *w);

/* Jobs running now. */
int mq_worker_running(const mq_worker *w);

/* Frees the worker; running jobs are abandoned (call stop first). */
void mq_worker_free(mq_worker *w);

#endif
