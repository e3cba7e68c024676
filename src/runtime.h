/* runtime.h -- one moonq process: its loop, config, database and Lua state.
 *
 * The runtime wires the subsystems together. The `moonq` executable makes
 * one with the default libev loop and a Lua state of its own; the `moonq`
 * Lua module (scripts, busted specs) makes one inside the caller's Lua state
 * with a private loop that its calls drive until their result is ready.
 *
 * Start-up resolves the database (config `database`, DATABASE_URL, or the
 * private cluster under <config dir>/.moonq started on demand), applies
 * migrations, then opens the connection pool.
 *
 * Uses: config, log, pg, migrate, queue, worker.
 */
#ifndef MQ_RUNTIME_H
#define MQ_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <lua.h>

#include "config.h"
#include "pg.h"
#include "queue.h"

struct mq_runtime {
  struct ev_loop *loop;
  bool own_loop;
  struct mq_config *cfg; /* owned */
  char *conninfo;        /* the database actually used */
  mq_pg *pg;
  mq_queue *queue;
  struct mq_worker *worker; /* when this process runs handlers */
  lua_State *L;          /* the Lua state the runtime serves (not owned) */
  bool stopping;
  int exit_code;
  ev_signal sigint, sigterm, sighup;
  ev_timer drain;          /* polls for idle while stopping */
  ev_tstamp stop_deadline; /* when stopping gives up waiting */
  char notify_channel[80]; /* "<schema>_wake": the jobs' NOTIFY channel */
};

/* Makes a runtime that takes ownership of cfg. loop NULL: a private loop
 * (freed with the runtime). Returns NULL when out of memory (cfg freed). */
struct mq_runtime *mq_runtime_new(struct ev_loop *loop, struct mq_config *cfg,
                                  lua_State *L);

/* Resolves the database and applies migrations (blocking: before the loop
 * runs). `wait_for_db`: keep retrying with backoff while the database is
 * unreachable (moonq run) instead of failing at once. Returns 0, or -1 with
 * a message in err. */
int mq_runtime_prepare_db(struct mq_runtime *rt, bool wait_for_db, char *err,
                          size_t errlen);

/* Opens the connection pool and the queue, registers this process and
 * stores config.lua's queue settings (it runs the loop until they are
 * stored). Returns 0 or -1 with err. */
int mq_runtime_open(struct mq_runtime *rt, char *err, size_t errlen);

/* Runs the loop until mq_runtime_stop() or SIGINT/SIGTERM. Returns the
 * process exit code. */
int mq_runtime_run(struct mq_runtime *rt);

/* Asks the loop to finish: stops the worker (running jobs get
 * shutdown_grace seconds), waits for in-flight database work, then returns
 * from mq_runtime_run(). */
void mq_runtime_stop(struct mq_runtime *rt, int exit_code);

/* Closes the pool and frees everything the runtime owns. NULL-safe. */
void mq_runtime_free(struct mq_runtime *rt);

/* Starts the private PostgreSQL under `dir` (scripts/pg.sh) and returns its
 * connection string, malloc'd; NULL with err on failure. */
char *mq_runtime_local_db(const char *dir, char *err, size_t errlen);

#endif
