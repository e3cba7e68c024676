/* moonq_db.c -- moonq.db: parameterised SQL from Lua on the runtime's pool.
 *
 *   rows, count = moonq.db.query(sql, p1, p2, ...)   -- or nil, err
 *
 * Parameters: nil and moonq.null are SQL NULL, booleans "true"/"false",
 * integers exact, floats with 17 digits, tables as JSON text. Columns:
 * integer types become Lua integers, float4/float8 numbers, bool booleans,
 * json/jsonb decoded Lua values (lossless, see json.h), NULL moonq.null,
 * everything else (numeric included, to stay exact) strings. `rows` is an
 * array of tables keyed by column name; `count` is the affected row count
 * for commands, the row count for queries.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "json.h"
#include "lua_bindings/bindings.h"
#include "lua_host.h"
#include "runtime.h"

/* PostgreSQL type OIDs (pg_type.dat). */
enum {
  OID_BOOL = 16,
  OID_INT8 = 20,
  OID_INT2 = 21,
  OID_INT4 = 23,
  OID_OID = 26,
  OID_JSON = 114,
  OID_FLOAT4 = 700,
  OID_FLOAT8 = 701,
  OID_JSONB = 3802
};

/* Pushes the value at (row, col); a JSON value Lua cannot represent (a
 * number beyond a double, nesting deeper than 128) pushes nothing and
 * returns -1 with why in err. */
static int push_value(lua_State *L, const PGresult *res, int row, int col,
                      char *err, size_t errlen) {
  if (PQgetisnull(res, row, col)) {
    lua_pushlightuserdata(L, NULL);
    return 0;
  }
  const char *v = PQgetvalue(res, row, col);
  int len = PQgetlength(res, row, col);
  switch (PQftype(res, col)) {
  case OID_BOOL:
    lua_pushboolean(L, v[0] == 't');
    break;
  case OID_INT2:
  case OID_INT4:
  case OID_INT8:
  case OID_OID:
    lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
    break;
  case OID_FLOAT4:
  case OID_FLOAT8:
    lua_pushnumber(L, (lua_Number)strtod(v, NULL));
    break;
  case OID_JSON:
  case OID_JSONB:
    return mq_json_decode(L, v, (size_t)len, err, errlen);
  default:
    lua_pushlstring(L, v, (size_t)len);
  }
  return 0;
}

/* [reply] -> [rows count] or [nil err]; runs protected (lua_host). */
static int push_reply(lua_State *L) {
  const struct mq_pg_reply *reply = lua_touserdata(L, 1);
  if (reply->status != MQ_PG_OK) {
    lua_pushnil(L);
    if (reply->sqlstate[0])
      lua_pushfstring(L, "%s (SQLSTATE %s)", reply->error, reply->sqlstate);
    else
      lua_pushstring(L, reply->error);
    return 2;
  }
  const PGresult *res = reply->result;
  int nrows = PQntuples(res), ncols = PQnfields(res);
  lua_createtable(L, nrows, 0);
  mq_json_push_array_mt(L);
  lua_setmetatable(L, -2);
  for (int r = 0; r < nrows; r++) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++) {
      char err[256];
      if (push_value(L, res, r, c, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "column \"%s\" of row %d cannot be read in Lua: %s",
                        PQfname(res, c), r + 1, err);
        return 2;
      }
      lua_setfield(L, -2, PQfname(res, c));
    }
    lua_rawseti(L, -2, r + 1);
  }
  const char *tuples = PQcmdTuples(reply->result);
  lua_pushinteger(L, *tuples ? strtoll(tuples, NULL, 10) : (long long)nrows);
  return 2;
}

static void query_done(const struct mq_pg_reply *reply, void *data) {
  mq_lua_wait_finish(data, push_reply, (void *)reply);
}

/* Converts argument i to a text parameter: *out points at a string on the
 * Lua stack (or NULL for SQL NULL). JSON texts are kept alive as strings
 * pushed onto the stack. */
static void param_text(lua_State *L, int i, const char **out) {
  char buf[64];
  switch (lua_type(L, i)) {
  case LUA_TNIL:
  case LUA_TNONE:
    *out = NULL;
    return;
  case LUA_TLIGHTUSERDATA:
    luaL_argcheck(L, lua_touserdata(L, i) == NULL, i,
                  "only moonq.null may be passed as userdata");
    *out = NULL;
    return;
  case LUA_TBOOLEAN:
    *out = lua_toboolean(L, i) ? "true" : "false";
    return;
  case LUA_TNUMBER:
    if (lua_isinteger(L, i))
      snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, i));
    else
      snprintf(buf, sizeof buf, "%.17g", (double)lua_tonumber(L, i));
    *out = lua_pushstring(L, buf);
    return;
  case LUA_TSTRING:
    *out = lua_tostring(L, i);
    return;
  case LUA_TTABLE: {
    char err[512], root[32];
    snprintf(root, sizeof root, "$%d", i - 1);
    char *json = mq_json_encode(L, i, root, NULL, err, sizeof err);
    if (!json) {
      luaL_argerror(L, i, err);
      return;
    }
    *out = lua_pushstring(L, json);
    free(json);
    return;
  }
  default:
    luaL_argerror(L, i, "expected nil, boolean, number, string or table");
  }
}

/* moonq.db.query(sql, ...) -> rows, count | nil, err */
static int l_query(lua_State *L) {
  mq_runtime *rt = mq_lua_runtime(L);
  if (!rt || !mq_runtime_pg(rt))
    return luaL_error(L, "moonq is not open (call moonq.open() first)");
  const char *sql = luaL_checkstring(L, 1);
  int nparams = lua_gettop(L) - 1;
  luaL_argcheck(L, nparams <= 1000, 1002, "too many parameters");
  const char **params = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nparams + 1), 0);
  for (int i = 0; i < nparams; i++)
    param_text(L, i + 2, &params[i]);
  struct mq_lua_wait *w = mq_lua_wait_new(L, mq_runtime_loop(rt));
  int rc = mq_pg_query(mq_runtime_pg(rt), sql, nparams, params, 0, query_done, w);
  if (rc != 0) {
    mq_lua_wait_free(w);
    lua_pushnil(L);
    lua_pushstring(L, rc == MQ_PG_ECLOSED ? "connection pool closed" : "cannot queue query");
    return 2;
  }
  return mq_lua_wait(L, w);
}

int luaopen_moonq_db(lua_State *L) {
  static const luaL_Reg funcs[] = {{"query", l_query}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
