/* module.c -- the entry point of moonq.so, the Lua C module that stock
 * lua5.4 and busted load with `require "moonq"`. */
#include <lua.h>

#include "lua_bindings/bindings.h"

__attribute__((visibility("default"))) int luaopen_moonq(lua_State *L);

int luaopen_moonq(lua_State *L) { return mq_luaopen_moonq(L); }
