/* handlers.h -- the handler files of a directory, loaded and kept current.
 *
 * Every handlers/<path>.lua is a job: its name is the path with '/' turned
 * into '.' and without ".lua" (billing/charge.lua handles billing.charge).
 * Each file loads into its own environment (lua/moonq/handler.lua) and
 * returns a function or a table that is checked there; what it declares is
 * read once into a struct mq_handler. A file that fails to load is logged
 * with its error and, if an earlier version loaded, that version stays.
 * Scanning again picks up changed, added and deleted files; an editor may
 * still be writing a file changed in the last 100 ms, so it waits a scan.
 * Watching scans when the kernel reports a change (inotify), so an idle
 * process does no work for its handler files.
 *
 * Uses: dirwatch, lua_host, log.
 */
#ifndef MQ_HANDLERS_H
#define MQ_HANDLERS_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <lua.h>

#include "queue.h"

typedef struct mq_handlers mq_handlers;

/* What one handler file declares. Strings are owned by the mq_handlers and
 * valid until the next scan or free. */
struct mq_handler {
  const char *name;  /* the job name */
  const char *file;  /* the file's path */
  const char *queue; /* the queue its jobs are fetched from; default name */
  int concurrency;   /* jobs of the queue at once per process; 0: not set */
  double timeout;    /* seconds; 0: not set (the queue's timeout applies) */
  bool has_retry;    /* the file sets `retry`: retry holds only its keys */
  struct mq_queue_settings retry;
  int fn_ref;        /* registry reference of the handler function */
};

/* Loads every handler file under `dir` into L. Returns NULL with a message
 * in err when dir is not a readable directory or memory runs out (files
 * that fail to load are logged, not errors). */
mq_handlers *mq_handlers_new(lua_State *L, const char *dir, char *err,
                             size_t errlen);

/* Loads new and changed files and forgets deleted ones; force reloads every
 * file (SIGHUP). Returns how many handlers were loaded or removed. */
int mq_handlers_scan(mq_handlers *h, bool force);

/* Watches the directory on loop (hot reload): a file changed, added,
 * removed or renamed into place, a subdirectory added or removed, or the
 * directory itself replaced (renamed into place, a symlink on its path
 * swapped) leads to a scan about 0.15 s later (a file changed in its last
 * 0.1 s waits for another); on_change(data) is called after a scan that
 * loaded or removed handlers, from the loop. Without change notification
 * (no inotify instance left, the system's watch limit reached) a warning
 * is logged once and the directory is scanned every 0.5 s. Watching keeps
 * no loop running. Scans at once and returns as mq_handlers_scan() (the
 * callback is not called for that scan). */
int mq_handlers_watch(mq_handlers *h, struct ev_loop *loop,
                      void (*on_change)(void *data), void *data);

/* Stops watching; no callback after it. Safe when not watching. */
void mq_handlers_unwatch(mq_handlers *h);

/* The handler of job `name`, or NULL. Valid until the next scan. */
const struct mq_handler *mq_handlers_find(const mq_handlers *h,
                                          const char *name);

/* Handlers in load order: i from 0 to mq_handlers_count() - 1. */
size_t mq_handlers_count(const mq_handlers *h);
const struct mq_handler *mq_handlers_at(const mq_handlers *h, size_t i);

/* Why the file of job `name` failed to load the last time it was read
 * (its previous version, if any, may still be loaded), or NULL when it
 * loaded or there is no such file. Valid until the next scan or free. */
const char *mq_handlers_error(const mq_handlers *h, const char *name);

/* Writes `no handler for job "name" (known: a, b)` into out. */
void mq_handlers_missing(const mq_handlers *h, const char *name, char *out,
                         size_t len);

/* Stops watching, unloads every handler and frees h. NULL-safe. */
void mq_handlers_free(mq_handlers *h);

#endif
