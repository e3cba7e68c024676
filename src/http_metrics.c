/* http_metrics.c -- GET /metrics; see http_metrics.h and docs/metrics.md.
 *
 * A scrape whose cached database figures are fresh replies at once; else
 * it reads them (one statement, and the consumer groups' list when the
 * event store is on), renders them into the cache and replies with the
 * cache followed by this process's figures.
 */
#include "http_metrics.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "buf.h"
#include "event_groups.h"

#define CACHE_MIN 1.0    /* seconds the database figures are kept at least */
#define CACHE_FACTOR 10  /* ... and this many times the read's duration */

struct mq_http_metrics {
  struct mq_http_metrics_deps d;
  char *cache; /* the database figures, rendered; NULL before the first */
  size_t cache_len;
  ev_tstamp cached_at, keep; /* when read, and seconds to keep them */
};

struct scrape {
  mq_http_metrics *m;
  mq_http_req *req;
  ev_tstamp began;
  int pending;     /* reads in flight */
  char err[512];   /* a read failed: the reply is 503 with this */
  struct mq_metrics_text jobs, groups;
};

/* ---- the database figures ------------------------------------------------ */

static void render_gauges(struct mq_metrics_text *t, const PGresult *res) {
  static const char *const names[] = {"moonq_jobs", "moonq_queue_paused",
                                      "moonq_events_appended_total"};
  static const char *const types[] = {"gauge", "gauge", "counter"};
  static const char *const helps[] = {
      "Jobs by queue and state, read from the database.",
      "1 when the queue is paused, else 0.",
      "Event ids taken by appends (an append rolled back counts too)."};
  int shown = 0;
  for (int i = 0, n = PQntuples(res); i < n; i++) {
    int f = (int)mq_pg_getll(res, i, 0);
    if (f < 1 || f > 3)
      continue;
    for (; shown < f; shown++)
      mq_metrics_family(t, names[shown], types[shown], helps[shown]);
    const char *name = names[f - 1];
    if (f == 3) {
      mq_metrics_add(t, "%s %s\n", name, PQgetvalue(res, i, 3));
      continue;
    }
    mq_metrics_add(t, "%s{queue=\"", name);
    mq_metrics_add_label(t, PQgetvalue(res, i, 1));
    if (f == 1) {
      mq_metrics_add(t, "\",state=\"");
      mq_metrics_add_label(t, PQgetvalue(res, i, 2));
    }
    mq_metrics_add(t, "\"} %s\n", PQgetvalue(res, i, 3));
  }
  for (; shown < 3; shown++)
    mq_metrics_family(t, names[shown], types[shown], helps[shown]);
}

static void render_groups(struct mq_metrics_text *t, const PGresult *rows) {
  static const char *const names[] = {"moonq_group_lag_events",
                                      "moonq_group_parked_events"};
  static const char *const helps[] = {
      "Events of a consumer group's pattern it has not handled yet.",
      "Events a consumer group parked after its handler kept failing."};
  for (int k = 0; k < 2; k++) {
    mq_metrics_family(t, names[k], "gauge", helps[k]);
    for (int i = 0, n = PQntuples(rows); i < n; i++) {
      if (PQgetisnull(rows, i, 6 + k))
        continue;
      mq_metrics_add(t, "%s{group=\"", names[k]);
      mq_metrics_add_label(t, PQgetvalue(rows, i, 0));
      mq_metrics_add(t, "\"} %s\n", PQgetvalue(rows, i, 6 + k));
    }
  }
}

/* ---- this process's figures ---------------------------------------------- */

static void render_process(mq_http_metrics *m, struct mq_metrics_text *t) {
  mq_metrics_render(m->d.metrics, t);
  struct mq_pg_stats s;
  mq_pg_stats(m->d.pg, &s);
  mq_metrics_family(t, "moonq_pg_connections", "gauge",
         "The pool's connections: busy (requests in flight), idle, down.");
  mq_metrics_add(t, "moonq_pg_connections{state=\"busy\"} %d\n", s.busy);
  mq_metrics_add(t, "moonq_pg_connections{state=\"idle\"} %d\n", s.idle);
  mq_metrics_add(t, "moonq_pg_connections{state=\"down\"} %d\n", s.down);
  mq_metrics_family(t, "moonq_pg_reconnects_total", "counter",
         "Connections made again after one was lost.");
  mq_metrics_add(t, "moonq_pg_reconnects_total %lld\n", s.reconnects);
  if (m->d.L) {
    mq_metrics_family(t, "moonq_lua_memory_bytes", "gauge",
           "Memory the handlers' Lua state holds.");
    mq_metrics_add(t, "moonq_lua_memory_bytes %lld\n",
        (long long)lua_gc(m->d.L, LUA_GCCOUNT, 0) * 1024 +
            lua_gc(m->d.L, LUA_GCCOUNTB, 0));
  }
}

/* Replies with the cache and this process's figures. */
static void reply(mq_http_metrics *m, mq_http_req *req) {
  struct mq_metrics_text t = {0};
  if (mq_buf_add(&t.buf, &t.len, &t.cap, m->cache, m->cache_len) != 0)
    t.nomem = true;
  render_process(m, &t);
  if (t.nomem)
    mq_http_reply_error(req, 500, "out of memory");
  else
    mq_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8",
                  t.buf, t.len);
  free(t.buf);
}

static void scrape_free(struct scrape *s) {
  free(s->jobs.buf);
  free(s->groups.buf);
  free(s);
}

/* One read has answered: the last one refreshes the cache and replies. */
static void read_done(struct scrape *s) {
  if (--s->pending > 0)
    return;
  mq_http_metrics *m = s->m;
  if (s->err[0]) {
    mq_http_reply_error(s->req, 503, "%s", s->err);
  } else if (s->jobs.nomem || s->groups.nomem ||
             mq_buf_add(&s->jobs.buf, &s->jobs.len, &s->jobs.cap,
                        s->groups.buf ? s->groups.buf : "", s->groups.len) != 0) {
    mq_http_reply_error(s->req, 500, "out of memory");
  } else {
    free(m->cache);
    m->cache = s->jobs.buf;
    m->cache_len = s->jobs.len;
    s->jobs.buf = NULL;
    m->cached_at = ev_now(m->d.loop);
    m->keep = (m->cached_at - s->began) * CACHE_FACTOR;
    if (m->keep < CACHE_MIN)
      m->keep = CACHE_MIN;
    reply(m, s->req);
  }
  scrape_free(s);
}

static void gauges_read(const PGresult *rows, double age, const char *error,
                        void *data) {
  struct scrape *s = data;
  if (error)
    snprintf(s->err, sizeof s->err, "reading the job counts failed: %s",
             error);
  else
    render_gauges(&s->jobs, rows);
  read_done(s);
}

static void groups_read(int status, const char *error, const PGresult *rows,
                        void *data) {
  struct scrape *s = data;
  if (status != MQ_EVENTS_OK)
    snprintf(s->err, sizeof s->err, "reading the consumer groups failed: %s",
             error);
  else
    render_groups(&s->groups, rows);
  read_done(s);
}

/* GET /metrics */
static void h_metrics(mq_http_req *req, void *data) {
  mq_http_metrics *m = data;
  static const char *const known[] = {NULL};
  if (mq_http_unknown_args(req, known, NULL, NULL) > 0) {
    mq_http_reply_error(req, 400, "/metrics takes no query arguments");
    return;
  }
  if (m->cache && ev_now(m->d.loop) - m->cached_at < m->keep) {
    reply(m, req);
    return;
  }
  struct scrape *s = calloc(1, sizeof *s);
  if (!s) {
    mq_http_reply_error(req, 500, "out of memory");
    return;
  }
  /* pending: the counts, and a hold until the group read has started or
   * failed to (the counts may answer at once) */
  *s = (struct scrape){.m = m, .req = req, .began = ev_now(m->d.loop),
                       .pending = 2};
  mq_http_counts_get(m->d.counts, gauges_read, s);
  if (m->d.events) {
    if (mq_group_list(m->d.events, NULL, groups_read, s) == 0)
      s->pending++;
    else
      snprintf(s->err, sizeof s->err, "the connection pool is closed");
  }
  read_done(s);
}

static const struct mq_http_route routes[] = {
    {"GET", "/metrics", h_metrics, 0}, {NULL, NULL, NULL, 0}};

mq_http_metrics *mq_http_metrics_new(const struct mq_http_metrics_deps *deps) {
  mq_http_metrics *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  m->d = *deps;
  return m;
}

static const char *metrics_unavailable(void *data) {
  mq_http_metrics *m = data;
  return mq_http_db_unreachable(m->d.pg, m->d.events);
}

struct mq_http_routes mq_http_metrics_routes(mq_http_metrics *m) {
  return (struct mq_http_routes){routes, m, metrics_unavailable};
}

void mq_http_metrics_close(mq_http_metrics *m) {
  if (!m)
    return;
  free(m->cache);
  free(m);
}
