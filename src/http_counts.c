/* http_counts.c -- the queues' job counts, read once for every caller;
 * see http_counts.h.
 *
 * Callers that arrive while a read is in flight wait for it (`current`),
 * unless a change was made after it began: then they wait for the read
 * after it (`next`), which starts when the one in flight completes.
 */
#include "http_counts.h"

#include <stdbool.h>
#include <stdlib.h>

struct waiter {
  mq_http_counts_cb cb;
  void *data;
  struct waiter *next;
};

struct mq_http_counts {
  struct ev_loop *loop;
  mq_pg *pg;
  const char *schema;
  int stmt;
  PGresult *rows;      /* the last read's, or NULL */
  ev_tstamp read_at;   /* when the read of rows began */
  ev_tstamp began;     /* when the read in flight began */
  bool reading;
  bool changed;        /* a change since the last read began */
  struct waiter *current, *next;
};

/* The metrics gauges' rows (http_counts.h). */
static const char counts_sql[] =
    "WITH n AS (SELECT name FROM %s.queue_names() AS q(name))"
    " SELECT 1, n.name, c.key, c.value::bigint"
    "   FROM n, LATERAL jsonb_each_text(%s.counts(n.name)) AS c"
    " UNION ALL"
    " SELECT 2, n.name, NULL, coalesce(x.paused, false)::int::bigint"
    "   FROM n LEFT JOIN %s.queue x ON x.name = n.name"
    " UNION ALL"
    " SELECT 3, NULL, NULL, coalesce((SELECT s.last_value FROM pg_sequences s"
    "   WHERE s.schemaname = $1 AND s.sequencename = 'queue_events_id_seq'), 0)"
    " ORDER BY 1, 2, 3";

static void start_read(mq_http_counts *c);

mq_http_counts *mq_http_counts_new(struct ev_loop *loop, mq_pg *pg,
                                   const char *schema) {
  mq_http_counts *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->loop = loop;
  c->pg = pg;
  c->schema = schema;
  if ((c->stmt = mq_pg_prepare_in(pg, counts_sql, schema)) < 0) {
    free(c);
    return NULL;
  }
  return c;
}

/* Calls and frees the waiters of list w with the rows or error. */
static void tell(struct waiter *w, const PGresult *rows, double age,
                 const char *error) {
  while (w) {
    struct waiter *next = w->next;
    w->cb(rows, age, error, w->data);
    free(w);
    w = next;
  }
}

static void read_done(const struct mq_pg_reply *r, void *data) {
  mq_http_counts *c = data;
  c->reading = false;
  const char *error = r->status == MQ_PG_OK ? NULL : r->error;
  if (!error) {
    PGresult *copy = PQcopyResult(r->result, PG_COPYRES_ATTRS |
                                                 PG_COPYRES_TUPLES);
    if (copy) {
      PQclear(c->rows);
      c->rows = copy;
      c->read_at = c->began;
    } else {
      error = "out of memory";
    }
  }
  struct waiter *w = c->current;
  c->current = c->next;
  c->next = NULL;
  if (c->current)
    start_read(c);
  tell(w, error ? NULL : c->rows, ev_now(c->loop) - c->read_at, error);
}

static void start_read(mq_http_counts *c) {
  const char *params[] = {c->schema};
  c->reading = true;
  c->changed = false;
  c->began = ev_now(c->loop);
  if (mq_pg_exec(c->pg, c->stmt, 1, params, MQ_PG_RETRY, read_done, c) != 0) {
    c->reading = false;
    struct waiter *w = c->current;
    c->current = NULL;
    tell(w, NULL, 0, "the connection pool is closed");
  }
}

void mq_http_counts_get(mq_http_counts *c, mq_http_counts_cb cb, void *data) {
  double age = ev_now(c->loop) - c->read_at;
  if (c->rows && !c->changed && age < MQ_HTTP_COUNTS_MAX_AGE) {
    cb(c->rows, age, NULL, data);
    return;
  }
  struct waiter *w = malloc(sizeof *w);
  if (!w) {
    cb(NULL, 0, "out of memory", data);
    return;
  }
  *w = (struct waiter){cb, data, NULL};
  struct waiter **list = c->reading && c->changed ? &c->next : &c->current;
  w->next = *list;
  *list = w;
  if (!c->reading)
    start_read(c);
}

void mq_http_counts_changed(mq_http_counts *c) {
  if (c)
    c->changed = true;
}

void mq_http_counts_close(mq_http_counts *c) {
  if (!c)
    return;
  PQclear(c->rows);
  free(c);
}
