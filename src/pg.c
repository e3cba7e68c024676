/* pg.c -- asynchronous PostgreSQL on libev; see pg.h for the contract.
 *
 * Shape: a pool owns `pool_size` query connections and one listener. A
 * request waits in the pool's FIFO until the ev_prepare watcher of the next
 * loop turn hands it to the ready connection with the fewest requests in
 * flight; the connection sends it (Parse/Bind/Execute) followed by a
 * pipeline sync and moves it to its own in-flight FIFO. Results arrive in
 * the same order: each request collects results until its PGRES_PIPELINE_SYNC
 * and is then completed. So a request's callback always runs from the loop,
 * and one request's failure never aborts another's statement.
 *
 * A broken connection fails (or, with MQ_PG_RETRY, requeues) what it had in
 * flight and reconnects after a backoff. The listener re-issues every LISTEN
 * after reconnecting and then calls each subscriber with a NULL payload:
 * "notifications may have been missed, look again".
 */
#include "pg.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_READY };

struct req {
  struct req *next;
  int stmt;          /* statement id, or -1 for `sql` */
  const char *sql;   /* points into this allocation when stmt < 0 */
  int nparams;
  const char **params;
  int flags;
  mq_pg_cb cb;
  void *data;
  ev_tstamp queued_at;
  ev_tstamp sent_at;
  /* Set while in flight. */
  bool with_prepare; /* the first command is the statement's Parse */
  int commands_done;
  PGresult *result;
  PGresult *error;   /* first error result */
};

struct fifo {
  struct req *head, *tail;
  size_t n;
};

struct sub {
  struct sub *next;
  char *channel;
  mq_pg_notify_cb cb;
  void *data;
};

struct conn {
  mq_pg *pg;
  int index; /* -1 for the listener */
  enum conn_state state;
  PGconn *pq;
  ev_io io;
  int io_fd;
  int io_events;
  ev_timer timer; /* connect deadline while connecting, backoff when down */
  double backoff;
  int attempts;
  struct fifo sent;
  bool *prepared; /* per statement id */
  int nprepared;
  bool was_up;    /* has been connected before (for logging) */
};

struct mq_pg {
  struct ev_loop *loop;
  char *conninfo;
  char masked[512];
  int nconns;
  struct conn *conns;
  struct conn listener;
  bool use_listener;
  double reconnect_max;
  double queue_timeout;
  char *init_sql;
  struct fifo waiting;
  ev_prepare dispatch;
  ev_idle kick; /* keeps the loop from blocking before dispatch runs */
  ev_timer expiry;
  char **stmts;
  int nstmts, stmts_cap;
  struct sub *subs;
  void (*state_cb)(bool up, void *data);
  void *state_data;
  bool up;
  char last_error[512];
  uint64_t rng;
  int depth;    /* > 0 while inside a loop callback of this pool */
  bool closing; /* mq_pg_close() was called */
  long long reconnects; /* connections made again after being lost */
};

static void conn_start(struct conn *c);
static void conn_fail(struct conn *c, const char *why);
static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void dispatch_cb(struct ev_loop *loop, ev_prepare *w, int revents);
static void expiry_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void complete(struct req *r, int status, const char *msg);
static void pool_free(mq_pg *pg);
static void listen_send(struct conn *c, const char *channel, bool listen);

/* ---- small helpers ---------------------------------------------------- */

static void fifo_push(struct fifo *f, struct req *r) {
  r->next = NULL;
  if (f->tail)
    f->tail->next = r;
  else
    f->head = r;
  f->tail = r;
  f->n++;
}

static struct req *fifo_pop(struct fifo *f) {
  struct req *r = f->head;
  if (r) {
    f->head = r->next;
    if (!f->head)
      f->tail = NULL;
    f->n--;
    r->next = NULL;
  }
  return r;
}

/* Puts the whole of `src` in front of `dst`, keeping src's order. */
static void fifo_prepend(struct fifo *dst, struct fifo *src) {
  if (!src->head)
    return;
  src->tail->next = dst->head;
  if (!dst->tail)
    dst->tail = src->tail;
  dst->head = src->head;
  dst->n += src->n;
  src->head = src->tail = NULL;
  src->n = 0;
}

static double jitter(mq_pg *pg, double seconds) {
  pg->rng ^= pg->rng << 13;
  pg->rng ^= pg->rng >> 7;
  pg->rng ^= pg->rng << 17;
  double f = 0.8 + 0.4 * (double)(pg->rng % 10000) / 10000.0;
  return seconds * f;
}

/* Copies a libpq message onto one line: runs of whitespace become one
 * space. */
static void set_error(char *dst, size_t len, const char *msg) {
  if (!msg || !*msg)
    msg = "unknown error";
  size_t n = 0;
  for (const char *p = msg; *p && n + 1 < len; p++) {
    char c = *p;
    if (c == '\n' || c == '\t' || c == '\r' || c == ' ') {
      if (n > 0 && dst[n - 1] != ' ')
        dst[n++] = ' ';
    } else {
      dst[n++] = c;
    }
  }
  while (n > 0 && dst[n - 1] == ' ')
    n--;
  dst[n] = '\0';
}

/* Called by every loop callback of the pool around its work, so that
 * mq_pg_close() from a user callback frees the pool only at the end. */
static void enter(mq_pg *pg) { pg->depth++; }

static void leave(mq_pg *pg) {
  if (--pg->depth == 0 && pg->closing)
    pool_free(pg);
}

/* ---- requests ---------------------------------------------------------- */

static struct req *req_new(const char *sql, int stmt, int nparams,
                           const char *const *params) {
  size_t size = sizeof(struct req) + (size_t)nparams * sizeof(char *);
  size_t sql_len = sql ? strlen(sql) + 1 : 0;
  size += sql_len;
  for (int i = 0; i < nparams; i++)
    if (params[i])
      size += strlen(params[i]) + 1;
  struct req *r = calloc(1, size);
  if (!r)
    return NULL;
  r->params = (const char **)(r + 1);
  char *p = (char *)(r->params + nparams);
  if (sql) {
    memcpy(p, sql, sql_len);
    r->sql = p;
    p += sql_len;
  }
  for (int i = 0; i < nparams; i++) {
    if (!params[i]) {
      r->params[i] = NULL;
      continue;
    }
    size_t n = strlen(params[i]) + 1;
    memcpy(p, params[i], n);
    r->params[i] = p;
    p += n;
  }
  r->stmt = stmt;
  r->nparams = nparams;
  return r;
}

/* Calls the request's callback and frees it. */
static void complete(struct req *r, int status, const char *msg) {
  struct mq_pg_reply reply = {.status = status, .sqlstate = ""};
  char buf[1024];
  if (status == MQ_PG_OK) {
    reply.result = r->result;
  } else if (status == MQ_PG_ESQL && r->error) {
    /* The server's primary message, then its hint; no "ERROR:" prefix. */
    const char *primary = PQresultErrorField(r->error, PG_DIAG_MESSAGE_PRIMARY);
    const char *hint = PQresultErrorField(r->error, PG_DIAG_MESSAGE_HINT);
    if (hint && !*hint) /* an empty hint passed on by a handler */
      hint = NULL;
    char raw[1024];
    if (primary)
      snprintf(raw, sizeof raw, "%s%s%s", primary, hint ? " (hint: " : "",
               hint ? hint : "");
    else
      snprintf(raw, sizeof raw, "%s", PQresultErrorMessage(r->error));
    if (primary && hint)
      snprintf(raw + strlen(raw), sizeof raw - strlen(raw), ")");
    set_error(buf, sizeof buf, raw);
    reply.error = buf;
    const char *st = PQresultErrorField(r->error, PG_DIAG_SQLSTATE);
    reply.sqlstate = st ? st : "";
  } else {
    reply.error = msg;
  }
  if (r->cb)
    r->cb(&reply, r->data);
  PQclear(r->result);
  PQclear(r->error);
  free(r);
}

static int submit(mq_pg *pg, struct req *r, int flags, mq_pg_cb cb,
                  void *data) {
  r->flags = flags;
  r->cb = cb;
  r->data = data;
  r->queued_at = ev_now(pg->loop);
  fifo_push(&pg->waiting, r);
  /* A request made from a prepare or check watcher would otherwise wait
   * for the next poll to return: the idle watcher makes that poll not
   * block, and the prepare watcher sends it right after. */
  ev_prepare_start(pg->loop, &pg->dispatch);
  ev_idle_start(pg->loop, &pg->kick);
  if (!ev_is_active(&pg->expiry))
    ev_timer_again(pg->loop, &pg->expiry);
  return 0;
}

int mq_pg_query(mq_pg *pg, const char *sql, int nparams,
                const char *const *params, int flags, mq_pg_cb cb,
                void *data) {
  if (!pg || !sql || nparams < 0 || (nparams > 0 && !params))
    return MQ_PG_EINVAL;
  if (pg->closing)
    return MQ_PG_ECLOSED;
  struct req *r = req_new(sql, -1, nparams, params);
  if (!r)
    return MQ_PG_ENOMEM;
  return submit(pg, r, flags, cb, data);
}

int mq_pg_prepare(mq_pg *pg, const char *sql) {
  if (!pg || !sql)
    return MQ_PG_EINVAL;
  if (pg->nstmts == pg->stmts_cap) {
    int cap = pg->stmts_cap ? pg->stmts_cap * 2 : 16;
    char **s = realloc(pg->stmts, (size_t)cap * sizeof *s);
    if (!s)
      return MQ_PG_ENOMEM;
    pg->stmts = s;
    pg->stmts_cap = cap;
  }
  char *copy = strdup(sql);
  if (!copy)
    return MQ_PG_ENOMEM;
  pg->stmts[pg->nstmts] = copy;
  return pg->nstmts++;
}

int mq_pg_prepare_in(mq_pg *pg, const char *tmpl, const char *schema) {
  char quoted[160], sql[4096];
  snprintf(quoted, sizeof quoted, "\"%s\"", schema); /* [a-z0-9_] only */
  size_t len = 0;
  for (const char *p = tmpl; *p && len < sizeof sql - 1;) {
    if (p[0] == '%' && p[1] == 's') {
      len += (size_t)snprintf(sql + len, sizeof sql - len, "%s", quoted);
      p += 2;
    } else {
      sql[len++] = *p++;
    }
  }
  if (len >= sizeof sql - 1)
    return MQ_PG_EINVAL;
  sql[len] = '\0';
  return mq_pg_prepare(pg, sql);
}

int mq_pg_exec(mq_pg *pg, int stmt, int nparams, const char *const *params,
               int flags, mq_pg_cb cb, void *data) {
  if (!pg || stmt < 0 || stmt >= pg->nstmts || nparams < 0 ||
      (nparams > 0 && !params))
    return MQ_PG_EINVAL;
  if (pg->closing)
    return MQ_PG_ECLOSED;
  struct req *r = req_new(NULL, stmt, nparams, params);
  if (!r)
    return MQ_PG_ENOMEM;
  return submit(pg, r, flags, cb, data);
}

/* ---- sending ----------------------------------------------------------- */

static bool conn_prepared(struct conn *c, int stmt) {
  return stmt < c->nprepared && c->prepared[stmt];
}

static int conn_mark_prepared(struct conn *c, int stmt, bool value) {
  if (stmt >= c->nprepared) {
    int n = c->pg->stmts_cap;
    bool *p = realloc(c->prepared, (size_t)n * sizeof *p);
    if (!p)
      return -1;
    memset(p + c->nprepared, 0, (size_t)(n - c->nprepared) * sizeof *p);
    c->prepared = p;
    c->nprepared = n;
  }
  c->prepared[stmt] = value;
  return 0;
}

static void conn_want_write(struct conn *c, bool on) {
  int events = EV_READ | (on ? EV_WRITE : 0);
  if (events == c->io_events)
    return;
  ev_io_stop(c->pg->loop, &c->io);
  ev_io_set(&c->io, c->io_fd, events);
  ev_io_start(c->pg->loop, &c->io);
  c->io_events = events;
}

/* Sends one request followed by a sync. Returns false when the connection
 * failed (the caller then fails the connection). */
static bool conn_send(struct conn *c, struct req *r) {
  mq_pg *pg = c->pg;
  int ok;
  r->with_prepare = false;
  r->commands_done = 0;
  if (r->stmt < 0) {
    ok = PQsendQueryParams(c->pq, r->sql, r->nparams, NULL, r->params, NULL,
                           NULL, 0);
  } else {
    char name[32];
    snprintf(name, sizeof name, "mq_s%d", r->stmt);
    ok = 1;
    if (!conn_prepared(c, r->stmt)) {
      ok = PQsendPrepare(c->pq, name, pg->stmts[r->stmt], 0, NULL);
      if (ok && conn_mark_prepared(c, r->stmt, true) == 0)
        r->with_prepare = true;
    }
    if (ok)
      ok = PQsendQueryPrepared(c->pq, name, r->nparams, r->params, NULL, NULL,
                               0);
  }
  if (ok)
    ok = PQpipelineSync(c->pq);
  r->sent_at = ev_now(pg->loop);
  fifo_push(&c->sent, r);
  return ok == 1;
}

/* How busy a connection looks: requests in flight, and a heavy penalty
 * when the oldest has been running for a while (a slow statement would
 * hold up everything queued behind it on that connection). */
static size_t load_of(const struct conn *c, ev_tstamp now) {
  size_t load = c->sent.n;
  if (c->sent.head && now - c->sent.head->sent_at > 0.05)
    load += 1000;
  return load;
}

static struct conn *least_loaded(mq_pg *pg) {
  struct conn *best = NULL;
  size_t best_load = 0;
  ev_tstamp now = ev_now(pg->loop);
  for (int i = 0; i < pg->nconns; i++) {
    struct conn *c = &pg->conns[i];
    if (c->state != CONN_READY)
      continue;
    size_t load = load_of(c, now);
    if (!best || load < best_load) {
      best = c;
      best_load = load;
    }
  }
  return best;
}

static void conn_flush(struct conn *c) {
  int rc = PQflush(c->pq);
  if (rc < 0)
    conn_fail(c, PQerrorMessage(c->pq));
  else
    conn_want_write(c, rc == 1);
}

/* Hands waiting requests to ready connections, once per loop turn. Each
 * send already pushed its bytes; the flush afterwards only learns which
 * connections still have output pending and must wait for writability. */
static void dispatch_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  mq_pg *pg = w->data;
  enter(pg);
  while (pg->waiting.head && !pg->closing) {
    struct conn *c = least_loaded(pg);
    if (!c)
      break;
    if (!conn_send(c, fifo_pop(&pg->waiting)))
      conn_fail(c, PQerrorMessage(c->pq));
  }
  for (int i = 0; i < pg->nconns && !pg->closing; i++)
    if (pg->conns[i].state == CONN_READY)
      conn_flush(&pg->conns[i]);
  if (!pg->closing && (!pg->waiting.head || !least_loaded(pg)))
    ev_prepare_stop(loop, w);
  leave(pg);
}

static void kick_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  ev_idle_stop(loop, w);
}

/* Fails requests that have waited longer than queue_timeout for a
 * connection. Runs once a second while requests wait. */
static void expiry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_pg *pg = w->data;
  enter(pg);
  ev_tstamp now = ev_now(loop);
  struct fifo keep = {0};
  struct fifo expired = {0};
  struct req *r;
  while ((r = fifo_pop(&pg->waiting)))
    fifo_push(now - r->queued_at >= pg->queue_timeout ? &expired : &keep, r);
  pg->waiting = keep;
  char msg[700];
  snprintf(msg, sizeof msg,
           "database unavailable: no connection within %.0f s (%s)",
           pg->queue_timeout, pg->last_error[0] ? pg->last_error : "connecting");
  while ((r = fifo_pop(&expired)))
    complete(r, pg->closing ? MQ_PG_ECLOSED : MQ_PG_EUNAVAILABLE,
             pg->closing ? "connection pool closed" : msg);
  if (!pg->closing && !pg->waiting.head)
    ev_timer_stop(loop, w);
  leave(pg);
}

/* ---- receiving --------------------------------------------------------- */

static void notify_all(mq_pg *pg, const char *channel, const char *payload) {
  for (struct sub *s = pg->subs; s && !pg->closing;) {
    struct sub *next = s->next; /* a callback may unlisten itself */
    if (strcmp(s->channel, channel) == 0)
      s->cb(channel, payload, s->data);
    s = next;
  }
}

/* Finishes the request at the head of the in-flight FIFO. */
static void finish_head(struct conn *c) {
  struct req *r = fifo_pop(&c->sent);
  if (r->error)
    complete(r, MQ_PG_ESQL, NULL);
  else if (!r->result)
    complete(r, MQ_PG_ESQL, "statement aborted");
  else
    complete(r, MQ_PG_OK, NULL);
}

/* Sorts one result into the head request. */
static void take_result(struct conn *c, PGresult *res) {
  struct req *r = c->sent.head;
  ExecStatusType st = PQresultStatus(res);
  if (st == PGRES_PIPELINE_ABORTED) {
    PQclear(res);
  } else if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE ||
             st == PGRES_NONFATAL_ERROR) {
    if (r->with_prepare && r->commands_done == 0)
      conn_mark_prepared(c, r->stmt, false);
    if (!r->error)
      r->error = res;
    else
      PQclear(res);
  } else if (r->with_prepare && r->commands_done == 0) {
    PQclear(res); /* the Parse's own COMMAND_OK */
  } else {
    PQclear(r->result);
    r->result = res;
  }
}

/* Reads every complete result; stops when libpq would block. */
static void conn_read_results(struct conn *c) {
  int nulls = 0;
  while (c->sent.head && !c->pg->closing && c->state == CONN_READY) {
    if (PQisBusy(c->pq))
      break;
    PGresult *res = PQgetResult(c->pq);
    if (!res) {
      if (++nulls > 1)
        break; /* nothing more buffered */
      c->sent.head->commands_done++;
      continue;
    }
    nulls = 0;
    if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
      PQclear(res);
      finish_head(c);
    } else {
      take_result(c, res);
    }
  }
}

static void conn_read(struct conn *c) {
  mq_pg *pg = c->pg;
  if (!PQconsumeInput(c->pq)) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  conn_read_results(c);
  if (pg->closing || c->state != CONN_READY)
    return;
  PGnotify *n;
  while (!pg->closing && c->state == CONN_READY &&
         (n = PQnotifies(c->pq))) {
    notify_all(pg, n->relname, n->extra);
    PQfreemem(n);
  }
  if (!pg->closing && c->state == CONN_READY &&
      PQstatus(c->pq) == CONNECTION_BAD)
    conn_fail(c, PQerrorMessage(c->pq));
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  struct conn *c = w->data;
  mq_pg *pg = c->pg;
  enter(pg);
  if (c->state == CONN_CONNECTING) {
    conn_start(c); /* continue PQconnectPoll */
  } else if (c->state == CONN_READY) {
    if (revents & EV_WRITE)
      conn_flush(c);
    if ((revents & EV_READ) && c->state == CONN_READY && !pg->closing)
      conn_read(c);
  }
  leave(pg);
}

/* ---- connecting -------------------------------------------------------- */

static void set_up(mq_pg *pg) {
  bool up = false;
  for (int i = 0; i < pg->nconns; i++)
    if (pg->conns[i].state == CONN_READY)
      up = true;
  if (up == pg->up)
    return;
  pg->up = up;
  if (pg->state_cb)
    pg->state_cb(up, pg->state_data);
}

static void conn_watch(struct conn *c, int fd, int events) {
  if (fd < 0) {
    conn_fail(c, "connection has no socket");
    return;
  }
  if (ev_is_active(&c->io))
    ev_io_stop(c->pg->loop, &c->io);
  c->io_fd = fd;
  c->io_events = events;
  ev_io_set(&c->io, fd, events);
  ev_io_start(c->pg->loop, &c->io);
}

static void init_done(const struct mq_pg_reply *reply, void *data) {
  if (reply->status == MQ_PG_ESQL)
    mq_log_error("pg", "connection set-up failed error=\"%s\"", reply->error);
}

/* Server notices (NOTICE, WARNING) go to the log instead of stderr. */
static void on_notice(void *arg, const PGresult *res) {
  const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  char line[512];
  set_error(line, sizeof line, msg ? msg : PQresultErrorMessage(res));
  if (sev && strcmp(sev, "WARNING") == 0)
    mq_log_warn("pg", "server warning: %s", line);
  else
    mq_log_debug("pg", "server notice: %s", line);
}

static void conn_ready(struct conn *c) {
  mq_pg *pg = c->pg;
  ev_timer_stop(pg->loop, &c->timer);
  if (PQsetnonblocking(c->pq, 1) != 0 || PQenterPipelineMode(c->pq) != 1) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  c->state = CONN_READY;
  c->backoff = 0;
  bool again = c->was_up;
  c->was_up = true;
  if (again)
    pg->reconnects++;
  if (c->attempts > 1 || again)
    mq_log_info("pg", "connected conn=%d attempts=%d", c->index, c->attempts);
  else
    mq_log_debug("pg", "connected conn=%d", c->index);
  c->attempts = 0;
  conn_watch(c, PQsocket(c->pq), EV_READ);
  if (c->index < 0) {
    /* Re-LISTEN every channel once, then tell subscribers that they may
     * have missed notifications while the connection was down. */
    for (struct sub *s = pg->subs; s; s = s->next) {
      bool first = true;
      for (struct sub *t = pg->subs; t != s; t = t->next)
        if (strcmp(t->channel, s->channel) == 0)
          first = false;
      if (first)
        listen_send(c, s->channel, true);
    }
    if (c->state == CONN_READY)
      conn_flush(c);
    if (again)
      for (struct sub *s = pg->subs; s && !pg->closing;) {
        struct sub *next = s->next;
        s->cb(s->channel, NULL, s->data);
        s = next;
      }
    return;
  }
  if (pg->init_sql) {
    struct req *r = req_new(pg->init_sql, -1, 0, NULL);
    if (r) {
      r->cb = init_done;
      if (!conn_send(c, r)) {
        conn_fail(c, PQerrorMessage(c->pq));
        return;
      }
    }
  }
  set_up(pg);
  if (!pg->closing && pg->waiting.head)
    ev_prepare_start(pg->loop, &pg->dispatch);
}

/* Starts or continues a non-blocking connect. */
static void conn_start(struct conn *c) {
  mq_pg *pg = c->pg;
  PostgresPollingStatusType st;
  if (c->state == CONN_DOWN) {
    c->attempts++;
    c->pq = PQconnectStart(pg->conninfo);
    if (!c->pq) {
      conn_fail(c, "out of memory");
      return;
    }
    if (PQstatus(c->pq) == CONNECTION_BAD) {
      conn_fail(c, PQerrorMessage(c->pq));
      return;
    }
    PQsetNoticeReceiver(c->pq, on_notice, NULL);
    c->state = CONN_CONNECTING;
    ev_timer_stop(pg->loop, &c->timer);
    ev_timer_set(&c->timer, 10.0, 0.);
    ev_timer_start(pg->loop, &c->timer);
    st = PGRES_POLLING_WRITING;
  } else {
    st = PQconnectPoll(c->pq);
  }
  switch (st) {
  case PGRES_POLLING_OK:
    conn_ready(c);
    break;
  case PGRES_POLLING_READING:
    conn_watch(c, PQsocket(c->pq), EV_READ);
    break;
  case PGRES_POLLING_WRITING:
    conn_watch(c, PQsocket(c->pq), EV_WRITE);
    break;
  default:
    conn_fail(c, PQerrorMessage(c->pq));
    break;
  }
}

/* Tears the connection down, settles its in-flight requests and schedules a
 * reconnect. */
static void conn_fail(struct conn *c, const char *why) {
  mq_pg *pg = c->pg;
  char msg[512], scrubbed[512];
  set_error(msg, sizeof msg, why);
  mq_log_scrub(msg, pg->conninfo, scrubbed, sizeof scrubbed);
  memcpy(msg, scrubbed, sizeof msg);
  bool was_ready = c->state == CONN_READY;
  if (ev_is_active(&c->io))
    ev_io_stop(pg->loop, &c->io);
  ev_timer_stop(pg->loop, &c->timer);
  if (c->pq)
    PQfinish(c->pq);
  c->pq = NULL;
  c->state = CONN_DOWN;
  c->io_events = 0;
  for (int i = 0; i < c->nprepared; i++)
    c->prepared[i] = false;
  snprintf(pg->last_error, sizeof pg->last_error, "%s", msg);

  c->backoff = c->backoff == 0 ? 0.1 : c->backoff * 2;
  if (c->backoff > pg->reconnect_max)
    c->backoff = pg->reconnect_max;
  double delay = jitter(pg, c->backoff);
  for (char *p = msg; *p; p++) /* it is logged inside double quotes */
    if (*p == '"')
      *p = '\'';
  if (was_ready)
    mq_log_warn("pg", "connection lost conn=%d error=\"%s\" reconnect_in_ms=%d",
                c->index, msg, (int)(delay * 1000));
  else
    mq_log_warn("pg",
                "cannot connect conn=%d target=\"%s\" error=\"%s\" "
                "attempt=%d retry_in_ms=%d",
                c->index, pg->masked, msg, c->attempts, (int)(delay * 1000));
  ev_timer_set(&c->timer, delay, 0.);
  ev_timer_start(pg->loop, &c->timer);

  /* Requests that may be resent go back to the front of the queue in
   * order; the others may have run, so their callers must decide. */
  struct fifo retry = {0};
  struct fifo lost = {0};
  struct req *r;
  while ((r = fifo_pop(&c->sent))) {
    PQclear(r->result);
    PQclear(r->error);
    r->result = r->error = NULL;
    fifo_push(c->index >= 0 && (r->flags & MQ_PG_RETRY) ? &retry : &lost, r);
  }
  fifo_prepend(&pg->waiting, &retry);
  if (pg->waiting.head && !ev_is_active(&pg->expiry))
    ev_timer_again(pg->loop, &pg->expiry);
  char err[700];
  snprintf(err, sizeof err,
           "connection to PostgreSQL lost (%s); the statement may or may not "
           "have run",
           msg);
  while ((r = fifo_pop(&lost)))
    complete(r, pg->closing ? MQ_PG_ECLOSED : MQ_PG_ECONNLOST,
             pg->closing ? "connection pool closed" : err);
  if (!pg->closing && c->index >= 0) {
    set_up(pg);
    if (pg->waiting.head && least_loaded(pg))
      ev_prepare_start(pg->loop, &pg->dispatch);
  }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct conn *c = w->data;
  mq_pg *pg = c->pg;
  enter(pg);
  if (c->state == CONN_CONNECTING)
    conn_fail(c, "timeout while connecting");
  else if (c->state == CONN_DOWN)
    conn_start(c);
  leave(pg);
}

static void conn_init(mq_pg *pg, struct conn *c, int index) {
  memset(c, 0, sizeof *c);
  c->pg = pg;
  c->index = index;
  c->state = CONN_DOWN;
  ev_init(&c->io, conn_io_cb);
  c->io.data = c;
  ev_init(&c->timer, conn_timer_cb);
  c->timer.data = c;
}

/* ---- LISTEN ------------------------------------------------------------ */

static void listen_done(const struct mq_pg_reply *reply, void *data) {
  /* A lost connection re-issues its LISTENs once it is back. */
  if (reply->status != MQ_PG_OK && reply->status != MQ_PG_ECLOSED &&
      reply->status != MQ_PG_ECONNLOST)
    mq_log_error("pg", "LISTEN failed error=\"%s\"", reply->error);
}

/* Queues LISTEN or UNLISTEN on the listener connection. */
static void listen_send(struct conn *c, const char *channel, bool listen) {
  char *ident = PQescapeIdentifier(c->pq, channel, strlen(channel));
  if (!ident) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  char sql[256];
  snprintf(sql, sizeof sql, "%s %s", listen ? "LISTEN" : "UNLISTEN", ident);
  PQfreemem(ident);
  struct req *r = req_new(sql, -1, 0, NULL);
  if (!r) {
    mq_log_error("pg", "out of memory issuing LISTEN");
    return;
  }
  r->cb = listen_done;
  if (!conn_send(c, r))
    conn_fail(c, PQerrorMessage(c->pq));
}

static bool channel_used(mq_pg *pg, const char *channel) {
  for (struct sub *s = pg->subs; s; s = s->next)
    if (strcmp(s->channel, channel) == 0)
      return true;
  return false;
}

int mq_pg_listen(mq_pg *pg, const char *channel, mq_pg_notify_cb cb,
                 void *data) {
  if (!pg || !channel || !cb || strlen(channel) > 63)
    return MQ_PG_EINVAL;
  if (pg->closing)
    return MQ_PG_ECLOSED;
  if (!pg->use_listener)
    return MQ_PG_EINVAL;
  struct sub *s = calloc(1, sizeof *s);
  if (!s || !(s->channel = strdup(channel))) {
    free(s);
    return MQ_PG_ENOMEM;
  }
  s->cb = cb;
  s->data = data;
  bool first = !channel_used(pg, channel);
  s->next = pg->subs;
  pg->subs = s;
  struct conn *c = &pg->listener;
  if (first && c->state == CONN_READY) {
    listen_send(c, channel, true);
    if (c->state == CONN_READY)
      conn_flush(c);
  }
  return 0;
}

int mq_pg_unlisten(mq_pg *pg, const char *channel, mq_pg_notify_cb cb,
                   void *data) {
  if (!pg || !channel)
    return MQ_PG_EINVAL;
  for (struct sub **p = &pg->subs; *p; p = &(*p)->next) {
    struct sub *s = *p;
    if (strcmp(s->channel, channel) == 0 && s->cb == cb && s->data == data) {
      *p = s->next;
      free(s->channel);
      free(s);
      struct conn *c = &pg->listener;
      if (!channel_used(pg, channel) && c->state == CONN_READY &&
          !pg->closing) {
        listen_send(c, channel, false);
        if (c->state == CONN_READY)
          conn_flush(c);
      }
      return 0;
    }
  }
  return MQ_PG_EINVAL;
}

/* ---- the pool ---------------------------------------------------------- */

int mq_pg_check_conninfo(const char *conninfo, char *err, size_t errlen) {
  char *why = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", &why);
  if (opts) {
    PQconninfoFree(opts);
    return 0;
  }
  char line[512], scrubbed[512];
  set_error(line, sizeof line, why ? why : "out of memory");
  PQfreemem(why);
  mq_log_scrub(line, conninfo, scrubbed, sizeof scrubbed);
  snprintf(err, errlen, "invalid database connection string: %s", scrubbed);
  return -1;
}

mq_pg *mq_pg_new(struct ev_loop *loop, const struct mq_pg_options *opts) {
  mq_pg *pg = calloc(1, sizeof *pg);
  if (!pg)
    return NULL;
  pg->loop = loop;
  pg->nconns = opts->pool_size > 0 ? opts->pool_size : 4;
  pg->reconnect_max = opts->reconnect_max > 0 ? opts->reconnect_max : 10;
  pg->queue_timeout = opts->queue_timeout > 0 ? opts->queue_timeout : 30;
  pg->use_listener = opts->listen;
  pg->conninfo = strdup(opts->conninfo ? opts->conninfo : "");
  pg->init_sql = opts->init_sql ? strdup(opts->init_sql) : NULL;
  pg->conns = calloc((size_t)pg->nconns, sizeof *pg->conns);
  if (!pg->conninfo || !pg->conns) {
    free(pg->conninfo);
    free(pg->conns);
    free(pg);
    return NULL;
  }
  mq_log_mask_conninfo(pg->conninfo, pg->masked, sizeof pg->masked);
  pg->rng = (uint64_t)ev_time() * 1000003u ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15u;
  ev_prepare_init(&pg->dispatch, dispatch_cb);
  pg->dispatch.data = pg;
  ev_idle_init(&pg->kick, kick_cb);
  ev_init(&pg->expiry, expiry_cb);
  pg->expiry.repeat = 1.0;
  pg->expiry.data = pg;
  enter(pg);
  for (int i = 0; i < pg->nconns; i++) {
    conn_init(pg, &pg->conns[i], i);
    conn_start(&pg->conns[i]);
  }
  conn_init(pg, &pg->listener, -1);
  if (pg->use_listener)
    conn_start(&pg->listener);
  pg->depth--; /* not leave(): nothing can have closed the pool yet */
  return pg;
}

void mq_pg_on_state(mq_pg *pg, void (*cb)(bool up, void *data), void *data) {
  pg->state_cb = cb;
  pg->state_data = data;
}

bool mq_pg_is_up(const mq_pg *pg) { return pg->up; }

void mq_pg_stats(const mq_pg *pg, struct mq_pg_stats *out) {
  *out = (struct mq_pg_stats){.reconnects = pg->reconnects};
  for (int i = 0; i < pg->nconns; i++) {
    const struct conn *c = &pg->conns[i];
    if (c->state != CONN_READY)
      out->down++;
    else if (c->sent.head)
      out->busy++;
    else
      out->idle++;
  }
}

size_t mq_pg_pending(const mq_pg *pg) {
  size_t n = pg->waiting.n;
  for (int i = 0; i < pg->nconns; i++)
    n += pg->conns[i].sent.n;
  return n;
}

const char *mq_pg_last_error(const mq_pg *pg) { return pg->last_error; }

static void conn_close(struct conn *c) {
  mq_pg *pg = c->pg;
  if (ev_is_active(&c->io))
    ev_io_stop(pg->loop, &c->io);
  ev_timer_stop(pg->loop, &c->timer);
  struct req *r;
  while ((r = fifo_pop(&c->sent)))
    complete(r, MQ_PG_ECLOSED, "connection pool closed");
  if (c->pq)
    PQfinish(c->pq);
  c->pq = NULL;
  c->state = CONN_DOWN;
  free(c->prepared);
  c->prepared = NULL;
  c->nprepared = 0;
}

void mq_pg_close(mq_pg *pg) {
  if (!pg || pg->closing)
    return;
  pg->closing = true;
  ev_prepare_stop(pg->loop, &pg->dispatch);
  ev_idle_stop(pg->loop, &pg->kick);
  ev_timer_stop(pg->loop, &pg->expiry);
  enter(pg);
  struct req *r;
  while ((r = fifo_pop(&pg->waiting)))
    complete(r, MQ_PG_ECLOSED, "connection pool closed");
  for (int i = 0; i < pg->nconns; i++)
    conn_close(&pg->conns[i]);
  conn_close(&pg->listener);
  leave(pg); /* frees now unless a pool callback is still on the stack */
}

static void pool_free(mq_pg *pg) {
  while (pg->subs) {
    struct sub *s = pg->subs;
    pg->subs = s->next;
    free(s->channel);
    free(s);
  }
  for (int i = 0; i < pg->nstmts; i++)
    free(pg->stmts[i]);
  free(pg->stmts);
  free(pg->conns);
  free(pg->conninfo);
  free(pg->init_sql);
  free(pg);
}

long long mq_pg_getll(const PGresult *res, int row, int col) {
  return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

double mq_pg_getdouble(const PGresult *res, int row, int col) {
  return strtod(PQgetvalue(res, row, col), NULL);
}
