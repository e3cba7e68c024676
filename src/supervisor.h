/* supervisor.h -- `workers = N`: one supervisor and N worker processes.
 *
 * The supervisor forks N children that each build their own loop, Lua state
 * and connections and run handlers. A child that dies is restarted after a
 * backoff (1 s doubling to 30 s; reset once a child has lived a minute).
 * SIGTERM/SIGINT are forwarded for a graceful stop and the supervisor exits
 * 0 once every child has; children still alive shutdown_grace + 10 s later
 * are killed. SIGHUP is forwarded (children reload their handlers).
 *
 * Uses: runtime, log.
 */
#ifndef MQ_SUPERVISOR_H
#define MQ_SUPERVISOR_H

struct mq_runtime;

/* Runs the supervisor on rt (its database prepared, its pool not opened)
 * until every child has stopped; returns the exit code. child_main(rt,
 * index) runs in each child with a fresh default loop and returns that
 * child's exit code. */
int mq_supervisor_run(struct mq_runtime *rt,
                      int (*child_main)(struct mq_runtime *rt, int index));

#endif
