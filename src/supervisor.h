/* supervisor.h -- `workers = N`: one supervisor and N worker processes.
 *
 * The supervisor forks N children that each build their own loop, Lua state
 * and connections and run handlers. A child that dies is restarted after a
 * backoff (1 s doubling to 30 s; reset once a child has lived a minute).
 * SIGTERM/SIGINT are forwarded for a graceful stop and the supervisor exits
 * 0 once every child has; children still alive shutdown_grace + 10 s later
 * are killed. SIGHUP is forwarded (children reload their handlers).
 *
 * Uses: log.
 */
#ifndef MQ_SUPERVISOR_H
#define MQ_SUPERVISOR_H

#include <ev.h>

/* Runs the supervisor on loop (the default loop) until every child has
 * stopped; returns the exit code. child_main(arg, index, loop) runs in
 * each child with a fresh default loop (the supervisor's watchers gone)
 * and returns that child's exit code. Children still running
 * shutdown_grace + 10 s after a stop signal are killed. */
int mq_supervisor_run(struct ev_loop *loop, int workers, double shutdown_grace,
                      int (*child_main)(void *arg, int index,
                                        struct ev_loop *loop),
                      void *arg);

#endif
