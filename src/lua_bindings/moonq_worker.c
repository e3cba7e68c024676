/* moonq_worker.c -- moonq.worker: one attempt of a job outside the queue.
 *
 *   result = moonq.worker.run_once(dir, job, new_ctx [, timeout])
 *
 * Loads the handler files of `dir` as a worker does, runs `job` (a table:
 * id and name required; queue, data, attempt, priority, retry_limit,
 * expire_in, run_id) through the handler of job.name in a task, with
 * new_ctx(job) as its ctx, and drives the loop until it ends. Returns
 * { failed, message, error, output, effects } (error, output and effects
 * decoded from what a worker would store), or nil and a message when the
 * job cannot start (no such handler: the file's load error). Nothing is
 * fetched or stored. moonq.testing's t.run is built on it; worker.h's
 * mq_worker_run_once does the work.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "queue.h"
#include "runtime.h"
#include "worker.h"

/* The outcome, copied out of the callback. */
struct once_result {
  bool done;
  bool failed;
  char message[1024];
  char *error, *output, *effects;
};

static char *copy(const char *s) { return s ? strdup(s) : NULL; }

static void once_done(const struct mq_worker_outcome *out, void *data) {
  struct once_result *r = data;
  r->done = true;
  r->failed = out->failed;
  memcpy(r->message, out->message, sizeof r->message);
  r->error = copy(out->error);
  r->output = copy(out->output);
  r->effects = copy(out->effects);
}

/* [.. job] -> [.. job]: the string field `key` of the job at idx, or NULL
 * (the table keeps the string alive). */
static const char *opt_string(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  const char *s = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
  if (!s && !lua_isnil(L, -1))
    luaL_error(L, "job.%s must be a string", key);
  lua_pop(L, 1);
  return s;
}

static lua_Number opt_number(lua_State *L, int idx, const char *key,
                             lua_Number def) {
  lua_getfield(L, idx, key);
  lua_Number n = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return n;
}

/* Pushes the JSON text decoded, or nil when text is NULL. */
static void push_json(lua_State *L, const char *text) {
  char err[256];
  if (!text || mq_json_decode(L, text, strlen(text), err, sizeof err) != 0)
    lua_pushnil(L);
}

static void push_result(lua_State *L, const struct once_result *r) {
  lua_createtable(L, 0, 5);
  lua_pushboolean(L, r->failed);
  lua_setfield(L, -2, "failed");
  if (r->failed) {
    lua_pushstring(L, r->message);
    lua_setfield(L, -2, "message");
  }
  push_json(L, r->error);
  lua_setfield(L, -2, "error");
  push_json(L, r->output);
  lua_setfield(L, -2, "output");
  push_json(L, r->effects);
  lua_setfield(L, -2, "effects");
}

static int l_run_once(lua_State *L) {
  mq_lua_check_blocking(L, "moonq.worker.run_once");
  mq_runtime *rt = mq_lua_runtime(L);
  if (!rt)
    return luaL_error(L, "moonq is not open (call moonq.open() first)");
  if (mq_runtime_has_worker(rt))
    return luaL_error(L, "moonq.worker.run_once: this process runs workers "
                      "(stop them first: moonq.stop())");
  const char *dir = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_Number timeout = luaL_optnumber(L, 4, 0);
  struct mq_job job = {0};
  lua_getfield(L, 2, "id");
  luaL_argcheck(L, lua_isinteger(L, -1), 2, "job.id must be an integer");
  job.id = (long long)lua_tointeger(L, -1);
  lua_pop(L, 1);
  job.name = opt_string(L, 2, "name");
  luaL_argcheck(L, job.name != NULL, 2, "job.name is required");
  job.queue = opt_string(L, 2, "queue");
  job.run_id = opt_string(L, 2, "run_id");
  job.attempt = (int)opt_number(L, 2, "attempt", 1);
  job.priority = (int)opt_number(L, 2, "priority", 0);
  job.retry_limit = (int)opt_number(L, 2, "retry_limit", -1);
  job.expire_in = opt_number(L, 2, "expire_in", -1);
  char err[4096];
  lua_getfield(L, 2, "data");
  char *data = lua_isnil(L, -1) ? strdup("{}")
                                : mq_json_encode(L, -1, "data", NULL, err,
                                                 sizeof err);
  lua_pop(L, 1);
  if (!data)
    return luaL_error(L, "moonq.worker.run_once: %s", err);
  job.data = data;
  lua_pushvalue(L, 3);
  int new_ctx = luaL_ref(L, LUA_REGISTRYINDEX);
  struct once_result r = {0};
  int rc = mq_worker_run_once(rt, dir, &job, timeout, new_ctx, once_done, &r,
                              err, sizeof err);
  free(data); /* the task has its own copy of the job */
  luaL_unref(L, LUA_REGISTRYINDEX, new_ctx);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  struct ev_loop *loop = mq_runtime_loop(rt);
  while (!r.done)
    ev_run(loop, EVRUN_ONCE);
  push_result(L, &r);
  free(r.error);
  free(r.output);
  free(r.effects);
  return 1;
}

static const luaL_Reg worker_funcs[] = {{"run_once", l_run_once},
                                        {NULL, NULL}};

int luaopen_moonq_worker(lua_State *L) {
  luaL_newlib(L, worker_funcs);
  return 1;
}
