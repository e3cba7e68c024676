/* runtime.h -- one moonq process: its loop, config, Lua state and the
 * subsystems it owns.
 *
 * The runtime owns its subsystems as handles and is the only place that
 * wires them together. `moonq run`, each prefork child, the CLI's queue
 * commands and the `moonq` Lua module (scripts, busted specs) all go
 * through the same calls:
 *
 *   mq_runtime_new        config (and the Lua state it serves)
 *   mq_runtime_prepare_db resolve the database, apply migrations
 *   mq_runtime_open       pool, queue, scheduler, events, schedules
 *   mq_runtime_start_worker   handlers and the worker (jobs run); config
 *                         schedules stored, schedules fired
 *   mq_runtime_start_http the HTTP server (config `http`), when listen
 *                         is set
 *   mq_runtime_serve      open + worker + maintenance + HTTP + the loop
 *                         until a signal; with `workers > 1` a supervisor
 *                         forks children that each serve (the first one
 *                         serves HTTP)
 *   mq_runtime_serve_http `moonq web`: open + HTTP + the loop
 *   mq_runtime_close      the stop sequence, then free
 *
 * The stop sequence, the same from a signal, moonq.close() or a script
 * that forgot to close: (1) the HTTP server stops accepting (requests
 * being answered go on, event streams end), the worker stops fetching
 * and running jobs get
 * shutdown_grace seconds (a second signal or a close without stop ends the
 * grace at once: running jobs go back to the queue) and schedules stop
 * firing; (2) the queue flushes
 * its batched completions and unregisters the process, the scheduler's
 * timers and the event store's reads stop (batched appends are sent); (3)
 * in-flight requests (HTTP ones included) get up to 10 s to complete; (4) the
 * pool closes, failing what is left, every callback still finding its
 * handle alive; (5) the handles are freed, in reverse order of opening.
 * No step is skipped.
 *
 * Uses: config, log, pg, migrate, queue, scheduler, events, schedules,
 * task, worker, supervisor, http, http_api, http_metrics, http_counts,
 * lua_host, bindings (to preload the Lua modules in its own Lua state).
 */
#ifndef MQ_RUNTIME_H
#define MQ_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <lua.h>

#include "config.h"
#include "events.h"
#include "metrics.h"
#include "pg.h"
#include "queue.h"
#include "scheduler.h"
#include "schedules.h"
#include "task.h"

typedef struct mq_runtime mq_runtime;

/* Makes a runtime that takes ownership of cfg. loop NULL: a private loop
 * (freed with the runtime). L: the Lua state it serves (its main thread is
 * used; not owned), or NULL to make one of its own when needed (with the
 * moonq modules preloaded; owned). Returns NULL when out of memory (cfg
 * freed). */
mq_runtime *mq_runtime_new(struct ev_loop *loop, struct mq_config *cfg,
                           lua_State *L);

/* Resolves the database (config `database`, DATABASE_URL, or the private
 * cluster) and applies migrations, blocking (before the loop runs).
 * `wait_for_db`: keep retrying with backoff while the database is
 * unreachable (moonq run) instead of failing at once. Returns 0, or -1
 * with a message in err. */
int mq_runtime_prepare_db(mq_runtime *rt, bool wait_for_db, char *err,
                          size_t errlen);

/* Opens the pool, the queue (registering this process and storing
 * config.lua's settings of queues that have no row yet: it runs the loop
 * until they are stored), the scheduler, the event store and the
 * schedules (their API; they fire from start_worker on). Idempotent.
 * Returns 0 or -1 with err. */
int mq_runtime_open(mq_runtime *rt, char *err, size_t errlen);

/* Stores config.lua's queue settings (all of them: this process runs
 * handlers) and its schedules, starts firing schedules (in a prefork
 * group only the first child fires: the database would refuse the
 * others' fires of a slot anyway), loads the handlers and starts the
 * worker, whose handler files then store their retry options (rt open).
 * Returns 0, or -1 with err (a schedule the database refuses, the
 * handlers directory is unreadable, already started). */
int mq_runtime_start_worker(mq_runtime *rt, char *err, size_t errlen);

/* Starts the HTTP server on config http.listen serving the JSON API (rt
 * open). No-op without http.listen or when started. Returns 0, or -1 with
 * err (the address cannot be bound). */
int mq_runtime_start_http(mq_runtime *rt, char *err, size_t errlen);

/* Stops firing schedules and stops the worker, running the loop until its
 * jobs finished (within shutdown_grace) and their results are stored,
 * then frees it. No-op without a worker. */
void mq_runtime_stop_worker(mq_runtime *rt);

/* `moonq run`: prepares the database (waiting for it), then with
 * `workers > 1` runs a supervisor whose children each open, start the
 * worker and maintenance and run the loop; otherwise does that itself.
 * Returns the exit code. Errors are printed to stderr. */
int mq_runtime_serve(mq_runtime *rt);

/* `moonq web`: prepares the database (waiting for it), opens and serves
 * HTTP only (no handlers, no maintenance) in this process until a signal.
 * Returns the exit code; errors are printed to stderr. */
int mq_runtime_serve_http(mq_runtime *rt);

/* Asks a runtime running its loop (serve) to stop: starts the stop
 * sequence; the loop returns when it is done. */
void mq_runtime_stop(mq_runtime *rt, int exit_code);

/* Runs the stop sequence (if it has not run) and frees the runtime and
 * everything it owns. NULL-safe. */
void mq_runtime_close(mq_runtime *rt);

/* Accessors. Each handle is valid from open until close; NULL before. */
struct ev_loop *mq_runtime_loop(const mq_runtime *rt);
const struct mq_config *mq_runtime_config(const mq_runtime *rt);
lua_State *mq_runtime_lua(mq_runtime *rt); /* made on first use if owned */
mq_pg *mq_runtime_pg(const mq_runtime *rt);
mq_queue *mq_runtime_queue(const mq_runtime *rt);
mq_scheduler *mq_runtime_scheduler(const mq_runtime *rt);
mq_events *mq_runtime_events(const mq_runtime *rt); /* NULL: disabled */
mq_schedules *mq_runtime_schedules(const mq_runtime *rt);
/* The task scheduler for Lua coroutines (handlers, subscribers), made with
 * the Lua state on first use; NULL when out of memory. */
mq_tasks *mq_runtime_tasks(mq_runtime *rt);
bool mq_runtime_has_worker(const mq_runtime *rt);
mq_metrics *mq_runtime_metrics(const mq_runtime *rt); /* job counters */
/* The NOTIFY channel jobs wake workers on: "<schema>_wake". */
const char *mq_runtime_channel(const mq_runtime *rt);

/* Starts the private PostgreSQL under `dir` (scripts/pg.sh) and returns its
 * connection string, malloc'd; NULL with err on failure. */
char *mq_runtime_local_db(const char *dir, char *err, size_t errlen);

#endif
