/* lua_interpreter.c -- `lua5.4 SCRIPT [ARGS]` for the sanitizer test runs.
 *
 * With -DASAN=ON, moonq.so needs the AddressSanitizer runtime first in the
 * process, which the stock lua5.4 only gets through LD_PRELOAD. LD_PRELOAD
 * is inherited by everything the specs start, and uninstrumented programs
 * do not all survive it (psql and pg_isready hang at exit in libp11-kit's
 * destructor). This interpreter is linked with the sanitizers instead, so
 * only the processes that run moonq's code carry them. ctest puts it first
 * on PATH as `lua5.4` for the specs and the scripts they start.
 *
 * It does what lua.c does for a script: the standard libraries, the global
 * `arg`, generational GC, a traceback on error, lua_close at exit. Like
 * lua.c it leaves the main thread's extra space (lua_getextraspace) as the
 * allocator returned it. Uses: Lua only.
 */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

const char *__asan_default_options(void);

/* Leak checking is off by default in this interpreter (ASAN_OPTIONS=
 * detect_leaks=1 turns it on): at the exit of a busted run LSan's tracer
 * once crashed ("Tracer caught signal 11", a known intermittent LSan
 * failure, about 1 run in 50 here), failing a spec with no report at all.
 * Only these processes load libraries with thread-local storage (gnutls,
 * p11-kit, under libpq) through dlopen, which is the likely difference.
 * The C tests and the moonq executable, the specs' `moonq run` children
 * included, keep leak checking. Any other report still ends the process. */
const char *__asan_default_options(void) {
  return "detect_leaks=0";
}

/* Message handler: the error with a traceback, as lua.c's msghandler. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Sets the global `arg`: the script at 0, the interpreter at -1, the
 * script's arguments from 1. */
static void set_arg(lua_State *L, int argc, char **argv) {
  lua_createtable(L, argc - 2, 2);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
}

/* Protected main: [script path] -> runs it with its arguments as `...`. */
static int run(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  luaL_checkversion(L);
  lua_gc(L, LUA_GCSTOP);
  luaL_openlibs(L);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  set_arg(L, argc, argv);
  lua_pushcfunction(L, traceback);                  /* [handler] */
  int handler = lua_gettop(L);
  if (luaL_loadfile(L, argv[1]) != LUA_OK)          /* [handler, chunk] */
    return lua_error(L);
  luaL_checkstack(L, argc, "too many arguments to script");
  for (int i = 2; i < argc; i++)
    lua_pushstring(L, argv[i]);                     /* [handler, chunk, args...] */
  if (lua_pcall(L, argc - 2, 0, handler) != LUA_OK)
    return lua_error(L);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SCRIPT [ARGS]\n", argv[0]);
    return 2;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", argv[0]);
    return 1;
  }
  lua_pushcfunction(L, run);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 0, 0);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: %s\n", argv[0], msg ? msg : "(error object is not a string)");
  }
  lua_close(L);
  return status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
