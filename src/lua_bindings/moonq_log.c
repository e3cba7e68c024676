/* moonq_log.c -- moonq.log: debug/info/warn/error(msg, fields) from Lua.
 *
 * Fields are written as key=value in key order; tables are written as JSON.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"
#include "log.h"
#include "lua_bindings/bindings.h"

/* Appends the fields table at idx to line, sorted by key. */
static void add_fields(lua_State *L, int idx, char *line, size_t len) {
  int n = 0;
  const char *keys[64];
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1); /* the table keeps the key strings alive */
    if (n < 64 && lua_type(L, -1) == LUA_TSTRING)
      keys[n++] = lua_tostring(L, -1);
  }
  for (int i = 1; i < n; i++) /* insertion sort: few keys */
    for (int j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
      const char *t = keys[j];
      keys[j] = keys[j - 1];
      keys[j - 1] = t;
    }
  for (int i = 0; i < n; i++) {
    lua_getfield(L, idx, keys[i]);
    char err[256];
    if (lua_type(L, -1) == LUA_TTABLE) {
      char *json = mq_json_encode(L, -1, keys[i], NULL, err, sizeof err);
      mq_log_field(line, len, keys[i], json ? json : err);
      free(json);
    } else {
      mq_log_field(line, len, keys[i], luaL_tolstring(L, -1, NULL));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

static int log_at(lua_State *L, int level) {
  const char *msg = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2))
    luaL_checktype(L, 2, LUA_TTABLE);
  if (level < mq_log_get_level())
    return 0;
  char line[2048];
  snprintf(line, sizeof line, "%s", msg);
  if (lua_istable(L, 2))
    add_fields(L, 2, line, sizeof line);
  mq_log(level, "lua", "%s", line);
  return 0;
}

static int l_debug(lua_State *L) { return log_at(L, MQ_LOG_DEBUG); }
static int l_info(lua_State *L) { return log_at(L, MQ_LOG_INFO); }
static int l_warn(lua_State *L) { return log_at(L, MQ_LOG_WARN); }
static int l_error(lua_State *L) { return log_at(L, MQ_LOG_ERROR); }

/* moonq.log.level([name]) -> current level name; sets it when given. */
static int l_level(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    int level = mq_log_level_parse(luaL_checkstring(L, 1));
    luaL_argcheck(L, level >= 0, 1, "expected debug, info, warn or error");
    mq_log_set_level(level);
  }
  lua_pushstring(L, mq_log_level_name(mq_log_get_level()));
  return 1;
}

int luaopen_moonq_log(lua_State *L) {
  static const luaL_Reg funcs[] = {{"debug", l_debug}, {"info", l_info},
                                   {"warn", l_warn},   {"error", l_error},
                                   {"level", l_level}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
