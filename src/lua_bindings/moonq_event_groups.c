/* moonq_event_groups.c -- consumer groups in moonq.events.
 *
 *   g = moonq.events.subscribe_group(pattern, group, consumer, fn,
 *         {partitions = 16, lease = 10, batch = 100, timeout = 300,
 *          retry = {limit = 3, delay = 1, backoff = true}})
 *   g:close()   g:is_open()
 *   list = moonq.events.groups([group])
 *   list = moonq.events.parked(group, {limit = 1000})
 *   n = moonq.events.replay(group, [{id, ...}])
 *
 * fn(event, info) runs for each event of the member's partitions in a
 * coroutine of its own (it may wait), the events of one partition one
 * after the other, partitions side by side; info = {group, consumer,
 * partition, attempt, replay}. An error or a timeout (seconds, per
 * attempt) is retried after delay, delay*2, delay*4... (backoff) or delay
 * seconds, up to `limit` retries; then the event is parked and the
 * partition goes on. subscribe_group waits until the member joined and
 * returns the handle, or nil and a message (e.g. another pattern than the
 * group's).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "event_groups.h"
#include "json.h"
#include "log.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "queue.h"
#include "runtime.h"
#include "task.h"

static const char *const GROUP_MT = "moonq.group_member";

struct lgroup;

/* A partition the member was handed batches of. */
struct lpart {
  struct lgroup *g;
  int index;
  int batch_ref[2]; /* by enum mq_group_batch: a Lua array, or LUA_NOREF */
  int count[2];
  int kind;         /* the batch being handled, or -1 */
  int next;         /* its next event (1-based) */
  int attempt;      /* of that event, from 1 */
  long long last_id; /* the last event of the batch handled (or parked) */
  int handled;
  bool busy;        /* a task, a backoff timer or a park in flight */
  bool end_after_wait; /* the backoff timer ends the batch (a failed park) */
  ev_timer backoff;
};

struct lgroup {
  mq_group_member *member; /* NULL once gone */
  mq_runtime *rt;
  lua_State *L;            /* the main thread */
  int fn_ref, self_ref;
  struct lpart **parts;
  int n_parts;
  double timeout, retry_delay;
  int retry_limit;
  bool backoff;
  bool closing;
  struct mq_lua_wait *join_wait; /* subscribe_group waits for the join */
  char group[64], consumer[64];  /* for log lines */
};

static void run_next(struct lpart *p);

/* ---- lifetime ------------------------------------------------------------ */

static bool anything_runs(const struct lgroup *g) {
  for (int i = 0; i < g->n_parts; i++)
    if (g->parts[i] && g->parts[i]->busy)
      return true;
  return false;
}

/* Releases what the handle holds in Lua once the member is gone and
 * nothing runs. */
static void lgroup_release(struct lgroup *g) {
  if (g->member || g->self_ref == LUA_NOREF || anything_runs(g))
    return;
  for (int i = 0; i < g->n_parts; i++) {
    struct lpart *p = g->parts[i];
    if (!p)
      continue;
    for (int k = 0; k < 2; k++)
      luaL_unref(g->L, LUA_REGISTRYINDEX, p->batch_ref[k]);
    free(p);
  }
  free(g->parts);
  g->parts = NULL;
  g->n_parts = 0;
  luaL_unref(g->L, LUA_REGISTRYINDEX, g->fn_ref);
  luaL_unref(g->L, LUA_REGISTRYINDEX, g->self_ref);
  g->fn_ref = g->self_ref = LUA_NOREF;
}

static struct lpart *lpart_of(struct lgroup *g, int index) {
  if (index < 0 || index >= 1024)
    return NULL;
  if (index >= g->n_parts) {
    struct lpart **parts = realloc(g->parts, sizeof *parts * (size_t)(index + 1));
    if (!parts)
      return NULL;
    for (int i = g->n_parts; i <= index; i++)
      parts[i] = NULL;
    g->parts = parts;
    g->n_parts = index + 1;
  }
  struct lpart *p = g->parts[index];
  if (!p && (p = g->parts[index] = calloc(1, sizeof *p))) {
    p->g = g;
    p->index = index;
    p->kind = -1;
    p->batch_ref[0] = p->batch_ref[1] = LUA_NOREF;
  }
  return p;
}

/* ---- handling a batch ---------------------------------------------------- */

/* The batch being handled is over (all of it, or as far as it got when
 * closing): tells the member, then starts a batch waiting, if any. */
static void batch_end(struct lpart *p) {
  struct lgroup *g = p->g;
  int kind = p->kind;
  luaL_unref(g->L, LUA_REGISTRYINDEX, p->batch_ref[kind]);
  p->batch_ref[kind] = LUA_NOREF;
  p->kind = -1;
  if (g->member)
    mq_group_done(g->member, p->index, (enum mq_group_batch)kind, p->last_id,
                  p->handled);
  for (int k = 0; k < 2 && p->kind < 0; k++) {
    if (p->batch_ref[k] == LUA_NOREF)
      continue;
    if (g->closing) { /* answer it unhandled */
      luaL_unref(g->L, LUA_REGISTRYINDEX, p->batch_ref[k]);
      p->batch_ref[k] = LUA_NOREF;
      if (g->member)
        mq_group_done(g->member, p->index, (enum mq_group_batch)k, 0, 0);
      continue;
    }
    p->kind = k;
    p->next = 1;
    p->attempt = 1;
    p->last_id = 0;
    p->handled = 0;
    run_next(p);
  }
  lgroup_release(g);
}

/* The current event is done with (handled or parked): on to the next. */
static void event_over(struct lpart *p, long long id) {
  p->last_id = id;
  p->handled++;
  p->next++;
  p->attempt = 1;
  run_next(p);
}

/* [lpart] -> [fn event info] for the current event. */
static int push_call(lua_State *L) {
  struct lpart *p = lua_touserdata(L, 1);
  struct lgroup *g = p->g;
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->fn_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->batch_ref[p->kind]);
  lua_rawgeti(L, -1, p->next);
  lua_remove(L, -2);
  lua_createtable(L, 0, 5);
  lua_pushstring(L, g->group);
  lua_setfield(L, -2, "group");
  lua_pushstring(L, g->consumer);
  lua_setfield(L, -2, "consumer");
  lua_pushinteger(L, p->index);
  lua_setfield(L, -2, "partition");
  lua_pushinteger(L, p->attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushboolean(L, p->kind == MQ_GROUP_REPLAY);
  lua_setfield(L, -2, "replay");
  return 3;
}

/* The id of the current event. */
static long long current_id(struct lpart *p) {
  lua_State *L = p->g->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->batch_ref[p->kind]);
  lua_rawgeti(L, -1, p->next);
  lua_getfield(L, -1, "id");
  long long id = lua_tointeger(L, -1);
  lua_pop(L, 3);
  return id;
}

static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* Waits `delay` seconds (busy meanwhile), then goes on with the event, or
 * ends the batch with end_batch. */
static void wait_then(struct lpart *p, double delay, bool end_batch) {
  p->busy = true;
  p->end_after_wait = end_batch;
  ev_timer_init(&p->backoff, backoff_cb, delay, 0);
  p->backoff.data = p;
  ev_timer_start(mq_runtime_loop(p->g->rt), &p->backoff);
}

static void parked(int status, const char *error, void *data) {
  struct lpart *p = data;
  p->busy = false;
  long long id = current_id(p);
  if (status != MQ_EVENTS_OK) {
    /* Not parked: after a pause the batch ends before the event, which is
     * read and tried again. */
    mq_log_error("events", "parking an event failed group=%s event_id=%lld "
                 "error=\"%s\" (it is read and tried again in 1 s)",
                 p->g->group, id, error);
    wait_then(p, 1.0, true);
    return;
  }
  event_over(p, id);
}

/* The current event failed for good: parks it. */
static void park(struct lpart *p, const char *error) {
  struct lgroup *g = p->g;
  long long id = current_id(p);
  mq_log_error("events", "event parked group=%s consumer=%s event_id=%lld "
               "attempts=%d error=\"%s\"", g->group, g->consumer, id,
               p->attempt, error);
  if (g->member && mq_group_park(g->member, p->index, id, p->attempt, error,
                                 parked, p) == 0) {
    p->busy = true;
    return;
  }
  if (g->member)
    wait_then(p, 1.0, true); /* not parked: read again from before it */
  else
    batch_end(p);
}

static void backoff_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  struct lpart *p = w->data;
  p->busy = false;
  if (p->end_after_wait)
    batch_end(p);
  else
    run_next(p);
}

struct error_text {
  lua_State *co; /* the error value on top */
  char text[512];
};

/* [et] -> []: et->text from the error a task raised, calling nothing of it
 * (a __tostring that raises must not reach the loop): a string or number,
 * an error table's `message`, or the value's type. */
static int error_text(lua_State *L) {
  struct error_text *et = lua_touserdata(L, 1);
  lua_xmove(et->co, L, 1); /* [et err] */
  int t = lua_type(L, 2);
  if (t == LUA_TTABLE && lua_getfield(L, 2, "message") == LUA_TSTRING)
    lua_replace(L, 2);
  if (lua_type(L, 2) == LUA_TSTRING || lua_type(L, 2) == LUA_TNUMBER)
    snprintf(et->text, sizeof et->text, "%s", lua_tostring(L, 2));
  else
    snprintf(et->text, sizeof et->text, "(error object is a %s value)",
             lua_typename(L, t));
  return 0;
}

static void event_end(mq_task *task, enum mq_task_end how, int nresults,
                      void *data) {
  struct lpart *p = data;
  struct lgroup *g = p->g;
  p->busy = false;
  if (how == MQ_TASK_RETURNED) {
    event_over(p, current_id(p));
    return;
  }
  char error[512];
  if (how == MQ_TASK_TIMED_OUT)
    snprintf(error, sizeof error, "timed out after %g s", g->timeout);
  else {
    struct error_text et = {.co = mq_task_thread(task)};
    if (mq_lua_protect(g->L, error_text, &et, 0) != LUA_OK) {
      snprintf(et.text, sizeof et.text, "%s", lua_tostring(g->L, -1));
      lua_pop(g->L, 1);
    }
    snprintf(error, sizeof error, "%s", et.text);
  }
  if (p->attempt > g->retry_limit || g->closing) {
    if (g->closing) { /* not handled: the next reader gets it */
      batch_end(p);
      return;
    }
    park(p, error);
    return;
  }
  double delay = g->retry_delay;
  if (g->backoff)
    delay *= pow(2, p->attempt - 1);
  mq_log_warn("events", "event failed group=%s event_id=%lld attempt=%d "
              "retry_in_s=%g error=\"%s\"", g->group, current_id(p),
              p->attempt, delay, error);
  p->attempt++;
  wait_then(p, delay, false);
}

/* Runs the batch's current event, or ends the batch (also when the
 * member is no longer sure it owns the partition). */
static void run_next(struct lpart *p) {
  struct lgroup *g = p->g;
  if (g->closing || p->next > p->count[p->kind] ||
      (g->member && !mq_group_may_handle(g->member, p->index))) {
    batch_end(p);
    return;
  }
  char err[512];
  mq_tasks *tasks = mq_runtime_tasks(g->rt);
  if (tasks && mq_task_start(tasks, push_call, p, g->timeout, event_end, p,
                             err, sizeof err)) {
    p->busy = true;
    return;
  }
  park(p, tasks ? err : "not enough memory");
}

/* Stops handling: no event starts after this, a backoff wait ends, and
 * batches not being worked on end now (the member hears how far they got;
 * a task still running ends its batch when it returns). With `leave` the
 * member leaves the group first. */
static void stop_handling(struct lgroup *g, bool leave) {
  g->closing = true;
  for (int i = 0; i < g->n_parts; i++) {
    struct lpart *p = g->parts[i];
    if (p && p->busy && ev_is_active(&p->backoff)) {
      ev_timer_stop(mq_runtime_loop(g->rt), &p->backoff);
      p->busy = false;
    }
  }
  if (leave && g->member)
    mq_group_leave(g->member);
  for (int i = 0; i < g->n_parts; i++) {
    struct lpart *p = g->parts[i];
    if (p && !p->busy && p->kind >= 0)
      batch_end(p);
  }
}

/* ---- from the member ----------------------------------------------------- */

struct anchor {
  const struct mq_event *events;
  int n;
};

/* [anchor] -> [array of events] */
static int push_batch(lua_State *L) {
  const struct anchor *a = lua_touserdata(L, 1);
  lua_createtable(L, a->n, 0);
  for (int i = 0; i < a->n; i++) {
    mq_lua_push_event(L, &a->events[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void batch_cb(int status, const char *error, int partition,
                     enum mq_group_batch kind, const struct mq_event *events,
                     int n, void *data) {
  struct lgroup *g = data;
  if (status == MQ_EVENTS_ECLOSED) {
    g->member = NULL;
    stop_handling(g, false);
    lgroup_release(g);
    return;
  }
  if (status != MQ_EVENTS_OK) {
    mq_log_warn("events", "reading for a group failed group=%s partition=%d "
                "error=\"%s\" (it reads again from the same place)", g->group,
                partition, error);
    return;
  }
  struct lpart *p = lpart_of(g, partition);
  struct anchor a = {events, n};
  if (!p || mq_lua_protect(g->L, push_batch, &a, 1) != LUA_OK) {
    if (p)
      lua_pop(g->L, 1);
    mq_log_error("events", "cannot hand a batch to a group member group=%s "
                 "partition=%d (read again later)", g->group, partition);
    if (g->member)
      mq_group_done(g->member, partition, kind, 0, 0);
    return;
  }
  p->batch_ref[kind] = luaL_ref(g->L, LUA_REGISTRYINDEX);
  p->count[kind] = n;
  if (p->kind < 0) {
    p->kind = (int)kind;
    p->next = 1;
    p->attempt = 1;
    p->last_id = 0;
    p->handled = 0;
    run_next(p);
  }
}

/* [lgroup status error] -> [true] or [nil error] */
struct join_reply {
  int status;
  const char *error;
};

static int push_joined(lua_State *L) {
  const struct join_reply *r = lua_touserdata(L, 1);
  if (r->status == MQ_EVENTS_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, r->error ? r->error : "joining the group failed");
  return 2;
}

static void joined_cb(int status, const char *error, void *data) {
  struct lgroup *g = data;
  struct join_reply r = {status, error};
  if (status != MQ_EVENTS_OK)
    g->member = NULL; /* freed when this returns */
  struct mq_lua_wait *w = g->join_wait;
  g->join_wait = NULL;
  if (w)
    mq_lua_wait_finish(w, push_joined, &r);
  if (!g->member)
    lgroup_release(g);
}

/* ---- the handle ---------------------------------------------------------- */

static struct lgroup *check_group(lua_State *L) {
  return luaL_checkudata(L, 1, GROUP_MT);
}

/* g:is_open() -> boolean */
static int l_group_is_open(lua_State *L) {
  struct lgroup *g = check_group(L);
  lua_pushboolean(L, g->member != NULL && !g->closing);
  return 1;
}

/* g:close(): leaves the group. Events being handled finish, their
 * checkpoints are written, and the member's partitions go to the others
 * at once; nothing is delivered after it returns. */
static int l_group_close(lua_State *L) {
  struct lgroup *g = check_group(L);
  if (g->member && !g->closing)
    stop_handling(g, true);
  return 0;
}

/* [... handle true] or [... nil err] -> the handle, or nil err */
static int subscribe_k(lua_State *L, int status, lua_KContext ctx) {
  int top = (int)ctx;
  if (lua_toboolean(L, top + 1)) {
    lua_pushvalue(L, top); /* the handle */
    return 1;
  }
  return lua_gettop(L) - top;
}

/* Raises naming the first key of table t that is not in `known`
 * (NULL-terminated). */
static void check_keys(lua_State *L, int t, const char *const *known,
                       const char *where) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    bool ok = false;
    for (int i = 0; known[i] && !ok; i++)
      ok = lua_type(L, -1) == LUA_TSTRING &&
           strcmp(lua_tostring(L, -1), known[i]) == 0;
    if (!ok)
      luaL_error(L, "%s: unknown option %s", where, luaL_tolstring(L, -1, NULL));
  }
}

/* The integer option `key` of table t in [min, max], or def. */
static int opt_int(lua_State *L, int t, const char *key, int def, int min,
                   int max, const char *what) {
  if (lua_getfield(L, t, key) == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  int isnum;
  lua_Integer v = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || v < min || v > max)
    luaL_error(L, "%s must be an integer from %d to %d", what, min, max);
  return (int)v;
}

/* The string argument idx, refused when it holds a NUL byte (C would cut
 * the name there). */
static const char *name_arg(lua_State *L, int idx, const char *what) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s contains a NUL byte", what));
  return s;
}

static double opt_number(lua_State *L, int t, const char *key, double def,
                         double min, const char *what) {
  if (lua_getfield(L, t, key) == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  if (!lua_isnumber(L, -1))
    luaL_error(L, "%s must be a number", what);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v >= min) || !isfinite(v)) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s is %g, it must be >= %g", what, v, min);
    luaL_error(L, "%s", msg);
  }
  return v;
}

static int l_subscribe_group(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  const char *pattern = name_arg(L, 1, "the pattern");
  const char *group = name_arg(L, 2, "the group name");
  const char *consumer = name_arg(L, 3, "the consumer name");
  luaL_checktype(L, 4, LUA_TFUNCTION);
  struct mq_group_options o = {.group = group, .consumer = consumer,
                               .pattern = pattern};
  double timeout = 300, delay = 1;
  int limit = 3;
  bool backoff = true;
  if (!lua_isnoneornil(L, 5)) {
    luaL_checktype(L, 5, LUA_TTABLE);
    static const char *const known[] = {"partitions", "lease", "batch",
                                        "timeout", "retry", NULL};
    check_keys(L, 5, known, "subscribe_group");
    o.partitions = opt_int(L, 5, "partitions", 0, 1, 1024, "partitions");
    o.lease = opt_number(L, 5, "lease", 0, 0.5, "lease (seconds)");
    o.batch = opt_int(L, 5, "batch", 0, 1, 10000, "batch");
    timeout = opt_number(L, 5, "timeout", timeout, 0.001, "timeout (seconds)");
    if (lua_getfield(L, 5, "retry") != LUA_TNIL) {
      luaL_checktype(L, -1, LUA_TTABLE);
      int t = lua_gettop(L);
      static const char *const retry_keys[] = {"limit", "delay", "backoff",
                                               NULL};
      check_keys(L, t, retry_keys, "subscribe_group: retry");
      limit = opt_int(L, t, "limit", limit, 0, 1000000, "retry.limit");
      delay = opt_number(L, t, "delay", delay, 0, "retry.delay (seconds)");
      if (lua_getfield(L, t, "backoff") != LUA_TNIL)
        backoff = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (!mq_runtime_tasks(rt))
    return luaL_error(L, "not enough memory");
  lua_settop(L, 5);
  struct lgroup *g = lua_newuserdatauv(L, sizeof *g, 0); /* at 6 */
  memset(g, 0, sizeof *g);
  g->fn_ref = g->self_ref = LUA_NOREF;
  luaL_setmetatable(L, GROUP_MT);
  g->rt = rt;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  g->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  g->timeout = timeout;
  g->retry_limit = limit;
  g->retry_delay = delay;
  g->backoff = backoff;
  snprintf(g->group, sizeof g->group, "%s", group);
  snprintf(g->consumer, sizeof g->consumer, "%s", consumer);
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  lua_pushvalue(L, 4);
  g->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 6);
  g->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  mq_queue *q = mq_runtime_queue(rt);
  o.process_id = q ? mq_queue_process_id(q) : NULL;
  char err[256];
  g->join_wait = w;
  g->member = mq_group_join(ev, &o, joined_cb, batch_cb, g, err, sizeof err);
  if (!g->member) {
    g->join_wait = NULL;
    mq_lua_wait_free(w);
    lgroup_release(g);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return mq_lua_wait_k(L, w, subscribe_k);
}

/* ---- groups, parked, replay ---------------------------------------------- */

struct rows_reply {
  int status;
  const char *error;
  const PGresult *rows;
};

/* A waiting call: how to push its rows, and the wait. */
struct rows_call {
  lua_CFunction push;
  struct mq_lua_wait *w;
};

static void rows_cb(int status, const char *error, const PGresult *rows,
                    void *data) {
  struct rows_call c = *(struct rows_call *)data;
  struct rows_reply r = {status, error, rows};
  free(data);
  mq_lua_wait_finish(c.w, c.push, &r);
}

/* Pushes column c of row as a Lua value: NULL nil, JSON decoded, integer
 * columns as integers, else strings. */
static void push_cell(lua_State *L, const PGresult *res, int row, int c) {
  if (PQgetisnull(res, row, c)) {
    lua_pushnil(L);
    return;
  }
  const char *v = PQgetvalue(res, row, c);
  Oid type = PQftype(res, c);
  char err[128];
  if (type == 20 || type == 23) /* int8, int4 */
    lua_pushinteger(L, strtoll(v, NULL, 10));
  else if (type == 16) /* bool */
    lua_pushboolean(L, v[0] == 't');
  else if (type == 3802 && mq_json_decode(L, v, strlen(v), err, sizeof err) == 0)
    ; /* jsonb, decoded */
  else
    lua_pushstring(L, v);
}

/* [reply] -> [array of row tables] or [nil err] */
static int push_rows(lua_State *L) {
  const struct rows_reply *r = lua_touserdata(L, 1);
  if (r->status != MQ_EVENTS_OK) {
    lua_pushnil(L);
    lua_pushstring(L, r->error ? r->error : "failed");
    return 2;
  }
  int n = PQntuples(r->rows), cols = PQnfields(r->rows);
  lua_createtable(L, n, 0);
  mq_json_push_array_mt(L);
  lua_setmetatable(L, -2);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, cols);
    for (int c = 0; c < cols; c++) {
      push_cell(L, r->rows, i, c);
      lua_setfield(L, -2, PQfname(r->rows, c));
    }
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* [reply] -> [count] or [nil err] */
static int push_count(lua_State *L) {
  const struct rows_reply *r = lua_touserdata(L, 1);
  if (r->status != MQ_EVENTS_OK)
    return push_rows(L);
  lua_pushinteger(L, strtoll(PQgetvalue(r->rows, 0, 0), NULL, 10));
  return 1;
}

/* A waiting call for rows_cb (freed there), or raises. */
static struct rows_call *rows_call(lua_State *L, lua_CFunction push,
                                   struct mq_lua_wait *w) {
  struct rows_call *c = malloc(sizeof *c);
  if (!c) {
    mq_lua_wait_free(w);
    luaL_error(L, "not enough memory");
  }
  c->push = push;
  c->w = w;
  return c;
}

static int rows_result(lua_State *L, int rc, struct rows_call *call,
                       struct mq_lua_wait *w) {
  if (rc != 0) {
    free(call);
    mq_lua_wait_free(w);
    lua_pushnil(L);
    lua_pushliteral(L, "the event store is closed");
    return 2;
  }
  return mq_lua_wait(L, w);
}

/* groups([group]) -> {{group_name, pattern, partitions, members, last_id,
 * handled, lag, parked}, ...} */
static int l_groups(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  const char *group = luaL_optstring(L, 1, NULL);
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  struct rows_call *call = rows_call(L, push_rows, w);
  return rows_result(L, mq_group_list(ev, group, rows_cb, call), call, w);
}

/* parked(group, {limit}) -> {{event_id, part, consumer, attempts, error,
 * parked_at, replay, stream, type, ts, data}, ...} */
static int l_parked(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  const char *group = luaL_checkstring(L, 1);
  int limit = 1000;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    limit = (int)opt_number(L, 2, "limit", limit, 1, "limit");
  }
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  struct rows_call *call = rows_call(L, push_rows, w);
  return rows_result(L, mq_group_parked(ev, group, limit, rows_cb, call), call,
                     w);
}

/* replay(group, [ids]) -> how many parked events were marked */
static int l_replay(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  const char *group = luaL_checkstring(L, 1);
  long long *ids = NULL;
  int n = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    n = (int)lua_rawlen(L, 2);
    ids = lua_newuserdatauv(L, sizeof *ids * (size_t)(n + 1), 0);
    for (int i = 0; i < n; i++) {
      lua_rawgeti(L, 2, i + 1);
      if (!lua_isinteger(L, -1))
        return luaL_argerror(L, 2, "expected a list of event ids");
      ids[i] = lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
  }
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  struct rows_call *call = rows_call(L, push_count, w);
  return rows_result(L, mq_group_replay(ev, group, ids, n, rows_cb, call),
                     call, w);
}

void mq_lua_event_groups_register(lua_State *L) {
  static const luaL_Reg funcs[] = {{"subscribe_group", l_subscribe_group},
                                   {"groups", l_groups},
                                   {"parked", l_parked},
                                   {"replay", l_replay},
                                   {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"close", l_group_close}, {"is_open", l_group_is_open}, {NULL, NULL}};
  if (luaL_newmetatable(L, GROUP_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_group_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
