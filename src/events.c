/* events.c -- the event store: batched appends, queries, subscriptions;
 * see events.h and sql/005_events.sql.
 *
 * Shapes:
 *  - batch: the appends of one loop turn, as the parallel arrays
 *    append_events() takes (streams, types, data, run_ids), and who waits
 *    for which of its events.
 *  - subscription: a reader's position is a snapshot (`base`); a step
 *    in progress has a `target` snapshot and the last id delivered within
 *    it. One read in flight at a time, and none while the subscriber still
 *    holds a batch.
 */
#include "events.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "buf.h"
#include "json.h"
#include "log.h"

#define BATCH MQ_EVENTS_READ_BATCH /* events per read */
#define POLL_INTERVAL 5.0  /* seconds: the fallback for a lost wake-up */
#define MAX_STREAM MQ_EVENTS_PATTERN_MAX /* bytes, as the table's check says */
#define MAX_TYPE 200
#define MAX_RUN_ID 200 /* bytes, as a job's run_id */
#define EMPTY_SNAPSHOT "1:1:" /* nothing visible: read from the start */
#define MAX_BATCH (64u << 20) /* bytes per append statement: its data
                                 array stays far below jsonb's 256 MiB */
#define RETENTION_EVERY 5.0 /* seconds between retention passes */
#define RETENTION_BATCH "10000" /* events deleted per pass at most */

enum stmt { ST_APPEND, ST_QUERY, ST_READ, ST_SNAPSHOT, ST_RETENTION, ST_COUNT };

static const char *const stmt_sql[ST_COUNT] = {
    [ST_APPEND] = "SELECT ids, ts FROM %s.append_events($1::text[], "
                  "$2::text[], $3::jsonb, $4::text[])",
    [ST_QUERY] = "SELECT id, stream, ts, type, run_id, flow_name, step_name, "
                 "step_id, attempt, data FROM %s.query_events($1, $2::text[], "
                 "$3::bigint, $4::bigint, $5, $6::timestamptz, "
                 "$7::timestamptz, $8::integer)",
    [ST_READ] = "SELECT id, stream, ts, type, run_id, flow_name, step_name, "
                "step_id, attempt, data, snapshot FROM %s.read_events($1, "
                "$2::pg_snapshot, $3::pg_snapshot, $4::bigint, $5::bigint, "
                "$6::integer, $7::integer, $8::integer)",
    [ST_SNAPSHOT] = "SELECT pg_current_snapshot()::text -- %s",
    [ST_RETENTION] = "SELECT %s.delete_old_events($1::float8, $2::integer)",
};

struct waiter {
  mq_events_append_cb cb;
  void *data;
  int n; /* events of this call */
};

/* One growable part of a batch: "{a,b" (an array literal) or "[{},{}" (a
 * JSON array) while gathering; closed when sent. */
struct part {
  char *s;
  size_t len, cap;
};

enum { P_STREAM, P_TYPE, P_DATA, P_RUN_ID, P_COUNT };

struct batch {
  struct part parts[P_COUNT];
  bool any_run_id; /* else run_ids is sent as NULL */
  size_t bytes;    /* its events' size at most (event_bytes) */
  struct waiter *waiters;
  int nwaiters, cap_waiters;
  int nevents;
};

struct mq_subscription {
  mq_events *ev;
  char *pattern; /* NULL: every stream */
  mq_events_cb cb;
  void *data;
  char *base;   /* position; NULL until the first snapshot (from end) */
  char *target; /* the step in progress, or NULL */
  long long after_id;
  long long min_id;
  int part, parts; /* a consumer group's partition; parts 0: all */
  int batch;       /* events per read */
  char *read_base; /* the base the last read started from */
  bool reading;    /* a request in flight */
  bool delivering; /* the subscriber holds a batch */
  bool in_cb;
  bool more;       /* something may be there to read */
  bool woken_by_owner; /* wake-ups come from mq_subscription_wake only */
  bool closed;
  /* told once when a subscription from the end has its position */
  void (*on_start)(void *arg, const char *error);
  void *on_start_arg;
  LIST_ENTRY(mq_subscription) link;
  /* A follower (mq_events_follow): the pattern's shared reader, how far it
   * is from sharing it, and its place among the reader's followers. */
  mq_subscription *reader;
  enum { F_OWN, F_JOINING, F_JOINED } follow;
  bool caught_up;  /* its last read was a whole step: it reads live */
  bool wants_join; /* try to join when the reader's read completes */
  LIST_ENTRY(mq_subscription) follower_link;
  /* A shared reader: its followers, those whose read up to its base is in
   * flight (it reads no further meanwhile), its place in ev->readers. */
  bool is_reader;
  LIST_HEAD(, mq_subscription) followers;
  int joining;
  LIST_ENTRY(mq_subscription) reader_link;
  unsigned long long batch_id; /* of the batch the subscriber holds */
};

struct mq_events {
  struct ev_loop *loop;
  mq_pg *pg;
  const struct mq_config *cfg;
  int stmts[ST_COUNT];
  char channel[80];
  struct batch *batch;
  ev_prepare flush;
  ev_timer poll;
  ev_timer retention;
  bool retention_busy; /* a pass in flight */
  bool stopped;
  bool listening;
  LIST_HEAD(, mq_subscription) subs;
  LIST_HEAD(, mq_subscription) readers; /* shared readers, one a pattern */
  unsigned long long batches;           /* batch ids handed out */
  struct mq_events_hook *hooks;
  struct {
    const char *tmpl;
    int id;
  } more_stmts[16]; /* prepared for modules built on the event store */
  int n_more_stmts;
};

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);
static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void wake_cb(const char *channel, const char *payload, void *data);
static void retention_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void consider_read(mq_subscription *s);

mq_events *mq_events_new(struct ev_loop *loop, mq_pg *pg,
                         const struct mq_config *cfg) {
  mq_events *ev = calloc(1, sizeof *ev);
  if (!ev)
    return NULL;
  ev->loop = loop;
  ev->pg = pg;
  ev->cfg = cfg;
  LIST_INIT(&ev->subs);
  LIST_INIT(&ev->readers);
  for (int i = 0; i < ST_COUNT; i++) {
    if ((ev->stmts[i] = mq_pg_prepare_in(pg, stmt_sql[i], cfg->schema)) < 0) {
      free(ev);
      return NULL;
    }
  }
  snprintf(ev->channel, sizeof ev->channel, "%s_events", cfg->schema);
  ev_prepare_init(&ev->flush, flush_cb);
  ev->flush.data = ev;
  ev_timer_init(&ev->poll, poll_cb, POLL_INTERVAL, POLL_INTERVAL);
  ev->poll.data = ev;
  ev_timer_init(&ev->retention, retention_cb, RETENTION_EVERY, RETENTION_EVERY);
  ev->retention.data = ev;
  return ev;
}

mq_pg *mq_events_pg(const mq_events *ev) { return ev->pg; }

int mq_events_stmt(mq_events *ev, const char *tmpl) {
  for (int i = 0; i < ev->n_more_stmts; i++)
    if (ev->more_stmts[i].tmpl == tmpl)
      return ev->more_stmts[i].id;
  if (ev->n_more_stmts == (int)(sizeof ev->more_stmts / sizeof ev->more_stmts[0]))
    return MQ_PG_ENOMEM;
  int id = mq_pg_prepare_in(ev->pg, tmpl, ev->cfg->schema);
  if (id >= 0) {
    ev->more_stmts[ev->n_more_stmts].tmpl = tmpl;
    ev->more_stmts[ev->n_more_stmts++].id = id;
  }
  return id;
}
const struct mq_config *mq_events_config(const mq_events *ev) {
  return ev->cfg;
}
struct ev_loop *mq_events_loop(const mq_events *ev) { return ev->loop; }
const char *mq_events_channel(const mq_events *ev) { return ev->channel; }

void mq_events_hook_add(mq_events *ev, struct mq_events_hook *h) {
  h->next = ev->hooks;
  ev->hooks = h;
}

void mq_events_hook_remove(mq_events *ev, struct mq_events_hook *h) {
  for (struct mq_events_hook **p = &ev->hooks; *p; p = &(*p)->next) {
    if (*p == h) {
      *p = h->next;
      return;
    }
  }
}

void mq_events_start_retention(mq_events *ev) {
  if (ev->cfg->events.retention <= 0 || ev_is_active(&ev->retention) ||
      ev->stopped)
    return;
  ev_timer_again(ev->loop, &ev->retention);
  ev_unref(ev->loop); /* retention alone keeps no loop running */
}

static void retained(const struct mq_pg_reply *r, void *data) {
  mq_events *ev = data;
  ev->retention_busy = false;
  if (r->status != MQ_PG_OK)
    mq_log_warn("events", "retention failed error=\"%s\"", r->error);
  else if (!PQgetisnull(r->result, 0, 0) && mq_pg_getll(r->result, 0, 0) > 0)
    mq_log_info("events", "retention deleted=%s", PQgetvalue(r->result, 0, 0));
}

static void retention_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_events *ev = w->data;
  if (ev->retention_busy)
    return;
  char keep[32];
  snprintf(keep, sizeof keep, "%.17g", ev->cfg->events.retention);
  const char *params[] = {keep, RETENTION_BATCH};
  if (mq_pg_exec(ev->pg, ev->stmts[ST_RETENTION], 2, params, 0, retained, ev) ==
      0)
    ev->retention_busy = true;
}

/* ---- append ------------------------------------------------------------- */

/* Names the first byte of s that is not UTF-8 in err ("event 2: stream is
 * not valid UTF-8 (byte 3)"); 0 when s is valid. PostgreSQL refuses such
 * text, and would fail the whole batch for it. */
static int check_utf8(const char *s, const char *what, int nth, char *err,
                      size_t errlen) {
  size_t n = strlen(s), at = mq_json_utf8_check(s, n);
  if (at == n)
    return 0;
  snprintf(err, errlen, "event %d: %s is not valid UTF-8 (byte %zu)", nth,
           what, at);
  return -1;
}

int mq_events_check(const mq_events *ev, const struct mq_event_input *e,
                    int nth, char *err, size_t errlen) {
  size_t slen = e->stream ? strlen(e->stream) : 0;
  size_t tlen = e->type ? strlen(e->type) : 0;
  if (slen == 0)
    snprintf(err, errlen, "event %d: stream must be a non-empty string", nth);
  else if (slen > MAX_STREAM)
    snprintf(err, errlen, "event %d: stream is %zu bytes, the limit is %d",
             nth, slen, MAX_STREAM);
  else if (strchr(e->stream, '*'))
    snprintf(err, errlen, "event %d: stream \"%s\" contains \"*\" (the "
             "pattern wildcard)", nth, e->stream);
  else if (tlen == 0)
    snprintf(err, errlen, "event %d: type must be a non-empty string", nth);
  else if (tlen > MAX_TYPE)
    snprintf(err, errlen, "event %d: type is %zu bytes, the limit is %d",
             nth, tlen, MAX_TYPE);
  else if (e->run_id && strlen(e->run_id) > MAX_RUN_ID)
    snprintf(err, errlen, "event %d: run_id is %zu bytes, the limit is %d",
             nth, strlen(e->run_id), MAX_RUN_ID);
  else if (check_utf8(e->stream, "stream", nth, err, errlen) ||
           check_utf8(e->type, "type", nth, err, errlen) ||
           (e->run_id && check_utf8(e->run_id, "run_id", nth, err, errlen)))
    ; /* err says which */
  else if (e->data && mq_json_has_nul(e->data))
    snprintf(err, errlen, "event %d: data holds a NUL character (\\u0000), "
             "which PostgreSQL's jsonb cannot store", nth);
  else if (e->data && strlen(e->data) > (size_t)ev->cfg->events.max_size)
    snprintf(err, errlen, "event %d: data is %zu bytes, the limit is %d "
             "(events.max_size)", nth, strlen(e->data),
             ev->cfg->events.max_size);
  else
    return 0;
  return MQ_EVENTS_EINVAL;
}

static void batch_free(struct batch *b) {
  for (int i = 0; i < P_COUNT; i++)
    free(b->parts[i].s);
  free(b->waiters);
  free(b);
}

/* Bytes an event takes in a batch at most (array quoting doubles at worst
 * what it escapes). */
static size_t event_bytes(const struct mq_event_input *e) {
  return 2 * strlen(e->stream) + 2 * strlen(e->type) +
         (e->data ? strlen(e->data) : 2) +
         (e->run_id ? 2 * strlen(e->run_id) : 4) + 16;
}

/* Appends s to an array literal: quoted and escaped, NULL for NULL. */
static int add_text(struct part *p, const char *s) {
  if (mq_buf_add(&p->s, &p->len, &p->cap, p->len ? "," : "{", 1) != 0)
    return -1;
  if (!s)
    return mq_buf_add(&p->s, &p->len, &p->cap, "NULL", 4);
  if (mq_buf_add(&p->s, &p->len, &p->cap, "\"", 1) != 0)
    return -1;
  for (;;) { /* runs without a quote or a backslash go in one piece */
    size_t run = strcspn(s, "\"\\");
    if (mq_buf_add(&p->s, &p->len, &p->cap, s, run) != 0)
      return -1;
    if (!s[run])
      break;
    char esc[2] = {'\\', s[run]};
    if (mq_buf_add(&p->s, &p->len, &p->cap, esc, 2) != 0)
      return -1;
    s += run + 1;
  }
  return mq_buf_add(&p->s, &p->len, &p->cap, "\"", 1);
}

/* Appends JSON text to a JSON array. */
static int add_json(struct part *p, const char *json) {
  if (mq_buf_add(&p->s, &p->len, &p->cap, p->len ? "," : "[", 1) != 0)
    return -1;
  return mq_buf_add(&p->s, &p->len, &p->cap, json, strlen(json));
}

/* Adds the n events to b; on failure (out of memory) b is as it was. */
static int batch_add(struct batch *b, const struct mq_event_input *events,
                     int n) {
  size_t mark[P_COUNT];
  for (int i = 0; i < P_COUNT; i++)
    mark[i] = b->parts[i].len;
  for (int i = 0; i < n; i++) {
    const struct mq_event_input *e = &events[i];
    if (add_text(&b->parts[P_STREAM], e->stream) ||
        add_text(&b->parts[P_TYPE], e->type) ||
        add_json(&b->parts[P_DATA], e->data ? e->data : "{}") ||
        add_text(&b->parts[P_RUN_ID], e->run_id)) {
      for (int k = 0; k < P_COUNT; k++) {
        b->parts[k].len = mark[k];
        if (b->parts[k].s)
          b->parts[k].s[mark[k]] = '\0';
      }
      return -1;
    }
  }
  for (int i = 0; i < n; i++)
    b->any_run_id |= events[i].run_id != NULL;
  return 0;
}

int mq_events_append(mq_events *ev, const struct mq_event_input *events,
                     int n, mq_events_append_cb cb, void *data, char *err,
                     size_t errlen) {
  for (int i = 0; i < n; i++)
    if (mq_events_check(ev, &events[i], i + 1, err, errlen) != 0)
      return MQ_EVENTS_EINVAL;
  if (n < 1) {
    snprintf(err, errlen, "no events to append");
    return MQ_EVENTS_EINVAL;
  }
  size_t bytes = 0;
  for (int i = 0; i < n; i++)
    bytes += event_bytes(&events[i]);
  if (bytes > MAX_BATCH) {
    snprintf(err, errlen, "these %d events are about %zu bytes together, the "
             "limit of one append is %u bytes: append them in parts", n, bytes,
             MAX_BATCH);
    return MQ_EVENTS_EINVAL;
  }
  /* A batch that this call would take over the limit goes now, alone. */
  if (ev->batch && ev->batch->bytes + bytes > MAX_BATCH)
    flush_cb(ev->loop, &ev->flush, 0);
  struct batch *b = ev->batch;
  if (!b && !(b = ev->batch = calloc(1, sizeof *b)))
    goto oom;
  if (b->nwaiters == b->cap_waiters) {
    int cap = b->cap_waiters ? b->cap_waiters * 2 : 16;
    struct waiter *w = realloc(b->waiters, sizeof *w * (size_t)cap);
    if (!w)
      goto oom;
    b->waiters = w;
    b->cap_waiters = cap;
  }
  if (batch_add(b, events, n) != 0)
    goto oom;
  b->waiters[b->nwaiters++] = (struct waiter){cb, data, n};
  b->nevents += n;
  b->bytes += bytes;
  ev_prepare_start(ev->loop, &ev->flush);
  return 0;
oom:
  snprintf(err, errlen, "out of memory");
  return MQ_EVENTS_EDB;
}

/* Reads the int8[] text "{1,2,3}" into ids[0..n). Returns 0 when it holds
 * exactly n ids. */
static int parse_ids(const char *s, long long *ids, int n) {
  if (*s++ != '{')
    return -1;
  for (int i = 0; i < n; i++) {
    char *end;
    ids[i] = strtoll(s, &end, 10);
    if (end == s || (*end != ',' && *end != '}'))
      return -1;
    s = end + 1;
    if ((*end == '}') != (i == n - 1))
      return -1;
  }
  return 0;
}

/* Tells each waiter of b how its events went: ids and ts from the row
 * append_events returned, or the error. */
static void appended(const struct mq_pg_reply *r, void *data) {
  struct batch *b = data;
  long long *ids = NULL;
  const char **ts = NULL;
  const char *error = r->status != MQ_PG_OK ? r->error : NULL;
  /* An append is not safe to run twice (the events would be stored
   * twice), so it is not sent again: the caller is told plainly. */
  if (r->status == MQ_PG_ECONNLOST)
    error = "the connection to PostgreSQL was lost before the append was "
            "confirmed: the events may or may not be stored (query the "
            "stream before appending them again)";
  int status = r->status == MQ_PG_ESQL && strncmp(r->sqlstate, "22", 2) == 0
                   ? MQ_EVENTS_EINVAL : MQ_EVENTS_EDB;
  if (!error && PQntuples(r->result) != 1)
    error = "append returned a wrong row count";
  if (!error && (!(ids = malloc(sizeof *ids * (size_t)b->nevents)) ||
                 !(ts = malloc(sizeof *ts * (size_t)b->nevents))))
    error = "out of memory (the events were stored)";
  if (!error &&
      parse_ids(PQgetvalue(r->result, 0, 0), ids, b->nevents) != 0)
    error = "append returned a wrong id count";
  if (!error)
    for (int i = 0; i < b->nevents; i++)
      ts[i] = PQgetvalue(r->result, 0, 1);
  int row = 0;
  for (int i = 0; i < b->nwaiters; i++) {
    struct waiter *w = &b->waiters[i];
    if (!w->cb)
      ;
    else if (error)
      w->cb(status, error, NULL, NULL, 0, w->data);
    else
      w->cb(MQ_EVENTS_OK, NULL, ids + row, ts + row, w->n, w->data);
    row += w->n;
  }
  free(ids);
  free((void *)ts);
  batch_free(b);
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  mq_events *ev = w->data;
  ev_prepare_stop(loop, w);
  struct batch *b = ev->batch;
  ev->batch = NULL;
  if (!b)
    return;
  struct mq_pg_reply fail = {.status = MQ_PG_ENOMEM, .error = "out of memory",
                             .sqlstate = ""};
  struct part *p = b->parts;
  if (mq_buf_add(&p[P_STREAM].s, &p[P_STREAM].len, &p[P_STREAM].cap, "}", 1) ||
      mq_buf_add(&p[P_TYPE].s, &p[P_TYPE].len, &p[P_TYPE].cap, "}", 1) ||
      mq_buf_add(&p[P_DATA].s, &p[P_DATA].len, &p[P_DATA].cap, "]", 1) ||
      mq_buf_add(&p[P_RUN_ID].s, &p[P_RUN_ID].len, &p[P_RUN_ID].cap, "}", 1)) {
    appended(&fail, b);
    return;
  }
  const char *params[] = {p[P_STREAM].s, p[P_TYPE].s, p[P_DATA].s,
                          b->any_run_id ? p[P_RUN_ID].s : NULL};
  if (mq_pg_exec(ev->pg, ev->stmts[ST_APPEND], 4, params, 0, appended, b) != 0) {
    fail.status = MQ_PG_ECLOSED;
    fail.error = "the connection pool is closed";
    appended(&fail, b);
  }
}

/* ---- rows to events ------------------------------------------------------ */

static const char *col(const PGresult *res, int row, int c) {
  return PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

void mq_events_fill(const PGresult *res, int row, int c, struct mq_event *e) {
  e->id = mq_pg_getll(res, row, c);
  e->stream = col(res, row, c + 1);
  e->ts = col(res, row, c + 2);
  e->type = col(res, row, c + 3);
  e->run_id = col(res, row, c + 4);
  e->flow_name = col(res, row, c + 5);
  e->step_name = col(res, row, c + 6);
  e->step_id = col(res, row, c + 7);
  e->attempt = PQgetisnull(res, row, c + 8) ? -1 : atoi(PQgetvalue(res, row, c + 8));
  e->data = col(res, row, c + 9);
}

/* Fills events from rows [0, n) of res (columns as in ST_QUERY). */
static void fill(const PGresult *res, int n, struct mq_event *events) {
  for (int i = 0; i < n; i++)
    mq_events_fill(res, i, 0, &events[i]);
}

/* ---- query --------------------------------------------------------------- */

struct query_call {
  mq_events_cb cb;
  void *data;
};

static void queried(const struct mq_pg_reply *r, void *data) {
  struct query_call *c = data;
  if (r->status != MQ_PG_OK) {
    c->cb(r->status == MQ_PG_ESQL && strncmp(r->sqlstate, "22", 2) == 0
              ? MQ_EVENTS_EINVAL : MQ_EVENTS_EDB,
          r->error, NULL, 0, c->data);
    free(c);
    return;
  }
  int n = PQntuples(r->result);
  struct mq_event *events = calloc((size_t)n + 1, sizeof *events);
  if (!events) {
    c->cb(MQ_EVENTS_EDB, "out of memory", NULL, 0, c->data);
  } else {
    fill(r->result, n, events);
    c->cb(MQ_EVENTS_OK, NULL, events, n, c->data);
  }
  free(events);
  free(c);
}

int mq_events_query(mq_events *ev, const char *pattern,
                    const struct mq_events_query *q, mq_events_cb cb,
                    void *data) {
  char after[24], before[24], limit[16];
  snprintf(after, sizeof after, "%lld", q->after);
  snprintf(before, sizeof before, "%lld", q->before);
  snprintf(limit, sizeof limit, "%d",
           q->limit > 0 ? q->limit : MQ_EVENTS_QUERY_DEFAULT);
  char *types = q->types ? mq_buf_text_array(q->types, -1) : NULL;
  if (q->types && !types)
    return MQ_EVENTS_EDB;
  struct query_call *c = malloc(sizeof *c);
  if (!c) {
    free(types);
    return MQ_EVENTS_EDB;
  }
  c->cb = cb;
  c->data = data;
  const char *params[] = {pattern, types, q->after ? after : NULL,
                          q->before ? before : NULL, q->run_id, q->from_ts,
                          q->to_ts, limit};
  int rc = mq_pg_exec(ev->pg, ev->stmts[ST_QUERY], 8, params, 0, queried, c);
  free(types);
  if (rc != 0) {
    free(c);
    return MQ_EVENTS_EDB;
  }
  return 0;
}

char *mq_event_json(const struct mq_event *e, char *err, size_t errlen) {
  mq_json_object *o = mq_json_object_new();
  mq_json_object_int(o, "id", e->id);
  mq_json_object_string(o, "stream", e->stream);
  mq_json_object_string(o, "type", e->type);
  mq_json_object_string(o, "ts", e->ts);
  mq_json_object_raw(o, "data", e->data ? e->data : "{}");
  const char *opt[] = {e->run_id, e->flow_name, e->step_name, e->step_id};
  const char *names[] = {"run_id", "flow_name", "step_name", "step_id"};
  for (int i = 0; i < 4; i++)
    if (opt[i])
      mq_json_object_string(o, names[i], opt[i]);
  if (e->attempt >= 0)
    mq_json_object_int(o, "attempt", e->attempt);
  return mq_json_object_finish(o, err, errlen);
}

/* ---- subscriptions ------------------------------------------------------- */

static void follower_detach(mq_subscription *f);
static void reader_moved(mq_subscription *r);

static void sub_free(mq_subscription *s) {
  follower_detach(s);
  LIST_REMOVE(s, link);
  free(s->pattern);
  free(s->base);
  free(s->target);
  free(s->read_base);
  free(s);
}

/* Calls the subscriber with the batch (or error) under s->batch_id; s may
 * be closed by the callback: then it is freed (now, or when its read in
 * flight completes) and false is returned. */
static bool call(mq_subscription *s, int status, const char *error,
                 const struct mq_event *events, int n) {
  s->in_cb = true;
  s->cb(status, error, events, n, s->data);
  s->in_cb = false;
  if (!s->closed)
    return true;
  if (!s->reading)
    sub_free(s);
  return false;
}

/* Hands a batch of its own (or an error) to the subscriber, as call(). */
static bool deliver(mq_subscription *s, int status, const char *error,
                    const struct mq_event *events, int n) {
  s->batch_id = ++s->ev->batches;
  return call(s, status, error, events, n);
}

/* Tells the subscriber waiting for s's starting position that it is fixed
 * (error NULL) or could not be (the message); false when the subscriber
 * closed s meanwhile (it is freed now). */
static bool tell_started(mq_subscription *s, const char *error) {
  void (*fn)(void *, const char *) = s->on_start;
  if (!fn)
    return true;
  s->on_start = NULL;
  s->in_cb = true;
  fn(s->on_start_arg, error);
  s->in_cb = false;
  if (s->closed) {
    if (!s->reading)
      sub_free(s);
    return false;
  }
  return true;
}

/* The start of every read's completion: false when the subscription was
 * closed meanwhile (it is freed now) or the read failed (the subscriber is
 * told; the poll timer reads again from the same place). */
static bool read_ok(mq_subscription *s, const struct mq_pg_reply *r) {
  s->reading = false;
  if (s->closed) {
    sub_free(s);
    return false;
  }
  if (r->status != MQ_PG_OK) {
    s->more = true;
    if (tell_started(s, r->error))
      deliver(s, MQ_EVENTS_EDB, r->error, NULL, 0);
    return false;
  }
  return true;
}

static void snapshot_done(const struct mq_pg_reply *r, void *data) {
  mq_subscription *s = data;
  if (!read_ok(s, r))
    return;
  s->base = strdup(PQgetvalue(r->result, 0, 0));
  s->more = true;
  if (!tell_started(s, s->base ? NULL : "out of memory"))
    return;
  if (s->is_reader)
    reader_moved(s);
  consider_read(s);
}

static void read_done(const struct mq_pg_reply *r, void *data) {
  mq_subscription *s = data;
  if (!read_ok(s, r))
    return;
  const PGresult *res = r->result;
  int rows = PQntuples(res);
  int n = rows == 1 && PQgetisnull(res, 0, 0) ? 0 : rows;
  char *snapshot = rows ? strdup(PQgetvalue(res, 0, 10)) : NULL;
  struct mq_event *events = calloc((size_t)n + 1, sizeof *events);
  if (!snapshot || !events) {
    free(snapshot);
    free(events);
    s->more = true;
    deliver(s, MQ_EVENTS_EDB, "out of memory", NULL, 0);
    return;
  }
  fill(res, n, events);
  /* A step read up to a snapshot taken earlier (a position given to
   * subscribe_at, or a step that filled batches) may be followed by events
   * whose wake-up came before the subscription was there or the read
   * began: read on to now once the step is complete. */
  bool had_target = s->target != NULL;
  free(s->target);
  mq_subscription *reader = s->reader;
  if (n < s->batch) { /* the step is complete: move to its snapshot */
    s->more = s->more || had_target;
    free(s->read_base);
    s->read_base = s->base;
    s->base = snapshot;
    s->target = NULL;
    s->after_id = 0;
    /* A whole step in one read: the follower reads live. */
    s->caught_up = !had_target;
    if (s->follow == F_JOINING) { /* at the reader's position: share it */
      s->follow = F_JOINED;
      mq_log_debug("events", "a follower of %s caught up: it read up to the "
                   "reader and shares it", s->pattern ? s->pattern
                                                      : "every stream");
      if (--reader->joining == 0)
        consider_read(reader);
    }
  } else {            /* more of this step to come */
    s->caught_up = false;
    char *keep = strdup(s->base);
    if (keep) {
      free(s->read_base);
      s->read_base = keep;
    }
    s->target = snapshot;
    s->after_id = events[n - 1].id;
    s->more = true;
  }
  if (n > 0) {
    s->delivering = true;
    /* A follower joining reads on without waiting for the subscriber. */
    if (deliver(s, MQ_EVENTS_OK, NULL, events, n) && s->follow == F_JOINING)
      consider_read(s);
  } else {
    if (s->is_reader)
      reader_moved(s);
    consider_read(s);
  }
  free(events);
}

/* ---- shared readers ------------------------------------------------------ */

/* Reads pg_snapshot text "xmin:xmax:xip,xip,..." : xmax and where the xip
 * list begins. */
static bool snapshot_parse(const char *s, unsigned long long *xmax,
                           const char **xip) {
  char *end;
  strtoull(s, &end, 10);
  if (*end != ':')
    return false;
  *xmax = strtoull(end + 1, &end, 10);
  if (*end != ':')
    return false;
  *xip = end + 1;
  return true;
}

static bool in_xip(const char *xip, unsigned long long x) {
  for (char *end; *xip; xip = *end ? end + 1 : end) {
    if (strtoull(xip, &end, 10) == x)
      return true;
    if (end == xip)
      return false;
  }
  return false;
}

/* Visible in a snapshot: below its xmax and not in its xip list. */
bool mq_snapshot_covers(const char *a, const char *b) {
  unsigned long long axmax, bxmax;
  const char *axip, *bxip;
  if (!snapshot_parse(a, &axmax, &axip) || !snapshot_parse(b, &bxmax, &bxip) ||
      axmax > bxmax)
    return false;
  for (char *end; *bxip; bxip = *end ? end + 1 : end) {
    unsigned long long x = strtoull(bxip, &end, 10);
    if (end == bxip)
      return false;
    if (x < axmax && !in_xip(axip, x)) /* visible in a, not in b */
      return false;
  }
  return true;
}

/* The follower f reads live (its last read was a whole step): it moves
 * onto its reader when the reader is between steps. At the same position
 * it shares the reader at once; behind it (the reader's base covers its
 * own), it reads up to the reader's base first, the reader waiting for
 * that one read (F_JOINING). Returns true when f is not to read on its own
 * now: it shares the reader, or waits for the reader's read that moves it
 * past f's position. Otherwise (the reader is busy) f reads on alone and
 * tries again when the reader's read completes. */
static bool try_join(mq_subscription *f) {
  mq_subscription *r = f->reader;
  f->wants_join = true;
  if (!r->base || r->target || r->reading || r->delivering ||
      (r->more && r->joining > 0))
    return false;
  f->wants_join = false;
  if (strcmp(f->base, r->base) == 0) {
    f->follow = F_JOINED;
    mq_log_debug("events", "a follower of %s caught up: it shares the "
                 "reader", f->pattern ? f->pattern : "every stream");
    return true;
  }
  if (!mq_snapshot_covers(f->base, r->base)) { /* f is ahead: move the reader on */
    f->wants_join = true;
    r->more = true;
    consider_read(r);
    return r->reading;
  }
  char *target = strdup(r->base);
  if (!target)
    return false;
  free(f->target);
  f->target = target;
  f->after_id = 0;
  f->follow = F_JOINING;
  r->joining++;
  return false;
}

/* The reader's read completed: the followers that wait for it try again. */
static void reader_moved(mq_subscription *r) {
  mq_subscription *f, *next;
  for (f = LIST_FIRST(&r->followers); f; f = next) {
    next = LIST_NEXT(f, follower_link);
    if (f->wants_join && f->follow == F_OWN) {
      f->wants_join = false;
      consider_read(f);
    }
  }
}

/* Gives follower f the reader's batch: the same events under the reader's
 * batch id, or without those at or below f's from= id (then a copy of its
 * own). */
static void share(mq_subscription *f, mq_subscription *r, int status,
                  const char *error, const struct mq_event *events, int n) {
  int keep = 0;
  for (int i = 0; i < n; i++)
    keep += events[i].id > f->min_id;
  f->batch_id = r->batch_id;
  if (status != MQ_EVENTS_OK || keep == n) {
    call(f, status, error, events, n);
    return;
  }
  struct mq_event *some = keep ? malloc(sizeof *some * (size_t)keep) : NULL;
  if (!some)
    return;
  for (int i = 0, j = 0; i < n; i++)
    if (events[i].id > f->min_id)
      some[j++] = events[i];
  f->batch_id = ++f->ev->batches;
  call(f, status, error, some, keep);
  free(some);
}

/* The shared reader's batch (or error): every follower that shares it
 * gets it (a follower's callback may close its own subscription only);
 * then the reader reads on at once, and followers waiting try to join. */
static void reader_batch(int status, const char *error,
                         const struct mq_event *events, int n, void *data) {
  mq_subscription *r = data, *f, *next;
  if (status == MQ_EVENTS_ECLOSED) /* each follower is told itself */
    return;
  for (f = LIST_FIRST(&r->followers); f; f = next) {
    next = LIST_NEXT(f, follower_link);
    if (f->follow == F_JOINED)
      share(f, r, status, error, events, n);
  }
  if (r->closed)
    return;
  r->delivering = false;
  reader_moved(r);
  consider_read(r);
}

/* The reader's starting position is fixed: followers from the end that
 * wait for it are told. A failure is not passed on: the reader reads
 * again and tells them then. */
static void reader_started(void *arg, const char *error) {
  mq_subscription *r = arg, *f, *next;
  if (error) {
    r->on_start = reader_started;
    return;
  }
  for (f = LIST_FIRST(&r->followers); f; f = next) {
    next = LIST_NEXT(f, follower_link);
    tell_started(f, NULL);
  }
}

/* f leaves its reader (closed, or the event store closes); the reader goes
 * with its last follower. */
static void follower_detach(mq_subscription *f) {
  mq_subscription *r = f->reader;
  if (!r)
    return;
  f->reader = NULL;
  LIST_REMOVE(f, follower_link);
  bool was_joining = f->follow == F_JOINING;
  if (was_joining)
    r->joining--;
  if (LIST_EMPTY(&r->followers)) {
    LIST_REMOVE(r, reader_link);
    mq_subscription_close(r);
  } else if (was_joining && r->joining == 0) {
    consider_read(r);
  }
}

/* Reads the next batch when there may be one and nothing is in the way. */
static void consider_read(mq_subscription *s) {
  mq_events *ev = s->ev;
  if (s->closed || ev->stopped || s->reading || s->follow == F_JOINED)
    return;
  if (s->follow == F_OWN) { /* (a follower joining reads regardless) */
    if (s->delivering || (s->is_reader && s->joining > 0))
      return;
    if (s->reader && s->caught_up && try_join(s))
      return;
    if (s->follow == F_OWN && !s->more)
      return;
  }
  s->more = false;
  s->reading = true;
  int rc;
  if (!s->base) {
    rc = mq_pg_exec(ev->pg, ev->stmts[ST_SNAPSHOT], 0, NULL, 0, snapshot_done,
                    s);
  } else {
    char after[24], min[24], n[16];
    snprintf(after, sizeof after, "%lld", s->after_id);
    snprintf(min, sizeof min, "%lld", s->min_id);
    snprintf(n, sizeof n, "%d", s->batch);
    char part[16], parts[16];
    snprintf(part, sizeof part, "%d", s->part);
    snprintf(parts, sizeof parts, "%d", s->parts);
    const char *params[] = {s->pattern, s->base, s->target, after, min, n,
                            s->parts ? part : NULL, s->parts ? parts : NULL};
    rc = mq_pg_exec(ev->pg, ev->stmts[ST_READ], 8, params, 0, read_done, s);
  }
  if (rc != 0) {
    s->reading = false;
    s->more = true;
    if (!s->base)
      tell_started(s, "the connection pool is closed");
  }
}

int mq_events_check_pattern(const char *pattern, char *err, size_t errlen) {
  if (pattern && (!*pattern || strlen(pattern) > MQ_EVENTS_PATTERN_MAX)) {
    snprintf(err, errlen, "stream must be a stream or pattern of 1 to %d "
             "bytes, got %zu", MQ_EVENTS_PATTERN_MAX, strlen(pattern));
    return MQ_EVENTS_EINVAL;
  }
  return 0;
}

/* A subscription reading from base (NULL: from the end) after after_id
 * within target's step; or NULL (message in err). */
static mq_subscription *sub_new(mq_events *ev, const char *pattern,
                                const char *base, const char *target,
                                long long after_id, mq_events_cb cb,
                                void *data, char *err, size_t errlen) {
  if (mq_events_check_pattern(pattern, err, errlen) != 0)
    return NULL;
  mq_subscription *s = calloc(1, sizeof *s);
  if (!s || (pattern && !(s->pattern = strdup(pattern))) ||
      (base && !(s->base = strdup(base))) ||
      (target && !(s->target = strdup(target)))) {
    if (s) {
      free(s->pattern);
      free(s->base);
    }
    free(s);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  s->ev = ev;
  s->cb = cb;
  s->data = data;
  s->after_id = after_id;
  s->batch = BATCH;
  s->more = true;
  LIST_INSERT_HEAD(&ev->subs, s, link);
  if (!ev->listening && !ev->stopped) { /* the first: start listening */
    ev->listening = true;
    mq_pg_listen(ev->pg, ev->channel, wake_cb, ev);
    ev_timer_again(ev->loop, &ev->poll);
    ev_unref(ev->loop); /* the fallback poll alone keeps no loop running */
  }
  return s;
}

mq_subscription *mq_events_subscribe(mq_events *ev, const char *pattern,
                                     enum mq_events_from from,
                                     long long from_id, mq_events_cb cb,
                                     void *data, char *err, size_t errlen) {
  mq_subscription *s =
      sub_new(ev, pattern, from == MQ_EVENTS_FROM_END ? NULL : EMPTY_SNAPSHOT,
              NULL, 0, cb, data, err, errlen);
  if (s) {
    s->min_id = from == MQ_EVENTS_FROM_ID ? from_id : 0;
    consider_read(s);
  }
  return s;
}

mq_subscription *mq_events_subscribe_at(mq_events *ev, const char *pattern,
                                        const struct mq_event_position *from,
                                        mq_events_cb cb, void *data,
                                        char *err, size_t errlen) {
  mq_subscription *s = sub_new(ev, pattern, from->base, from->target,
                               from->target ? from->after_id : 0, cb, data,
                               err, errlen);
  if (s)
    consider_read(s);
  return s;
}

mq_subscription *mq_events_subscribe_partition(
    mq_events *ev, const char *pattern, int part, int parts, int batch,
    const struct mq_event_position *from, mq_events_cb cb, void *data,
    char *err, size_t errlen) {
  mq_subscription *s = sub_new(ev, pattern, from->base, from->target,
                               from->target ? from->after_id : 0, cb, data,
                               err, errlen);
  if (s) {
    s->part = part;
    s->parts = parts;
    s->batch = batch > 0 ? batch : BATCH;
    s->woken_by_owner = true;
    consider_read(s);
  }
  return s;
}

const char *mq_subscription_wake(mq_subscription *s, bool if_busy) {
  if (s->reading || s->delivering) {
    s->more = true; /* read again once the read or batch in hand is over */
    return NULL;
  }
  if (if_busy && !s->more) /* (more: a read is due, e.g. after a failed one) */
    return s->base;
  s->more = true;
  consider_read(s);
  return NULL;
}

bool mq_subscription_position(const mq_subscription *s, long long last_id,
                              struct mq_event_position *pos) {
  if (s->follow == F_JOINED && s->reader)
    s = s->reader;
  if (!s->read_base)
    return false;
  pos->base = s->read_base;
  pos->target = s->target ? s->target : s->base;
  pos->after_id = last_id;
  return true;
}

int mq_subscription_on_start(mq_subscription *s,
                             void (*fn)(void *arg, const char *error),
                             void *arg) {
  if (s->follow == F_JOINED && s->reader) {
    if (s->reader->base)
      return 0; /* (the reader retries a first read that failed) */
  } else if (s->base) {
    return 0;
  } else if (!s->reading) {
    return -1;
  }
  s->on_start = fn;
  s->on_start_arg = arg;
  return 1;
}

void mq_subscription_next(mq_subscription *s) {
  if (!s->delivering)
    return;
  s->delivering = false;
  consider_read(s);
}

void mq_subscription_close(mq_subscription *s) {
  if (!s || s->closed)
    return;
  s->closed = true;
  follower_detach(s);
  if (!s->reading && !s->in_cb)
    sub_free(s);
}

unsigned long long mq_subscription_batch_id(const mq_subscription *s) {
  return s->batch_id;
}

/* The shared reader of pattern (NULL: every stream), made from the end
 * when there is none; NULL when out of memory (message in err). */
static mq_subscription *reader_get(mq_events *ev, const char *pattern,
                                   char *err, size_t errlen) {
  mq_subscription *r;
  LIST_FOREACH(r, &ev->readers, reader_link) {
    if (pattern ? r->pattern && strcmp(r->pattern, pattern) == 0
                : !r->pattern)
      return r;
  }
  if (!(r = sub_new(ev, pattern, NULL, NULL, 0, reader_batch, NULL, err,
                    errlen)))
    return NULL;
  r->data = r;
  r->is_reader = true;
  LIST_INIT(&r->followers);
  LIST_INSERT_HEAD(&ev->readers, r, reader_link);
  r->on_start = reader_started;
  r->on_start_arg = r;
  consider_read(r);
  return r;
}

mq_subscription *mq_events_follow(mq_events *ev, const char *pattern,
                                  enum mq_events_from from, long long from_id,
                                  const struct mq_event_position *pos,
                                  mq_events_cb cb, void *data, char *err,
                                  size_t errlen) {
  bool live = !pos && from == MQ_EVENTS_FROM_END;
  const char *base = pos ? pos->base : live ? NULL : EMPTY_SNAPSHOT;
  const char *target = pos ? pos->target : NULL;
  mq_subscription *f = sub_new(ev, pattern, base, target,
                               target ? pos->after_id : 0, cb, data, err,
                               errlen);
  if (!f)
    return NULL;
  mq_subscription *r = reader_get(ev, pattern, err, errlen);
  if (!r) {
    sub_free(f);
    return NULL;
  }
  f->reader = r;
  LIST_INSERT_HEAD(&r->followers, f, follower_link);
  if (live) {
    f->follow = F_JOINED;
  } else {
    f->min_id = !pos && from == MQ_EVENTS_FROM_ID ? from_id : 0;
    consider_read(f);
  }
  return f;
}

/* A wake-up (payload NULL: after a reconnect, some may be lost): every
 * subscription reads. */
static void wake_cb(const char *channel, const char *payload, void *data) {
  mq_events *ev = data;
  mq_subscription *s, *next;
  for (s = LIST_FIRST(&ev->subs); s; s = next) {
    next = LIST_NEXT(s, link);
    if (s->woken_by_owner)
      continue;
    s->more = true;
    consider_read(s);
  }
}

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  wake_cb(NULL, NULL, w->data);
}

void mq_events_stop(mq_events *ev) {
  if (ev->stopped)
    return;
  flush_cb(ev->loop, &ev->flush, 0);
  ev->stopped = true;
  if (ev_is_active(&ev->poll)) {
    ev_ref(ev->loop);
    ev_timer_stop(ev->loop, &ev->poll);
  }
  if (ev_is_active(&ev->retention)) {
    ev_ref(ev->loop);
    ev_timer_stop(ev->loop, &ev->retention);
  }
  if (ev->listening)
    mq_pg_unlisten(ev->pg, ev->channel, wake_cb, ev);
  ev->listening = false;
  for (struct mq_events_hook *h = ev->hooks, *next; h; h = next) {
    next = h->next; /* stop may remove h */
    h->stop(h->data);
  }
}

void mq_events_close(mq_events *ev) {
  if (!ev)
    return;
  mq_events_stop(ev);
  ev_prepare_stop(ev->loop, &ev->flush);
  while (ev->hooks) {
    struct mq_events_hook *h = ev->hooks;
    ev->hooks = h->next;
    h->close(h->data);
  }
  while (!LIST_EMPTY(&ev->readers)) { /* every follower is closed below */
    mq_subscription *r = LIST_FIRST(&ev->readers);
    LIST_REMOVE(r, reader_link);
    while (!LIST_EMPTY(&r->followers)) {
      mq_subscription *f = LIST_FIRST(&r->followers);
      LIST_REMOVE(f, follower_link);
      f->reader = NULL;
    }
  }
  while (!LIST_EMPTY(&ev->subs)) {
    mq_subscription *s = LIST_FIRST(&ev->subs);
    if (!s->closed) { /* tell the owner its subscription is gone */
      s->closed = true;
      s->cb(MQ_EVENTS_ECLOSED, "the event store is closed", NULL, 0, s->data);
    }
    sub_free(s);
  }
  if (ev->batch)
    batch_free(ev->batch);
  free(ev);
}
