/* worker.c -- consumers, slots and dispatch of jobs to handlers; see
 * worker.h.
 *
 * Shapes:
 *  - consumer: one per queue a handler names; `running` jobs of at most
 *    `slots`; one fetch in flight at a time (two for a busy queue); `more`
 *    says a fetch may find work (a full batch came back, or a NOTIFY
 *    arrived meanwhile); jobs claimed ahead wait in `buffer` until a slot
 *    frees up.
 *  - fetch: one statement claiming jobs for the consumers that asked for
 *    them in one loop turn (gather_cb), one `fetch_part` each.
 *  - active: one job whose handler runs as a task.
 *  - inflight: requests whose callbacks point into the worker (fetches and
 *    failures); the worker reports itself stopped only when it is zero.
 */
#include "worker.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <lauxlib.h>
#include <lua.h>

#include "buf.h"
#include "handlers.h"
#include "json.h"
#include "log.h"
#include "lua_host.h"
#include "metrics.h"
#include "queue.h"
#include "runtime.h"
#include "scheduler.h"
#include "task.h"

#define BIG_RESULT (64 * 1024) /* bytes of a result that count for a trim */
#define TRIM_WAIT 0.5  /* seconds a trim waits for big results to be stored */
#define TRIM_EVERY 1.0 /* seconds between trims counting big results */

/* A fetched job waiting for a slot; its strings live after the struct. */
struct buffered {
  STAILQ_ENTRY(buffered) link;
  struct mq_job job;
};

/* Fetches start past a job claimed MQ_FETCH_AFTER_LAG seconds ago, so a
 * job whose sending transaction commits within that time of taking its id
 * is never passed over; a fetch from the queue's head, at least every
 * MQ_FETCH_HEAD_INTERVAL seconds (or MQ_FETCH_HEAD_SPACING times as long
 * as the last one took, up to MQ_FETCH_HEAD_MAX), takes any job that
 * became runnable behind it. */
#define MQ_FETCH_AFTER_LAG 1.0
#define MQ_FETCH_HEAD_INTERVAL 1.0
#define MQ_FETCH_HEAD_SPACING 200.0
#define MQ_FETCH_HEAD_MAX 20.0
#define MQ_FETCH_MARKS 8
/* Jobs one fetch statement asks for at most, the sum over the queues it
 * claims for (one queue alone may ask for more): several statements can
 * run on the pool's connections at once. */
#define MQ_FETCH_MANY_JOBS 1000

/* A job claimed, and when (ev_now). */
struct claim_mark {
  struct mq_queue_position pos;
  ev_tstamp at;
};

struct consumer {
  mq_worker *w;
  char *queue;
  mq_metrics_queue *metrics; /* the runtime's counters of this queue */
  int slots;    /* concurrency */
  int prefetch; /* jobs claimed ahead (config queue.prefetch), or
                   MQ_PREFETCH_AUTO: see buffer_target */
  double avg_run; /* seconds a handler of this queue runs, a moving
                     average; < 0 until one has ended */
  int running;
  int fetching; /* fetches in flight: at most 2 (see consider_fetch) */
  int claiming; /* jobs the fetches in flight asked for */
  bool full;    /* the last fetch to answer claimed all it asked for */
  bool more;
  bool live;    /* some handler still names this queue */
  bool poll_due; /* its poll timer fired: check it at the next probe */
  ev_timer poll;
  /* Where fetches start (sql/023_fetch_after.sql): past `after`, a job
   * claimed at least MQ_FETCH_AFTER_LAG seconds ago, so that the index
   * entries of the jobs claimed before it are not walked again; or from
   * the queue's head, which catches jobs that became runnable behind
   * `after`. */
  struct mq_queue_position after;
  bool has_after;
  struct claim_mark latest;  /* the last job claimed (at 0: none) */
  struct claim_mark marks[MQ_FETCH_MARKS]; /* jobs claimed at least
                                              MQ_FETCH_AFTER_LAG / 4 s
                                              apart, oldest first */
  int nmarks;
  ev_tstamp head_due; /* a fetch from the head is due from then on */
  bool head;          /* the next fetch starts from the head */
  STAILQ_HEAD(, buffered) buffer;
  int nbuffer;
  bool gathered; /* in the worker's `gathered` */
  STAILQ_ENTRY(consumer) gather_link;
};

struct active {
  mq_worker *w;
  struct consumer *c;
  long long id;
  int attempt;  /* the attempt this process runs: a completion or failure
                   is stored only while the job is still at it */
  char *name;
  mq_task *task;
  ev_tstamp started; /* when its handler started: the wall clock, since a
                        handler that never yields keeps the loop's still */
  int ctx_ref; /* the handler's ctx: its `emitted` events are stored with
                  the completion */
  LIST_ENTRY(active) link;
};

struct mq_worker {
  struct mq_runtime *rt;
  struct ev_loop *loop;
  lua_State *L;
  const struct mq_config *cfg;
  mq_queue *q;
  mq_handlers *handlers;
  mq_tasks *tasks;
  struct consumer **consumers;
  int nconsumers;
  LIST_HEAD(, active) actives;
  int nactive;
  ev_timer grace;
  ev_timer trim; /* after a job: give back memory a big one left */
  size_t big_results; /* C heap bytes the results of BIG_RESULT or more
                         handed to the queue since the last trim took */
  bool trim_waited;   /* the trim waited once for them (trim_cb) */
  ev_tstamp trimmed_at; /* the loop time of the last trim */
  ev_prepare probe; /* polls of idle queues, checked together */
  ev_prepare gather; /* fetches asked for in this loop turn, sent together */
  ev_idle gather_kick; /* keeps the loop from blocking before gather runs
                          (a fetch asked for by another prepare watcher) */
  STAILQ_HEAD(, consumer) gathered;
  int ngathered;
  bool probing;     /* a probe is in flight */
  int inflight;
  bool lost_claims; /* a fetch's reply was lost: it may have claimed jobs
                       that never arrived; reclaimed once no fetch or
                       result is in flight */
  bool reclaiming;  /* the reclaim is in flight: no fetch meanwhile */
  int ctx_ref; /* moonq.ctx.new */
  bool started;
  bool stopping;
  void (*stopped)(void *arg);
  void *stopped_arg;
  char dir[4096];
};

static void consider_fetch(struct consumer *c);
static void maybe_reclaim(mq_worker *w);
static void start_buffered(struct consumer *c);
static void release_buffer(mq_worker *w, struct consumer *c);
static void check_stopped(mq_worker *w);

/* ---- consumers ---------------------------------------------------------- */

/* A queue's fallback poll (a wake-up may have been lost). Polls that come
 * due in the same loop turn are checked together (probe_cb). */
static void poll_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  struct consumer *c = t->data;
  c->poll_due = true;
  if (!ev_is_active(&c->w->probe))
    ev_prepare_start(loop, &c->w->probe);
}

/* A consumer asked to fetch again. */
static void fetch_again(struct consumer *c) {
  c->more = true;
  consider_fetch(c);
}

struct probe {
  mq_worker *w;
  int n;
  struct consumer *list[]; /* the idle consumers asked about */
};

static void probed(int status, const char *error, const char *json,
                   void *data) {
  struct probe *p = data;
  mq_worker *w = p->w;
  w->inflight--;
  w->probing = false;
  if (status != MQ_QUEUE_OK) { /* fetch as if there had been no probe */
    mq_log_debug("worker", "probing idle queues failed error=\"%s\"", error);
    for (int i = 0; i < p->n; i++)
      fetch_again(p->list[i]);
  } else { /* json: [1, 5, ...], positions in p->list */
    for (const char *s = json; *s; s++) {
      if (*s < '0' || *s > '9')
        continue;
      char *end;
      long k = strtol(s, &end, 10);
      if (k >= 1 && k <= p->n)
        fetch_again(p->list[k - 1]);
      s = end - 1;
    }
  }
  free(p);
  check_stopped(w);
}

/* The polls of this loop turn: a busy consumer fetches as before; idle
 * ones (nothing running or claimed) are first checked together in one
 * statement, and only those with a job to run fetch, so a thousand idle
 * queues cost one statement per poll interval instead of a thousand. */
static void probe_cb(struct ev_loop *loop, ev_prepare *pw, int revents) {
  mq_worker *w = pw->data;
  ev_prepare_stop(loop, pw);
  struct probe *p = malloc(sizeof *p + sizeof p->list[0] * (size_t)w->nconsumers);
  int n = 0;
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    if (!c->poll_due)
      continue;
    c->poll_due = false;
    if (p && !w->probing && c->live && c->fetching == 0 && c->running == 0 &&
        c->nbuffer == 0)
      p->list[n++] = c;
    else
      fetch_again(c);
  }
  if (n < 2) { /* nothing to save */
    for (int i = 0; i < n; i++)
      fetch_again(p->list[i]);
    free(p);
    return;
  }
  p->w = w;
  p->n = n;
  const char **names = malloc(sizeof *names * (size_t)n);
  char *literal = NULL;
  if (names) {
    for (int i = 0; i < n; i++)
      names[i] = p->list[i]->queue;
    literal = mq_buf_text_array(names, n);
  }
  free(names);
  const char *args[5] = {literal};
  if (!literal || mq_queue_call(w->q, MQ_QUEUE_READY, args, probed, p) != 0) {
    for (int i = 0; i < n; i++)
      fetch_again(p->list[i]);
    free(p);
  } else {
    w->probing = true;
    w->inflight++;
  }
  free(literal);
}

static void fetch_again(struct consumer *c);

/* A delayed job of the consumer's queue is due: it lies behind where
 * fetches start, so the next one starts from the head. */
static void due_cb(const char *queue, void *data) {
  struct consumer *c = data;
  c->head = true;
  fetch_again(c);
}

static struct consumer *find_consumer(mq_worker *w, const char *queue) {
  for (int i = 0; i < w->nconsumers; i++)
    if (strcmp(w->consumers[i]->queue, queue) == 0)
      return w->consumers[i];
  return NULL;
}

static struct consumer *add_consumer(mq_worker *w, const char *queue) {
  struct consumer **list =
      realloc(w->consumers, sizeof *list * (size_t)(w->nconsumers + 1));
  if (!list)
    return NULL;
  w->consumers = list;
  struct consumer *c = calloc(1, sizeof *c);
  if (!c || !(c->queue = strdup(queue))) {
    free(c);
    return NULL;
  }
  c->w = w;
  c->more = true;
  c->metrics = mq_metrics_queue_of(mq_runtime_metrics(w->rt), queue);
  STAILQ_INIT(&c->buffer);
  const struct mq_queue_options *o = mq_config_queue(w->cfg, queue);
  c->prefetch = o->prefetch;
  c->avg_run = -1;
  ev_timer_init(&c->poll, poll_cb, o->poll_interval, o->poll_interval);
  c->poll.data = c;
  w->consumers[w->nconsumers++] = c;
  return c;
}

/* Builds the consumer list from the handlers: one per queue, its
 * concurrency the largest a handler asks for (else the queue's config). */
static void sync_consumers(mq_worker *w) {
  for (int i = 0; i < w->nconsumers; i++) {
    w->consumers[i]->live = false;
    w->consumers[i]->slots = 0;
  }
  for (size_t i = 0; i < mq_handlers_count(w->handlers); i++) {
    const struct mq_handler *h = mq_handlers_at(w->handlers, i);
    struct consumer *c = find_consumer(w, h->queue);
    if (!c && !(c = add_consumer(w, h->queue))) {
      mq_log_error("worker", "out of memory adding queue=%s", h->queue);
      continue;
    }
    c->live = true;
    if (h->concurrency > c->slots)
      c->slots = h->concurrency;
  }
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    if (!c->live) { /* no slots: what it claimed ahead would never run */
      ev_timer_stop(w->loop, &c->poll);
      if (c->nbuffer > 0) {
        release_buffer(w, c);
        c->head = true; /* the jobs given back lie behind `after` */
      }
      continue;
    }
    if (c->slots == 0)
      c->slots = mq_config_queue(w->cfg, c->queue)->concurrency;
    if (w->started && !w->stopping && !ev_is_active(&c->poll)) {
      ev_timer_again(w->loop, &c->poll);
      c->more = true;
    }
    consider_fetch(c);
  }
}

/* Stores handlers' retry options as their queue's settings, so jobs sent
 * from anywhere (SQL included) get them. Only the retry settings: the
 * queue's expire_in, retention and dead_letter stay config.lua's. An option
 * the handler leaves out is config.lua's again (no delay_max: unset), so a
 * reloaded handler that drops one does not keep its old value. */
static void sync_retry(mq_worker *w) {
  for (size_t i = 0; i < mq_handlers_count(w->handlers); i++) {
    const struct mq_handler *h = mq_handlers_at(w->handlers, i);
    if (!h->has_retry)
      continue;
    const struct mq_queue_options *o = mq_config_queue(w->cfg, h->queue);
    const struct mq_queue_settings *r = &h->retry;
    struct mq_queue_settings s = {
        .has_retry_limit = true,
        .retry_limit = r->has_retry_limit ? r->retry_limit : o->retry_limit,
        .has_retry_delay = true,
        .retry_delay = r->has_retry_delay ? r->retry_delay : o->retry_delay,
        .has_retry_backoff = true,
        .retry_backoff =
            r->has_retry_backoff ? r->retry_backoff : o->retry_backoff,
        .has_retry_delay_max = true,
        .retry_delay_max = r->has_retry_delay_max ? r->retry_delay_max : -1};
    /* A failure is logged by the queue. */
    mq_queue_store_settings(w->q, h->queue, &s, NULL, NULL, NULL, 0);
  }
}

/* ---- results ------------------------------------------------------------ */

static void log_result(int status, const char *error, const char *json,
                       void *data) {
  if (status < 0)
    mq_log_error("worker", "storing a job result failed error=\"%s\"", error);
}

/* A completion was stored (data: the queue's mq_metrics_queue, which
 * outlives the worker). */
static void completed_cb(int status, const char *error, const char *json,
                         void *data) {
  if (status == MQ_QUEUE_OK)
    mq_metrics_ended(data, MQ_METRICS_COMPLETED);
  log_result(status, error, json, NULL);
}

/* Every callback holding a consumer starts here: false when the worker is
 * stopping (and may now be stopped). */
static bool callback_live(mq_worker *w) {
  w->inflight--;
  if (w->stopping) {
    check_stopped(w);
    return false;
  }
  return true;
}

static void failed_cb(int status, const char *error, const char *json,
                      void *data) {
  struct consumer *c = data;
  if (status < 0)
    mq_log_error("worker", "storing a job result failed error=\"%s\"", error);
  if (status == MQ_QUEUE_OK)
    mq_metrics_ended(c->metrics, strstr(json, "\"retry\"")
                                     ? MQ_METRICS_RETRIED
                                     : MQ_METRICS_FAILED);
  if (!callback_live(c->w))
    return;
  maybe_reclaim(c->w);
  if (status != 0 || !strstr(json, "\"retry\""))
    return;
  /* The retry's start_after is committed now: wake when it is due. */
  mq_scheduler_wake_when_due(mq_runtime_scheduler(c->w->rt), c->queue, due_cb,
                             c);
}

/* Fails job `id` with error_json; the retry policy decides what follows. */
static void fail_job(struct consumer *c, long long id, int attempt,
                     const char *name, const char *message,
                     const char *error_json) {
  mq_worker *w = c->w;
  mq_log_warn("worker", "job failed id=%lld job=%s error=\"%s\"", id, name,
              message);
  /* A NUL character anywhere in the error would make PostgreSQL refuse
   * the whole batch of failures: it is stored as the text \u0000. */
  char *visible = mq_json_has_nul(error_json)
                      ? mq_json_nul_visible(error_json)
                      : NULL;
  if (mq_queue_fail_attempt(w->q, id, attempt, visible ? visible : error_json,
                            failed_cb, c) == 0)
    w->inflight++;
  free(visible);
}

/* A failure's JSON: {message, traceback, ...fields of an error table}. */
struct failure {
  lua_State *co;     /* the error value is on top, or NULL: */
  const char *text;  /* the message (a timeout, a job that cannot start;
                        with co: said instead of the error's) */
  bool final;        /* no retry: {"retry": false} (sql/014_limits.sql) */
  char message[1024];
  char *json;        /* malloc'd */
};

/* [.. doc key value] -> [.. doc]: doc[key] = value when JSON can carry it,
 * else a description of it ("function: 0x... (not stored)", "table: 0x...
 * (not stored: <why>)"). */
/* Pushes the string at idx with its bytes that are not UTF-8 as '?'. */
static void push_utf8(lua_State *L, int idx) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  luaL_Buffer b;
  char *copy = luaL_buffinitsize(L, &b, len + 1);
  memcpy(copy, s, len);
  copy[len] = '\0';
  mq_json_utf8_repair(copy); /* stops at a NUL: the rest is kept as is */
  luaL_pushresultsize(&b, len);
}

static void set_error_field(lua_State *L, int doc) {
  char err[200];
  char *json = mq_json_encode(L, -1, "error field", NULL, err, sizeof err);
  if (json) {
    free(json);
  } else {
    const char *desc = luaL_tolstring(L, -1, NULL); /* [.. key value desc] */
    if (lua_type(L, -2) == LUA_TTABLE)
      lua_pushfstring(L, "%s (not stored: %s)", desc, err);
    else
      lua_pushfstring(L, "%s (not stored)", desc);
    push_utf8(L, -1); /* a string that is not UTF-8 keeps the rest */
    lua_replace(L, -4); /* [.. key desc' desc desc''] */
    lua_pop(L, 2);
  }
  lua_rawset(L, doc);
}

/* [] -> []: builds the failure's JSON document from the error value. The
 * string-keyed fields of an error table are kept (those JSON cannot carry
 * are described), its message becomes the message, and the traceback is
 * always there for a handler's error. */
static int build_failure(lua_State *L) {
  struct failure *f = lua_touserdata(L, 1);
  if (f->co) {
    lua_xmove(f->co, L, 1); /* [f err] */
    if (lua_type(L, 2) == LUA_TTABLE) {
      lua_getfield(L, 2, "message");
      if (!lua_isstring(L, -1) &&
          luaL_getmetafield(L, 2, "__tostring") != LUA_TNIL) {
        lua_pop(L, 2); /* an error object that says what it is */
        luaL_tolstring(L, 2, NULL);
      }
      snprintf(f->message, sizeof f->message, "%s",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
      lua_pop(L, 1);
    } else if (lua_isstring(L, 2)) {
      snprintf(f->message, sizeof f->message, "%s", lua_tostring(L, 2));
    } else if (luaL_getmetafield(L, 2, "__tostring") != LUA_TNIL) {
      lua_pop(L, 1);
      snprintf(f->message, sizeof f->message, "%s",
               luaL_tolstring(L, 2, NULL));
      lua_pop(L, 1);
    } else {
      snprintf(f->message, sizeof f->message, "(error object)");
    }
    if (f->text)
      snprintf(f->message, sizeof f->message, "%s", f->text);
    mq_json_utf8_repair(f->message); /* error("bad \xff byte") */
    luaL_traceback(L, f->co, f->message, 0); /* [f err traceback] */
    push_utf8(L, -1);
    lua_replace(L, -2);
  } else {
    snprintf(f->message, sizeof f->message, "%s", f->text);
    lua_pushnil(L);
    lua_pushnil(L);
  }
  lua_createtable(L, 0, 4); /* [f err traceback doc] */
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, 2)) { /* [.. doc key value] */
      if (lua_type(L, -2) != LUA_TSTRING) {
        lua_pop(L, 1);
        continue;
      }
      lua_pushvalue(L, -2);
      lua_insert(L, -2); /* [.. doc key key value] */
      set_error_field(L, 4);
    }
  }
  lua_pushstring(L, f->message);
  lua_setfield(L, 4, "message");
  lua_pushvalue(L, 3);
  lua_setfield(L, 4, "traceback");
  if (f->final) {
    lua_pushboolean(L, 0);
    lua_setfield(L, 4, "retry");
  }
  char err[256];
  f->json = mq_json_encode(L, 4, "error", NULL, err, sizeof err);
  if (!f->json) { /* out of memory, or a key that is not UTF-8 */
    lua_createtable(L, 0, 2);
    lua_pushstring(L, f->message);
    lua_setfield(L, -2, "message");
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "traceback");
    f->json = mq_json_encode(L, -1, "error", NULL, err, sizeof err);
  }
  return 0;
}

/* out: a failure with the error on top of co, or with `text`. */
static void outcome_failed(lua_State *L, lua_State *co, const char *text,
                           struct mq_worker_outcome *out) {
  struct failure f = {.co = co, .text = text};
  if (mq_lua_protect(L, build_failure, &f, 0) != LUA_OK) {
    /* building it in Lua failed (the memory is still full): say at least
     * why, written without Lua */
    snprintf(f.message, sizeof f.message, "%s",
             text ? text : lua_tostring(L, -1));
    lua_pop(L, 1);
    mq_json_utf8_repair(f.message);
    mq_json_object *o = mq_json_object_new();
    mq_json_object_string(o, "message", f.message);
    mq_json_object_string(o, "traceback", "(no traceback: no memory left to "
                                          "make one)");
    f.json = mq_json_object_finish(o, NULL, 0);
  }
  out->failed = true;
  snprintf(out->message, sizeof out->message, "%s", f.message);
  out->error = f.json;
}
/* The handler's first result as JSON (NULL: none) and what it emitted
 * and enqueued, as {"events": [...], "jobs": [...]} (NULL: none), or an
 * error. */
struct output {
  lua_State *co;
  int nresults;
  int ctx_ref;
  const mq_events *events_store;
  char *json;
  char *effects;
  char err[512];
  bool bad;
};

/* [emitted] -> [emitted]: checks each entry again by the event store's
 * rules (ctx.emitted is the handler's to touch); raises naming the bad one
 * so the job fails instead of its completion. */
static void check_emitted(lua_State *L, struct output *o) {
  if (!o->events_store)
    luaL_error(L, "ctx.emitted: the event store is disabled "
               "(config events.enabled)");
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, -1, i) != LUA_TTABLE)
      luaL_error(L, "ctx.emitted[%I] is not a table", i);
    lua_getfield(L, -1, "stream");
    lua_getfield(L, -2, "type");
    lua_getfield(L, -3, "data"); /* [.. entry stream type data] */
    if ((!lua_isnil(L, -3) && lua_type(L, -3) != LUA_TSTRING) ||
        lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "ctx.emitted[%I]: stream and type must be strings", i);
    char err[512];
    char *data = lua_isnil(L, -1)
                     ? NULL
                     : mq_json_encode(L, -1, "data", NULL, err, sizeof err);
    if (!lua_isnil(L, -1) && !data)
      luaL_error(L, "ctx.emitted[%I]: %s", i, err);
    struct mq_event_input in = {
        .stream = lua_isnil(L, -3) ? "job" : lua_tostring(L, -3),
        .type = lua_tostring(L, -2),
        .data = data};
    int rc = mq_events_check(o->events_store, &in, (int)i, err, sizeof err);
    free(data);
    if (rc != 0)
      luaL_error(L, "ctx.emitted[%I]: %s", i, err);
    lua_pop(L, 4);
  }
}

/* [o ctx] -> [o ctx]: o->effects from ctx.emitted, ctx.enqueued and
 * ctx.state_writes (what ctx.emit, ctx.enqueue and ctx.state keep), when
 * one holds something. */
static void build_effects(lua_State *L, struct output *o) {
  if (!lua_istable(L, 2))
    return;
  lua_createtable(L, 0, 2); /* [o ctx effects] */
  bool any = false;
  const char *keys[] = {"emitted", "enqueued", "state_writes"},
             *as[] = {"events", "jobs", "state"};
  for (int k = 0; k < 3; k++) {
    lua_pushstring(L, keys[k]);
    bool some = false;
    if (lua_rawget(L, 2) == LUA_TTABLE) {
      lua_pushnil(L);
      if ((some = lua_next(L, -2) != 0))
        lua_pop(L, 2); /* its first key and value */
    }
    if (some) {
      if (k == 0)
        check_emitted(L, o);
      lua_setfield(L, 3, as[k]);
      any = true;
    } else {
      lua_pop(L, 1);
    }
  }
  if (any) {
    o->effects = mq_json_encode_stored(L, 3, "ctx", NULL, o->err, sizeof o->err);
    o->bad = !o->effects;
  }
  lua_pop(L, 1);
}

static int build_output(lua_State *L) {
  struct output *o = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, o->ctx_ref); /* [o ctx] */
  build_effects(L, o);
  if (o->bad || o->nresults == 0)
    return 0;
  lua_pop(o->co, o->nresults - 1);
  lua_xmove(o->co, L, 1);
  if (lua_isnil(L, -1))
    return 0;
  o->json = mq_json_encode_stored(L, -1, "output", NULL, o->err, sizeof o->err);
  o->bad = !o->json;
  return 0;
}

/* out: what the handler returned (its first result) and what its ctx
 * holds to store with the completion, or the failure when either cannot
 * be stored. */
static void outcome_returned(lua_State *L, lua_State *co, int nresults,
                             int ctx_ref, const mq_events *events,
                             struct mq_worker_outcome *out) {
  struct output o = {.co = co, .nresults = nresults, .ctx_ref = ctx_ref,
                     .events_store = events};
  if (mq_lua_protect(L, build_output, &o, 0) != LUA_OK) {
    snprintf(o.err, sizeof o.err, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    o.bad = true;
  }
  /* A NUL character in what is stored with the completion would make
   * PostgreSQL refuse it: build_output's encoding (mq_json_encode_stored)
   * refuses it first, naming where it is, and this job fails alone. */
  if (o.bad) {
    char message[700];
    snprintf(message, sizeof message,
             "the handler's result cannot be stored: %s", o.err);
    free(o.json);
    free(o.effects);
    outcome_failed(L, NULL, message, out);
    return;
  }
  out->output = o.json;
  out->effects = o.effects;
}

/* The message for an out-of-memory error on top of co that the memory
 * limit caused ("memory limit of N MB reached", in buf), or NULL. */
static const char *memory_error(lua_State *L, lua_State *co, char *buf,
                                size_t len) {
  if (!mq_lua_memory_reached(L) || lua_type(co, -1) != LUA_TSTRING ||
      strcmp(lua_tostring(co, -1), "not enough memory") != 0)
    return NULL;
  snprintf(buf, len, "memory limit of %zu MB reached",
           mq_lua_memory_limit(L) >> 20);
  return buf;
}

/* What a task's end comes to; the caller frees it (outcome_free). */
static void outcome_of(mq_runtime *rt, mq_task *task, enum mq_task_end how,
                       int nresults, int ctx_ref,
                       struct mq_worker_outcome *out) {
  lua_State *L = mq_runtime_lua(rt);
  char message[64];
  memset(out, 0, sizeof *out);
  switch (how) {
  case MQ_TASK_RETURNED:
    outcome_returned(L, mq_task_thread(task), nresults, ctx_ref,
                     mq_runtime_events(rt), out);
    break;
  case MQ_TASK_RAISED:
    outcome_failed(L, mq_task_thread(task),
                   memory_error(L, mq_task_thread(task), message,
                                sizeof message),
                   out);
    break;
  case MQ_TASK_TIMED_OUT:
    snprintf(message, sizeof message, "timeout after %g s",
             mq_task_timeout(task));
    outcome_failed(L, NULL, message, out);
    break;
  }
}

static void outcome_free(struct mq_worker_outcome *out) {
  free(out->error);
  free(out->output);
  free(out->effects);
}

/* ---- running jobs ----------------------------------------------------- */

static void release_active(struct active *a) {
  struct consumer *c = a->c;
  mq_worker *w = a->w;
  LIST_REMOVE(a, link);
  w->nactive--;
  c->running--;
  luaL_unref(w->L, LUA_REGISTRYINDEX, a->ctx_ref);
  free(a->name);
  free(a);
  if (!ev_is_active(&w->trim)) { /* once the task's thread is gone */
    ev_timer_set(&w->trim, 0., 0.);
    ev_timer_start(w->loop, &w->trim);
  }
  if (w->stopping) {
    check_stopped(w);
  } else {
    start_buffered(c);
    consider_fetch(c);
  }
}

/* A job's handler ended: the job is completed with its output and
 * effects, or failed (the retry policy decides what follows). */
static void task_ended(mq_task *task, enum mq_task_end how, int nresults,
                       void *data) {
  struct active *a = data;
  struct mq_worker_outcome out;
  outcome_of(a->w->rt, task, how, nresults, a->ctx_ref, &out);
  struct consumer *c = a->c;
  double ran = ev_time() - a->started;
  mq_metrics_ran(c->metrics, ran);
  c->avg_run = c->avg_run < 0 ? ran : c->avg_run + 0.1 * (ran - c->avg_run);
  size_t bytes = (out.failed ? (out.error ? strlen(out.error) : 0)
                              : (out.output ? strlen(out.output) : 0)) +
                 (out.effects ? strlen(out.effects) : 0);
  if (bytes >= BIG_RESULT) /* held three times in C: encoded, in the
                              completion batch and in libpq's buffer */
    a->w->big_results += 3 * bytes;
  if (out.failed) {
    fail_job(a->c, a->id, a->attempt, a->name, out.message,
             out.error ? out.error : "{\"message\":\"error\"}");
  } else {
    mq_log_debug("worker", "job completed id=%lld job=%s", a->id, a->name);
    mq_queue_complete_with(a->w->q, a->id, a->attempt, out.output, out.effects,
                           completed_cb, a->c->metrics);
  }
  outcome_free(&out);
  a->task = NULL;
  release_active(a);
}

struct start {
  int new_ctx_ref; /* a function (job) -> ctx: moonq.ctx.new */
  const struct mq_job *job;
  int fn_ref;
  int ctx_ref; /* out: a reference to the ctx made */
  char unreadable[300]; /* out: why the job's data cannot be read (then
                           push_start raised), or "" */
};

/* [] -> [fn job ctx]; raises when the job's data cannot be read in Lua. */
static int push_start(lua_State *L) {
  struct start *s = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref);
  mq_lua_push_job(L, s->job);
  if (lua_getfield(L, -1, "data_error") != LUA_TNIL) {
    snprintf(s->unreadable, sizeof s->unreadable, "%s", lua_tostring(L, -1));
    return lua_error(L);
  }
  lua_pop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->new_ctx_ref);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1);
  lua_pushvalue(L, -1);
  s->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 3;
}

/* Fails a job that cannot start with {message}; without a retry when
 * `final` (it cannot succeed). */
static void refuse(struct consumer *c, const struct mq_job *job,
                   const char *message, bool final) {
  lua_State *L = c->w->L;
  struct failure f = {.text = message, .final = final};
  if (mq_lua_protect(L, build_failure, &f, 0) != LUA_OK)
    lua_pop(L, 1);
  fail_job(c, job->id, job->attempt, job->name, message,
           f.json ? f.json : "{\"message\":\"cannot start the job\"}");
  free(f.json);
}

static void run_job(struct consumer *c, const struct mq_job *job) {
  mq_worker *w = c->w;
  char err[1024];
  const struct mq_handler *h = mq_handlers_find(w->handlers, job->name);
  if (!h) {
    mq_handlers_missing(w->handlers, job->name, err, sizeof err);
    refuse(c, job, err, false);
    return;
  }
  struct active *a = calloc(1, sizeof *a);
  if (!a || !(a->name = strdup(job->name))) {
    free(a);
    mq_log_error("worker", "out of memory starting job id=%lld "
                 "(crash recovery will retry it)", job->id);
    return;
  }
  a->w = w;
  a->c = c;
  a->id = job->id;
  a->attempt = job->attempt;
  a->started = ev_time();
  if (job->attempt == 1)
    mq_metrics_waited(c->metrics, job->waited);
  double timeout = h->timeout > 0 ? h->timeout
                                  : mq_config_queue(w->cfg, job->queue)->timeout;
  struct start s = {.new_ctx_ref = w->ctx_ref, .job = job,
                    .fn_ref = h->fn_ref, .ctx_ref = LUA_NOREF};
  a->task = mq_task_start(w->tasks, push_start, &s, timeout, task_ended, a,
                          err, sizeof err);
  a->ctx_ref = s.ctx_ref;
  if (!a->task) {
    luaL_unref(w->L, LUA_REGISTRYINDEX, a->ctx_ref);
    free(a->name);
    free(a);
    if (s.unreadable[0])
      refuse(c, job, s.unreadable, true);
    else
      refuse(c, job, err, false);
    return;
  }
  LIST_INSERT_HEAD(&w->actives, a, link);
  w->nactive++;
  c->running++;
}

/* Gives jobs of this process back to the queue (the worker is stopping):
 * they wait again at once and the attempt does not count. */
static void released(int status, const char *error, const char *json,
                     void *data) {
  if (status != 0)
    mq_log_error("worker", "returning jobs to the queue failed error=\"%s\"",
                 error);
  else
    mq_log_info("worker", "returned unfinished jobs to the queue count=%s",
                json);
}

static void release_ids(mq_worker *w, const long long *ids, int n) {
  if (n == 0)
    return;
  size_t cap = (size_t)n * 21 + 3, len = 0;
  char *text = malloc(cap);
  if (!text) {
    mq_log_error("worker", "out of memory: jobs stay active until recovered");
    return;
  }
  text[len++] = '{';
  for (int i = 0; i < n; i++)
    len += (size_t)snprintf(text + len, cap - len, "%s%lld", i ? "," : "",
                            ids[i]);
  snprintf(text + len, cap - len, "}");
  const char *a[5] = {text};
  mq_queue_call(w->q, MQ_QUEUE_RELEASE, a, released, NULL);
  free(text);
}

static void reclaimed(int status, const char *error, const char *json,
                      void *data) {
  mq_worker *w = data;
  w->inflight--;
  w->reclaiming = false;
  if (status != 0) {
    mq_log_error("worker", "giving back jobs of a lost fetch failed "
                 "error=\"%s\" (tried again)", error);
    w->lost_claims = true;
  } else if (strcmp(json, "0") != 0) {
    mq_log_warn("worker", "gave back jobs claimed by a fetch whose reply was "
                "lost count=%s", json);
  }
  if (!callback_live(w))
    return;
  if (w->lost_claims) {
    maybe_reclaim(w);
    return;
  }
  for (int i = 0; i < w->nconsumers; i++) { /* the jobs given back lie
                                                 behind `after` */
    w->consumers[i]->head = true;
    w->consumers[i]->more = true;
    consider_fetch(w->consumers[i]);
  }
}

/* After a lost fetch reply, once no fetch, completion or failure is in
 * flight (so every active job of this process in the database is one it
 * knows of: running or buffered): gives the others back to the queue.
 * Fetching waits for it; the poll timer looks again. */
static void maybe_reclaim(mq_worker *w) {
  if (!w->lost_claims || w->reclaiming || w->stopping || w->inflight > 0 ||
      mq_queue_storing(w->q) > 0)
    return;
  size_t cap = 3, len = 0;
  for (int i = 0; i < w->nconsumers; i++)
    cap += (size_t)w->consumers[i]->nbuffer * 21;
  cap += (size_t)w->nactive * 21;
  char *text = malloc(cap);
  if (!text)
    return; /* tried again after the next result */
  text[len++] = '{';
  struct active *a;
  LIST_FOREACH(a, &w->actives, link)
    len += (size_t)snprintf(text + len, cap - len, "%s%lld",
                            len > 1 ? "," : "", a->id);
  for (int i = 0; i < w->nconsumers; i++) {
    struct buffered *b;
    STAILQ_FOREACH(b, &w->consumers[i]->buffer, link)
      len += (size_t)snprintf(text + len, cap - len, "%s%lld",
                              len > 1 ? "," : "", b->job.id);
  }
  snprintf(text + len, cap - len, "}");
  const char *args[5] = {text};
  w->lost_claims = false;
  if (mq_queue_call(w->q, MQ_QUEUE_RECLAIM, args, reclaimed, w) == 0) {
    w->reclaiming = true;
    w->inflight++;
  } else {
    w->lost_claims = true;
  }
  free(text);
}

/* Copies a fetched job into the consumer's buffer. */
static bool buffer_push(struct consumer *c, const struct mq_job *j) {
  size_t name = strlen(j->name) + 1, queue = strlen(j->queue) + 1,
         data = strlen(j->data) + 1, run = j->run_id ? strlen(j->run_id) + 1 : 0;
  struct buffered *b = malloc(sizeof *b + name + queue + data + run);
  if (!b)
    return false;
  char *p = (char *)(b + 1);
  b->job = *j;
  b->job.name = memcpy(p, j->name, name);
  b->job.queue = memcpy(p += name, j->queue, queue);
  b->job.data = memcpy(p += queue, j->data, data);
  b->job.run_id = run ? memcpy(p + data, j->run_id, run) : NULL;
  STAILQ_INSERT_TAIL(&c->buffer, b, link);
  c->nbuffer++;
  return true;
}

/* Starts buffered jobs while slots are free. */
static void start_buffered(struct consumer *c) {
  struct buffered *b;
  while ((b = STAILQ_FIRST(&c->buffer)) && c->running < c->slots) {
    STAILQ_REMOVE_HEAD(&c->buffer, link);
    c->nbuffer--;
    run_job(c, &b->job);
    free(b);
  }
}

/* Gives every buffered job back to the queue (stopping, or the consumer's
 * last handler went). */
static void release_buffer(mq_worker *w, struct consumer *c) {
  long long *ids = malloc(sizeof *ids * (size_t)(c->nbuffer + 1));
  int n = 0;
  struct buffered *b;
  while ((b = STAILQ_FIRST(&c->buffer))) {
    STAILQ_REMOVE_HEAD(&c->buffer, link);
    if (ids)
      ids[n++] = b->job.id;
    free(b);
  }
  c->nbuffer = 0;
  if (ids)
    release_ids(w, ids, n);
  free(ids);
}

/* After a fetch (from the head when `head`, sent at ev_now `sent`) that
 * claimed jobs[0..n-1] in claim order: the last of them is the latest
 * claim, and a mark when the last mark is MQ_FETCH_AFTER_LAG / 4 seconds
 * old. A fetch from the head is due again after MQ_FETCH_HEAD_INTERVAL
 * seconds, or MQ_FETCH_HEAD_SPACING times as long as this one took (at
 * most MQ_FETCH_HEAD_MAX), whichever is longer: while a held-back horizon
 * keeps dead index entries, a walk over them all stays a small part of the
 * queue's time. */
static void note_claimed(struct consumer *c, bool head, ev_tstamp sent,
                         const struct mq_job *jobs, int n) {
  ev_tstamp now = ev_now(c->w->loop);
  if (n > 0) {
    c->latest = (struct claim_mark){{jobs[n - 1].priority, jobs[n - 1].id}, now};
    if (c->nmarks == 0 ||
        now - c->marks[c->nmarks - 1].at >= MQ_FETCH_AFTER_LAG / 4) {
      if (c->nmarks == MQ_FETCH_MARKS) { /* drop the oldest */
        c->nmarks--;
        memmove(c->marks, c->marks + 1, sizeof c->marks[0] * (size_t)c->nmarks);
      }
      c->marks[c->nmarks++] = c->latest;
    }
  }
  if (head) {
    /* PostgreSQL's time for the claim when it returned jobs: the loop's
     * time from send to reply also holds whatever ran in between (handlers
     * that do not yield, other replies), which is not the walk. */
    double took = n > 0 ? jobs[0].claim_took : now - sent;
    double wait = MQ_FETCH_HEAD_SPACING * took;
    wait = wait < MQ_FETCH_HEAD_INTERVAL ? MQ_FETCH_HEAD_INTERVAL
           : wait > MQ_FETCH_HEAD_MAX    ? MQ_FETCH_HEAD_MAX
                                         : wait;
    c->head_due = now + wait;
  }
}

/* Where the consumer's next fetch starts: NULL (the head), or `after`,
 * moved up to the newest claim at least MQ_FETCH_AFTER_LAG seconds old. */
static const struct mq_queue_position *fetch_start(struct consumer *c) {
  ev_tstamp now = ev_now(c->w->loop);
  if (c->latest.at > 0 && now - c->latest.at >= MQ_FETCH_AFTER_LAG) {
    c->after = c->latest.pos;
    c->has_after = true;
    c->nmarks = 0;
  } else {
    int k = c->nmarks;
    while (k > 0 && now - c->marks[k - 1].at < MQ_FETCH_AFTER_LAG)
      k--;
    if (k > 0) {
      c->after = c->marks[k - 1].pos;
      c->has_after = true;
      memmove(c->marks, c->marks + k, sizeof c->marks[0] * (size_t)(c->nmarks - k));
      c->nmarks -= k;
    }
  }
  if (c->head || !c->has_after || now >= c->head_due)
    return NULL;
  return &c->after;
}

/* One consumer's part of a fetch. */
struct fetch_part {
  struct consumer *c;
  int asked;
  bool head; /* it starts from the queue's head */
};

/* One fetch statement in flight, for one consumer or several. */
struct fetch {
  mq_worker *w;
  ev_tstamp sent; /* ev_now when it was sent */
  int n;
  struct fetch_part parts[];
};

/* Gives back jobs[0..n) claimed by a fetch that answered after stop, or
 * after the consumer's last handler went. */
static void release_jobs(mq_worker *w, const struct mq_job *jobs, int n) {
  long long *ids = malloc(sizeof *ids * (size_t)(n + 1));
  for (int i = 0; ids && i < n; i++)
    ids[i] = jobs[i].id;
  if (ids)
    release_ids(w, ids, n);
  else
    mq_log_error("worker", "out of memory: jobs stay active until recovered");
  free(ids);
}

/* Hands jobs[0..n) that a fetch of `asked` claimed for the consumer to free
 * slots, the rest to its buffer, and fetches again when it may find more.
 * A consumer that no handler names any more (a reload while the fetch was
 * out) has no slots: its jobs go back to the queue. */
static void take_jobs(struct consumer *c, int asked, const struct mq_job *jobs,
                      int n) {
  mq_worker *w = c->w;
  if (!c->live) {
    release_jobs(w, jobs, n);
    c->head = true; /* they lie behind `after` */
    return;
  }
  for (int i = 0; i < n; i++) {
    if (c->running < c->slots && STAILQ_EMPTY(&c->buffer))
      run_job(c, &jobs[i]);
    else if (!buffer_push(c, &jobs[i]))
      mq_log_error("worker", "out of memory buffering job id=%lld "
                   "(crash recovery will retry it)", jobs[i].id);
  }
  c->full = n >= asked && asked > 0;
  if (c->full)
    c->more = true;
  else /* the queue ran dry: wake again when its next delayed job is due */
    mq_scheduler_wake_when_due(mq_runtime_scheduler(w->rt), c->queue, due_cb,
                               c);
  consider_fetch(c);
}

static void fetched(int status, const char *error, const struct mq_job *jobs,
                    const int *counts, int nparts, void *data) {
  struct fetch *f = data;
  mq_worker *w = f->w;
  w->inflight--;
  if (status != 0) {
    mq_log_warn("worker", "fetch failed queue=%s queues=%d error=\"%s\"",
                f->parts[0].c->queue, f->n, error);
    /* A fetch that ran but whose reply was lost claimed jobs for this
     * process that it will never run: give them back. */
    if (strstr(error, "may or may not have run"))
      w->lost_claims = true;
  }
  int njobs = 0;
  for (int i = 0; status == 0 && i < f->n; i++)
    njobs += counts[i];
  if (status == 0 && w->stopping) /* stopped while the fetch was in flight */
    release_jobs(w, jobs, njobs);
  for (int i = 0; i < f->n; i++) {
    struct fetch_part *p = &f->parts[i];
    struct consumer *c = p->c;
    c->fetching--;
    c->claiming -= p->asked;
    if (status != 0) {
      c->head = true; /* its claims may come back to the queue */
      continue;       /* the poll timer tries again */
    }
    note_claimed(c, p->head, f->sent, jobs, counts[i]);
    if (!w->stopping)
      take_jobs(c, p->asked, jobs, counts[i]);
    jobs += counts[i];
  }
  free(f);
  maybe_reclaim(w);
  check_stopped(w);
}

/* Jobs the consumer claims ahead of its free slots: `prefetch`, or with
 * "auto" what its slots get through in MQ_PREFETCH_HORIZON seconds at the
 * handlers' recent run time (none until one has ended, so a queue of long
 * jobs claims no more than it runs), at most MQ_PREFETCH_AUTO_MAX. */
static int buffer_target(const struct consumer *c) {
  if (c->prefetch != MQ_PREFETCH_AUTO)
    return c->prefetch;
  if (c->avg_run < 0)
    return 0;
  double n = c->slots * MQ_PREFETCH_HORIZON /
             (c->avg_run > 1e-6 ? c->avg_run : 1e-6);
  return n >= MQ_PREFETCH_AUTO_MAX ? MQ_PREFETCH_AUTO_MAX : (int)n;
}

/* Jobs a fetch may claim now: free slots plus the buffer's target, less
 * what is buffered and what fetches in flight asked for. */
static int fetch_room(const struct consumer *c) {
  return c->slots + buffer_target(c) - c->running - c->nbuffer - c->claiming;
}

/* True when the consumer should fetch now: free slots' worth of jobs and
 * the buffer's (buffer_target); a fetch with jobs buffered or running waits
 * until there is room for half the buffer, so batches stay large. While a
 * buffer of 100 or more jobs is kept and the last fetch came back full, a
 * second fetch may go out before the first answers, so a busy queue is not
 * held up by one fetch's round trip (two fetches of one process skip each
 * other's rows). */
static bool wants_fetch(const struct consumer *c) {
  const mq_worker *w = c->w;
  int target = buffer_target(c);
  int room = fetch_room(c);
  int worth = target / 2 > 0 ? target / 2 : 1;
  bool second = c->fetching == 1 && target >= 100 && c->full;
  return w->started && !w->stopping && !w->reclaiming && !w->lost_claims &&
         c->live && (c->fetching == 0 || second) && (c->more || second) &&
         room > 0 &&
         (room >= worth || c->running + c->nbuffer + c->claiming == 0);
}

/* Asks for a fetch for the consumer at the end of this loop turn
 * (gather_cb), if it still wants one then. */
static void consider_fetch(struct consumer *c) {
  mq_worker *w = c->w;
  maybe_reclaim(w);
  if (c->gathered || !wants_fetch(c))
    return;
  c->gathered = true;
  STAILQ_INSERT_TAIL(&w->gathered, c, gather_link);
  w->ngathered++;
  if (!ev_is_active(&w->gather)) {
    ev_prepare_start(w->loop, &w->gather);
    ev_idle_start(w->loop, &w->gather_kick);
  }
}

/* Sends fetch f: each part's queue from where fetch_start says. On success
 * the consumers count it in flight. */
static void send_fetch(mq_worker *w, struct fetch *f) {
  struct mq_queue_fetch_spec stack_specs[16];
  struct mq_queue_fetch_spec *specs =
      f->n <= 16 ? stack_specs : malloc(sizeof *specs * (size_t)f->n);
  if (!specs) {
    free(f);
    return; /* the poll timers try again */
  }
  ev_tstamp now = ev_now(w->loop);
  for (int i = 0; i < f->n; i++) {
    struct fetch_part *p = &f->parts[i];
    const struct mq_queue_position *after = fetch_start(p->c);
    p->head = !after;
    specs[i] = (struct mq_queue_fetch_spec){p->c->queue, p->asked, after};
  }
  f->w = w;
  f->sent = now;
  int rc = mq_queue_fetch_many(w->q, specs, f->n, fetched, f);
  if (specs != stack_specs)
    free(specs);
  if (rc != 0) {
    free(f);
    return;
  }
  for (int i = 0; i < f->n; i++) {
    struct consumer *c = f->parts[i].c;
    c->more = false;
    if (f->parts[i].head) { /* a second fetch meanwhile starts past `after` */
      c->head = false;
      c->head_due = now + MQ_FETCH_HEAD_INTERVAL;
    }
    c->fetching++;
    c->claiming += f->parts[i].asked;
  }
  w->inflight++;
}

static void gather_kick_cb(struct ev_loop *loop, ev_idle *iw, int revents) {
  ev_idle_stop(loop, iw);
}

/* The fetches consumers asked for in this loop turn, in statements of up
 * to MQ_FETCH_MANY_JOBS jobs (one consumer may ask for more alone): one
 * statement claims for many queues (sql/027_fetch_many.sql) instead of
 * one statement each. */
static void gather_cb(struct ev_loop *loop, ev_prepare *pw, int revents) {
  mq_worker *w = pw->data;
  ev_prepare_stop(loop, pw);
  while (!STAILQ_EMPTY(&w->gathered)) {
    struct fetch *f =
        malloc(sizeof *f + sizeof f->parts[0] * (size_t)w->ngathered);
    int asked = 0;
    struct consumer *c;
    if (f)
      f->n = 0;
    while ((c = STAILQ_FIRST(&w->gathered))) {
      int room = fetch_room(c);
      if (f && f->n > 0 && asked + room > MQ_FETCH_MANY_JOBS)
        break;
      STAILQ_REMOVE_HEAD(&w->gathered, gather_link);
      w->ngathered--;
      c->gathered = false;
      if (f && wants_fetch(c)) {
        f->parts[f->n++] = (struct fetch_part){c, room, false};
        asked += room;
      }
    }
    if (f && f->n > 0)
      send_fetch(w, f);
    else
      free(f); /* out of memory: the poll timers try again */
  }
}

/* True when `list` (comma-separated queue names) names `queue`. */
static bool names(const char *list, const char *queue) {
  size_t n = strlen(queue);
  for (const char *p = list; (p = strstr(p, queue)); p += n)
    if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
      return true;
  return false;
}

/* NOTIFY payload: comma-separated queue names, or "*" (every queue: the
 * names did not fit a payload, sql/014_limits.sql); NULL: maybe missed
 * some. */
static void wake_cb(const char *channel, const char *payload, void *data) {
  mq_worker *w = data;
  bool all = !payload || strcmp(payload, "*") == 0;
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    if (!all && !names(payload, c->queue))
      continue;
    if (!payload) /* anything may have happened meanwhile */
      c->head = true;
    c->more = true;
    consider_fetch(c);
  }
}

/* A completion of this process sent `jobs` jobs to `queue` (successor
 * steps, ctx.enqueue; mq_queue_on_sent): a consumer of it fetches at once,
 * instead of after the wake-up's round trip. True (no wake-up for the
 * other processes) when it has room for them all. */
static bool take_sent(const char *queue, long long jobs, void *data) {
  mq_worker *w = data;
  struct consumer *c = find_consumer(w, queue);
  if (!c || !c->live || !w->started || w->stopping)
    return false;
  int room = fetch_room(c);
  if (room > 0)
    fetch_again(c);
  return room >= jobs;
}

/* ---- reload, start, stop ---------------------------------------------- */

struct flows_json {
  char *json;
  char err[256];
};

/* [fj] -> []: fj->json = the flows of the loaded handlers and those this
 * process stored before and declares no more ({flows, dropped}; NULL:
 * nothing to store). */
static int encode_flows(lua_State *L) {
  struct flows_json *fj = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.flows");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "to_store");
  lua_call(L, 0, 1);
  if (!lua_isnil(L, -1) &&
      !(fj->json = mq_json_encode(L, -1, "flows", NULL, fj->err, sizeof fj->err)))
    luaL_error(L, "%s", fj->err);
  return 0;
}

/* Stores the flows the handlers declare (sql/012_flows.sql, 021), so that
 * start_flow and stepping find their steps, and removes those whose files
 * are gone. */
static void store_flows(mq_worker *w) {
  struct flows_json fj = {0};
  if (mq_lua_protect(w->L, encode_flows, &fj, 0) != LUA_OK) {
    mq_log_error("worker", "cannot list the flows error=\"%s\"",
                 lua_tostring(w->L, -1));
    lua_pop(w->L, 1);
    return;
  }
  if (fj.json)
    mq_queue_store_flows(w->q, fj.json);
  free(fj.json);
}

/* Stores the queue each handler consumes (sql/013): jobs already sent to
 * a queue a handler consumed before, which no consumer here fetches any
 * more, move to the queue it consumes now. */
static void store_queues(mq_worker *w) {
  size_t n = mq_handlers_count(w->handlers);
  if (n == 0)
    return;
  mq_json_object *o = mq_json_object_new();
  for (size_t i = 0; i < n; i++) {
    const struct mq_handler *h = mq_handlers_at(w->handlers, i);
    mq_json_object_string(o, h->name, h->queue);
  }
  char err[256];
  char *json = mq_json_object_finish(o, err, sizeof err);
  if (!json) {
    mq_log_error("worker", "cannot list the handlers' queues error=\"%s\"",
                 err);
    return;
  }
  mq_queue_store_handler_queues(w->q, json);
  free(json);
}

/* What the handlers declare, stored where other processes and SQL see it. */
static void store_handlers(mq_worker *w) {
  sync_retry(w);
  store_flows(w);
  store_queues(w);
}

/* Handlers were loaded or removed (a hot reload, or SIGHUP's rescan). */
static void reloaded(void *data) {
  mq_worker *w = data;
  sync_consumers(w);
  store_handlers(w);
}

static void rescan(mq_worker *w, bool force) {
  if (mq_handlers_scan(w->handlers, force) > 0)
    reloaded(w);
}

/* Big results leave their encoded copies, the completion batch and
 * libpq's buffers in the C heap until they are stored: the trim that
 * counts them waits (once) TRIM_WAIT s for the queue to store them, and
 * comes at most once a TRIM_EVERY s (a steady flow of big results would
 * otherwise collect garbage many times a second). */
static void trim_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  mq_worker *w = t->data;
  ev_tstamp now = ev_now(loop);
  if (w->big_results && !w->trim_waited) {
    ev_tstamp wait = w->trimmed_at + TRIM_EVERY - now;
    if (mq_queue_storing(w->q) > 0 && wait < TRIM_WAIT)
      wait = TRIM_WAIT;
    if (wait > 0) {
      w->trim_waited = true;
      ev_timer_set(t, wait, 0.);
      ev_timer_start(loop, t);
      return;
    }
  }
  w->trim_waited = false;
  if (mq_lua_memory_trim(w->L, w->big_results)) {
    w->big_results = 0;
    w->trimmed_at = now;
  }
}

void mq_worker_reload(mq_worker *w) { rescan(w, true); }

/* [] -> []: anchors moonq.ctx.new. */
static int load_ctx(lua_State *L) {
  mq_worker *w = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.ctx");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "new");
  w->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

mq_worker *mq_worker_new(struct mq_runtime *rt, char *err, size_t errlen) {
  mq_worker *w = calloc(1, sizeof *w);
  if (!w) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  w->rt = rt;
  w->loop = mq_runtime_loop(rt);
  w->L = mq_runtime_lua(rt);
  w->cfg = mq_runtime_config(rt);
  w->q = mq_runtime_queue(rt);
  w->ctx_ref = LUA_NOREF;
  LIST_INIT(&w->actives);
  const char *h = w->cfg->handlers;
  if (h[0] == '/')
    snprintf(w->dir, sizeof w->dir, "%s", h);
  else
    snprintf(w->dir, sizeof w->dir, "%s/%s", w->cfg->base_dir, h);
  if (mq_lua_protect(w->L, load_ctx, w, 0) != LUA_OK) {
    snprintf(err, errlen, "%s", lua_tostring(w->L, -1));
    lua_pop(w->L, 1);
    free(w);
    return NULL;
  }
  if (!(w->tasks = mq_runtime_tasks(rt)))
    snprintf(err, errlen, "out of memory");
  else
    w->handlers = mq_handlers_new(w->L, w->dir, err, errlen);
  if (!w->handlers) {
    luaL_unref(w->L, LUA_REGISTRYINDEX, w->ctx_ref);
    free(w);
    return NULL;
  }
  ev_prepare_init(&w->probe, probe_cb);
  w->probe.data = w;
  /* Before the pool's dispatch (a prepare watcher too), so the fetches go
   * out in the same loop turn. */
  ev_prepare_init(&w->gather, gather_cb);
  ev_set_priority(&w->gather, 1);
  w->gather.data = w;
  ev_idle_init(&w->gather_kick, gather_kick_cb);
  STAILQ_INIT(&w->gathered);
  ev_timer_init(&w->trim, trim_cb, 0., 0.);
  w->trim.data = w;
  sync_consumers(w);
  return w;
}

bool mq_worker_handles(const mq_worker *w, const char *name) {
  return mq_handlers_find(w->handlers, name) != NULL;
}

int mq_worker_start(mq_worker *w) {
  if (w->cfg->hot_reload)
    mq_handlers_watch(w->handlers, w->loop, reloaded, w);
  mq_pg_listen(mq_runtime_pg(w->rt), mq_runtime_channel(w->rt), wake_cb, w);
  mq_queue_on_sent(w->q, take_sent, w);
  w->started = true;
  sync_consumers(w);
  store_handlers(w);
  mq_log_info("worker", "started handlers=%zu queues=%d dir=%s",
              mq_handlers_count(w->handlers), w->nconsumers, w->dir);
  return 0;
}

/* Grace period over: the jobs still running go back to the queue. */
static void grace_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  mq_worker *w = t->data;
  long long *ids = malloc(sizeof *ids * (size_t)(w->nactive + 1));
  int n = 0;
  struct active *a;
  LIST_FOREACH(a, &w->actives, link)
    if (ids)
      ids[n++] = a->id;
  if (ids)
    release_ids(w, ids, n);
  else
    mq_log_error("worker", "out of memory: jobs stay active until recovered");
  free(ids);
  while ((a = LIST_FIRST(&w->actives))) {
    mq_task_abandon(a->task);
    a->task = NULL;
    LIST_REMOVE(a, link);
    w->nactive--;
    a->c->running--;
    luaL_unref(w->L, LUA_REGISTRYINDEX, a->ctx_ref);
    free(a->name);
    free(a);
  }
  check_stopped(w);
}

/* Drops the fetches asked for and not yet sent (stopping, closing). */
static void stop_gathering(mq_worker *w) {
  ev_prepare_stop(w->loop, &w->gather);
  ev_idle_stop(w->loop, &w->gather_kick);
  struct consumer *c;
  while ((c = STAILQ_FIRST(&w->gathered))) {
    STAILQ_REMOVE_HEAD(&w->gathered, gather_link);
    c->gathered = false;
  }
  w->ngathered = 0;
}

static void check_stopped(mq_worker *w) {
  if (!w->stopping || w->nactive > 0 || w->inflight > 0 || !w->stopped)
    return;
  ev_timer_stop(w->loop, &w->grace);
  void (*done)(void *) = w->stopped;
  w->stopped = NULL;
  done(w->stopped_arg);
}

void mq_worker_stop(mq_worker *w, void (*done)(void *arg), void *arg) {
  w->stopped = done;
  w->stopped_arg = arg;
  if (w->stopping) {
    check_stopped(w);
    return;
  }
  w->stopping = true;
  mq_queue_on_sent(w->q, NULL, NULL); /* other processes take them */
  ev_prepare_stop(w->loop, &w->probe);
  stop_gathering(w);
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    ev_timer_stop(w->loop, &c->poll);
    mq_scheduler_cancel(mq_runtime_scheduler(w->rt), due_cb, c);
    release_buffer(w, c);
  }
  if (w->started)
    mq_pg_unlisten(mq_runtime_pg(w->rt), mq_runtime_channel(w->rt), wake_cb,
                   w);
  mq_handlers_unwatch(w->handlers);
  if (w->nactive)
    mq_log_info("worker", "stopping: waiting for running jobs count=%d "
                "grace_s=%g", w->nactive, w->cfg->shutdown_grace);
  ev_timer_init(&w->grace, grace_cb, w->cfg->shutdown_grace, 0.);
  w->grace.data = w;
  ev_timer_start(w->loop, &w->grace);
  check_stopped(w);
}

void mq_worker_hurry(mq_worker *w) {
  if (!w->stopping || !ev_is_active(&w->grace))
    return;
  ev_timer_stop(w->loop, &w->grace);
  if (w->nactive)
    mq_log_warn("worker", "not waiting for running jobs count=%d",
                w->nactive);
  grace_cb(w->loop, &w->grace, 0);
}

void mq_worker_close(mq_worker *w) {
  if (!w)
    return;
  if (w->inflight > 0 || w->nactive > 0) {
    /* A callback could still reach it: leaking beats a use after free. */
    mq_log_error("worker", "closed while busy inflight=%d running=%d",
                 w->inflight, w->nactive);
    return;
  }
  mq_queue_on_sent(w->q, NULL, NULL);
  ev_timer_stop(w->loop, &w->grace);
  ev_timer_stop(w->loop, &w->trim);
  ev_prepare_stop(w->loop, &w->probe);
  stop_gathering(w);
  mq_handlers_unwatch(w->handlers);
  for (int i = 0; i < w->nconsumers; i++) {
    struct consumer *c = w->consumers[i];
    struct buffered *b;
    ev_timer_stop(w->loop, &c->poll);
    while ((b = STAILQ_FIRST(&c->buffer))) { /* left to crash recovery */
      STAILQ_REMOVE_HEAD(&c->buffer, link);
      free(b);
    }
    free(c->queue);
    free(c);
  }
  free(w->consumers);
  mq_handlers_free(w->handlers);
  luaL_unref(w->L, LUA_REGISTRYINDEX, w->ctx_ref);
  free(w);
}

/* ---- one attempt outside the queue ------------------------------------- */

struct once {
  mq_runtime *rt;
  mq_handlers *handlers; /* loaded for this attempt alone */
  int ctx_ref;
  mq_worker_once_cb cb;
  void *data;
};

static void once_ended(mq_task *task, enum mq_task_end how, int nresults,
                       void *data) {
  struct once *o = data;
  struct mq_worker_outcome out;
  outcome_of(o->rt, task, how, nresults, o->ctx_ref, &out);
  o->cb(&out, o->data);
  outcome_free(&out);
  luaL_unref(mq_runtime_lua(o->rt), LUA_REGISTRYINDEX, o->ctx_ref);
  mq_handlers_free(o->handlers);
  free(o);
}

int mq_worker_run_once(mq_runtime *rt, const char *dir,
                       const struct mq_job *job, double timeout,
                       int new_ctx_ref, mq_worker_once_cb cb, void *data,
                       char *err, size_t errlen) {
  lua_State *L = mq_runtime_lua(rt);
  mq_tasks *tasks = mq_runtime_tasks(rt);
  struct once *o = calloc(1, sizeof *o);
  if (!L || !tasks || !o) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  o->rt = rt;
  o->cb = cb;
  o->data = data;
  o->ctx_ref = LUA_NOREF;
  if (!(o->handlers = mq_handlers_new(L, dir, err, errlen)))
    goto fail;
  const struct mq_handler *h = mq_handlers_find(o->handlers, job->name);
  if (!h) {
    const char *why = mq_handlers_error(o->handlers, job->name);
    if (why)
      snprintf(err, errlen, "%s", why);
    else
      mq_handlers_missing(o->handlers, job->name, err, errlen);
    goto fail;
  }
  struct mq_job j = *job;
  if (!j.queue)
    j.queue = h->queue;
  const struct mq_queue_options *q =
      mq_config_queue(mq_runtime_config(rt), j.queue);
  if (j.retry_limit < 0)
    j.retry_limit = h->has_retry && h->retry.has_retry_limit
                        ? h->retry.retry_limit
                        : q->retry_limit;
  if (j.expire_in < 0)
    j.expire_in = q->expire_in;
  if (timeout <= 0)
    timeout = h->timeout > 0 ? h->timeout : q->timeout;
  struct start s = {.new_ctx_ref = new_ctx_ref, .job = &j,
                    .fn_ref = h->fn_ref, .ctx_ref = LUA_NOREF};
  mq_task *task = mq_task_start(tasks, push_start, &s, timeout, once_ended, o,
                                err, errlen);
  o->ctx_ref = s.ctx_ref;
  if (!task && s.unreadable[0])
    snprintf(err, errlen, "%s", s.unreadable);
  if (!task)
    goto fail;
  return 0;
fail:
  if (o) {
    if (L)
      luaL_unref(L, LUA_REGISTRYINDEX, o->ctx_ref);
    mq_handlers_free(o->handlers);
    free(o);
  }
  return -1;
}
