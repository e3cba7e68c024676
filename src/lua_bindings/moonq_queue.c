/* moonq_queue.c -- moonq.queue: the job queue from Lua.
 *
 *   id = moonq.queue.send(name, data, opts)        -- or nil, err
 *   ids = moonq.queue.send_many(name, list, opts)  -- or nil, err
 *   jobs = moonq.queue.fetch(queue, n)
 *   moonq.queue.complete(id, output)   moonq.queue.fail(id, err)
 *   moonq.queue.get(id)  .list(queue, {state, limit, after, order})
 *   moonq.queue.counts(queue)  .queues()  .pause(q)  .resume(q)  .is_paused(q)
 *   moonq.queue.cancel(id)  .retry(id)  .purge(queue, state)  .maintain()
 *
 * Every call returns its result, or nil and a message; arguments of the
 * wrong type raise. Data and results convert losslessly (json.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "queue.h"
#include "runtime.h"

static mq_runtime *runtime(lua_State *L) {
  mq_runtime *rt = mq_lua_runtime(L);
  if (!rt || !mq_runtime_queue(rt))
    luaL_error(L, "moonq is not open (call moonq.open() first)");
  return rt;
}

/* A wait on rt's loop for the calling thread (raises where it cannot
 * wait). */
static struct mq_lua_wait *new_wait(lua_State *L, mq_runtime *rt) {
  return mq_lua_wait_new(L, mq_runtime_loop(rt));
}

static int fail_with(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

const char *mq_lua_check_text(lua_State *L, int idx) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_argerror(L, idx, "contains a NUL byte");
  return s;
}

const char *mq_lua_opt_text(lua_State *L, int idx, const char *dflt) {
  return lua_isnoneornil(L, idx) ? dflt : mq_lua_check_text(L, idx);
}

const char *mq_lua_json_arg(lua_State *L, int idx, const char *root,
                            const char *dflt) {
  if (lua_isnoneornil(L, idx))
    return lua_pushstring(L, dflt);
  char err[512];
  size_t len;
  char *json = mq_json_encode_stored(L, idx, root, &len, err, sizeof err);
  if (!json) {
    lua_pushstring(L, err);
    return NULL;
  }
  const char *s = lua_pushlstring(L, json, len);
  free(json);
  return s;
}

/* What a queue callback delivered, for the push functions below. */
struct reply {
  int status;
  const char *error;
  const char *json;
  long long id;
  const struct mq_job *jobs;
  int njobs;
};

/* [reply] -> [decoded JSON result] or [nil err] */
static int push_json(lua_State *L) {
  const struct reply *r = lua_touserdata(L, 1);
  char err[256];
  if (r->status < 0 || r->status == MQ_QUEUE_ENOTACTIVE) {
    lua_pushnil(L);
    lua_pushstring(L, r->error ? r->error : "failed");
    return 2;
  }
  /* a job in a list: job data two levels down */
  if (mq_json_decode_wrapped(L, r->json, strlen(r->json), 2, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

static void json_done(int status, const char *error, const char *json,
                      void *data) {
  struct reply r = {.status = status, .error = error, .json = json};
  mq_lua_wait_finish(data, push_json, &r);
}

/* Waits for w when the operation was started (rc == 0). */
static int wait_json(lua_State *L, int rc, struct mq_lua_wait *w) {
  if (rc != 0) {
    mq_lua_wait_free(w);
    return fail_with(L, "the connection pool is closed");
  }
  return mq_lua_wait(L, w);
}

/* ---- send ------------------------------------------------------------- */

/* [reply] -> [id] or [nil err] */
static int push_id(lua_State *L) {
  const struct reply *r = lua_touserdata(L, 1);
  if (r->status == MQ_QUEUE_OK) {
    lua_pushinteger(L, r->id);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, r->error);
  return 2;
}

static void id_done(int status, const char *error, long long id, void *data) {
  struct reply r = {.status = status, .error = error, .id = id};
  mq_lua_wait_finish(data, push_id, &r);
}

/* send(name, data, opts) -> id | nil, err */
static int l_send(lua_State *L) {
  mq_runtime *rt = runtime(L);
  const char *name = mq_lua_check_text(L, 1);
  luaL_argcheck(L, lua_isnoneornil(L, 3) || lua_istable(L, 3), 3,
                "options must be a table");
  lua_settop(L, 3);
  const char *data = mq_lua_json_arg(L, 2, "data", "{}"); /* [.. data] */
  if (!data)
    return fail_with(L, lua_tostring(L, -1));
  const char *opts = mq_lua_json_arg(L, 3, "options", "{}"); /* [.. data opts] */
  if (!opts)
    return fail_with(L, lua_tostring(L, -1));
  struct mq_lua_wait *w = new_wait(L, rt);
  char err[512];
  if (mq_queue_send(mq_runtime_queue(rt), name, data, opts, id_done, w, err,
                    sizeof err) != 0) {
    mq_lua_wait_free(w);
    return fail_with(L, err);
  }
  return mq_lua_wait(L, w);
}

/* send_many(name, list, opts) -> {ids} | nil, err */
static int l_send_many(lua_State *L) {
  mq_runtime *rt = runtime(L);
  const char *name = mq_lua_check_text(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_argcheck(L, lua_isnoneornil(L, 3) || lua_istable(L, 3), 3,
                "options must be a table");
  lua_settop(L, 3);
  const char *opts = mq_lua_json_arg(L, 3, "options", "{}"); /* [.. opts] */
  if (!opts)
    return fail_with(L, lua_tostring(L, -1));
  lua_Integer n = luaL_len(L, 2);
  luaL_Buffer b;
  luaL_buffinit(L, &b); /* [.. opts buffer...] */
  luaL_addchar(&b, '[');
  for (lua_Integer i = 1; i <= n; i++) {
    char root[48], err[512];
    snprintf(root, sizeof root, "list[%lld]", (long long)i);
    lua_geti(L, 2, i);
    size_t len;
    char *json = mq_json_encode_stored(L, -1, root, &len, err, sizeof err);
    lua_pop(L, 1);
    if (json && len > (size_t)mq_runtime_config(rt)->max_payload)
      snprintf(err, sizeof err, "%s is %zu bytes, more than max_payload (%d)",
               root, len, mq_runtime_config(rt)->max_payload);
    if (!json || len > (size_t)mq_runtime_config(rt)->max_payload) {
      free(json);
      return fail_with(L, err);
    }
    if (i > 1)
      luaL_addchar(&b, ',');
    luaL_addlstring(&b, json, len);
    free(json);
  }
  luaL_addchar(&b, ']');
  luaL_pushresult(&b); /* [.. opts list] */
  struct mq_lua_wait *w = new_wait(L, rt);
  char err[512];
  if (mq_queue_send_many(mq_runtime_queue(rt), name, lua_tostring(L, -1), opts, json_done,
                         w, err, sizeof err) != 0) {
    mq_lua_wait_free(w);
    return fail_with(L, err);
  }
  return mq_lua_wait(L, w);
}

/* ---- fetch, complete, fail ------------------------------------------- */

/* [reply] -> [array of jobs] or [nil err] */
static int push_jobs(lua_State *L) {
  const struct reply *r = lua_touserdata(L, 1);
  if (r->status != MQ_QUEUE_OK) {
    lua_pushnil(L);
    lua_pushstring(L, r->error);
    return 2;
  }
  lua_createtable(L, r->njobs, 0);
  mq_json_push_array_mt(L);
  lua_setmetatable(L, -2);
  for (int i = 0; i < r->njobs; i++) {
    mq_lua_push_job(L, &r->jobs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void fetch_done(int status, const char *error, const struct mq_job *jobs,
                       int n, void *data) {
  struct reply r = {.status = status, .error = error, .jobs = jobs, .njobs = n};
  mq_lua_wait_finish(data, push_jobs, &r);
}

/* fetch(queue, n) -> {jobs} | nil, err */
static int l_fetch(lua_State *L) {
  mq_runtime *rt = runtime(L);
  const char *queue = mq_lua_check_text(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1 && n <= 100000, 2, "expected 1 to 100000 jobs");
  struct mq_lua_wait *w = new_wait(L, rt);
  return wait_json(L, mq_queue_fetch(mq_runtime_queue(rt), queue, (int)n, NULL, fetch_done, w),
                   w);
}

/* {"state":"completed"} -> true */
static int complete_k(lua_State *L, int status, lua_KContext top) {
  if (lua_gettop(L) - (int)top == 1) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  return lua_gettop(L) - (int)top;
}

/* complete(id, output) -> true | nil, err */
static int l_complete(lua_State *L) {
  mq_runtime *rt = runtime(L);
  lua_Integer id = luaL_checkinteger(L, 1);
  lua_settop(L, 2);
  const char *out = mq_lua_json_arg(L, 2, "output", "null");
  if (!out)
    return fail_with(L, lua_tostring(L, -1));
  struct mq_lua_wait *w = new_wait(L, rt);
  if (mq_queue_complete(mq_runtime_queue(rt), id, out, json_done, w) != 0)
    return wait_json(L, -1, w);
  return mq_lua_wait_k(L, w, complete_k);
}

/* fail(id, err) -> {state=, start_after=} | nil, err. err is a message
 * or a table (stored as given; a string becomes {message = err}). */
static int l_fail(lua_State *L) {
  mq_runtime *rt = runtime(L);
  lua_Integer id = luaL_checkinteger(L, 1);
  lua_settop(L, 2);
  if (lua_type(L, 2) == LUA_TSTRING || lua_isnil(L, 2)) {
    lua_createtable(L, 0, 1);
    lua_pushstring(L, lua_isnil(L, 2) ? "failed" : lua_tostring(L, 2));
    lua_setfield(L, -2, "message");
    lua_replace(L, 2);
  }
  const char *error = mq_lua_json_arg(L, 2, "error", "null");
  if (!error)
    return fail_with(L, lua_tostring(L, -1));
  struct mq_lua_wait *w = new_wait(L, rt);
  return wait_json(L, mq_queue_fail(mq_runtime_queue(rt), id, error, json_done, w), w);
}

/* ---- inspection and control ------------------------------------------ */

static int call_op(lua_State *L, enum mq_queue_op op, const char *const a[5]) {
  mq_runtime *rt = runtime(L);
  struct mq_lua_wait *w = new_wait(L, rt);
  return wait_json(L, mq_queue_call(mq_runtime_queue(rt), op, a, json_done, w), w);
}

static const char *id_arg(lua_State *L, int idx) {
  lua_Integer id = luaL_checkinteger(L, idx);
  return lua_pushfstring(L, "%I", id);
}

/* A JSON null result -> nil, message (the message is at stack index 2). */
static int null_k(lua_State *L, int status, lua_KContext top) {
  int n = lua_gettop(L) - (int)top;
  if (n == 1 && lua_type(L, -1) == LUA_TLIGHTUSERDATA) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_pushvalue(L, 2);
    return 2;
  }
  return n;
}

/* get(id) -> job | nil, "job N not found" */
static int l_get(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  lua_settop(L, 1);
  lua_pushfstring(L, "job %I not found", id); /* [id msg] */
  const char *a[5] = {lua_pushfstring(L, "%I", id)};
  mq_runtime *rt = runtime(L);
  struct mq_lua_wait *w = new_wait(L, rt);
  if (mq_queue_call(mq_runtime_queue(rt), MQ_QUEUE_GET, a, json_done, w) != 0)
    return wait_json(L, -1, w);
  return mq_lua_wait_k(L, w, null_k);
}

/* list(queue, {state, limit, after, order = "newest"|"oldest"}) -> jobs */
static int l_list(lua_State *L) {
  const char *queue = mq_lua_check_text(L, 1);
  const char *a[5] = {queue, NULL, "100", NULL, "newest"};
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "state") != LUA_TNIL)
      a[1] = luaL_checkstring(L, -1);
    if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
      lua_Integer limit = luaL_checkinteger(L, -1);
      luaL_argcheck(L, limit >= 1 && limit <= 100000, 2,
                    "limit must be 1 to 100000");
      a[2] = lua_pushfstring(L, "%I", limit);
    }
    if (lua_getfield(L, 2, "after") != LUA_TNIL)
      a[3] = lua_pushfstring(L, "%I", luaL_checkinteger(L, -1));
    if (lua_getfield(L, 2, "order") != LUA_TNIL) {
      a[4] = luaL_checkstring(L, -1);
      luaL_argcheck(L, strcmp(a[4], "newest") == 0 || strcmp(a[4], "oldest") == 0,
                    2, "order must be \"newest\" or \"oldest\"");
    }
  }
  return call_op(L, MQ_QUEUE_LIST, a);
}

static int queue_op(lua_State *L, enum mq_queue_op op) {
  const char *a[5] = {mq_lua_check_text(L, 1)};
  return call_op(L, op, a);
}

static int l_counts(lua_State *L) { return queue_op(L, MQ_QUEUE_COUNTS); }

/* queues() -> {{name, paused, counts}, ...}: every queue with a row or jobs */
static int l_queues(lua_State *L) {
  const char *a[5] = {NULL};
  return call_op(L, MQ_QUEUE_QUEUES, a);
}
static int l_pause(lua_State *L) { return queue_op(L, MQ_QUEUE_PAUSE); }
static int l_resume(lua_State *L) { return queue_op(L, MQ_QUEUE_RESUME); }
static int l_is_paused(lua_State *L) { return queue_op(L, MQ_QUEUE_IS_PAUSED); }

static int l_cancel(lua_State *L) {
  const char *a[5] = {id_arg(L, 1)};
  return call_op(L, MQ_QUEUE_CANCEL, a);
}

static int l_retry(lua_State *L) {
  const char *a[5] = {id_arg(L, 1)};
  return call_op(L, MQ_QUEUE_RETRY, a);
}

/* purge(queue, state) -> count; state nil purges every state but active. */
static int l_purge(lua_State *L) {
  const char *a[5] = {mq_lua_check_text(L, 1), mq_lua_opt_text(L, 2, NULL)};
  return call_op(L, MQ_QUEUE_PURGE, a);
}

/* maintain() -> {recovered, expired, deleted, processes_removed} | nil when
 * another process is running a pass. */
static int l_maintain(lua_State *L) {
  lua_settop(L, 0);
  lua_pushnil(L);
  lua_pushliteral(L, "another process is running maintenance"); /* [nil msg] */
  mq_runtime *rt = runtime(L);
  struct mq_lua_wait *w = new_wait(L, rt);
  if (mq_queue_call(mq_runtime_queue(rt), MQ_QUEUE_MAINTAIN, NULL, json_done, w) != 0)
    return wait_json(L, -1, w);
  return mq_lua_wait_k(L, w, null_k);
}

/* process_id() -> the id this process registered with */
static int l_process_id(lua_State *L) {
  lua_pushstring(L, mq_queue_process_id(mq_runtime_queue(runtime(L))));
  return 1;
}

int luaopen_moonq_queue(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"send", l_send},         {"send_many", l_send_many},
      {"fetch", l_fetch},       {"complete", l_complete},
      {"fail", l_fail},         {"get", l_get},
      {"list", l_list},         {"counts", l_counts},
      {"queues", l_queues},
      {"pause", l_pause},       {"resume", l_resume},
      {"is_paused", l_is_paused}, {"cancel", l_cancel},
      {"retry", l_retry},       {"purge", l_purge},
      {"maintain", l_maintain}, {"process_id", l_process_id},
      {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
