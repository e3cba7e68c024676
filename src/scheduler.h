/* scheduler.h -- things that happen at a time: delayed jobs becoming due.
 *
 * A worker whose queue ran dry, or whose job was just put back for a
 * retry, asks the scheduler to wake it when the queue's next delayed job is
 * due: the scheduler asks the database (queue.h, MQ_QUEUE_NEXT_DUE, one
 * statement for the queues asked about in one loop turn) and arms one
 * timer per queue. NOTIFY covers jobs that are ready at once; this
 * covers jobs whose start_after lies ahead, without polling for them.
 *
 * Uses: queue, buf, log.
 */
#ifndef MQ_SCHEDULER_H
#define MQ_SCHEDULER_H

#include <ev.h>

#include "queue.h"

typedef struct mq_scheduler mq_scheduler;

/* Called when a delayed job of `queue` is due. */
typedef void (*mq_scheduler_wake_cb)(const char *queue, void *data);

/* Makes the scheduler; q must outlive it. Returns NULL when out of
 * memory. */
mq_scheduler *mq_scheduler_new(struct ev_loop *loop, mq_queue *q);

/* Looks up when the next delayed job of `queue` is due and calls
 * wake(queue, data) then, once. The look-up goes out at the end of the
 * loop turn, with those of the other queues asked about meanwhile, in one
 * statement. A later call for the same queue replaces the earlier one
 * (each answer sets the time). Returns 0, or a negative status when the
 * scheduler is stopped or out of memory (wake is never called). */
int mq_scheduler_wake_when_due(mq_scheduler *s, const char *queue,
                               mq_scheduler_wake_cb wake, void *data);

/* Forgets every wake-up that calls `wake` with `data` (a worker that
 * stops): timers stop and answers still in flight are ignored. */
void mq_scheduler_cancel(mq_scheduler *s, mq_scheduler_wake_cb wake,
                         void *data);

/* Stops every timer; answers arriving later are ignored. */
void mq_scheduler_stop(mq_scheduler *s);

/* Frees the scheduler. Every request it made must have completed (the
 * runtime closes the pool first, which completes them). NULL-safe. */
void mq_scheduler_close(mq_scheduler *s);

#endif
