/* http_metrics.h -- GET /metrics: the Prometheus text format
 * (docs/metrics.md).
 *
 * Two kinds of figures. Read from the database and cached (at least 1 s,
 * longer when reading them is slow: ten times the time the last read
 * took): jobs by queue and state (the counts of moonq.queue.counts, from
 * the http_counts shared with /api/queues),
 * paused queues, event ids taken, each consumer group's lag and parked
 * events. Kept by this process and always current: jobs completed,
 * failed and retried, run-time and wait-time histograms (metrics.h), the
 * pool's connections busy/idle/down and reconnects, the handlers' Lua
 * memory.
 *
 * Uses: http, metrics, pg, events, event_groups, config.
 */
#ifndef MQ_HTTP_METRICS_H
#define MQ_HTTP_METRICS_H

#include <ev.h>
#include <lua.h>

#include "config.h"
#include "events.h"
#include "http.h"
#include "http_counts.h"
#include "metrics.h"
#include "pg.h"

typedef struct mq_http_metrics mq_http_metrics;

/* What the route reads; each must outlive it. events NULL: no group
 * figures; L NULL (no handlers in this process): no Lua memory. */
struct mq_http_metrics_deps {
  struct ev_loop *loop;
  const struct mq_config *cfg;
  mq_pg *pg;
  mq_events *events;
  mq_metrics *metrics;
  lua_State *L;
  mq_http_counts *counts; /* the job counts, shared with the API */
};

/* Makes the route's state; NULL when out of memory or the statement cannot
 * be prepared. */
mq_http_metrics *mq_http_metrics_new(const struct mq_http_metrics_deps *deps);

/* Its routes, for mq_http_new. */
struct mq_http_routes mq_http_metrics_routes(mq_http_metrics *m);

/* Frees it. Every scrape must have replied (the pool is closed first).
 * NULL-safe. */
void mq_http_metrics_close(mq_http_metrics *m);

#endif
