/* moonq_schedule.c -- cron schedules from Lua (schedules.h); the module
 * moonq.c puts its functions on `moonq` itself:
 *
 *   s = moonq.schedule(name, cron, data, opts)  -- or nil, err
 *   found = moonq.unschedule(name)              -- true | false, or nil, err
 *   list = moonq.schedules()                    -- or nil, err
 *
 * opts: tz (IANA zone, default "UTC"), job (the job to enqueue; default
 * the name), backfill ("1h", "5 slots", or whole seconds; nil or false:
 * none), and send options for the jobs (queue, priority, retry_limit,
 * ...). A schedule is returned as moonq.schedules() lists it. A bad
 * expression, zone or option is nil and a message; arguments of the wrong
 * type raise.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "runtime.h"
#include "schedules.h"

static mq_schedules *schedules(lua_State *L, mq_runtime **rt) {
  *rt = mq_lua_runtime(L);
  if (!*rt || !mq_runtime_schedules(*rt))
    luaL_error(L, "moonq is not open (call moonq.open() first)");
  return mq_runtime_schedules(*rt);
}

static int fail_with(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

struct reply {
  int status;
  const char *error;
  const char *json;
};

/* Sets the fields of the schedule table on top that are JSON null (next,
 * last, error, backfill) to nil, as the Lua API documents them. */
static void drop_nulls(lua_State *L) {
  static const char *const keys[] = {"next", "last", "error", "backfill",
                                     NULL};
  for (int i = 0; keys[i]; i++) {
    if (lua_getfield(L, -1, keys[i]) == LUA_TLIGHTUSERDATA &&
        lua_touserdata(L, -1) == NULL) {
      lua_pushnil(L);
      lua_setfield(L, -3, keys[i]);
    }
    lua_pop(L, 1);
  }
}

/* [reply] -> [decoded JSON] or [nil err]; a schedule, or each schedule of
 * a list, without its null fields. */
static int push_json(lua_State *L) {
  const struct reply *r = lua_touserdata(L, 1);
  char err[256];
  if (r->status != MQ_SCHEDULES_OK)
    return fail_with(L, r->error ? r->error : "failed");
  if (mq_json_decode(L, r->json, strlen(r->json), err, sizeof err) != 0)
    return fail_with(L, err);
  if (!lua_istable(L, -1))
    return 1;
  if (lua_getfield(L, -1, "name") != LUA_TNIL) { /* one schedule */
    lua_pop(L, 1);
    drop_nulls(L);
    return 1;
  }
  lua_pop(L, 1);
  for (lua_Integer i = 1; lua_rawgeti(L, -1, i) == LUA_TTABLE; i++) {
    drop_nulls(L);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

static void json_done(int status, const char *error, const char *json,
                      void *data) {
  struct reply r = {status, error, json};
  mq_lua_wait_finish(data, push_json, &r);
}

/* Pushes opts.<key> (nil when opts is nil) and returns it as a string,
 * or NULL for nil; raises for another type. *nul is set when the string
 * holds a NUL byte (C would read it cut there). */
static const char *opt_string(lua_State *L, int opts, const char *key,
                              bool *nul) {
  if (lua_isnil(L, opts)) {
    lua_pushnil(L);
    return NULL;
  }
  if (lua_getfield(L, opts, key) == LUA_TNIL)
    return NULL;
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "moonq.schedule: option \"%s\" must be a string, got %s",
               key, luaL_typename(L, -1));
  size_t len;
  const char *v = lua_tolstring(L, -1, &len);
  *nul = *nul || strlen(v) != len;
  return v;
}

/* The string at idx, or raises; *nul as opt_string sets it. */
static const char *arg_string(lua_State *L, int idx, bool *nul) {
  size_t len;
  const char *v = luaL_checklstring(L, idx, &len);
  *nul = *nul || strlen(v) != len;
  return v;
}

/* Pushes opts.backfill as text and returns it: a string as it is, an
 * integer as seconds (another number as its text, which the check then
 * refuses); nil or false: NULL (none). Raises for another type. */
static const char *opt_backfill(lua_State *L, int opts) {
  if (lua_isnil(L, opts)) {
    lua_pushnil(L);
    return NULL;
  }
  if (!lua_toboolean(L, (lua_getfield(L, opts, "backfill"), -1)))
    return NULL; /* nil or false */
  if (lua_type(L, -1) == LUA_TSTRING) /* "" is refused by the check */
    return lua_tostring(L, -1);
  int whole;
  lua_Integer seconds = lua_tointegerx(L, -1, &whole);
  if (lua_type(L, -1) == LUA_TNUMBER && whole) /* 3600 or 3600.0 */
    return lua_pushfstring(L, "%I", seconds);
  if (lua_type(L, -1) == LUA_TNUMBER) /* 1.5: refused as the text is */
    return lua_tostring(L, -1);
  luaL_error(L,
             "moonq.schedule: option \"backfill\" must be a duration string, "
             "whole seconds or \"N slots\", got %s",
             luaL_typename(L, -1));
  return NULL;
}

/* [.. opts] -> [.. opts send_options]: a copy of opts without the
 * schedule's own keys. */
static void push_send_options(lua_State *L, int opts) {
  lua_newtable(L);
  if (lua_isnil(L, opts))
    return;
  for (lua_pushnil(L); lua_next(L, opts); lua_pop(L, 1)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    if (strcmp(k, "tz") == 0 || strcmp(k, "job") == 0 ||
        strcmp(k, "backfill") == 0)
      continue;
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_rawset(L, -5);
  }
}

/* schedule(name, cron, data, opts) -> schedule | nil, err */
static int l_schedule(lua_State *L) {
  mq_runtime *rt;
  mq_schedules *s = schedules(L, &rt);
  struct mq_schedule_config def = {0};
  bool nul = false;
  def.name = (char *)arg_string(L, 1, &nul);
  def.cron = (char *)arg_string(L, 2, &nul);
  luaL_argcheck(L, lua_isnoneornil(L, 4) || lua_istable(L, 4), 4,
                "options must be a table");
  lua_settop(L, 4);
  def.tz = (char *)opt_string(L, 4, "tz", &nul);   /* [.. opts tz] */
  def.job = (char *)opt_string(L, 4, "job", &nul); /* [.. tz job] */
  def.backfill = (char *)opt_backfill(L, 4);       /* [.. job backfill] */
  if (nul || (def.backfill && strlen(def.backfill) != lua_rawlen(L, -1)))
    return fail_with(L, "name, cron, tz, job and backfill must not contain "
                        "NUL bytes");
  if (def.backfill && !*def.backfill)
    return fail_with(L, "backfill: an empty string is no backfill; leave it "
                        "out (or false) for none");
  if (!(def.data_json = (char *)mq_lua_json_arg(L, 3, "data", "{}")))
    return fail_with(L, lua_tostring(L, -1));
  push_send_options(L, 4); /* [.. backfill data_json send] */
  if (!(def.options_json =
            (char *)mq_lua_json_arg(L, lua_gettop(L), "options", "{}")))
    return fail_with(L, lua_tostring(L, -1));
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  char err[1024];
  if (mq_schedules_schedule(s, &def, json_done, w, err, sizeof err) != 0) {
    mq_lua_wait_free(w);
    return fail_with(L, err);
  }
  return mq_lua_wait(L, w);
}

/* Waits for w when the request was made (rc == 0). */
static int wait_for(lua_State *L, int rc, struct mq_lua_wait *w) {
  if (rc != 0) {
    mq_lua_wait_free(w);
    return fail_with(L, "the connection pool is closed");
  }
  return mq_lua_wait(L, w);
}

/* unschedule(name) -> true | false (no such schedule) | nil, err */
static int l_unschedule(lua_State *L) {
  mq_runtime *rt;
  mq_schedules *s = schedules(L, &rt);
  bool nul = false;
  const char *name = arg_string(L, 1, &nul);
  if (nul)
    return fail_with(L, "name must not contain NUL bytes");
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  return wait_for(L, mq_schedules_unschedule(s, name, json_done, w), w);
}

/* schedules() -> array of schedules | nil, err */
static int l_list(lua_State *L) {
  mq_runtime *rt;
  mq_schedules *s = schedules(L, &rt);
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  return wait_for(L, mq_schedules_list(s, json_done, w), w);
}

int luaopen_moonq_schedule(lua_State *L) {
  static const luaL_Reg funcs[] = {{"schedule", l_schedule},
                                   {"unschedule", l_unschedule},
                                   {"schedules", l_list},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
