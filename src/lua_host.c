/* lua_host.c -- the process's Lua state; see lua_host.h. */
#include "lua_host.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_bindings/bindings.h"
#include "runtime.h"

static const char runtime_key = 'r';

void mq_lua_set_runtime(lua_State *L, struct mq_runtime *rt) {
  lua_pushlightuserdata(L, (void *)&runtime_key);
  if (rt)
    lua_pushlightuserdata(L, rt);
  else
    lua_pushnil(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

struct mq_runtime *mq_lua_runtime(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&runtime_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  struct mq_runtime *rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int mq_lua_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status == LUA_ERRMEM) {
    lua_pop(L, 1);
    lua_pushliteral(L, "not enough memory");
  }
  return status;
}

/* Prepends dir/?.lua;dir/?/init.lua to package.path. */
static void add_path(lua_State *L, const char *dir) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
}

lua_State *mq_lua_new(struct mq_runtime *rt, const char *base_dir) {
  lua_State *L = luaL_newstate();
  if (!L)
    return NULL;
  luaL_openlibs(L);
  add_path(L, MOONQ_SOURCE_DIR "/lua");
  if (base_dir && strcmp(base_dir, MOONQ_SOURCE_DIR) != 0) {
    lua_pushfstring(L, "%s/lua", base_dir);
    add_path(L, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  mq_bindings_preload(L);
  mq_lua_set_runtime(L, rt);
  return L;
}

int mq_lua_wait(lua_State *L, struct mq_runtime *rt, struct mq_lua_wait *w) {
  while (!w->done)
    ev_run(rt->loop, EVRUN_ONCE);
  return w->nresults;
}
