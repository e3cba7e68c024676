/* json.c -- lossless JSON <-> Lua values, and JSON objects written from C;
 * see json.h.
 *
 * Both directions run inside a lua_pcall of a private C function, so a Lua
 * memory error cannot longjmp past our malloc'd buffers: the public function
 * owns every allocation and frees it on every path. Inside the protected
 * call, JSON and encoding errors are plain return values (-1) with the
 * message already written to the caller's buffer; only Lua itself raises.
 *
 * The encoder appends to one growable buffer and keeps object keys in one
 * shared, stack-like array, so no allocation happens per value. The decoder
 * builds values directly on the Lua stack and needs memory only for strings
 * with escapes and for long float literals (one scratch buffer).
 *
 * An mq_json_object is that encoder without a Lua state: C code adds the
 * members one by one through the same functions that write Lua's numbers
 * and strings.
 */
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

/* Containers nested deeper than this are errors in both directions. */
#define MAX_DEPTH 128

const char mq_json_array_mt_key = 0;

/* One step of the path from the root to the value being encoded: an object
 * key (key != NULL, owned by the Lua table) or an array index. */
struct seg {
  const char *key;
  size_t klen;
  lua_Integer index;
};

/* A string key of the table being encoded; the table anchors the string. */
struct keyref {
  const char *s;
  size_t len;
};

struct enc {
  lua_State *L;
  char *out; /* the JSON text; malloc'd, handed to the caller on success */
  size_t len, cap;
  struct keyref *keys; /* keys of the objects on the path, stacked */
  size_t nkeys, keycap;
  int mt_idx; /* stack index of the array metatable (or nil) */
  bool ok;
  bool no_nul; /* a NUL character is an error (mq_json_encode_stored) */
  const char *root;
  char *err;
  size_t errlen;
  const void *seen[MAX_DEPTH];  /* tables on the path, for cycles */
  struct seg path[MAX_DEPTH + 1];
};

struct dec {
  lua_State *L;
  const char *start, *p, *end;
  char *scratch; /* malloc'd; freed by mq_json_decode */
  size_t scap;
  int depth, max_depth;
  char decpoint; /* the locale's decimal point, for strtod */
  bool unique;   /* a key twice in one object is an error */
  bool ok;
  char *err;
  size_t errlen;
};

/* A JSON object written from C. The encoder's root is the key of the member
 * being written, so an error names it. */
struct mq_json_object {
  struct enc e;
  int count;   /* members written */
  bool failed; /* a write failed; the message is in err */
  char err[200];
};

static int enc_value(struct enc *e, int idx, int depth);
static int dec_value(struct dec *d);
static size_t utf8_len(const unsigned char *s, size_t n);
static int put(struct enc *e, const char *s, size_t n);
static int putc1(struct enc *e, char c);
static int enc_integer(struct enc *e, lua_Integer v);
static int enc_float(struct enc *e, double v, int depth);
static int enc_string(struct enc *e, const char *s, size_t n, int depth,
                      bool key);
static int member(mq_json_object *o, const char *key);
static int written(mq_json_object *o, int rc);

void mq_json_push_array_mt(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &mq_json_array_mt_key) != LUA_TNIL)
    return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "moonq.array");
  lua_setfield(L, -2, "__name");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &mq_json_array_mt_key);
}

/* Protected body of mq_json_encode: [value, enc]. */
static int encode_main(lua_State *L) {
  struct enc *e = lua_touserdata(L, 2);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &mq_json_array_mt_key);
  e->mt_idx = 3; /* [value, enc, array_mt|nil] */
  if (enc_value(e, 1, 0) == 0)
    e->ok = true;
  return 0;
}

static char *encode(lua_State *L, int idx, const char *root, size_t *len,
                    char *err, size_t errlen, bool no_nul) {
  struct enc e;
  memset(&e, 0, sizeof e);
  e.L = L;
  e.no_nul = no_nul;
  e.root = root ? root : "value";
  e.err = errlen ? err : NULL;
  e.errlen = errlen;
  if (e.err)
    e.err[0] = '\0';
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, 4)) {
    if (e.err)
      snprintf(e.err, errlen, "%s: Lua stack overflow", e.root);
    return NULL;
  }
  lua_pushcfunction(L, encode_main);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, &e);
  int status = lua_pcall(L, 2, 0, 0);
  free(e.keys);
  if (status != LUA_OK) {
    if (e.err) {
      const char *msg = lua_tostring(L, -1);
      snprintf(e.err, errlen, "%s: %s", e.root,
               status == LUA_ERRMEM ? "out of memory" : msg ? msg : "error");
    }
    lua_pop(L, 1);
    free(e.out);
    return NULL;
  }
  if (!e.ok) {
    free(e.out);
    return NULL;
  }
  if (len)
    *len = e.len;
  return e.out;
}

char *mq_json_encode(lua_State *L, int idx, const char *root, size_t *len,
                     char *err, size_t errlen) {
  return encode(L, idx, root, len, err, errlen, false);
}

char *mq_json_encode_stored(lua_State *L, int idx, const char *root,
                            size_t *len, char *err, size_t errlen) {
  return encode(L, idx, root, len, err, errlen, true);
}

/* Protected body of mq_json_decode: [dec] -> [value]. */
static int decode_main(lua_State *L) {
  struct dec *d = lua_touserdata(L, 1);
  if (dec_value(d) != 0)
    return 0;
  while (d->p < d->end &&
         (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
    d->p++;
  if (d->p != d->end) {
    if (d->err)
      snprintf(d->err, d->errlen,
               "invalid JSON at byte %zu: unexpected text after the value",
               (size_t)(d->p - d->start));
    return 0;
  }
  d->ok = true;
  return 1;
}

static int decode(lua_State *L, const char *text, size_t len, int levels,
                  bool unique, char *err, size_t errlen);

int mq_json_decode(lua_State *L, const char *text, size_t len, char *err,
                   size_t errlen) {
  return decode(L, text, len, 0, false, err, errlen);
}

int mq_json_decode_unique(lua_State *L, const char *text, size_t len,
                          char *err, size_t errlen) {
  return decode(L, text, len, 0, true, err, errlen);
}

int mq_json_decode_wrapped(lua_State *L, const char *text, size_t len,
                           int levels, char *err, size_t errlen) {
  return decode(L, text, len, levels, false, err, errlen);
}

static int decode(lua_State *L, const char *text, size_t len, int levels,
                  bool unique, char *err, size_t errlen) {
  struct dec d;
  memset(&d, 0, sizeof d);
  d.L = L;
  d.unique = unique;
  d.max_depth = MAX_DEPTH + levels;
  d.start = d.p = text;
  d.end = text + len;
  d.decpoint = localeconv()->decimal_point[0];
  d.err = errlen ? err : NULL;
  d.errlen = errlen;
  if (d.err)
    d.err[0] = '\0';
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 4)) {
    if (d.err)
      snprintf(d.err, errlen, "JSON decode: Lua stack overflow");
    return -1;
  }
  lua_pushcfunction(L, decode_main);
  lua_pushlightuserdata(L, &d);
  int status = lua_pcall(L, 1, 1, 0);
  free(d.scratch);
  if (status == LUA_OK && d.ok)
    return 0;
  if (status != LUA_OK && d.err) {
    const char *msg = lua_tostring(L, -1);
    snprintf(d.err, errlen, "JSON decode: %s",
             status == LUA_ERRMEM ? "out of memory" : msg ? msg : "error");
  }
  lua_settop(L, top);
  return -1;
}

mq_json_object *mq_json_object_new(void) {
  mq_json_object *o = calloc(1, sizeof *o);
  if (!o)
    return NULL;
  o->e.root = "object";
  o->e.err = o->err;
  o->e.errlen = sizeof o->err;
  if (putc1(&o->e, '{') != 0) {
    free(o);
    return NULL;
  }
  return o;
}

int mq_json_object_int(mq_json_object *o, const char *key, long long v) {
  if (member(o, key) != 0)
    return -1;
  return written(o, enc_integer(&o->e, (lua_Integer)v));
}

int mq_json_object_number(mq_json_object *o, const char *key, double v) {
  if (member(o, key) != 0)
    return -1;
  return written(o, enc_float(&o->e, v, 0));
}

int mq_json_object_bool(mq_json_object *o, const char *key, bool v) {
  if (member(o, key) != 0)
    return -1;
  return written(o, v ? put(&o->e, "true", 4) : put(&o->e, "false", 5));
}

int mq_json_object_string(mq_json_object *o, const char *key, const char *s) {
  if (member(o, key) != 0)
    return -1;
  if (!s)
    return written(o, put(&o->e, "null", 4));
  return written(o, enc_string(&o->e, s, strlen(s), 0, false));
}

int mq_json_object_null(mq_json_object *o, const char *key) {
  return mq_json_object_string(o, key, NULL);
}

bool mq_json_has_nul(const char *json) {
  /* Backslashes occur only inside strings, each starting an escape. */
  for (const char *p = json; (p = strchr(p, '\\')); p += 2) {
    if (p[1] == 'u' && strncmp(p + 2, "0000", 4) == 0)
      return true;
    if (!p[1])
      break;
  }
  return false;
}

char *mq_json_nul_visible(const char *json) {
  size_t n = 0;
  for (const char *p = json; (p = strchr(p, '\\')); p += 2) {
    if (p[1] == 'u' && strncmp(p + 2, "0000", 4) == 0)
      n++;
    if (!p[1])
      break;
  }
  char *out = malloc(strlen(json) + n + 1), *o = out;
  if (!out)
    return NULL;
  for (const char *p = json; *p;) {
    if (p[0] == '\\' && p[1] == 'u' && strncmp(p + 2, "0000", 4) == 0) {
      *o++ = '\\'; /* \\u0000: the six characters, not a NUL */
      memcpy(o, p, 6);
      o += 6;
      p += 6;
    } else if (p[0] == '\\' && p[1]) {
      *o++ = *p++;
      *o++ = *p++;
    } else {
      *o++ = *p++;
    }
  }
  *o = '\0';
  return out;
}

void mq_json_utf8_repair(char *s) {
  size_t n = strlen(s);
  unsigned char *u = (unsigned char *)s;
  for (size_t i = 0; i < n;) {
    int len = u[i] < 0x80 ? 1 : (u[i] & 0xe0) == 0xc0 && u[i] >= 0xc2 ? 2
              : (u[i] & 0xf0) == 0xe0 ? 3
              : (u[i] & 0xf8) == 0xf0 && u[i] <= 0xf4 ? 4 : 0;
    bool ok = len > 0 && i + (size_t)len <= n;
    for (int k = 1; ok && k < len; k++)
      ok = (u[i + k] & 0xc0) == 0x80;
    if (ok && len == 3) /* no overlong forms, no surrogates */
      ok = !(u[i] == 0xe0 && u[i + 1] < 0xa0) &&
           !(u[i] == 0xed && u[i + 1] >= 0xa0);
    if (ok && len == 4)
      ok = !(u[i] == 0xf0 && u[i + 1] < 0x90) &&
           !(u[i] == 0xf4 && u[i + 1] >= 0x90);
    if (!ok) {
      u[i++] = '?';
      continue;
    }
    i += (size_t)len;
  }
}

size_t mq_json_utf8_check(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    size_t k = u[i] < 0x80 ? 1 : utf8_len(u + i, n - i);
    if (k == 0)
      return i;
    i += k;
  }
  return n;
}

int mq_json_object_raw(mq_json_object *o, const char *key, const char *json) {
  if (member(o, key) != 0)
    return -1;
  if (!json)
    return written(o, put(&o->e, "null", 4));
  return written(o, put(&o->e, json, strlen(json)));
}

char *mq_json_object_finish(mq_json_object *o, char *err, size_t errlen) {
  char *text = NULL;
  if (o && !o->failed) {
    o->e.root = "object"; /* the last member's key may be gone by now */
    if (putc1(&o->e, '}') == 0) {
      text = o->e.out;
      o->e.out = NULL;
    }
  }
  if (!text && errlen)
    snprintf(err, errlen, "%s", o ? o->err : "object: out of memory");
  if (o) {
    free(o->e.out);
    free(o);
  }
  return text;
}

/* ---- objects written from C -------------------------------------------- */

/* Writes the separator and the key of the next member. Returns -1 when the
 * object has failed already or fails now. */
static int member(mq_json_object *o, const char *key) {
  if (!o || o->failed)
    return -1;
  o->e.root = key;
  if ((o->count > 0 && putc1(&o->e, ',') != 0) ||
      enc_string(&o->e, key, strlen(key), 0, true) != 0 ||
      putc1(&o->e, ':') != 0)
    return written(o, -1);
  o->count++;
  return 0;
}

/* Passes rc on, remembering a failure so later writes do nothing. */
static int written(mq_json_object *o, int rc) {
  if (rc != 0)
    o->failed = true;
  return rc;
}

/* ---- encoding ---------------------------------------------------------- */

/* Records an out-of-memory error; returns -1. */
static int enc_oom(struct enc *e) {
  if (e->err)
    snprintf(e->err, e->errlen, "%s: out of memory", e->root);
  return -1;
}

/* Makes room for n more bytes plus a terminating NUL. */
static int reserve(struct enc *e, size_t n) {
  if (e->cap - e->len > n)
    return 0;
  size_t cap = e->cap ? e->cap : 256;
  while (cap - e->len <= n) {
    if (cap > SIZE_MAX / 2)
      return enc_oom(e);
    cap *= 2;
  }
  char *p = realloc(e->out, cap);
  if (!p)
    return enc_oom(e);
  e->out = p;
  e->cap = cap;
  return 0;
}

/* Appends s[0..n), keeping the buffer NUL-terminated. */
static int put(struct enc *e, const char *s, size_t n) {
  if (reserve(e, n) != 0)
    return -1;
  memcpy(e->out + e->len, s, n);
  e->len += n;
  e->out[e->len] = '\0';
  return 0;
}

static int putc1(struct enc *e, char c) { return put(e, &c, 1); }

/* Appends printf output to dst[*n..cap), keeping *n below cap. */
PRINTF_LIKE(4, 5)
static void add(char *dst, size_t cap, size_t *n, const char *fmt, ...) {
  if (*n + 1 >= cap)
    return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(dst + *n, cap - *n, fmt, ap);
  va_end(ap);
  if (w > 0)
    *n = *n + (size_t)w < cap ? *n + (size_t)w : cap - 1;
}

static bool is_identifier(const char *s, size_t n) {
  if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_'))
      return false;
  }
  return true;
}

/* Writes "<path>: <message>" for the value at `depth` into the caller's
 * error buffer; returns -1. A path too long for the buffer loses its
 * middle ("data...[7][1]: ...") so the message always shows. */
PRINTF_LIKE(3, 4)
static int enc_fail(struct enc *e, int depth, const char *fmt, ...) {
  if (!e->err)
    return -1;
  char msg[200], path[MAX_DEPTH * 48 + 64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t n = 0;
  add(path, sizeof path, &n, "%.40s", e->root);
  size_t root_len = n;
  for (int i = 0; i < depth; i++) {
    const struct seg *s = &e->path[i];
    int klen = (int)(s->klen > 40 ? 40 : s->klen);
    if (!s->key)
      add(path, sizeof path, &n, "[%lld]", (long long)s->index);
    else if (is_identifier(s->key, s->klen))
      add(path, sizeof path, &n, ".%.*s", klen, s->key);
    else
      add(path, sizeof path, &n, "[\"%.*s\"]", klen, s->key);
  }
  size_t room = e->errlen > strlen(msg) + 3 ? e->errlen - strlen(msg) - 3 : 0;
  if (n > room && room > root_len + 3) {
    /* Keep the root and the tail, cut at a segment boundary. */
    const char *tail = path + n - (room - root_len - 3);
    while (*tail && *tail != '[' && *tail != '.')
      tail++;
    snprintf(e->err, e->errlen, "%.*s...%s: %s", (int)root_len, path, tail,
             msg);
  } else {
    snprintf(e->err, e->errlen, "%s: %s", path, msg);
  }
  return -1;
}

static int enc_integer(struct enc *e, lua_Integer v) {
  char tmp[24];
  char *p = tmp + sizeof tmp;
  unsigned long long u =
      v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0)
    *--p = '-';
  return put(e, p, (size_t)(tmp + sizeof tmp - p));
}

/* The shortest of %.15g/%.16g/%.17g that reads back as the same double,
 * with the locale's decimal point turned into '.', and ".0" added when the
 * result would otherwise read back as an integer. */
static int enc_float(struct enc *e, double v, int depth) {
  if (!isfinite(v))
    return enc_fail(e, depth, "cannot encode %s",
                    isnan(v) ? "NaN" : "an infinite number");
  char tmp[40];
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (strtod(tmp, NULL) == v)
      break;
  }
  bool looks_float = false;
  for (char *p = tmp; *p; p++) {
    if (*p == 'e')
      looks_float = true;
    else if (*p != '-' && *p != '+' && (*p < '0' || *p > '9')) {
      *p = '.'; /* the locale's decimal point */
      looks_float = true;
    }
  }
  size_t n = strlen(tmp);
  if (!looks_float) {
    memcpy(tmp + n, ".0", 3);
    n += 2;
  }
  return put(e, tmp, n);
}

/* Appends s[0..n) as a JSON string. Invalid UTF-8 is an error at `depth`
 * ("key" says whether s is an object key of the container there). */
static int enc_string(struct enc *e, const char *s, size_t n, int depth,
                      bool key) {
  static const char hex[] = "0123456789abcdef";
  if (reserve(e, n + 2) != 0)
    return -1;
  e->out[e->len++] = '"';
  size_t run = 0, i = 0;
  while (i < n) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      i++;
      continue;
    }
    if (c >= 0x80) {
      size_t k = utf8_len((const unsigned char *)s + i, n - i);
      if (k == 0)
        return enc_fail(e, depth, "%s is not valid UTF-8 (byte %zu)",
                        key ? "an object key" : "string", i);
      i += k;
      continue;
    }
    if (c == 0 && e->no_nul)
      return enc_fail(e, depth, "%s holds a NUL character (\\u0000), which "
                      "PostgreSQL's jsonb cannot store",
                      key ? "an object key" : "string");
    if (put(e, s + run, i - run) != 0)
      return -1;
    char esc[6] = {'\\', 0, '0', '0', hex[c >> 4], hex[c & 15]};
    size_t elen = 2;
    switch (c) {
    case '"': esc[1] = '"'; break;
    case '\\': esc[1] = '\\'; break;
    case '\b': esc[1] = 'b'; break;
    case '\f': esc[1] = 'f'; break;
    case '\n': esc[1] = 'n'; break;
    case '\r': esc[1] = 'r'; break;
    case '\t': esc[1] = 't'; break;
    default:
      esc[1] = 'u';
      elen = 6;
    }
    if (put(e, esc, elen) != 0)
      return -1;
    run = ++i;
  }
  if (put(e, s + run, n - run) != 0)
    return -1;
  return putc1(e, '"');
}

static int push_key(struct enc *e, const char *s, size_t len) {
  if (e->nkeys == e->keycap) {
    size_t cap = e->keycap ? e->keycap * 2 : 64;
    struct keyref *k = realloc(e->keys, cap * sizeof *k);
    if (!k)
      return enc_oom(e);
    e->keys = k;
    e->keycap = cap;
  }
  e->keys[e->nkeys].s = s;
  e->keys[e->nkeys].len = len;
  e->nkeys++;
  return 0;
}

static int key_cmp(const void *a, const void *b) {
  const struct keyref *x = a, *y = b;
  int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
  if (c != 0)
    return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

/* Scans the table at idx: string keys go on e->keys, positive integer keys
 * are counted in *n (largest in *max); any other key is an error. */
static int scan_keys(struct enc *e, int idx, int depth, lua_Integer *n,
                     lua_Integer *max) {
  lua_State *L = e->L;
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* [.. key value] */
    int t = lua_type(L, -2);
    if (t == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, -2, &len);
      if (push_key(e, s, len) != 0)
        return -1;
    } else if (t == LUA_TNUMBER && lua_isinteger(L, -2)) {
      lua_Integer k = lua_tointeger(L, -2);
      if (k < 1)
        return enc_fail(e, depth, "cannot encode a table with key %lld "
                        "(arrays start at [1])", (long long)k);
      (*n)++;
      if (k > *max)
        *max = k;
    } else if (t == LUA_TNUMBER) {
      return enc_fail(e, depth, "cannot encode a table with a float key");
    } else {
      return enc_fail(e, depth, "cannot encode a table with a %s key",
                      lua_typename(L, t));
    }
    lua_pop(L, 1);
  }
  return 0;
}

static int enc_array(struct enc *e, int idx, int depth, lua_Integer n) {
  lua_State *L = e->L;
  if (putc1(e, '[') != 0)
    return -1;
  for (lua_Integer i = 1; i <= n; i++) {
    if (i > 1 && putc1(e, ',') != 0)
      return -1;
    lua_rawgeti(L, idx, i);
    e->path[depth].key = NULL;
    e->path[depth].index = i;
    if (enc_value(e, lua_gettop(L), depth + 1) != 0)
      return -1;
    lua_pop(L, 1);
  }
  return putc1(e, ']');
}

/* Encodes the object whose keys are e->keys[base..], in byte order. */
static int enc_object(struct enc *e, int idx, int depth, size_t base) {
  lua_State *L = e->L;
  size_t count = e->nkeys - base;
  qsort(e->keys + base, count, sizeof *e->keys, key_cmp);
  if (putc1(e, '{') != 0)
    return -1;
  for (size_t i = 0; i < count; i++) {
    /* Indexed afresh: nested objects may move e->keys. */
    struct keyref k = e->keys[base + i];
    if (i > 0 && putc1(e, ',') != 0)
      return -1;
    if (enc_string(e, k.s, k.len, depth, true) != 0 || putc1(e, ':') != 0)
      return -1;
    lua_pushlstring(L, k.s, k.len);
    lua_rawget(L, idx);
    e->path[depth].key = k.s;
    e->path[depth].klen = k.len;
    if (enc_value(e, lua_gettop(L), depth + 1) != 0)
      return -1;
    lua_pop(L, 1);
  }
  e->nkeys = base;
  return putc1(e, '}');
}

static int enc_table(struct enc *e, int idx, int depth) {
  lua_State *L = e->L;
  const void *self = lua_topointer(L, idx);
  for (int i = 0; i < depth; i++)
    if (e->seen[i] == self)
      return enc_fail(e, depth, "cannot encode a reference cycle");
  if (depth >= MAX_DEPTH)
    return enc_fail(e, depth, "cannot encode tables nested deeper than %d",
                    MAX_DEPTH);
  e->seen[depth] = self;
  if (!lua_checkstack(L, 4))
    return enc_fail(e, depth, "Lua stack overflow");
  size_t base = e->nkeys;
  lua_Integer n = 0, max = 0;
  if (scan_keys(e, idx, depth, &n, &max) != 0)
    return -1;
  if (n > 0 && e->nkeys > base)
    return enc_fail(e, depth,
                    "cannot encode a table mixing array and object keys");
  if (n != max) {
    lua_Integer hole = 1;
    for (; lua_rawgeti(L, idx, hole) != LUA_TNIL; hole++)
      lua_pop(L, 1);
    return enc_fail(e, depth, "array has a hole at [%lld]", (long long)hole);
  }
  if (n > 0)
    return enc_array(e, idx, depth, n);
  if (e->nkeys > base)
    return enc_object(e, idx, depth, base);
  bool array = false;
  if (lua_getmetatable(L, idx)) {
    array = lua_rawequal(L, -1, e->mt_idx);
    lua_pop(L, 1);
  }
  return put(e, array ? "[]" : "{}", 2);
}

static int enc_value(struct enc *e, int idx, int depth) {
  lua_State *L = e->L;
  int t = lua_type(L, idx);
  switch (t) {
  case LUA_TNIL:
    return put(e, "null", 4);
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx) ? put(e, "true", 4) : put(e, "false", 5);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      return enc_integer(e, lua_tointeger(L, idx));
    return enc_float(e, (double)lua_tonumber(L, idx), depth);
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return enc_string(e, s, len, depth, false);
  }
  case LUA_TTABLE:
    return enc_table(e, idx, depth);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL)
      return put(e, "null", 4);
    return enc_fail(e, depth, "cannot encode a light userdata");
  default:
    return enc_fail(e, depth, "cannot encode a %s", lua_typename(L, t));
  }
}

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else
    return 0;
  if (n < len || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF)
      return 0;
  return len;
}

/* ---- decoding ---------------------------------------------------------- */

/* "invalid JSON at byte N: <what>"; returns -1. */
static int syntax(struct dec *d, const char *at, const char *what) {
  if (d->err)
    snprintf(d->err, d->errlen, "invalid JSON at byte %zu: %s",
             (size_t)(at - d->start), what);
  return -1;
}

static int dec_oom(struct dec *d) {
  if (d->err)
    snprintf(d->err, d->errlen, "JSON decode: out of memory");
  return -1;
}

static void skip_ws(struct dec *d) {
  while (d->p < d->end &&
         (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
    d->p++;
}

static int grow_scratch(struct dec *d, size_t n) {
  if (d->scap >= n)
    return 0;
  char *p = realloc(d->scratch, n);
  if (!p)
    return dec_oom(d);
  d->scratch = p;
  d->scap = n;
  return 0;
}

static int enter(struct dec *d) {
  if (++d->depth > d->max_depth) {
    if (d->err)
      snprintf(d->err, d->errlen, "JSON nested deeper than %d levels at byte %zu",
               d->max_depth, (size_t)(d->p - d->start));
    return -1;
  }
  if (!lua_checkstack(d->L, 4))
    return syntax(d, d->p, "Lua stack overflow");
  return 0;
}

/* After an array element or object member: consumes ',' (returns 1, more
 * follow) or the closing bracket (returns 0), else fails with -1. */
static int dec_separator(struct dec *d, char close) {
  skip_ws(d);
  if (d->p < d->end && *d->p == ',') {
    d->p++;
    skip_ws(d);
    if (d->p < d->end && *d->p == close)
      return syntax(d, d->p, "trailing comma");
    return 1;
  }
  if (d->p < d->end && *d->p == close) {
    d->p++;
    return 0;
  }
  return syntax(d, d->p,
                close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
}

/* Enters an array or object: pushes its table and returns 1 when it is
 * empty (closed already), 0 when elements follow, -1 on error. */
static int dec_open(struct dec *d, char close) {
  if (enter(d) != 0)
    return -1;
  d->p++;
  lua_newtable(d->L);
  skip_ws(d);
  if (d->p < d->end && *d->p == close) {
    d->p++;
    d->depth--;
    return 1;
  }
  return 0;
}

static int dec_array(struct dec *d) {
  lua_State *L = d->L;
  int empty = dec_open(d, ']');
  if (empty != 0) {
    if (empty > 0) { /* [] keeps its kind through a round trip */
      mq_json_push_array_mt(L);
      lua_setmetatable(L, -2);
    }
    return empty < 0 ? -1 : 0;
  }
  for (lua_Integer i = 1;; i++) {
    if (dec_value(d) != 0)
      return -1;
    lua_rawseti(L, -2, i); /* [.. array] */
    int next = dec_separator(d, ']');
    if (next < 0)
      return -1;
    if (next == 0)
      break;
  }
  d->depth--;
  return 0;
}

static int dec_string(struct dec *d);

static int dec_object(struct dec *d) {
  lua_State *L = d->L;
  int empty = dec_open(d, '}');
  if (empty != 0)
    return empty < 0 ? -1 : 0;
  for (;;) {
    if (d->p == d->end || *d->p != '"')
      return syntax(d, d->p, "expected a string key");
    const char *key_at = d->p;
    if (dec_string(d) != 0) /* [.. object key] */
      return -1;
    if (d->unique) {
      if (!lua_checkstack(L, 2))
        return dec_oom(d);
      lua_pushvalue(L, -1);
      bool twice = lua_rawget(L, -3) != LUA_TNIL;
      lua_pop(L, 1);
      if (twice) {
        if (d->err)
          snprintf(d->err, d->errlen, "invalid JSON at byte %zu: the key "
                   "\"%.60s\" appears twice in one object",
                   (size_t)(key_at - d->start), lua_tostring(L, -1));
        return -1;
      }
    }
    skip_ws(d);
    if (d->p == d->end || *d->p != ':')
      return syntax(d, d->p, "expected ':'");
    d->p++;
    if (dec_value(d) != 0) /* [.. object key value] */
      return -1;
    lua_rawset(L, -3);
    int next = dec_separator(d, '}');
    if (next < 0)
      return -1;
    if (next == 0)
      break;
  }
  d->depth--;
  return 0;
}

static int hex4(const char *s) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else
      return -1;
  }
  return v;
}

static char *put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) {
    *o++ = (char)cp;
  } else if (cp < 0x800) {
    *o++ = (char)(0xC0 | (cp >> 6));
    *o++ = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *o++ = (char)(0xE0 | (cp >> 12));
    *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (char)(0x80 | (cp & 0x3F));
  } else {
    *o++ = (char)(0xF0 | (cp >> 18));
    *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
    *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (char)(0x80 | (cp & 0x3F));
  }
  return o;
}

/* Decodes the escapes of the string body s[0..q) into the scratch buffer
 * and pushes the result. Escapes never grow, so q - s bytes suffice. */
static int unescape(struct dec *d, const char *s, const char *q) {
  if (grow_scratch(d, (size_t)(q - s) + 1) != 0)
    return -1;
  char *o = d->scratch;
  while (s < q) {
    const char *b = memchr(s, '\\', (size_t)(q - s));
    if (!b)
      b = q;
    memcpy(o, s, (size_t)(b - s));
    o += b - s;
    s = b;
    if (s == q)
      break;
    char c = s[1]; /* the scan guaranteed a byte after each backslash */
    const char *simple = strchr("\"\\/bfnrt", c);
    if (c && simple) {
      *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      s += 2;
      continue;
    }
    if (c != 'u')
      return syntax(d, s, "invalid escape");
    int cp = q - s >= 6 ? hex4(s + 2) : -1;
    if (cp < 0)
      return syntax(d, s, "invalid \\u escape");
    if (cp >= 0xDC00 && cp <= 0xDFFF)
      return syntax(d, s, "lone surrogate");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      int lo = q - s >= 12 && s[6] == '\\' && s[7] == 'u' ? hex4(s + 8) : -1;
      if (lo < 0xDC00 || lo > 0xDFFF)
        return syntax(d, s, "lone surrogate");
      o = put_utf8(o, 0x10000u + (((unsigned)cp - 0xD800) << 10) +
                          ((unsigned)lo - 0xDC00));
      s += 12;
    } else {
      o = put_utf8(o, (unsigned)cp);
      s += 6;
    }
  }
  lua_pushlstring(d->L, d->scratch, (size_t)(o - d->scratch));
  return 0;
}

/* Pushes the string at d->p (on its opening quote). */
static int dec_string(struct dec *d) {
  const char *open = d->p, *s = open + 1, *q = s;
  bool escapes = false;
  while (q < d->end) {
    unsigned char c = (unsigned char)*q;
    if (c == '"')
      break;
    if (c == '\\') {
      if (d->end - q < 2) {
        q = d->end;
        break;
      }
      escapes = true;
      q += 2;
    } else if (c < 0x20) {
      return syntax(d, q, "control character in string");
    } else if (c >= 0x80) {
      size_t k = utf8_len((const unsigned char *)q, (size_t)(d->end - q));
      if (k == 0)
        return syntax(d, q, "invalid UTF-8");
      q += k;
    } else {
      q++;
    }
  }
  if (q >= d->end)
    return syntax(d, open, "unterminated string");
  if (escapes) {
    if (unescape(d, s, q) != 0)
      return -1;
  } else {
    lua_pushlstring(d->L, s, (size_t)(q - s));
  }
  d->p = q + 1;
  return 0;
}

static bool is_digit(const char *p, const char *end) {
  return p < end && *p >= '0' && *p <= '9';
}

/* Pushes the number at d->p: an integer when it has no fraction or
 * exponent and fits int64, otherwise a float. */
static int dec_number(struct dec *d) {
  const char *s = d->p, *q = s, *end = d->end;
  bool neg = false, integral = true;
  if (*q == '-') {
    neg = true;
    q++;
  }
  const char *digits = q;
  if (!is_digit(q, end))
    return syntax(d, s, "invalid number");
  if (*q == '0') {
    if (is_digit(++q, end))
      return syntax(d, s, "invalid number (leading zero)");
  } else {
    while (is_digit(q, end))
      q++;
  }
  const char *int_end = q;
  if (q < end && *q == '.') {
    integral = false;
    if (!is_digit(++q, end))
      return syntax(d, s, "invalid number");
    while (is_digit(q, end))
      q++;
  }
  if (q < end && (*q == 'e' || *q == 'E')) {
    integral = false;
    q++;
    if (q < end && (*q == '+' || *q == '-'))
      q++;
    if (!is_digit(q, end))
      return syntax(d, s, "invalid number");
    while (is_digit(q, end))
      q++;
  }
  d->p = q;
  if (integral) {
    uint64_t mag = 0;
    bool fits = true;
    for (const char *p = digits; p < int_end && fits; p++) {
      unsigned dig = (unsigned)(*p - '0');
      if (mag > (UINT64_MAX - dig) / 10)
        fits = false;
      else
        mag = mag * 10 + dig;
    }
    if (fits && mag <= (uint64_t)INT64_MAX) {
      lua_pushinteger(d->L, neg ? -(lua_Integer)mag : (lua_Integer)mag);
      return 0;
    }
    if (fits && neg && mag == (uint64_t)INT64_MAX + 1) {
      lua_pushinteger(d->L, LUA_MININTEGER);
      return 0;
    }
  }
  /* strtod wants a NUL-terminated string in the locale's notation. */
  size_t n = (size_t)(q - s);
  char small[64], *buf = small;
  if (n >= sizeof small) {
    if (grow_scratch(d, n + 1) != 0)
      return -1;
    buf = d->scratch;
  }
  for (size_t i = 0; i < n; i++)
    buf[i] = s[i] == '.' ? d->decpoint : s[i];
  buf[n] = '\0';
  char *stop;
  double v = strtod(buf, &stop);
  if (stop != buf + n)
    return syntax(d, s, "invalid number");
  if (isinf(v)) {
    if (d->err)
      snprintf(d->err, d->errlen, "number beyond a 64-bit float's range "
               "(1.7976931348623157e308) at byte %zu",
               (size_t)(s - d->start));
    return -1;
  }
  lua_pushnumber(d->L, (lua_Number)v);
  return 0;
}

/* Matches the literal word at d->p. */
static bool literal(struct dec *d, const char *word, size_t n) {
  if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
    return false;
  d->p += n;
  return true;
}

static int dec_value(struct dec *d) {
  lua_State *L = d->L;
  skip_ws(d);
  if (d->p == d->end)
    return syntax(d, d->p, "unexpected end of text");
  char c = *d->p;
  switch (c) {
  case '{':
    return dec_object(d);
  case '[':
    return dec_array(d);
  case '"':
    return dec_string(d);
  case 't':
  case 'f':
  case 'n':
    if (literal(d, "true", 4))
      lua_pushboolean(L, 1);
    else if (literal(d, "false", 5))
      lua_pushboolean(L, 0);
    else if (literal(d, "null", 4))
      lua_pushlightuserdata(L, NULL);
    else
      return syntax(d, d->p, "invalid literal (expected true, false or null)");
    return 0;
  default:
    if (c == '-' || (c >= '0' && c <= '9'))
      return dec_number(d);
    char what[48];
    if (c > 0x20 && c < 0x7F)
      snprintf(what, sizeof what, "unexpected character '%c'", c);
    else
      snprintf(what, sizeof what, "unexpected byte 0x%02x",
               (unsigned)(unsigned char)c);
    return syntax(d, d->p, what);
  }
}
