/* http_api.h -- the JSON API under /api: jobs, queues, events, flow runs,
 * schedules and consumer groups over HTTP (docs/http.md,
 * docs/openapi.yaml).
 *
 * Each route converts its request into a call of the C API the Lua API
 * uses (queue.h, events.h, event_groups.h, schedules.h) or of the SQL
 * function behind it (flows), so the checks and their messages are the
 * same as in Lua; results are JSON as the Lua API returns them. Request
 * bodies are decoded with json.c in a small Lua state of the API's own
 * (not the handlers' state: its memory limit and its garbage belong to
 * jobs), under json.c's rules: integers stay exact, data round-trips.
 *
 * Uses: http, queue, events, event_groups, schedules, pg, json, config.
 */
#ifndef MQ_HTTP_API_H
#define MQ_HTTP_API_H

#include "config.h"
#include "events.h"
#include "http.h"
#include "http_counts.h"
#include "pg.h"
#include "queue.h"
#include "schedules.h"

typedef struct mq_http_api mq_http_api;

/* The handles the API calls; each must outlive it. events NULL: the
 * event routes answer 503. */
struct mq_http_api_deps {
  const struct mq_config *cfg;
  mq_pg *pg;
  mq_queue *queue;
  mq_events *events;
  mq_schedules *schedules;
  mq_http_counts *counts; /* the job counts, shared with /metrics */
};

/* Makes the API; NULL when out of memory. */
mq_http_api *mq_http_api_new(const struct mq_http_api_deps *deps);

/* Its routes, for mq_http_new. */
struct mq_http_routes mq_http_api_routes(mq_http_api *api);

/* Frees the API. Every request it made must have completed (the pool is
 * closed first). NULL-safe. */
void mq_http_api_close(mq_http_api *api);

#endif
