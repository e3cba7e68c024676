/* http_counts.h -- the queues' job counts for the HTTP routes, read at
 * most about once a second whatever the number of callers.
 *
 * Exact counts read every job row of a queue (sql/002 counts()), and a
 * dashboard, /api/queues and /metrics each asked again for every call. A
 * mq_http_counts keeps the last read's rows and hands them to every
 * caller while they are less than MQ_HTTP_COUNTS_MAX_AGE seconds old; an
 * older or missing read is made once for all the callers that wait for
 * it. A change made through this server (send, pause, purge...) marks the
 * rows stale: the next caller waits for a read begun after it, so a client
 * sees its own change at once; changes made elsewhere (workers finishing
 * jobs, other processes) show within MQ_HTTP_COUNTS_MAX_AGE seconds.
 *
 * The rows are those of /metrics' gauges, ordered by (family, queue,
 * state): family 1 (queue, state, jobs) for every state of every queue,
 * family 2 (queue, NULL, 1 when paused else 0), family 3 (NULL, NULL, the
 * events' id sequence).
 *
 * Uses: pg.
 */
#ifndef MQ_HTTP_COUNTS_H
#define MQ_HTTP_COUNTS_H

#include <ev.h>
#include <libpq-fe.h>

#include "pg.h"

#define MQ_HTTP_COUNTS_MAX_AGE 1.0 /* seconds */

typedef struct mq_http_counts mq_http_counts;

/* The rows (valid until the callback returns) and their age in seconds
 * (from when their read began), or error (rows NULL). */
typedef void (*mq_http_counts_cb)(const PGresult *rows, double age,
                                  const char *error, void *data);

/* For the schema's queues on pg; pg must outlive it. NULL when out of
 * memory or the statement cannot be prepared. */
mq_http_counts *mq_http_counts_new(struct ev_loop *loop, mq_pg *pg,
                                   const char *schema);

/* Calls cb with rows no older than MQ_HTTP_COUNTS_MAX_AGE: at once when
 * it has them, else when the read they wait for completes (one read for
 * all). cb is called exactly once. */
void mq_http_counts_get(mq_http_counts *c, mq_http_counts_cb cb, void *data);

/* A change of jobs or queues was made: the next caller waits for a read
 * begun after it. */
void mq_http_counts_changed(mq_http_counts *c);

/* Frees it. No read may be in flight (close the pool first). NULL-safe. */
void mq_http_counts_close(mq_http_counts *c);

#endif
