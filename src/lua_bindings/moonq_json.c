/* moonq_json.c -- the moonq.json Lua module over src/json.c.
 *
 *   json.encode(value) -> string        raises on a value JSON cannot hold
 *   json.decode(text)  -> value | nil, message
 *   json.null                            light userdata NULL (= cjson.null)
 *   json.array_mt                        metatable marking a table as array
 *   json.array([t])    -> t with array_mt (a new table when t is nil)
 *
 * Encoding a value the program built is a programmer error, so it raises;
 * malformed text is a runtime failure, so decode returns nil, message.
 */
#include "bindings.h"

#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"

/* [text, len] -> [string]; run protected so the malloc'd text is freed
 * even when Lua runs out of memory copying it. */
static int push_text(lua_State *L) {
  lua_pushlstring(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

static int l_encode(lua_State *L) {
  char err[256];
  size_t len;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  luaL_checkstack(L, 4, NULL);
  char *text = mq_json_encode(L, 1, "value", &len, err, sizeof err);
  if (!text)
    return luaL_error(L, "json.encode: %s", err);
  lua_pushcfunction(L, push_text);
  lua_pushlightuserdata(L, text);
  lua_pushinteger(L, (lua_Integer)len);
  int status = lua_pcall(L, 2, 1, 0);
  free(text);
  if (status != LUA_OK)
    return lua_error(L);
  return 1;
}

static int l_decode(lua_State *L) {
  char err[256];
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  if (mq_json_decode(L, text, len, err, sizeof err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
  }
  mq_json_push_array_mt(L); /* [t, array_mt] */
  lua_setmetatable(L, 1);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"encode", l_encode},
    {"decode", l_decode},
    {"array", l_array},
    {NULL, NULL},
};

int luaopen_moonq_json(lua_State *L) {
  luaL_newlib(L, funcs);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  mq_json_push_array_mt(L);
  lua_setfield(L, -2, "array_mt");
  return 1;
}
