/* heartbeat.h -- the process's heartbeat, on a thread of its own.
 *
 * Maintenance declares a process dead when its row in the process table
 * has not been touched for stale_after seconds, and runs its jobs again.
 * The heartbeat must therefore not wait for the event loop: a handler may
 * hold the CPU (Lua code between two waits) for up to its timeout. So a
 * thread with its own blocking connection moves the heartbeat forward
 * every `interval` seconds while the process is live:
 *
 *  - its loop turned within stale_after seconds (a timer of the loop
 *    stamps each turn), or
 *  - a handler holds the loop (mq_heartbeat_busy_until: task.c sets it
 *    around each resume to the task's deadline) and that deadline is less
 *    than stale_after seconds past: the timeout's count hook stops Lua
 *    code at the deadline, so a loop still stuck after that is wedged (C
 *    code that never returns) and its jobs should be recovered.
 *
 * A heartbeat that fails (the database restarts) is logged once and tried
 * again at the next interval on a new connection.
 *
 * Uses: log.
 */
#ifndef MQ_HEARTBEAT_H
#define MQ_HEARTBEAT_H

#include <stddef.h>

#include <ev.h>

typedef struct mq_heartbeat mq_heartbeat;

struct mq_heartbeat_options {
  const char *conninfo;   /* libpq conninfo or URI, already checked (copied) */
  const char *schema;     /* [a-z0-9_] (copied) */
  const char *process_id; /* uuid text of the process row (copied) */
  const char *host;       /* host name stored with it (copied) */
  double stale_after;     /* seconds; beats every stale_after / 6 (>= 0.5) */
};

/* Starts the thread (and the loop timer that stamps loop turns) for the
 * process registered as o->process_id. Returns NULL with a message in err
 * when the thread cannot be made. */
mq_heartbeat *mq_heartbeat_start(struct ev_loop *loop,
                                 const struct mq_heartbeat_options *o,
                                 char *err, size_t errlen);

/* Stops the thread (waiting for a beat in progress, at most about 10 s)
 * and frees the handle; no beat follows. NULL-safe. */
void mq_heartbeat_stop(mq_heartbeat *hb);

/* Process-wide: Lua code holds the loop until `deadline` (ev_time()
 * seconds) at most; 0: it gave the loop back. Safe from any thread. */
void mq_heartbeat_busy_until(double deadline);

#endif
