/* moonq_events.c -- moonq.events: the event store from Lua.
 *
 *   ev = moonq.events.append(stream, {type =, data =, run_id =})
 *   list = moonq.events.append_many(stream, {{type =, data =}, ...})
 *   list = moonq.events.query(stream_or_pattern, {types = {...}, after =,
 *            before =, limit =, run_id =, from_ts =, to_ts =})
 *   sub = moonq.events.subscribe(stream_or_pattern, fn,
 *            {from = "start" | "end" | id, timeout = seconds})
 *   sub:close()   sub:is_open()
 *
 * An event is a table {id, stream, type, ts, data, run_id, flow_name,
 * step_name, step_id, attempt}. Calls return their result or nil and a
 * message; arguments of the wrong type raise. A subscriber's fn runs for
 * each event in a coroutine of its own (it may wait: moonq.db.query,
 * moonq.sleep...), one event after the other; `timeout` bounds one event;
 * an error or a timeout in fn is logged and delivery goes on with the
 * next event. From "end" (the default) subscribe waits for the position
 * to be fixed, so every event committed after it returns is delivered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "events.h"
#include "json.h"
#include "log.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "runtime.h"
#include "task.h"

static const char *const SUB_MT = "moonq.subscription";

mq_events *mq_lua_events(lua_State *L, mq_runtime **rt) {
  *rt = mq_lua_runtime(L);
  if (!*rt || !mq_runtime_queue(*rt))
    luaL_error(L, "moonq is not open (call moonq.open() first)");
  mq_events *ev = mq_runtime_events(*rt);
  if (!ev)
    luaL_error(L, "the event store is disabled (config events.enabled)");
  return ev;
}

void mq_lua_push_event(lua_State *L, const struct mq_event *e) {
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, e->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, e->stream);
  lua_setfield(L, -2, "stream");
  lua_pushstring(L, e->type);
  lua_setfield(L, -2, "type");
  lua_pushstring(L, e->ts);
  lua_setfield(L, -2, "ts");
  char err[256];
  if (!e->data) {
    lua_newtable(L);
    lua_setfield(L, -2, "data");
  } else if (mq_json_decode(L, e->data, strlen(e->data), err, sizeof err) == 0) {
    lua_setfield(L, -2, "data");
  } else { /* stored before such data was refused at append */
    lua_pushfstring(L, "event data cannot be read in Lua: %s", err);
    lua_setfield(L, -2, "data_error");
  }
  const char *opt[] = {e->run_id, e->flow_name, e->step_name, e->step_id};
  const char *names[] = {"run_id", "flow_name", "step_name", "step_id"};
  for (int i = 0; i < 4; i++) {
    if (opt[i]) {
      lua_pushstring(L, opt[i]);
      lua_setfield(L, -2, names[i]);
    }
  }
  if (e->attempt >= 0) {
    lua_pushinteger(L, e->attempt);
    lua_setfield(L, -2, "attempt");
  }
}

/* What a callback delivered, for the push functions. */
struct reply {
  int status;
  const char *error;
  const long long *ids;
  const char *const *ts;
  const struct mq_event *events;
  int n;
};

static int push_error(lua_State *L, const struct reply *r) {
  lua_pushnil(L);
  lua_pushstring(L, r->error ? r->error : "failed");
  return 2;
}

/* [reply] -> [{ids}, {ts}] or [nil err] */
static int push_appended(lua_State *L) {
  const struct reply *r = lua_touserdata(L, 1);
  if (r->status != MQ_EVENTS_OK)
    return push_error(L, r);
  lua_createtable(L, r->n, 0);
  lua_createtable(L, r->n, 0);
  for (int i = 0; i < r->n; i++) {
    lua_pushinteger(L, r->ids[i]);
    lua_rawseti(L, -3, i + 1);
    lua_pushstring(L, r->ts[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 2;
}

static void appended(int status, const char *error, const long long *ids,
                     const char *const *ts, int n, void *data) {
  struct reply r = {.status = status, .error = error, .ids = ids, .ts = ts,
                    .n = n};
  mq_lua_wait_finish(data, push_appended, &r);
}

/* [reply] -> [array of events] or [nil err] */
static int push_events(lua_State *L) {
  const struct reply *r = lua_touserdata(L, 1);
  if (r->status != MQ_EVENTS_OK)
    return push_error(L, r);
  lua_createtable(L, r->n, 0);
  mq_json_push_array_mt(L);
  lua_setmetatable(L, -2);
  for (int i = 0; i < r->n; i++) {
    mq_lua_push_event(L, &r->events[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void queried(int status, const char *error,
                    const struct mq_event *events, int n, void *data) {
  struct reply r = {.status = status, .error = error, .events = events,
                    .n = n};
  mq_lua_wait_finish(data, push_events, &r);
}

/* ---- append ------------------------------------------------------------- */

/* The string at idx; raises when it holds a NUL byte (PostgreSQL's text
 * cannot, and C would cut it there). */
static const char *text_arg(lua_State *L, int idx, const char *what, int nth) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_error(L, "event %d: %s holds a NUL byte", nth, what);
  return s;
}

/* Reads the event table at idx into in (strings kept alive on the stack:
 * its JSON data is pushed). Raises for wrong types. */
static void event_arg(lua_State *L, int idx, const char *stream, int nth,
                      struct mq_event_input *in) {
  if (!lua_istable(L, idx))
    luaL_error(L, "event %d must be a table {type =, data =, run_id =}", nth);
  in->stream = stream;
  lua_getfield(L, idx, "type");
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "event %d: type must be a string", nth);
  in->type = text_arg(L, -1, "type", nth);
  lua_getfield(L, idx, "run_id");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "event %d: run_id must be a string", nth);
  in->run_id = lua_isnil(L, -1) ? NULL : text_arg(L, -1, "run_id", nth);
  lua_getfield(L, idx, "data");
  in->data = "{}";
  if (!lua_isnil(L, -1)) {
    char err[512];
    size_t len;
    char *json = mq_json_encode(L, -1, "data", &len, err, sizeof err);
    if (!json)
      luaL_error(L, "event %d: %s", nth, err);
    in->data = lua_pushlstring(L, json, len);
    free(json);
  }
}

/* [stream list ... {ids} {ts}] -> the stored events (or nil, err). */
static int append_k(lua_State *L, int status, lua_KContext ctx) {
  int top = (int)ctx, single = lua_toboolean(L, 3);
  if (lua_gettop(L) - top != 2 || lua_isnil(L, -2))
    return lua_gettop(L) - top;
  int ids = top + 1, ts = top + 2, n = (int)lua_rawlen(L, ids);
  lua_createtable(L, n, 0); /* [.. ids ts out] */
  mq_json_push_array_mt(L);
  lua_setmetatable(L, -2);
  for (int i = 1; i <= n; i++) {
    if (single)
      lua_pushvalue(L, 2);
    else
      lua_rawgeti(L, 2, i); /* the input event */
    lua_createtable(L, 0, 6);
    lua_rawgeti(L, ids, i);
    lua_setfield(L, -2, "id");
    lua_rawgeti(L, ts, i);
    lua_setfield(L, -2, "ts");
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "stream");
    const char *keys[] = {"type", "data", "run_id"};
    for (int k = 0; k < 3; k++) {
      lua_getfield(L, -2, keys[k]);
      lua_setfield(L, -2, keys[k]);
    }
    if (lua_getfield(L, -1, "data") == LUA_TNIL) {
      lua_newtable(L);
      lua_setfield(L, -3, "data");
    }
    lua_pop(L, 1);
    lua_remove(L, -2);
    lua_rawseti(L, -2, i);
  }
  if (single)
    lua_rawgeti(L, -1, 1);
  return 1;
}

/* Shared by append and append_many: args [stream event|list]. */
static int append_events(lua_State *L, bool single) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  luaL_checkstring(L, 1);
  const char *stream = text_arg(L, 1, "stream", 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushboolean(L, single); /* [stream events single] */
  int n = single ? 1 : (int)lua_rawlen(L, 2);
  if (n < 1)
    return luaL_argerror(L, 2, "expected at least one event");
  luaL_checkstack(L, n * 4 + 8, "too many events");
  struct mq_event_input *in =
      lua_newuserdatauv(L, sizeof *in * (size_t)n, 0); /* anchored */
  for (int i = 0; i < n; i++) {
    if (single) {
      event_arg(L, 2, stream, 1, &in[0]);
    } else {
      lua_rawgeti(L, 2, i + 1);
      event_arg(L, lua_gettop(L), stream, i + 1, &in[i]);
    }
  }
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  char err[1024];
  if (mq_events_append(ev, in, n, appended, w, err, sizeof err) != 0) {
    mq_lua_wait_free(w);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  /* The continuation finds the inputs at 1..3 and the results above the
   * top the wait began at. */
  return mq_lua_wait_k(L, w, append_k);
}

/* _check(stream, type, data): raises with the reason when the event would
 * be refused (ctx.emit checks at once what it stores later). */
static int l_check(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  luaL_checkstring(L, 1);
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_error(L, "event type must be a non-empty string");
  struct mq_event_input in = {.stream = text_arg(L, 1, "stream", 1),
                              .type = text_arg(L, 2, "type", 1)};
  if (!lua_isnoneornil(L, 3)) {
    char err[512];
    size_t len;
    char *json = mq_json_encode(L, 3, "data", &len, err, sizeof err);
    if (!json)
      return luaL_error(L, "%s", err);
    in.data = lua_pushlstring(L, json, len);
    free(json);
  }
  char err[1024];
  if (mq_events_check(ev, &in, 1, err, sizeof err) != 0)
    return luaL_error(L, "%s", err + (strncmp(err, "event 1: ", 9) ? 0 : 9));
  lua_pushboolean(L, 1);
  return 1;
}

static int l_append(lua_State *L) { return append_events(L, true); }
static int l_append_many(lua_State *L) { return append_events(L, false); }

/* ---- query --------------------------------------------------------------- */

static int l_query(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  const char *pattern = luaL_checkstring(L, 1);
  struct mq_events_query q = {0};
  const char *types[65] = {NULL};
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "types") != LUA_TNIL) {
      luaL_checktype(L, -1, LUA_TTABLE);
      int n = (int)lua_rawlen(L, -1);
      luaL_argcheck(L, n <= 64, 2, "at most 64 types");
      for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1 - i, i + 1);
        types[i] = luaL_checkstring(L, -1);
      }
      q.types = types;
    }
    if (lua_getfield(L, 2, "after") != LUA_TNIL)
      q.after = luaL_checkinteger(L, -1);
    if (lua_getfield(L, 2, "before") != LUA_TNIL)
      q.before = luaL_checkinteger(L, -1);
    if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
      lua_Integer limit = luaL_checkinteger(L, -1);
      if (limit < 1 || limit > MQ_EVENTS_QUERY_MAX)
        return luaL_argerror(L, 2, lua_pushfstring(L, "limit must be 1 to %d",
                                                   MQ_EVENTS_QUERY_MAX));
      q.limit = (int)limit;
    }
    if (lua_getfield(L, 2, "run_id") != LUA_TNIL)
      q.run_id = luaL_checkstring(L, -1);
    if (lua_getfield(L, 2, "from_ts") != LUA_TNIL)
      q.from_ts = luaL_checkstring(L, -1);
    if (lua_getfield(L, 2, "to_ts") != LUA_TNIL)
      q.to_ts = luaL_checkstring(L, -1);
  }
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  if (mq_events_query(ev, pattern, &q, queried, w) != 0) {
    mq_lua_wait_free(w);
    lua_pushnil(L);
    lua_pushliteral(L, "the connection pool is closed");
    return 2;
  }
  return mq_lua_wait(L, w);
}

/* ---- subscribe ---------------------------------------------------------- */

struct lsub {
  mq_subscription *sub; /* NULL once closed */
  mq_runtime *rt;
  lua_State *L;         /* the main thread */
  int fn_ref, self_ref; /* the userdata stays alive while delivering */
  int batch_ref;        /* the batch being handled (a Lua array) */
  int next, count;      /* its next event and its size */
  double timeout;
  bool running;         /* a task handles an event */
  struct mq_lua_wait *start_wait; /* subscribe() waits for the position */
  char pattern[64];     /* for log lines */
};

/* Releases what the subscription holds in Lua once nothing runs. */
static void lsub_release(struct lsub *s) {
  if (s->sub || s->running || s->self_ref == LUA_NOREF)
    return;
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->batch_ref);
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->fn_ref);
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->self_ref);
  s->batch_ref = s->fn_ref = s->self_ref = LUA_NOREF;
}

/* [] -> [runner fn event pattern] for the batch's next event. */
static int push_one(lua_State *L) {
  struct lsub *s = lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.subscriber");
  lua_call(L, 1, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->batch_ref);
  lua_rawgeti(L, -1, s->next);
  lua_remove(L, -2);
  lua_pushstring(L, s->pattern);
  return 4;
}

static void run_next(struct lsub *s);

static void event_done(mq_task *task, enum mq_task_end how, int nresults,
                       void *data) {
  struct lsub *s = data;
  s->running = false;
  if (how == MQ_TASK_TIMED_OUT)
    mq_log_error("events", "subscriber timed out stream=%s timeout_s=%g "
                 "(it goes on with the next event)", s->pattern, s->timeout);
  else if (how == MQ_TASK_RAISED)
    mq_log_error("events", "subscriber failed stream=%s error=\"%s\"",
                 s->pattern, lua_tostring(mq_task_thread(task), -1));
  run_next(s);
}

/* Hands the batch's events to fn one at a time, each in a task of its own
 * (its timeout bounds one event); then asks for the next batch. */
static void run_next(struct lsub *s) {
  mq_tasks *tasks = mq_runtime_tasks(s->rt);
  while (s->sub && s->next <= s->count) {
    char err[512];
    if (tasks && mq_task_start(tasks, push_one, s, s->timeout, event_done, s,
                               err, sizeof err)) {
      s->next++;
      s->running = true;
      return;
    }
    mq_log_error("events", "cannot run a subscriber stream=%s error=\"%s\" "
                 "(its event is skipped)", s->pattern,
                 tasks ? err : "no memory");
    s->next++;
  }
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->batch_ref);
  s->batch_ref = LUA_NOREF;
  if (s->sub)
    mq_subscription_next(s->sub);
  else
    lsub_release(s);
}

struct anchor {
  struct reply r; /* first: push_events reads it */
  struct lsub *s;
};

/* [anchor] -> []: anchors the batch as a Lua array. */
static int anchor_batch(lua_State *L) {
  struct anchor *a = lua_touserdata(L, 1);
  push_events(L);
  a->s->batch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static void delivered(int status, const char *error,
                      const struct mq_event *events, int n, void *data) {
  struct lsub *s = data;
  if (status == MQ_EVENTS_ECLOSED) {
    s->sub = NULL;
    lsub_release(s);
    return;
  }
  if (status != MQ_EVENTS_OK) {
    mq_log_warn("events", "reading a subscription failed stream=%s "
                "error=\"%s\" (it reads again from the same place)",
                s->pattern, error);
    return;
  }
  struct anchor a = {.r = {.events = events, .n = n}, .s = s};
  if (mq_lua_protect(s->L, anchor_batch, &a, 0) != LUA_OK) {
    mq_log_error("events", "cannot hand a batch to a subscriber stream=%s "
                 "error=\"%s\" (%d events skipped)", s->pattern,
                 lua_tostring(s->L, -1), n);
    lua_pop(s->L, 1);
    mq_subscription_next(s->sub);
    return;
  }
  s->next = 1;
  s->count = n;
  run_next(s);
}

/* Closes the subscription (no event is delivered after) and releases what
 * it holds in Lua once nothing runs. */
static void sub_stop(struct lsub *s) {
  if (s->sub) {
    mq_subscription_close(s->sub);
    s->sub = NULL;
  }
  lsub_release(s);
}

static struct lsub *check_sub(lua_State *L) {
  return luaL_checkudata(L, 1, SUB_MT);
}

/* sub:is_open() -> boolean */
static int l_sub_is_open(lua_State *L) {
  lua_pushboolean(L, check_sub(L)->sub != NULL);
  return 1;
}

/* sub:close(): no event is delivered after it returns (an event being
 * handled finishes; the rest of its batch is dropped). */
static int l_sub_close(lua_State *L) {
  sub_stop(check_sub(L));
  return 0;
}

struct started {
  struct lsub *s;
  const char *error; /* NULL: the subscription has its position */
};

/* [] -> [sub] or [nil message]: what subscribe() returns. */
static int push_started(lua_State *L) {
  struct started *st = lua_touserdata(L, 1);
  if (st->error) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start the subscription to %s: %s",
                    st->s->pattern, st->error);
    return 2;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->s->self_ref);
  return 1;
}

/* The starting position of a subscription from the end is fixed (or could
 * not be: the subscription is closed and subscribe() returns nil and the
 * message). */
static void started(void *arg, const char *error) {
  struct lsub *s = arg;
  struct mq_lua_wait *w = s->start_wait;
  s->start_wait = NULL;
  struct started st = {.s = s, .error = error};
  if (error) /* keep the reference for push_started; release after */
    mq_subscription_close(s->sub), s->sub = NULL;
  mq_lua_wait_finish(w, push_started, &st);
  lsub_release(s);
}

/* The task waiting in subscribe() ended (timed out, stopped). */
static void start_cancelled(void *arg) {
  struct lsub *s = arg;
  struct mq_lua_wait *w = s->start_wait;
  s->start_wait = NULL;
  sub_stop(s);
  mq_lua_wait_finish(w, NULL, NULL); /* frees the cancelled wait */
}

static int l_subscribe(lua_State *L) {
  mq_runtime *rt;
  mq_events *ev = mq_lua_events(L, &rt);
  const char *pattern = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  enum mq_events_from from = MQ_EVENTS_FROM_END;
  long long from_id = 0;
  double timeout = 300;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    int t = lua_getfield(L, 3, "from");
    if (t == LUA_TNUMBER) {
      from = MQ_EVENTS_FROM_ID;
      from_id = luaL_checkinteger(L, -1);
    } else if (t == LUA_TSTRING && strcmp(lua_tostring(L, -1), "start") == 0) {
      from = MQ_EVENTS_FROM_START;
    } else if (t != LUA_TNIL &&
               !(t == LUA_TSTRING && strcmp(lua_tostring(L, -1), "end") == 0)) {
      return luaL_argerror(L, 3, "from must be \"start\", \"end\" or an id");
    }
    if (lua_getfield(L, 3, "timeout") != LUA_TNIL) {
      timeout = luaL_checknumber(L, -1);
      luaL_argcheck(L, timeout > 0, 3, "timeout must be > 0 seconds");
    }
  }
  if (!mq_runtime_tasks(rt))
    return luaL_error(L, "not enough memory");
  /* From the end, subscribe() returns once the position is fixed, so an
   * event the caller appends after it returns is delivered: the first read
   * may run on another connection than the append. */
  struct mq_lua_wait *w = from == MQ_EVENTS_FROM_END
                              ? mq_lua_wait_new(L, mq_runtime_loop(rt))
                              : NULL;
  struct lsub *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->fn_ref = s->self_ref = s->batch_ref = LUA_NOREF;
  luaL_setmetatable(L, SUB_MT);
  s->rt = rt;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  s->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  s->timeout = timeout;
  snprintf(s->pattern, sizeof s->pattern, "%s", pattern);
  lua_pushvalue(L, 2);
  s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  char err[256];
  s->sub = mq_events_subscribe(ev, pattern, from, from_id, delivered, s, err,
                               sizeof err);
  if (!s->sub) {
    if (w)
      mq_lua_wait_free(w);
    lsub_release(s);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (!w)
    return 1;
  int rc = mq_subscription_on_start(s->sub, started, s);
  if (rc <= 0) {
    mq_lua_wait_free(w);
    if (rc == 0)
      return 1;
    sub_stop(s);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start the subscription to %s: the connection "
                    "pool is closed", s->pattern);
    return 2;
  }
  s->start_wait = w;
  mq_lua_wait_on_cancel(w, start_cancelled, s);
  lua_pop(L, 1); /* the wait's results are what subscribe() returns */
  return mq_lua_wait(L, w);
}

int luaopen_moonq_events(lua_State *L) {
  static const luaL_Reg funcs[] = {{"append", l_append},
                                   {"append_many", l_append_many},
                                   {"query", l_query},
                                   {"subscribe", l_subscribe},
                                   {"_check", l_check},
                                   {NULL, NULL}};
  static const luaL_Reg sub_methods[] = {
      {"close", l_sub_close}, {"is_open", l_sub_is_open}, {NULL, NULL}};
  if (luaL_newmetatable(L, SUB_MT)) {
    luaL_newlib(L, sub_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_sub_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  mq_lua_event_groups_register(L);
  return 1;
}
