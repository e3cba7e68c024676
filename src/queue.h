/* queue.h -- the job queue on PostgreSQL.
 *
 * Provides send, fetch, complete and fail for the workers, and inspection and
 * control for users (get, list, counts, pause, resume, cancel, retry,
 * purge) and queue settings, all asynchronous on an mq_pg pool. The SQL
 * lives in sql/002_queue.sql and the migrations after it, as functions of
 * the configured schema, so a job sent with `SELECT moonq.send(...)` from
 * an application behaves exactly like one sent from Lua. Data, options and
 * results cross this API as JSON text; see docs/queue.md for every option
 * and state.
 *
 * Completions and failures made during one loop turn are flushed together
 * from an ev_prepare watcher: one statement per batch.
 *
 * A queue handle also registers this process (a random id in the process
 * table; the runtime's heartbeat thread, heartbeat.h, keeps it fresh) and
 * runs a maintenance pass every few seconds (expiry, crash recovery,
 * retention);
 * PostgreSQL advisory locks make one process in the cluster do each pass.
 *
 * Uses: pg, config, json, buf, log.
 */
#ifndef MQ_QUEUE_H
#define MQ_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "config.h"
#include "pg.h"

typedef struct mq_queue mq_queue;

enum mq_queue_status {
  MQ_QUEUE_OK = 0,
  MQ_QUEUE_EREFUSED = 1,   /* send: the singleton key is taken */
  MQ_QUEUE_ENOTACTIVE = 2, /* complete/fail: the job is no longer active */
  MQ_QUEUE_EINVAL = -1,    /* bad input; the message names it */
  MQ_QUEUE_EDB = -2        /* the database failed; the message says why */
};

/* A fetched job. Strings are valid until the fetch callback returns. */
struct mq_job {
  long long id;
  const char *name;
  const char *queue;
  const char *data;   /* JSON text */
  const char *run_id; /* NULL when none */
  int attempt;        /* 1 for the first run */
  int priority;
  int retry_limit;
  double expire_in;
  double waited;      /* seconds from its send to this fetch */
  double claim_took;  /* seconds PostgreSQL spent on the fetch's statement
                         (the same for every job of one fetch) */
};

/* Result callbacks. `error` is NULL unless status < 0 (and for the refused
 * singleton); strings are valid until the callback returns. */
typedef void (*mq_queue_id_cb)(int status, const char *error, long long id,
                               void *data);
typedef void (*mq_queue_json_cb)(int status, const char *error,
                                 const char *json, void *data);
typedef void (*mq_queue_fetch_cb)(int status, const char *error,
                                  const struct mq_job *jobs, int njobs,
                                  void *data);

/* Makes the queue API for cfg's schema on pg. Registers this process and
 * starts heartbeat and maintenance timers on loop. cfg and pg must outlive
 * the handle. Returns NULL when out of memory. */
mq_queue *mq_queue_new(struct ev_loop *loop, mq_pg *pg,
                       const struct mq_config *cfg);

/* Starts the periodic maintenance pass (moonq run does; scripts call
 * MQ_QUEUE_MAINTAIN when they want one). */
void mq_queue_start_maintenance(mq_queue *q);

/* Flushes pending batched completions and failures, stops the timers and
 * unregisters the process (its active jobs are then recovered by
 * maintenance). The handle stays usable until closed; idempotent. */
void mq_queue_stop(mq_queue *q);

/* Stops (if not yet) and frees the handle. Every request it made must have
 * completed: close the pool first (which completes them). NULL-safe. */
void mq_queue_close(mq_queue *q);

/* True when no completion or failure is waiting to be flushed. */
bool mq_queue_flushed(const mq_queue *q);

/* Batches of completions or failures gathering or in flight (0: every
 * result given to this handle is stored or has failed). */
int mq_queue_storing(const mq_queue *q);

/* The process id (uuid text) this handle registered, and the host name
 * registered with it. */
const char *mq_queue_process_id(const mq_queue *q);
const char *mq_queue_host(const mq_queue *q);

/* Checks and sends one job. data_json NULL means {}; opts_json NULL means
 * {}. cb gets the id, or MQ_QUEUE_EREFUSED with id 0 when the singleton key
 * is taken. Errors in the arguments that can be seen here (payload larger
 * than max_payload, options not an object) are returned as
 * MQ_QUEUE_EINVAL with a message in err, and cb is not called. */
int mq_queue_send(mq_queue *q, const char *name, const char *data_json,
                  const char *opts_json, mq_queue_id_cb cb, void *data,
                  char *err, size_t errlen);

/* Sends one job per element of the JSON array list_json in one statement.
 * cb gets a JSON array of the new ids, in input order. */
int mq_queue_send_many(mq_queue *q, const char *name, const char *list_json,
                       const char *opts_json, mq_queue_json_cb cb, void *data,
                       char *err, size_t errlen);

/* A place in a queue's claim order: priority descending, then id. */
struct mq_queue_position {
  int priority;
  long long id;
};

/* Claims up to n runnable jobs of `queue` for this process, in claim
 * order. after NULL: from the head of the queue; else only jobs past
 * *after and jobs of a higher priority, so the claim does not walk the
 * index entries of jobs claimed before it (sql/023_fetch_after.sql): a job
 * that became runnable behind *after is left to a claim from the head. */
int mq_queue_fetch(mq_queue *q, const char *queue, int n,
                   const struct mq_queue_position *after,
                   mq_queue_fetch_cb cb, void *data);

/* One queue's part of mq_queue_fetch_many. */
struct mq_queue_fetch_spec {
  const char *queue;
  int n;                                /* jobs at most, >= 1 */
  const struct mq_queue_position *after; /* as mq_queue_fetch's; NULL: the
                                            head */
};

/* specs[i]'s jobs are jobs[first .. first + counts[i]), first the sum of
 * the counts before it; on failure jobs and counts are NULL. Valid until
 * the callback returns. */
typedef void (*mq_queue_fetch_many_cb)(int status, const char *error,
                                       const struct mq_job *jobs,
                                       const int *counts, int nspecs,
                                       void *data);

/* mq_queue_fetch for each of specs[0..nspecs) in one statement
 * (sql/027_fetch_many.sql fetch_jobs_many; for one spec, mq_queue_fetch's
 * statement): each queue's jobs in claim order, claim_took the time spent
 * choosing that queue's jobs. Each queue named once. specs is read before
 * the call returns. Returns MQ_QUEUE_EINVAL (a spec without a queue or
 * with n < 1, or no spec) or MQ_QUEUE_EDB (out of memory, the pool
 * closed), and cb is then not called. */
int mq_queue_fetch_many(mq_queue *q, const struct mq_queue_fetch_spec *specs,
                        int nspecs, mq_queue_fetch_many_cb cb, void *data);

/* Completes an active job with output_json (NULL: no output). Batched with
 * the other completions of this loop turn, up to 1 MiB of outputs and
 * effects a statement (a larger output goes alone) and 1 MiB in flight;
 * failures are batched the same way. cb (may be NULL) gets
 * MQ_QUEUE_OK, MQ_QUEUE_ENOTACTIVE, or an error. */
int mq_queue_complete(mq_queue *q, long long id, const char *output_json,
                      mq_queue_json_cb cb, void *data);

/* Like mq_queue_complete, for attempt `attempt` of the job only (0: any;
 * an attempt that ran past its expiry while the job was started again is
 * ENOTACTIVE, not the new attempt's completion), storing what the handler
 * emitted and enqueued in
 * the same transaction: effects_json is {"events": [{stream, type, data}],
 * "jobs": [{name, data, options}]} (either may be missing; a stream NULL is
 * "job:<name>:<id>"), checked by the caller, or NULL. A job that is no
 * longer active stores none of it; a job whose enqueues PostgreSQL refuses
 * fails with that error instead of completing (cb gets ENOTACTIVE). */
int mq_queue_complete_with(mq_queue *q, long long id, int attempt,
                           const char *output_json, const char *effects_json,
                           mq_queue_json_cb cb, void *data);

/* Called once per queue that a batch of completions with effects sent
 * jobs to (successor steps of a flow, ctx.enqueue), with how many it sent
 * there, after they committed, before the completions' callbacks: true
 * when the callee fetches them all itself (the worker does when it
 * consumes the queue and has room: no wake-up's round trip). Otherwise
 * (or with no callback) the queue is woken for every process, as a send's
 * queue is. `queue` is valid during the call. A completion whose reply a
 * lost connection took wakes nothing: the queues' polls find its jobs. */
typedef bool (*mq_queue_sent_cb)(const char *queue, long long jobs,
                                 void *data);

/* Sets the callback for queues that completions sent jobs to (NULL: none,
 * every such queue is woken). */
void mq_queue_on_sent(mq_queue *q, mq_queue_sent_cb cb, void *data);

/* Fails an active job with error_json ({"message":..., ...}); its retry
 * policy decides what follows. Batched like completions. cb gets JSON
 * {"state":"retry"|"failed","start_after":...}, or ENOTACTIVE. */
int mq_queue_fail(mq_queue *q, long long id, const char *error_json,
                  mq_queue_json_cb cb, void *data);

/* mq_queue_fail for attempt `attempt` of the job only (0: any), as
 * mq_queue_complete_with. */
int mq_queue_fail_attempt(mq_queue *q, long long id, int attempt,
                          const char *error_json, mq_queue_json_cb cb,
                          void *data);

/* Inspection and control; each cb gets a JSON result. Statements safe to
 * run twice (reads, pause, resume, release, reclaim, maintenance, and the
 * batched completions and failures above) are sent again after a lost
 * connection; send, fetch, cancel, retry and purge fail with the pool's
 * "may or may not have run" error instead. Batched completions and
 * failures also outlast the pool's queue_timeout: they wait for the
 * database as long as the pool is open. */
enum mq_queue_op {
  MQ_QUEUE_GET,       /* a1 = id            -> job object or null */
  MQ_QUEUE_LIST,      /* a1 = queue, a2 = state or NULL, a3 = limit,
                         a4 = after id or NULL, a5 = "newest"|"oldest"
                                            -> array of jobs */
  MQ_QUEUE_COUNTS,    /* a1 = queue         -> {waiting, delayed, ...} */
  MQ_QUEUE_PAUSE,     /* a1 = queue         -> true */
  MQ_QUEUE_RESUME,    /* a1 = queue         -> true */
  MQ_QUEUE_IS_PAUSED, /* a1 = queue         -> true|false */
  MQ_QUEUE_CANCEL,    /* a1 = id            -> true|false (found) */
  MQ_QUEUE_RETRY,     /* a1 = id            -> true|false (found) */
  MQ_QUEUE_PURGE,     /* a1 = queue, a2 = state or NULL -> count */
  MQ_QUEUE_MAINTAIN,  /* -> {recovered, expired, deleted, ...} or null */
  MQ_QUEUE_NEXT_DUE,  /* a1 = text[] literal of queue names -> array of,
                         for each in order, the seconds until its next
                         delayed job is due, or null */
  MQ_QUEUE_RELEASE,   /* a1 = "{id,id,...}" -> count: this process's active
                         jobs go back to waiting, attempt not counted */
  MQ_QUEUE_RECLAIM,   /* a1 = "{id,id,...}" -> count: every active job of
                         this process NOT in a1 goes back to waiting,
                         attempt not counted (claims whose fetch reply a
                         lost connection took) */
  MQ_QUEUE_READY,     /* a1 = text[] literal of queue names -> array of the
                         1-based positions of those with a job to run now
                         (one cheap statement for many idle queues) */
  MQ_QUEUE_QUEUES     /* -> [{name, paused, counts}] of every queue with a
                         row or jobs, by name (sql/016_queues.sql) */
};

int mq_queue_call(mq_queue *q, enum mq_queue_op op, const char *const args[5],
                  mq_queue_json_cb cb, void *data);

/* Settings of one queue, as its row of the queue table holds them (the row
 * named "" holds the defaults of every queue). A field counts only when its
 * has_ flag is set; the stored value of every other field is kept, and a
 * new row leaves it unset, so the "" row's value or the built-in default
 * applies (see queue_defaults in sql/002_queue.sql). Times are seconds. */
struct mq_queue_settings {
  bool has_retry_limit, has_retry_delay, has_retry_backoff,
      has_retry_delay_max, has_expire_in, has_retention, has_dead_letter;
  int retry_limit;        /* retries after the first attempt, >= 0 */
  double retry_delay;     /* before a retry (the first, with backoff), >= 0 */
  bool retry_backoff;     /* the delay doubles per retry, with jitter */
  double retry_delay_max; /* cap of the backoff, >= 0; a negative value
                             stores null: unset (one day when no row sets
                             it) */
  double expire_in;       /* an active job older than this is retried, > 0 */
  double retention;       /* finished jobs are kept this long, >= 0 */
  const char *dead_letter; /* queue that receives finally failed jobs; NULL
                              stores null: unset (none when no row sets it).
                              Borrowed: read before the call returns. */
};

/* Stores the settings of queue `queue` ("" for the defaults of every queue),
 * merging: the fields not set in s and the paused flag keep their stored
 * values. cb (may be NULL) gets "true" or the error. A failure is also
 * logged. Returns MQ_QUEUE_EINVAL when s cannot be encoded (a number that
 * is not finite, a dead_letter that is not UTF-8), MQ_QUEUE_EDB when out of
 * memory or the pool is closed, with a message in err (unless errlen is 0);
 * cb is then not called. */
int mq_queue_store_settings(mq_queue *q, const char *queue,
                            const struct mq_queue_settings *s,
                            mq_queue_json_cb cb, void *data, char *err,
                            size_t errlen);

/* Stores the flows of this process's handlers (lua/moonq/flows.lua
 * to_store(): {"flows": [...], "dropped": [names]}), replacing the steps of
 * each flow named and removing the dropped flows (sql/021_store_flows.sql
 * store_flows). A failure is logged. Returns 0 or a negative status. */
int mq_queue_store_flows(mq_queue *q, const char *flows_json);

/* Stores which queue each handler of this process consumes,
 * handlers_json a JSON object {"<job name>": "<queue>", ...}
 * (sql/013 store_handler_queues). Jobs of a name whose handler consumed
 * another queue before, waiting, delayed or retrying there, move to its
 * queue now (and at every maintenance pass after), so a handler that
 * changes its queue leaves no job behind. Moves are logged, a failure
 * too. Returns 0 or a negative status. */
int mq_queue_store_handler_queues(mq_queue *q, const char *handlers_json);

/* Stores config.lua's settings (`queue` as the "" row, each `queues.<name>`
 * merged with it as that queue's row), every field set, so config.lua is
 * what holds until handlers store their retry options, and
 * events.job_events (on only where events.enabled is too) as the schema's
 * job events switch. only_new: only for queues without a row yet, and the
 * switch only while it is unset (a process that runs no handlers must not
 * undo what a running worker stored). cb (may be NULL) gets "true" or the
 * first error once everything is stored. */
int mq_queue_configure(mq_queue *q, bool only_new, mq_queue_json_cb cb,
                       void *data);

#endif
