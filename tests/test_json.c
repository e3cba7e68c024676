/* test_json.c -- lossless JSON <-> Lua (src/json.c) and moonq.json. */
#include "json.h"

#include <math.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_bindings/bindings.h"
#include "test.h"

static lua_State *L;
static char err[256];

/* Evaluates a Lua expression and pushes its value. */
static void eval(const char *expr) {
  char chunk[1024];
  snprintf(chunk, sizeof chunk, "return %s", expr);
  if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "eval %s: %s\n", expr, lua_tostring(L, -1));
    exit(1);
  }
}

/* Runs Lua code that must not fail (it asserts with error()). */
static bool run_lua(const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return false;
  }
  return true;
}

/* Encodes the value on top (and pops it); returns a malloc'd string, or
 * NULL with the message in err. */
static char *encode_top(void) {
  int top = lua_gettop(L);
  char *s = mq_json_encode(L, -1, "data", NULL, err, sizeof err);
  CHECK_INT(lua_gettop(L), top);
  lua_pop(L, 1);
  return s;
}

/* Encodes a Lua expression: the text, or "ERR: <message>". Static. */
static const char *enc(const char *expr) {
  static char out[512];
  eval(expr);
  char *s = encode_top();
  if (s)
    snprintf(out, sizeof out, "%s", s);
  else
    snprintf(out, sizeof out, "ERR: %s", err);
  free(s);
  return out;
}

/* Decodes text, leaving the value on top; returns 0 or -1 (message in err)
 * and checks the stack effect either way. */
static int dec(const char *text) {
  int top = lua_gettop(L);
  int rc = mq_json_decode(L, text, strlen(text), err, sizeof err);
  CHECK_INT(lua_gettop(L), top + (rc == 0 ? 1 : 0));
  return rc;
}

/* Decodes then re-encodes; "ERR: <message>" on a decode error. */
static const char *roundtrip(const char *text) {
  static char out[512];
  if (dec(text) != 0) {
    snprintf(out, sizeof out, "ERR: %s", err);
    return out;
  }
  char *s = encode_top();
  snprintf(out, sizeof out, "%s", s ? s : err);
  free(s);
  return out;
}

static void test_integers(void) {
  const char *cases[] = {"9007199254740993", "-9223372036854775808",
                         "9223372036854775807", "12345678901234567", "0",
                         "-1"};
  const long long want[] = {9007199254740993LL, INT64_MIN, INT64_MAX,
                            12345678901234567LL, 0, -1};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    REQUIRE(dec(cases[i]) == 0);
    CHECK(lua_isinteger(L, -1));
    CHECK_INT(lua_tointeger(L, -1), want[i]);
    lua_pop(L, 1);
    CHECK_STR(roundtrip(cases[i]), cases[i]);
  }
  CHECK_STR(enc("math.mininteger"), "-9223372036854775808");
  CHECK_STR(enc("math.maxinteger"), "9223372036854775807");
  /* "-0" is an integer literal: integer 0. */
  REQUIRE(dec("-0") == 0);
  CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 0);
  lua_pop(L, 1);
}

static void test_integers_out_of_range(void) {
  REQUIRE(dec("9223372036854775808") == 0);
  CHECK(!lua_isinteger(L, -1));
  CHECK(lua_tonumber(L, -1) == 9223372036854775808.0);
  lua_pop(L, 1);
  REQUIRE(dec("-9223372036854775809") == 0);
  CHECK(!lua_isinteger(L, -1));
  lua_pop(L, 1);
  REQUIRE(dec("123456789012345678901234567890") == 0);
  CHECK(!lua_isinteger(L, -1));
  CHECK(lua_tonumber(L, -1) == 123456789012345678901234567890.0);
  lua_pop(L, 1);
  CHECK_STR(roundtrip("9223372036854775808"), "9.223372036854776e+18");
}

/* Encodes a float, decodes the text, and checks the bits come back. */
static void float_trip(double v, const char *want) {
  lua_pushnumber(L, v);
  char *s = encode_top();
  REQUIRE(s != NULL);
  if (want)
    CHECK_STR(s, want);
  REQUIRE(dec(s) == 0);
  CHECK(!lua_isinteger(L, -1));
  double back = lua_tonumber(L, -1);
  CHECK(memcmp(&back, &v, sizeof v) == 0);
  lua_pop(L, 1);
  free(s);
}

static void test_floats(void) {
  float_trip(0.1, "0.1");
  float_trip(1e-300, "1e-300");
  float_trip(1.7976931348623157e308, "1.7976931348623157e+308");
  float_trip(1.0, "1.0");
  float_trip(-0.0, "-0.0");
  float_trip(1e300, "1e+300");
  float_trip(123456789.0, "123456789.0");
  float_trip(0.1 + 0.2, "0.30000000000000004");
  float_trip(4.9406564584124654e-324, NULL); /* smallest denormal */
  float_trip(9007199254740993.0, NULL);
  float_trip(-2.5, "-2.5");
  REQUIRE(dec("-0.0") == 0);
  CHECK(!lua_isinteger(L, -1) && signbit(lua_tonumber(L, -1)));
  lua_pop(L, 1);
  CHECK_STR(roundtrip("1E2"), "100.0");
  CHECK_STR(roundtrip("[1.5e-3,2.0]"), "[0.0015,2.0]");
  CHECK_STR(enc("0/0"), "ERR: data: cannot encode NaN");
  CHECK_STR(enc("{x = {math.huge}}"),
            "ERR: data.x[1]: cannot encode an infinite number");
}

static void test_number_out_of_range(void) {
  CHECK(dec("1e400") == -1);
  CHECK_STR(err, "number beyond a 64-bit float's range "
        "(1.7976931348623157e308) at byte 0");
  CHECK(dec("[1, -1e400]") == -1);
  CHECK_STR(err, "number beyond a 64-bit float's range "
        "(1.7976931348623157e308) at byte 4");
  /* Underflow is not an error: it rounds to zero. */
  REQUIRE(dec("1e-400") == 0);
  CHECK(lua_tonumber(L, -1) == 0.0);
  lua_pop(L, 1);
}

static void test_unicode(void) {
  CHECK_STR(enc("'h\\u{e9}llo \\u{2713} \\u{1F600}'"),
            "\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\"");
  CHECK_STR(roundtrip("\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\""),
            "\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\"");
  REQUIRE(dec("\"\\u00e9\\ud83d\\ude00\\u0041\\u2713\"") == 0);
  CHECK_STR(lua_tostring(L, -1), "\xc3\xa9\xf0\x9f\x98\x80" "A\xe2\x9c\x93");
  lua_pop(L, 1);
  REQUIRE(dec("\"a\\u0000b\"") == 0);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  CHECK(len == 3 && memcmp(s, "a\0b", 3) == 0);
  lua_pop(L, 1);
  CHECK_STR(roundtrip("\"a\\u0000b\""), "\"a\\u0000b\"");
  CHECK_STR(enc("{name = 'ok\\xff'}"),
            "ERR: data.name: string is not valid UTF-8 (byte 2)");
  CHECK_STR(enc("{['\\xc0\\xaf'] = 1}"),
            "ERR: data: an object key is not valid UTF-8 (byte 0)");
  CHECK_STR(enc("'\\u{D800}'"), /* Lua lets you write a surrogate */
            "ERR: data: string is not valid UTF-8 (byte 0)");
}

static void test_escapes(void) {
  CHECK_STR(enc("'a\\n\\t\\r\\b\\f\\1\\31\"\\\\/\\127'"),
            "\"a\\n\\t\\r\\b\\f\\u0001\\u001f\\\"\\\\/\x7f\"");
  REQUIRE(dec("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"") == 0);
  CHECK_STR(lua_tostring(L, -1), "\"\\/\b\f\n\r\t");
  lua_pop(L, 1);
}

static void test_null(void) {
  REQUIRE(dec("null") == 0);
  CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA);
  CHECK(lua_touserdata(L, -1) == NULL);
  lua_pop(L, 1);
  CHECK_STR(roundtrip("[null,1,null]"), "[null,1,null]");
  CHECK_STR(roundtrip("{\"a\":null}"), "{\"a\":null}");
  lua_pushlightuserdata(L, NULL);
  char *s = encode_top();
  CHECK_STR(s, "null");
  free(s);
  CHECK_STR(roundtrip("[true,false]"), "[true,false]");
}

static void test_empty_containers(void) {
  CHECK_STR(roundtrip("{}"), "{}");
  CHECK_STR(roundtrip("[]"), "[]");
  CHECK_STR(roundtrip("{\"a\":[],\"b\":{},\"c\":[[]]}"),
            "{\"a\":[],\"b\":{},\"c\":[[]]}");
  CHECK_STR(enc("{}"), "{}");
  /* A decoded empty array carries the array metatable. */
  REQUIRE(dec("[]") == 0);
  REQUIRE(lua_getmetatable(L, -1));
  mq_json_push_array_mt(L);
  CHECK(lua_rawequal(L, -1, -2));
  CHECK(lua_getfield(L, -1, "__name") == LUA_TSTRING);
  CHECK_STR(lua_tostring(L, -1), "moonq.array");
  lua_pop(L, 4);
  /* Any empty table with array_mt encodes as []. */
  lua_newtable(L);
  mq_json_push_array_mt(L);
  lua_setmetatable(L, -2);
  char *s = encode_top();
  CHECK_STR(s, "[]");
  free(s);
}

static void test_objects(void) {
  /* Keys are strings and come out sorted bytewise. */
  CHECK_STR(roundtrip("{\"b\":2,\"1\":1,\"a\":{\"z\":1,\"y\":[1,2]}}"),
            "{\"1\":1,\"a\":{\"y\":[1,2],\"z\":1},\"b\":2}");
  REQUIRE(dec("{\"1\":true}") == 0);
  CHECK(lua_getfield(L, -1, "1") == LUA_TBOOLEAN);
  lua_pop(L, 1);
  CHECK(lua_rawgeti(L, -1, 1) == LUA_TNIL);
  lua_pop(L, 2);
  /* Duplicate keys: the last one wins. */
  CHECK_STR(roundtrip("{\"a\":1,\"a\":2}"), "{\"a\":2}");
  CHECK_STR(roundtrip(" { \"k\" : [ 1 , \"x\" ] } \n"), "{\"k\":[1,\"x\"]}");
  CHECK_STR(enc("{b = 1, ab = 2, a = 3, [''] = 4}"),
            "{\"\":4,\"a\":3,\"ab\":2,\"b\":1}");
}

static void test_depth(void) {
  char text[300];
  memset(text, '[', 128);
  memset(text + 128, ']', 128);
  text[256] = '\0';
  CHECK(dec(text) == 0);
  lua_pop(L, 1);
  memset(text, '[', 129);
  memset(text + 129, ']', 129);
  text[258] = '\0';
  CHECK(dec(text) == -1);
  CHECK_STR(err, "JSON nested deeper than 128 levels at byte 128");
  CHECK_STR(roundtrip("{\"a\":[{\"b\":[[[[1]]]]}]}"),
            "{\"a\":[{\"b\":[[[[1]]]]}]}");

  REQUIRE(run_lua("function nest(n) local t = {} "
                  "for i = 2, n do t = {t} end return t end"));
  CHECK(strncmp(enc("nest(128)"), "[[[", 3) == 0);
  /* The path is too long for err: its middle goes, the message stays. */
  const char *e = enc("nest(129)");
  CHECK(strncmp(e, "ERR: data...[1][1]", 18) == 0);
  CHECK_CONTAINS(e, "[1]: cannot encode tables nested deeper than 128");
  CHECK(strlen(e) < sizeof err + 5);
}

static void test_cycles(void) {
  CHECK_STR(enc("(function() local t = {} t.self = t return t end)()"),
            "ERR: data.self: cannot encode a reference cycle");
  CHECK_STR(enc("(function() local t = {1, {}} t[2][1] = t return t end)()"),
            "ERR: data[2][1]: cannot encode a reference cycle");
  /* The same table twice, not nested in itself, is fine. */
  CHECK_STR(enc("(function() local s = {1} return {s, s} end)()"),
            "[[1],[1]]");
}

static void test_bad_values(void) {
  CHECK_STR(enc("{a = {1, function() end}}"),
            "ERR: data.a[2]: cannot encode a function");
  CHECK_STR(enc("{items = {1, 2, {x = coroutine.create(print)}}}"),
            "ERR: data.items[3].x: cannot encode a thread");
  CHECK_STR(enc("{['my key'] = io.stdout}"),
            "ERR: data[\"my key\"]: cannot encode a userdata");
  CHECK_STR(enc("print"), "ERR: data: cannot encode a function");
  CHECK_STR(enc("{1, 2, x = 3}"),
            "ERR: data: cannot encode a table mixing array and object keys");
  CHECK_STR(enc("{o = {1, 2, nil, 4}}"), "ERR: data.o: array has a hole at [3]");
  CHECK_STR(enc("{[2] = 'x'}"), "ERR: data: array has a hole at [1]");
  CHECK_STR(enc("{[1.5] = 1}"),
            "ERR: data: cannot encode a table with a float key");
  CHECK_STR(enc("{[true] = 1}"),
            "ERR: data: cannot encode a table with a boolean key");
  CHECK_STR(enc("{[0] = 1}"),
            "ERR: data: cannot encode a table with key 0 (arrays start at [1])");
  /* A NULL root name reads "value". */
  eval("print");
  CHECK(mq_json_encode(L, -1, NULL, NULL, err, sizeof err) == NULL);
  CHECK_STR(err, "value: cannot encode a function");
  lua_pop(L, 1);
}

/* Decodes text expecting failure with exactly `want`. */
static void bad(const char *text, const char *want) {
  if (dec(text) == 0) {
    fprintf(stderr, "decoded invalid JSON: %s\n", text);
    mq_test_case_failed = 1;
    lua_pop(L, 1);
    return;
  }
  CHECK_STR(err, want);
}

static void test_invalid_json(void) {
  bad("[1,2,]", "invalid JSON at byte 5: trailing comma");
  bad("{\"a\":1,}", "invalid JSON at byte 7: trailing comma");
  bad("hello", "invalid JSON at byte 0: unexpected character 'h'");
  bad("nul", "invalid JSON at byte 0: invalid literal (expected true, "
             "false or null)");
  bad("\"abc", "invalid JSON at byte 0: unterminated string");
  bad("[\"abc\\\"]", "invalid JSON at byte 1: unterminated string");
  bad("\"abc\\", "invalid JSON at byte 0: unterminated string");
  bad("\"\\ud800\"", "invalid JSON at byte 1: lone surrogate");
  bad("\"x\\udc00\"", "invalid JSON at byte 2: lone surrogate");
  bad("\"\\ud800\\u0041\"", "invalid JSON at byte 1: lone surrogate");
  bad("[1] x", "invalid JSON at byte 4: unexpected text after the value");
  bad("{} {}", "invalid JSON at byte 3: unexpected text after the value");
  bad("", "invalid JSON at byte 0: unexpected end of text");
  bad("   ", "invalid JSON at byte 3: unexpected end of text");
  bad("[1,", "invalid JSON at byte 3: unexpected end of text");
  bad("{\"a\" 1}", "invalid JSON at byte 5: expected ':'");
  bad("{\"a\":1 \"b\":2}", "invalid JSON at byte 7: expected ',' or '}'");
  bad("{\"items\": [1, 2] \"x\"}", "invalid JSON at byte 17: expected ',' or '}'");
  bad("[1 2]", "invalid JSON at byte 3: expected ',' or ']'");
  bad("{1:2}", "invalid JSON at byte 1: expected a string key");
  bad("01", "invalid JSON at byte 0: invalid number (leading zero)");
  bad("-", "invalid JSON at byte 0: invalid number");
  bad("1.", "invalid JSON at byte 0: invalid number");
  bad(".5", "invalid JSON at byte 0: unexpected character '.'");
  bad("1e", "invalid JSON at byte 0: invalid number");
  bad("+1", "invalid JSON at byte 0: unexpected character '+'");
  bad("\"a\\x\"", "invalid JSON at byte 2: invalid escape");
  bad("\"\\u12\"", "invalid JSON at byte 1: invalid \\u escape");
  bad("\"a\tb\"", "invalid JSON at byte 2: control character in string");
  bad("\"a\xff\"", "invalid JSON at byte 2: invalid UTF-8");
  bad("\"\xed\xa0\x80\"", "invalid JSON at byte 1: invalid UTF-8");
  bad("\"\xc0\xaf\"", "invalid JSON at byte 1: invalid UTF-8");
  bad("[1]\x01", "invalid JSON at byte 3: unexpected text after the value");
  bad("\x01", "invalid JSON at byte 0: unexpected byte 0x01");
  bad("NaN", "invalid JSON at byte 0: unexpected character 'N'");
  /* Embedded NUL: the length, not strlen, bounds the text. */
  CHECK(mq_json_decode(L, "[1]\0", 4, err, sizeof err) == -1);
  CHECK_STR(err, "invalid JSON at byte 3: unexpected text after the value");
  CHECK(mq_json_decode(L, "[\0]", 3, err, sizeof err) == -1);
  CHECK_STR(err, "invalid JSON at byte 1: unexpected byte 0x00");
}

/* mq_json_decode_unique refuses a key twice in one object, at any depth,
 * naming it; the same key in two objects is fine; mq_json_decode keeps the
 * last. */
static void test_unique_keys(void) {
  const char *twice[][2] = {
      {"{\"name\":\"a\",\"name\":\"b\"}",
       "invalid JSON at byte 12: the key \"name\" appears twice in one object"},
      {"{\"data\":{\"x\":1,\"y\":[{\"z\":1,\"z\":2}]}}",
       "invalid JSON at byte 27: the key \"z\" appears twice in one object"},
      {"{\"a\\u0062\":1,\"ab\":2}",
       "invalid JSON at byte 13: the key \"ab\" appears twice in one object"}};
  for (size_t i = 0; i < sizeof twice / sizeof twice[0]; i++) {
    int top = lua_gettop(L);
    CHECK(mq_json_decode_unique(L, twice[i][0], strlen(twice[i][0]), err,
                                sizeof err) == -1);
    CHECK_STR(err, twice[i][1]);
    CHECK_INT(lua_gettop(L), top);
  }
  const char *once = "{\"a\":{\"k\":1},\"b\":{\"k\":2},\"c\":[{\"k\":3},{\"k\":4}]}";
  CHECK_INT(mq_json_decode_unique(L, once, strlen(once), err, sizeof err), 0);
  lua_pop(L, 1);
  CHECK_INT(mq_json_decode(L, twice[0][0], strlen(twice[0][0]), err,
                           sizeof err), 0);
  lua_getfield(L, -1, "name");
  CHECK_STR(lua_tostring(L, -1), "b");
  lua_pop(L, 2);
}

/* A ~1.4 MB array round-trips through encode and decode unchanged. */
static void test_large(void) {
  REQUIRE(run_lua(
      "big = {} for i = 1, 150000 do "
      "  big[i] = i % 3 == 0 and ('item-' .. i) or i % 3 == 1 and i * 7 "
      "  or i / 8 end "
      "function same(a, b) "
      "  if type(a) ~= 'table' then "
      "    return a == b and math.type(a) == math.type(b) end "
      "  for k, v in pairs(a) do if not same(v, b[k]) then return false end "
      "  end for k in pairs(b) do if a[k] == nil then return false end end "
      "  return true end"));
  lua_getglobal(L, "big");
  size_t len;
  char *text = mq_json_encode(L, -1, "data", &len, err, sizeof err);
  lua_pop(L, 1);
  REQUIRE(text != NULL);
  CHECK(len > 1000000);
  CHECK_INT(strlen(text), len);
  REQUIRE(mq_json_decode(L, text, len, err, sizeof err) == 0);
  lua_setglobal(L, "back");
  CHECK(run_lua("assert(same(big, back))"));
  lua_getglobal(L, "back");
  size_t len2;
  char *again = mq_json_encode(L, -1, "data", &len2, err, sizeof err);
  lua_pop(L, 1);
  CHECK(again && len2 == len && memcmp(text, again, len) == 0);
  free(again);
  free(text);

  /* One 1 MB string. */
  REQUIRE(run_lua("bigs = string.rep('ab\"\\n', 262144)"));
  lua_getglobal(L, "bigs");
  text = mq_json_encode(L, -1, "data", &len, err, sizeof err);
  lua_pop(L, 1);
  REQUIRE(text != NULL);
  CHECK_INT(len, 262144 * 6 + 2);
  REQUIRE(mq_json_decode(L, text, len, err, sizeof err) == 0);
  lua_getglobal(L, "bigs");
  CHECK(lua_rawequal(L, -1, -2));
  lua_pop(L, 2);
  free(text);
}

/* Allocations Lua may still make before failing; SIZE_MAX for no limit. */
static size_t alloc_budget = SIZE_MAX;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL || nsize > osize) {
    if (alloc_budget == 0)
      return NULL;
    if (alloc_budget != SIZE_MAX)
      alloc_budget--;
  }
  return realloc(ptr, nsize);
}

/* Lua running out of memory at every point of a decode and an encode gives
 * an error, a balanced stack and (under ASan) no leak. */
static void test_out_of_memory(void) {
  lua_State *M = lua_newstate(limited_alloc, NULL);
  REQUIRE(M != NULL);
  const char *text = "{\"a\":[1,2.5,\"x\\u00e9\",{\"b\":[]}],"
                     "\"long key long key long key long key long key\":null}";
  int failures = 0, successes = 0;
  for (size_t budget = 0; budget < 200; budget++) {
    alloc_budget = budget;
    int rc = mq_json_decode(M, text, strlen(text), err, sizeof err);
    CHECK_INT(lua_gettop(M), rc == 0 ? 1 : 0);
    if (rc != 0) {
      CHECK_STR(err, "JSON decode: out of memory");
      failures++;
      alloc_budget = SIZE_MAX;
      continue;
    }
    alloc_budget = budget;
    char *out = mq_json_encode(M, -1, "data", NULL, err, sizeof err);
    alloc_budget = SIZE_MAX;
    CHECK_INT(lua_gettop(M), 1);
    if (out) {
      CHECK_STR(out, "{\"a\":[1,2.5,\"x\xc3\xa9\",{\"b\":[]}],"
                     "\"long key long key long key long key long key\":null}");
      successes++;
    } else {
      CHECK_STR(err, "data: out of memory");
      failures++;
    }
    free(out);
    lua_settop(M, 0);
  }
  CHECK(failures > 0 && successes > 0);
  lua_close(M);
}

/* Objects written from C: members in call order, values encoded as from
 * Lua, explicit nulls, and a first error that sticks and names its key. */
static void test_object_writer(void) {
  mq_json_object *o = mq_json_object_new();
  mq_json_object_int(o, "n", 3);
  mq_json_object_number(o, "x", 7);
  mq_json_object_number(o, "y", 0.1);
  mq_json_object_bool(o, "b", true);
  mq_json_object_string(o, "s", "a\"b\n\xc3\xa9");
  mq_json_object_string(o, "w", NULL);
  CHECK_INT(mq_json_object_null(o, "z"), 0);
  char *text = mq_json_object_finish(o, err, sizeof err);
  CHECK_STR(text, "{\"n\":3,\"x\":7.0,\"y\":0.1,\"b\":true,"
                  "\"s\":\"a\\\"b\\n\xc3\xa9\",\"w\":null,\"z\":null}");
  free(text);

  text = mq_json_object_finish(mq_json_object_new(), err, sizeof err);
  CHECK_STR(text, "{}");
  free(text);

  o = mq_json_object_new();
  CHECK_INT(mq_json_object_number(o, "retry_delay", NAN), -1);
  CHECK_INT(mq_json_object_int(o, "retry_limit", 1), -1);
  CHECK(mq_json_object_finish(o, err, sizeof err) == NULL);
  CHECK_STR(err, "retry_delay: cannot encode NaN");

  o = mq_json_object_new();
  mq_json_object_string(o, "dead_letter", "\xff");
  CHECK(mq_json_object_finish(o, err, sizeof err) == NULL);
  CHECK_STR(err, "dead_letter: string is not valid UTF-8 (byte 0)");

  CHECK_INT(mq_json_object_bool(NULL, "b", true), -1);
  CHECK(mq_json_object_finish(NULL, err, sizeof err) == NULL);
  CHECK_STR(err, "object: out of memory");
}

/* The Lua face: moonq.json as the binding registers it. */
static void test_binding(void) {
  luaL_requiref(L, "moonq.json", luaopen_moonq_json, 0);
  lua_setglobal(L, "json");
  CHECK(run_lua(
      "assert(json.null ~= nil)\n"
      "assert(type(json.null) == 'userdata')\n"
      "assert(json.decode('null') == json.null)\n"
      "assert(json.encode({a = json.null}) == '{\"a\":null}')\n"
      "local v = json.decode('[9007199254740993, 1.0, -0.0, 2]')\n"
      "assert(math.type(v[1]) == 'integer' and v[1] == 9007199254740993)\n"
      "assert(math.type(v[2]) == 'float' and math.type(v[4]) == 'integer')\n"
      "assert(1 / v[3] == -math.huge)\n"
      "assert(json.encode(v) == '[9007199254740993,1.0,-0.0,2]')\n"
      "local e = json.decode('[]')\n"
      "assert(getmetatable(e) == json.array_mt)\n"
      "assert(json.encode(e) == '[]' and json.encode({}) == '{}')\n"
      "assert(json.encode(json.array()) == '[]')\n"
      "local t = {} assert(json.array(t) == t)\n"
      "assert(getmetatable(t) == json.array_mt)\n"
      "local ok, msg = pcall(json.encode, {a = {1, print}})\n"
      "assert(not ok and msg == "
      "  'json.encode: value.a[2]: cannot encode a function', msg)\n"
      "local r, m = json.decode('[1,]')\n"
      "assert(r == nil and m == 'invalid JSON at byte 3: trailing comma', m)\n"
      "assert(not pcall(json.decode, {}))\n"
      "assert(not pcall(json.array, 5))\n"));
  lua_pushnil(L);
  lua_setglobal(L, "json");
}

/* NUL characters in encoded strings are found; an escaped backslash
 * followed by "u0000" is text, not a NUL. */
static void test_has_nul(void) {
  CHECK(mq_json_has_nul("{\"s\":\"a\\u0000b\"}"));
  CHECK(mq_json_has_nul("[\"\\u0000\"]"));
  CHECK(!mq_json_has_nul("{\"s\":\"a\\\\u0000b\"}"));
  CHECK(mq_json_has_nul("{\"s\":\"\\u00001\"}"));
  CHECK(!mq_json_has_nul("{\"s\":\"\\u0001\"}"));
  CHECK(!mq_json_has_nul("{}"));
}

/* The offset of the first byte that does not start valid UTF-8 (the
 * rules strings are encoded by), or the length. */
static void test_utf8_check(void) {
  CHECK_INT((int)mq_json_utf8_check("", 0), 0);
  CHECK_INT((int)mq_json_utf8_check("abc", 3), 3);
  CHECK_INT((int)mq_json_utf8_check("\xc3\xa9t\xc3\xa9", 5), 5);
  CHECK_INT((int)mq_json_utf8_check("\xf0\x9f\x98\x80", 4), 4);
  CHECK_INT((int)mq_json_utf8_check("a\xff", 2), 1);
  CHECK_INT((int)mq_json_utf8_check("ab\xc3", 3), 2);          /* cut short */
  CHECK_INT((int)mq_json_utf8_check("\xc0\xaf", 2), 0);       /* overlong */
  CHECK_INT((int)mq_json_utf8_check("x\xed\xa0\x80", 4), 1); /* surrogate */
  CHECK_INT((int)mq_json_utf8_check("\xf4\x90\x80\x80", 4), 0); /* > U+10FFFF */
}

int main(void) {
  L = luaL_newstate();
  REQUIRE(L != NULL);
  luaL_openlibs(L);
  RUN(test_integers);
  RUN(test_integers_out_of_range);
  RUN(test_floats);
  RUN(test_number_out_of_range);
  RUN(test_unicode);
  RUN(test_escapes);
  RUN(test_null);
  RUN(test_empty_containers);
  RUN(test_objects);
  RUN(test_depth);
  RUN(test_cycles);
  RUN(test_bad_values);
  RUN(test_invalid_json);
  RUN(test_unique_keys);
  RUN(test_large);
  RUN(test_out_of_memory);
  RUN(test_object_writer);
  RUN(test_has_nul);
  RUN(test_utf8_check);
  RUN(test_binding);
  CHECK_INT(lua_gettop(L), 0);
  lua_close(L);
  return mq_test_done();
}
