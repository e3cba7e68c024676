/* config.c -- config.lua loaded into C structs and validated; see config.h.
 *
 * The schema is data: each table level is an array of `struct field`
 * (name, kind, offset of the C member, bounds). One generic walker checks a
 * Lua table against such an array, so every key gets the same treatment:
 * unknown keys are reported with a "did you mean" suggestion, values are
 * type- and range-checked without string coercion, and every problem is
 * collected, one line each, instead of stopping at the first.
 *
 * All work on the Lua side runs inside lua_pcall (the chunk itself under a
 * second, nested pcall with a traceback-free message handler), so no Lua
 * error can longjmp past our callers. Tables are read with lua_rawget and
 * lua_next only: a config table's metatable is never consulted. Memory the
 * walker allocates is owned by the mq_config under construction at once, so
 * a Lua error midway (out of memory) leaks nothing: the caller frees the
 * half-built config on the single failure path.
 */
#define _XOPEN_SOURCE 700 /* realpath(); before any header */

#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "cron.h"
#include "json.h"
#include "log.h"

/* What a key holds; decides the check and the C member written. */
enum kind {
  F_INT,    /* int in [min, max] */
  F_POS,    /* finite double > 0 */
  F_NONNEG, /* finite double >= 0 */
  F_BOOL,   /* bool */
  F_STR,    /* non-empty string, malloc'd char * */
  F_IDENT,  /* SQL identifier, malloc'd char * */
  F_LEVEL,  /* log level name, stored as int */
  F_JSON,   /* table, stored as malloc'd JSON text */
  F_BACKFILL, /* string or whole seconds, stored as malloc'd text */
  F_TABLE,  /* nested fixed-key table: `sub` at base + off */
  F_FUNC    /* anything else: handled by `fn` */
};

struct ctx;

struct field {
  const char *name;
  enum kind kind;
  size_t off; /* of the C member from the level's base */
  int min, max; /* F_INT bounds; F_POS/F_NUM: min in milliseconds */
  bool auto_ok;  /* F_INT: the string "auto" is allowed, stored as -1 */
  bool required;
  const struct field *sub; /* F_TABLE */
  size_t nsub;
  void (*fn)(struct ctx *c, int idx, const char *path); /* F_FUNC */
};

/* Problems collected into the caller's buffer, one per line. */
struct errbuf {
  char *buf;
  size_t cap, len;
  int count;
};

/* One load or validation: shared by the C caller and the protected call. */
struct ctx {
  lua_State *L;
  const char *origin; /* file path or origin: prefix of every message */
  struct mq_config *cfg;
  struct errbuf eb;
  const char *listen; /* replaces http.listen before it is checked, or NULL */
};

#define KEY_MAX 256 /* longest key path shown in a message */
/* Limits of a schedule (sql/011_schedules.sql). */
#define SCHEDULE_NAME_MAX 200
#define QUEUE_NAME_MAX 255 /* sql/014_limits.sql */
#define BACKFILL_SLOTS_MAX 1000
#define BACKFILL_SECONDS_MAX (366 * 86400)
#define HTTP_BODY_EXTRA 65536 /* http.max_body over max_payload by default */
#define HTTP_TOKEN_MIN 16      /* bytes */
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define QOFF(m) offsetof(struct mq_queue_options, m)
#define COFF(m) offsetof(struct mq_config, m)
#define SOFF(m) offsetof(struct mq_schedule_config, m)
#define TABLE(n, o, f)                                                     \
  { .name = n, .kind = F_TABLE, .off = o, .sub = f, .nsub = COUNT(f) }

static void read_queues(struct ctx *c, int idx, const char *path);
static void read_schedules(struct ctx *c, int idx, const char *path);

static const struct field queue_fields[] = {
    {.name = "retry_limit", .kind = F_INT, .off = QOFF(retry_limit),
     .min = 0, .max = INT_MAX},
    {.name = "retry_delay", .kind = F_NONNEG, .off = QOFF(retry_delay)},
    {.name = "retry_backoff", .kind = F_BOOL, .off = QOFF(retry_backoff)},
    {.name = "expire_in", .kind = F_POS, .off = QOFF(expire_in)},
    {.name = "retention", .kind = F_NONNEG, .off = QOFF(retention)},
    /* min: milliseconds (a tighter poll is a storm of statements) */
    {.name = "poll_interval", .kind = F_POS, .off = QOFF(poll_interval),
     .min = 10},
    {.name = "concurrency", .kind = F_INT, .off = QOFF(concurrency),
     .min = 1, .max = INT_MAX},
    {.name = "timeout", .kind = F_POS, .off = QOFF(timeout)},
    {.name = "dead_letter", .kind = F_STR, .off = QOFF(dead_letter)},
    {.name = "prefetch", .kind = F_INT, .off = QOFF(prefetch), .min = 0,
     .max = 100000, .auto_ok = true},
};

/* Offsets of events and log are from struct mq_config (their structs are
 * anonymous), so their TABLE entries use offset 0. */
static const struct field events_fields[] = {
    {.name = "enabled", .kind = F_BOOL, .off = COFF(events.enabled)},
    {.name = "job_events", .kind = F_BOOL, .off = COFF(events.job_events)},
    {.name = "pool_size", .kind = F_INT, .off = COFF(events.pool_size),
     .min = 1, .max = 64},
    {.name = "max_size", .kind = F_INT, .off = COFF(events.max_size),
     .min = 1, .max = 268435455},
    {.name = "retention", .kind = F_POS, .off = COFF(events.retention)},
};

static const struct field http_fields[] = {
    {.name = "listen", .kind = F_STR, .off = COFF(http.listen)},
    {.name = "token", .kind = F_STR, .off = COFF(http.token)},
    {.name = "max_body", .kind = F_INT, .off = COFF(http.max_body),
     .min = 1024, .max = INT_MAX},
    {.name = "timeout", .kind = F_POS, .off = COFF(http.timeout)},
    {.name = "heartbeat", .kind = F_POS, .off = COFF(http.heartbeat)},
    {.name = "stream_buffer", .kind = F_INT, .off = COFF(http.stream_buffer),
     .min = 65536, .max = INT_MAX},
};

static const struct field log_fields[] = {
    {.name = "level", .kind = F_LEVEL, .off = COFF(log.level)},
};

static const struct field schedule_fields[] = {
    {.name = "name", .kind = F_STR, .off = SOFF(name), .required = true},
    {.name = "cron", .kind = F_STR, .off = SOFF(cron), .required = true},
    {.name = "tz", .kind = F_STR, .off = SOFF(tz)},
    {.name = "job", .kind = F_STR, .off = SOFF(job)},
    {.name = "data", .kind = F_JSON, .off = SOFF(data_json)},
    {.name = "options", .kind = F_JSON, .off = SOFF(options_json)},
    {.name = "backfill", .kind = F_BACKFILL, .off = SOFF(backfill)},
};

/* In checking order: `queue` before `queues`, which merge over it. */
static const struct field top_fields[] = {
    {.name = "database", .kind = F_STR, .off = COFF(database)},
    {.name = "schema", .kind = F_IDENT, .off = COFF(schema)},
    {.name = "handlers", .kind = F_STR, .off = COFF(handlers)},
    {.name = "workers", .kind = F_INT, .off = COFF(workers), .min = 1,
     .max = 1024},
    {.name = "pool_size", .kind = F_INT, .off = COFF(pool_size), .min = 1,
     .max = 64},
    {.name = "hot_reload", .kind = F_BOOL, .off = COFF(hot_reload)},
    {.name = "shutdown_grace", .kind = F_POS, .off = COFF(shutdown_grace)},
    /* min: milliseconds (a live process must get to beat in time) */
    {.name = "stale_after", .kind = F_POS, .off = COFF(stale_after),
     .min = 2000},
    {.name = "max_payload", .kind = F_INT, .off = COFF(max_payload),
     .min = 1, .max = INT_MAX},
    {.name = "memory_limit", .kind = F_INT, .off = COFF(memory_limit),
     .min = 16, .max = 1048576},
    TABLE("queue", COFF(queue), queue_fields),
    {.name = "queues", .kind = F_FUNC, .fn = read_queues},
    TABLE("events", 0, events_fields),
    {.name = "schedules", .kind = F_FUNC, .fn = read_schedules},
    TABLE("log", 0, log_fields),
    TABLE("http", 0, http_fields),
};

static const struct mq_queue_options default_queue = {
    .retry_limit = 3,
    .retry_delay = 60,
    .retry_backoff = true,
    .expire_in = 900,
    .retention = 7 * 86400,
    .poll_interval = 2,
    .concurrency = 10,
    .timeout = 300,
    .dead_letter = NULL,
    .prefetch = MQ_PREFETCH_AUTO,
};

static int load_cb(lua_State *L);
static int validate_cb(lua_State *L);
static int finish(struct ctx *c, int status, char *base_dir);
static bool set_defaults(struct mq_config *cfg);
static char *dir_of(const char *path);
static void chunk_error(struct ctx *c, int status, const char *msg);
static void validate(struct ctx *c, int idx);
static void check_fields(struct ctx *c, int t, const char *prefix,
                         const struct field *f, size_t n, char *base);
static void check_duplicates(struct ctx *c);
static void check_http(struct ctx *c);
static char *xstrdup(lua_State *L, const char *s);
static void add_errorv(struct errbuf *eb, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void add_error(struct errbuf *eb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void problem(struct ctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The end of a load: base_dir from `path` (NULL: the current directory)
 * when the protected run succeeded without problems, then finish(); the
 * stack goes back to `top`. Returns the config, or NULL (freed). */
static struct mq_config *conclude(struct ctx *c, int status, const char *path,
                                  int top) {
  char *dir = status == LUA_OK && c->eb.count == 0 ? dir_of(path) : NULL;
  struct mq_config *cfg = c->cfg;
  if (finish(c, status, dir) < 0) { /* reads the error off the stack */
    mq_config_free(cfg);
    cfg = NULL;
  }
  lua_settop(c->L, top);
  return cfg;
}

/* Loads, runs and validates `path` inside one lua_pcall (load_cb); only a
 * Lua memory error ends that call early, and the half-built config it
 * leaves is freed here. Caller frees the result with mq_config_free(). */
struct mq_config *mq_config_load(lua_State *L, const char *path, char *err,
                                 size_t errlen) {
  return mq_config_load_listen(L, path, NULL, err, errlen);
}

struct mq_config *mq_config_load_listen(lua_State *L, const char *path,
                                        const char *listen, char *err,
                                        size_t errlen) {
  struct ctx c = {.L = L, .origin = path, .eb = {err, errlen, 0, 0},
                  .listen = listen};
  int top = lua_gettop(L);
  if (errlen > 0)
    err[0] = '\0';
  int status = -1; /* no stack space: nothing ran */
  if (lua_checkstack(L, 2)) {
    lua_pushcfunction(L, load_cb);
    lua_pushlightuserdata(L, &c);
    status = lua_pcall(L, 1, 0, 0);
  }
  return conclude(&c, status, path, top);
}

/* As mq_config_load() for a table already on the stack; base_dir is the
 * current directory. */
struct mq_config *mq_config_from_table(lua_State *L, int idx,
                                       const char *origin, char *err,
                                       size_t errlen) {
  struct ctx c = {.L = L, .origin = origin ? origin : "config",
                  .eb = {err, errlen, 0, 0}};
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  if (errlen > 0)
    err[0] = '\0';
  int status = -1;
  if (lua_checkstack(L, 3)) {
    lua_pushcfunction(L, validate_cb);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, idx);
    status = lua_pcall(L, 2, 0, 0);
  }
  return conclude(&c, status, NULL, top);
}

/* Every default; path "(defaults)", base_dir the current directory.
 * NULL when out of memory. Caller frees. */
struct mq_config *mq_config_defaults(void) {
  struct mq_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg || !set_defaults(cfg))
    goto fail;
  cfg->path = strdup("(defaults)");
  cfg->base_dir = dir_of(NULL);
  if (!cfg->path || !cfg->base_dir)
    goto fail;
  const char *url = getenv("DATABASE_URL");
  if (url && *url && !(cfg->database = strdup(url)))
    goto fail;
  cfg->http.max_body = cfg->max_payload + HTTP_BODY_EXTRA;
  return cfg;
fail:
  mq_config_free(cfg);
  return NULL;
}

/* A linear search: configs name a handful of queues. */
const struct mq_queue_options *mq_config_queue(const struct mq_config *cfg,
                                               const char *name) {
  for (size_t i = 0; name && i < cfg->nqueues; i++)
    if (strcmp(cfg->queues[i].name, name) == 0)
      return &cfg->queues[i].options;
  return &cfg->queue;
}

/* Frees cfg and every string and array it owns. NULL-safe. */
void mq_config_free(struct mq_config *cfg) {
  if (!cfg)
    return;
  free(cfg->path);
  free(cfg->base_dir);
  free(cfg->database);
  free(cfg->schema);
  free(cfg->handlers);
  free(cfg->queue.dead_letter);
  for (size_t i = 0; i < cfg->nqueues; i++) {
    free(cfg->queues[i].name);
    free(cfg->queues[i].options.dead_letter);
  }
  free(cfg->queues);
  for (size_t i = 0; i < cfg->nschedules; i++) {
    struct mq_schedule_config *s = &cfg->schedules[i];
    free(s->name);
    free(s->cron);
    free(s->tz);
    free(s->job);
    free(s->data_json);
    free(s->options_json);
    free(s->backfill);
  }
  free(cfg->schedules);
  free(cfg->http.listen);
  free(cfg->http.token);
  free(cfg);
}

/* ---- loading ---------------------------------------------------------- */

/* Message handler for the chunk: the error as a string, with the file:line
 * of the innermost Lua frame added when the message lacks one (error(msg,
 * 0), a bad argument to a C function). No traceback: config errors are read
 * by people who want one line. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Sl", &ar);
    if (ar.currentline <= 0)
      continue;
    size_t n = strlen(ar.short_src);
    if (strncmp(msg, ar.short_src, n) != 0 || msg[n] != ':')
      msg = lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline,
                            msg);
    break;
  }
  lua_pushstring(L, msg);
  return 1;
}

/* Protected: [ctx] -> loads and runs the file, validates what it returns.
 * Problems go to c->eb; only out-of-memory raises. */
static int load_cb(lua_State *L) {
  struct ctx *c = lua_touserdata(L, 1);
  lua_pushcfunction(L, msgh);
  int handler = lua_gettop(L);
  int status = luaL_loadfilex(L, c->origin, "t");
  if (status == LUA_OK)
    status = lua_pcall(L, 0, 1, handler);
  if (status != LUA_OK) {
    chunk_error(c, status, lua_tostring(L, -1));
    return 0;
  }
  if (!lua_istable(L, -1)) {
    add_error(&c->eb, "%s must return a table, got %s", c->origin,
              luaL_typename(L, -1));
    return 0;
  }
  validate(c, lua_gettop(L));
  return 0;
}

/* Protected: [ctx, table] -> validates the table. */
static int validate_cb(lua_State *L) {
  struct ctx *c = lua_touserdata(L, 1);
  if (!lua_istable(L, 2)) {
    add_error(&c->eb, "%s: config must be a table, got %s", c->origin,
              luaL_typename(L, 2));
    return 0;
  }
  validate(c, 2);
  return 0;
}

/* After the protected call (status -1: it could not be made): turns a Lua
 * error into a message and fills in base_dir (taking ownership of it).
 * Returns 0 when c->cfg is good, -1 when err holds the problems. */
static int finish(struct ctx *c, int status, char *base_dir) {
  if (status != LUA_OK) {
    const char *msg = status > 0 ? lua_tostring(c->L, -1) : NULL;
    add_error(&c->eb, "%s: %s", c->origin, msg ? msg : "not enough memory");
  }
  if (c->eb.count > 0) {
    free(base_dir);
    return -1;
  }
  if (!base_dir) {
    add_error(&c->eb, "%s: cannot resolve the config directory", c->origin);
    return -1;
  }
  c->cfg->base_dir = base_dir;
  return 0;
}

/* When Lua cut a long chunk name to "...tail", the text after the tail (":
 * line: message") if the tail ends `path`; else NULL. */
static const char *after_cut_name(const char *msg, const char *path) {
  if (strncmp(msg, "...", 3) != 0)
    return NULL;
  const char *tail = msg + 3;
  size_t plen = strlen(path);
  for (const char *p = strchr(tail, ':'); p; p = strchr(p + 1, ':')) {
    size_t n = (size_t)(p - tail);
    if (n > 0 && n <= plen && memcmp(tail, path + plen - n, n) == 0 &&
        isdigit((unsigned char)p[1]))
      return p;
  }
  return NULL;
}

/* Reports a failed load or run of the chunk as "path:line: message" with
 * the full path, whatever Lua's chunk id looked like. */
static void chunk_error(struct ctx *c, int status, const char *msg) {
  const char *path = c->origin, *rest;
  size_t n = strlen(path);
  if (!msg)
    msg = "(error object is not a string)";
  if (status == LUA_ERRFILE) /* "cannot open <path>: <reason>" */
    add_error(&c->eb, "%s", msg);
  else if (strncmp(msg, path, n) == 0 && msg[n] == ':')
    add_error(&c->eb, "%s", msg);
  else if ((rest = after_cut_name(msg, path)))
    add_error(&c->eb, "%s%s", path, rest);
  else
    add_error(&c->eb, "%s: %s", path, msg);
}

/* The directory of `path` (NULL: the current directory), absolute and
 * malloc'd, or NULL. */
static char *dir_of(const char *path) {
  const char *slash = path ? strrchr(path, '/') : NULL;
  if (!slash)
    return realpath(".", NULL);
  size_t n = slash == path ? 1 : (size_t)(slash - path);
  char *dir = malloc(n + 1);
  if (!dir)
    return NULL;
  memcpy(dir, path, n);
  dir[n] = '\0';
  char *abs = realpath(dir, NULL);
  free(dir);
  return abs;
}

/* ---- validation ------------------------------------------------------- */

static bool set_defaults(struct mq_config *cfg) {
  cfg->workers = 1;
  cfg->pool_size = 4;
  cfg->hot_reload = true;
  cfg->shutdown_grace = 30;
  cfg->stale_after = 30;
  cfg->max_payload = 1048576;
  cfg->memory_limit = 256;
  cfg->queue = default_queue;
  cfg->events.enabled = true;
  cfg->events.job_events = false;
  cfg->events.pool_size = 4;
  cfg->events.max_size = 1048576;
  cfg->log.level = MQ_LOG_INFO;
  cfg->http.max_body = -1; /* max_payload + 64 KiB, once that is known */
  cfg->http.timeout = 30;
  cfg->http.heartbeat = 15;
  cfg->http.stream_buffer = 1 << 20;
  cfg->schema = strdup("moonq");
  cfg->handlers = strdup("handlers");
  return cfg->schema && cfg->handlers;
}

/* Builds c->cfg from the table at idx; problems go to c->eb. */
static void validate(struct ctx *c, int idx) {
  lua_State *L = c->L;
  c->cfg = calloc(1, sizeof *c->cfg);
  if (!c->cfg || !set_defaults(c->cfg))
    luaL_error(L, "out of memory");
  c->cfg->path = xstrdup(L, c->origin);
  check_fields(c, idx, "", top_fields, COUNT(top_fields), (char *)c->cfg);
  check_duplicates(c);
  if (c->listen) {
    free(c->cfg->http.listen);
    c->cfg->http.listen = NULL;
    c->cfg->http.listen = xstrdup(L, c->listen);
  }
  check_http(c);
  const char *url = getenv("DATABASE_URL");
  if (url && *url) {
    free(c->cfg->database);
    c->cfg->database = NULL;
    c->cfg->database = xstrdup(L, url);
  }
}

static void *xcalloc(lua_State *L, size_t n, size_t size) {
  void *p = n ? calloc(n, size) : NULL;
  if (n && !p)
    luaL_error(L, "out of memory");
  return p;
}

static char *xstrdup(lua_State *L, const char *s) {
  char *d = s ? strdup(s) : NULL;
  if (s && !d)
    luaL_error(L, "out of memory");
  return d;
}

static void add_errorv(struct errbuf *eb, const char *fmt, va_list ap) {
  eb->count++;
  if (eb->len + 2 >= eb->cap)
    return; /* full: later problems are counted, not shown */
  if (eb->len > 0)
    eb->buf[eb->len++] = '\n';
  int n = vsnprintf(eb->buf + eb->len, eb->cap - eb->len, fmt, ap);
  if (n < 0)
    n = 0;
  eb->len += (size_t)n < eb->cap - eb->len ? (size_t)n : eb->cap - eb->len - 1;
}

static void add_error(struct errbuf *eb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  add_errorv(eb, fmt, ap);
  va_end(ap);
}

/* A problem with the key at `path`: "origin: path: message". */
static void problem(struct ctx *c, const char *path, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  add_error(&c->eb, "%s: %s: %s", c->origin, path, msg);
}

/* Describes the value at idx for "got ...": nil, true, 3, 1.5, table,
 * string "text" (escaped, cut at 40 bytes). Leaves the stack as it was. */
static void describe(lua_State *L, int idx, char *out, size_t len) {
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER) {
    lua_pushvalue(L, idx); /* tostring on a copy: the original may be a key */
    snprintf(out, len, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  } else if (t == LUA_TBOOLEAN) {
    snprintf(out, len, "%s", lua_toboolean(L, idx) ? "true" : "false");
  } else if (t != LUA_TSTRING) {
    snprintf(out, len, "%s", lua_typename(L, t));
  } else {
    size_t n, o = 0;
    const char *s = lua_tolstring(L, idx, &n);
    char q[200];
    for (size_t i = 0; i < n && i < 40 && o + 5 < sizeof q; i++) {
      unsigned char ch = (unsigned char)s[i];
      if (ch == '"' || ch == '\\')
        o += (size_t)snprintf(q + o, sizeof q - o, "\\%c", ch);
      else if (ch < 0x20 || ch == 0x7f)
        o += (size_t)snprintf(q + o, sizeof q - o, "\\%d", ch);
      else
        q[o++] = (char)ch;
    }
    q[o] = '\0';
    snprintf(out, len, "string \"%s\"%s", q, n > 40 ? "..." : "");
  }
}

/* "expected <what>, got <value at idx>" at `path`. */
static void bad(struct ctx *c, const char *path, const char *what, int idx) {
  char got[256];
  describe(c->L, idx, got, sizeof got);
  problem(c, path, "expected %s, got %s", what, got);
}

static bool is_name(const char *s) {
  if (!isalpha((unsigned char)*s) && *s != '_')
    return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_')
      return false;
  return true;
}

/* prefix + key as Lua would write it: "queue.retry_limit", "queues['a b']",
 * or just the key at the top level. */
static void join_key(char *out, size_t len, const char *prefix,
                     const char *key) {
  if (is_name(key))
    snprintf(out, len, "%s%s%s", prefix, *prefix ? "." : "", key);
  else
    snprintf(out, len, "%s['%s']", prefix, key);
}

/* Levenshtein distance, or SIZE_MAX for strings too long to bother. */
static size_t distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), row[65];
  if (la > 64 || lb > 64)
    return SIZE_MAX;
  for (size_t j = 0; j <= lb; j++)
    row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* The valid key closest to `key` (distance <= 2, or <= 1 when either is at
 * most 3 characters) written into out as a key path; else a key of the same
 * name one table down ("retry_limit" -> "queue.retry_limit"). Returns
 * whether there was a suggestion. */
static bool suggest(const char *key, const char *prefix,
                    const struct field *f, size_t n, char *out, size_t len) {
  const char *best = NULL;
  size_t best_d = SIZE_MAX;
  for (size_t i = 0; i < n; i++) {
    size_t limit = strlen(key) <= 3 || strlen(f[i].name) <= 3 ? 1 : 2;
    size_t d = distance(key, f[i].name);
    if (d <= limit && d < best_d) {
      best = f[i].name;
      best_d = d;
    }
  }
  if (best) {
    join_key(out, len, prefix, best);
    return true;
  }
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; f[i].kind == F_TABLE && j < f[i].nsub; j++)
      if (strcmp(key, f[i].sub[j].name) == 0) {
        char sub[KEY_MAX];
        join_key(sub, sizeof sub, prefix, f[i].name);
        join_key(out, len, sub, key);
        return true;
      }
  return false;
}

/* Reports every key of table t not among f[0..n). */
static void check_keys(struct ctx *c, int t, const char *prefix,
                       const struct field *f, size_t n) {
  lua_State *L = c->L;
  char path[KEY_MAX], hint[KEY_MAX];
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1); /* [key] */
    if (lua_type(L, -1) != LUA_TSTRING) {
      char got[256];
      describe(L, -1, got, sizeof got);
      add_error(&c->eb, "%s: unknown key %s[%s]", c->origin, prefix, got);
      continue;
    }
    const char *key = lua_tostring(L, -1);
    size_t i = 0;
    while (i < n && strcmp(f[i].name, key) != 0)
      i++;
    if (i < n)
      continue;
    join_key(path, sizeof path, prefix, key);
    if (suggest(key, prefix, f, n, hint, sizeof hint))
      add_error(&c->eb, "%s: unknown key \"%s\" (did you mean \"%s\"?)",
                c->origin, path, hint);
    else
      add_error(&c->eb, "%s: unknown key \"%s\"", c->origin, path);
  }
}

/* Reads a Lua integer, or a float with an integral value. */
static bool get_integer(lua_State *L, int idx, long long *out) {
  if (lua_isinteger(L, idx)) {
    *out = (long long)lua_tointeger(L, idx);
    return true;
  }
  if (lua_type(L, idx) != LUA_TNUMBER)
    return false;
  double d = lua_tonumber(L, idx);
  if (!isfinite(d) || d != floor(d) || fabs(d) > 9e18)
    return false;
  *out = (long long)d;
  return true;
}

static void set_int(struct ctx *c, const struct field *f, int v,
                    const char *path, int *dst) {
  long long x;
  char what[96];
  if (f->max == INT_MAX)
    snprintf(what, sizeof what, "an integer >= %d", f->min);
  else
    snprintf(what, sizeof what, "an integer from %d to %d", f->min, f->max);
  if (f->auto_ok) {
    if (lua_type(c->L, v) == LUA_TSTRING &&
        strcmp(lua_tostring(c->L, v), "auto") == 0) {
      *dst = -1;
      return;
    }
    size_t n = strlen(what);
    snprintf(what + n, sizeof what - n, " or \"auto\"");
  }
  if (!get_integer(c->L, v, &x))
    bad(c, path, what, v);
  else if (x < f->min)
    problem(c, path, "expected an integer >= %d, got %lld", f->min, x);
  else if (x > f->max)
    problem(c, path, "expected an integer <= %d, got %lld", f->max, x);
  else
    *dst = (int)x;
}

static void set_num(struct ctx *c, const struct field *f, int v,
                    const char *path, double *dst) {
  const char *op = f->kind == F_POS ? ">" : ">=";
  char what[96];
  snprintf(what, sizeof what, "a number %s 0", op);
  if (lua_type(c->L, v) != LUA_TNUMBER) {
    bad(c, path, what, v);
    return;
  }
  double d = lua_tonumber(c->L, v);
  if (!isfinite(d)) {
    snprintf(what, sizeof what, "a finite number %s 0", op);
    bad(c, path, what, v);
  } else if (d < 0 || (d == 0 && f->kind == F_POS)) {
    bad(c, path, what, v);
  } else if (d > MQ_DURATION_MAX) {
    snprintf(what, sizeof what, "seconds, at most %.0f (100 years)",
             MQ_DURATION_MAX);
    bad(c, path, what, v);
  } else if (f->min > 0 && d < f->min / 1000.0) {
    snprintf(what, sizeof what, "seconds, at least %g", f->min / 1000.0);
    bad(c, path, what, v);
  } else {
    *dst = d;
  }
}

/* A non-empty string without NUL bytes replaces *dst. */
static void set_str(struct ctx *c, int v, const char *path, char **dst) {
  size_t len;
  if (lua_type(c->L, v) != LUA_TSTRING) {
    bad(c, path, "a string", v);
    return;
  }
  const char *s = lua_tolstring(c->L, v, &len);
  if (len == 0 || strlen(s) != len) {
    bad(c, path, len ? "a string without NUL bytes" : "a non-empty string",
        v);
    return;
  }
  free(*dst);
  *dst = NULL;
  *dst = xstrdup(c->L, s);
}

/* The longest schema name: its notification channels ("<schema>_wake",
 * "<schema>_events", "<schema>_schedules") must fit PostgreSQL's 63-byte
 * identifiers. */
#define SCHEMA_MAX (63 - (int)sizeof "_schedules" + 1)

static bool is_identifier(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > SCHEMA_MAX || !(islower((unsigned char)*s) || *s == '_'))
    return false;
  for (; *s; s++)
    if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) ||
          *s == '_'))
      return false;
  return true;
}

static void set_ident(struct ctx *c, int v, const char *path, char **dst) {
  if (lua_type(c->L, v) != LUA_TSTRING || !is_identifier(lua_tostring(c->L, v)))
    bad(c, path,
        "a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 53 "
        "characters, so that its notification channel <schema>_schedules "
        "fits PostgreSQL's 63)",
        v);
  else
    set_str(c, v, path, dst);
}

static void set_level(struct ctx *c, int v, const char *path, int *dst) {
  int level = lua_type(c->L, v) == LUA_TSTRING
                  ? mq_log_level_parse(lua_tostring(c->L, v))
                  : -1;
  if (level < 0)
    bad(c, path, "one of \"debug\", \"info\", \"warn\", \"error\"", v);
  else
    *dst = level;
}

static void set_json(struct ctx *c, int v, const char *path, char **dst) {
  char jerr[256];
  if (!lua_istable(c->L, v)) {
    bad(c, path, "a table", v);
    return;
  }
  char *json = mq_json_encode(c->L, v, path, NULL, jerr, sizeof jerr);
  if (!json) {
    add_error(&c->eb, "%s: %s", c->origin, jerr);
    return;
  }
  free(*dst);
  *dst = json;
}

/* A backfill as text: a string as it is, a whole number of seconds >= 0
 * written out; what it says is checked with the rest of its schedule. */
static void set_backfill(struct ctx *c, int v, const char *path, char **dst) {
  long long secs;
  if (lua_type(c->L, v) == LUA_TSTRING) {
    set_str(c, v, path, dst);
  } else if (get_integer(c->L, v, &secs) && secs >= 0) {
    char text[32];
    snprintf(text, sizeof text, "%lld", secs);
    free(*dst);
    *dst = NULL;
    *dst = xstrdup(c->L, text);
  } else {
    bad(c, path,
        "a duration (\"30m\", \"1h\"), whole seconds >= 0 or a count "
        "(\"5 slots\")",
        v);
  }
}

/* Checks the value at v (not nil) against field f; stores it at base. */
static void apply(struct ctx *c, const struct field *f, int v,
                  const char *path, char *base) {
  void *dst = base + f->off;
  switch (f->kind) {
  case F_INT: set_int(c, f, v, path, dst); break;
  case F_POS:
  case F_NONNEG: set_num(c, f, v, path, dst); break;
  case F_BOOL:
    if (lua_type(c->L, v) == LUA_TBOOLEAN)
      *(bool *)dst = lua_toboolean(c->L, v);
    else
      bad(c, path, "a boolean", v);
    break;
  case F_STR: set_str(c, v, path, dst); break;
  case F_IDENT: set_ident(c, v, path, dst); break;
  case F_LEVEL: set_level(c, v, path, dst); break;
  case F_JSON: set_json(c, v, path, dst); break;
  case F_BACKFILL: set_backfill(c, v, path, dst); break;
  case F_TABLE:
    if (lua_istable(c->L, v))
      check_fields(c, v, path, f->sub, f->nsub, dst);
    else
      bad(c, path, "a table", v);
    break;
  case F_FUNC: f->fn(c, v, path); break;
  }
}

/* Checks table t against f[0..n): unknown keys, then each field in order.
 * `base` is the C struct the fields' offsets are from. */
static void check_fields(struct ctx *c, int t, const char *prefix,
                         const struct field *f, size_t n, char *base) {
  lua_State *L = c->L;
  char path[KEY_MAX];
  luaL_checkstack(L, 8, NULL);
  check_keys(c, t, prefix, f, n);
  for (size_t i = 0; i < n; i++) {
    join_key(path, sizeof path, prefix, f[i].name);
    lua_pushstring(L, f[i].name);
    lua_rawget(L, t);
    if (!lua_isnil(L, -1))
      apply(c, f + i, lua_gettop(L), path, base);
    else if (f[i].required)
      bad(c, path, "a string", -1); /* only strings are required */
    lua_pop(L, 1);
  }
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const struct mq_queue_config *)a)->name,
                ((const struct mq_queue_config *)b)->name);
}

/* Fills cfg->queues with the string keys of t, each with a copy of the
 * `queue` defaults, sorted by name; reports other keys. */
static void collect_queues(struct ctx *c, int t, const char *path) {
  lua_State *L = c->L;
  struct mq_config *cfg = c->cfg;
  size_t n = 0;
  for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1))
    n++;
  cfg->queues = xcalloc(L, n, sizeof *cfg->queues);
  for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_rawlen(L, -2) == 0 ||
        lua_rawlen(L, -2) > QUEUE_NAME_MAX) {
      bad(c, path, "queue names of 1 to 255 bytes as keys", -2);
      continue;
    }
    struct mq_queue_config *q = &cfg->queues[cfg->nqueues++];
    q->options = cfg->queue;
    q->options.dead_letter = NULL;
    q->name = xstrdup(L, lua_tostring(L, -2));
    q->options.dead_letter = xstrdup(L, cfg->queue.dead_letter);
  }
  if (cfg->nqueues > 1)
    qsort(cfg->queues, cfg->nqueues, sizeof *cfg->queues, by_name);
}

/* `queues`: name -> queue options, each merged over `queue`. */
static void read_queues(struct ctx *c, int t, const char *path) {
  lua_State *L = c->L;
  char qpath[KEY_MAX];
  if (!lua_istable(L, t)) {
    bad(c, path, "a table of queue name = { options }", t);
    return;
  }
  collect_queues(c, t, path);
  for (size_t i = 0; i < c->cfg->nqueues; i++) {
    struct mq_queue_config *q = &c->cfg->queues[i];
    join_key(qpath, sizeof qpath, path, q->name);
    lua_pushstring(L, q->name);
    lua_rawget(L, t);
    if (lua_istable(L, -1))
      check_fields(c, lua_gettop(L), qpath, queue_fields,
                   COUNT(queue_fields), (char *)&q->options);
    else
      bad(c, qpath, "a table", -1);
    lua_pop(L, 1);
  }
}

/* Reports keys of t other than 1..n. */
static void check_array_keys(struct ctx *c, int t, const char *path,
                             size_t n) {
  lua_State *L = c->L;
  for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1)) {
    lua_Integer k = lua_isinteger(L, -2) ? lua_tointeger(L, -2) : 0;
    if (k < 1 || (lua_Unsigned)k > n) {
      char got[256];
      describe(L, -2, got, sizeof got);
      problem(c, path, "expected an array of tables, found key %s", got);
    }
  }
}

static void schedule_defaults(struct ctx *c, struct mq_schedule_config *s) {
  if (!s->tz)
    s->tz = xstrdup(c->L, "UTC");
  if (!s->job)
    s->job = xstrdup(c->L, s->name);
  if (!s->data_json)
    s->data_json = xstrdup(c->L, "{}");
  if (!s->options_json)
    s->options_json = xstrdup(c->L, "{}");
}

/* Reports the first problem mq_config_check_schedule finds in s at its
 * key: "schedules[2].cron: \"61 * * * *\": minute field: ...". */
static void check_schedule(struct ctx *c, const struct mq_schedule_config *s,
                           const char *ipath) {
  char msg[512], path[KEY_MAX];
  const char *key = mq_config_check_schedule(s, msg, sizeof msg);
  if (key) {
    join_key(path, sizeof path, ipath, key);
    problem(c, path, "%s", msg);
  }
}

/* `schedules`: an array of { name, cron, tz, job, data, options,
 * backfill }. */
static void read_schedules(struct ctx *c, int t, const char *path) {
  lua_State *L = c->L;
  char ipath[KEY_MAX];
  if (!lua_istable(L, t)) {
    bad(c, path, "an array of tables", t);
    return;
  }
  size_t n = (size_t)lua_rawlen(L, t);
  check_array_keys(c, t, path, n);
  c->cfg->schedules = xcalloc(L, n, sizeof *c->cfg->schedules);
  c->cfg->nschedules = n;
  for (size_t i = 0; i < n; i++) {
    struct mq_schedule_config *s = &c->cfg->schedules[i];
    snprintf(ipath, sizeof ipath, "%s[%zu]", path, i + 1);
    lua_rawgeti(L, t, (lua_Integer)i + 1);
    if (lua_istable(L, -1)) {
      int before = c->eb.count;
      check_fields(c, lua_gettop(L), ipath, schedule_fields,
                   COUNT(schedule_fields), (char *)s);
      schedule_defaults(c, s);
      if (c->eb.count == before)
        check_schedule(c, s, ipath);
    } else {
      bad(c, ipath, "a table", -1);
    }
    lua_pop(L, 1);
  }
}

/* Two schedules with one name would fire as one; report the later ones. */
static void check_duplicates(struct ctx *c) {
  const struct mq_schedule_config *s = c->cfg->schedules;
  char path[KEY_MAX];
  for (size_t i = 1; i < c->cfg->nschedules; i++)
    for (size_t j = 0; s[i].name && j < i; j++)
      if (s[j].name && strcmp(s[i].name, s[j].name) == 0) {
        snprintf(path, sizeof path, "schedules[%zu].name", i + 1);
        problem(c, path, "duplicate schedule name \"%s\" (also schedules[%zu])",
                s[i].name, j + 1);
        break;
      }
}

/* `http`: max_body's default, then the table as a whole. */
static void check_http(struct ctx *c) {
  struct mq_config *cfg = c->cfg;
  if (cfg->http.max_body < 0)
    cfg->http.max_body = cfg->max_payload > INT_MAX - HTTP_BODY_EXTRA
                             ? INT_MAX
                             : cfg->max_payload + HTTP_BODY_EXTRA;
  char err[512];
  if (mq_config_check_http(cfg, err, sizeof err) != 0)
    add_error(&c->eb, "%s: %s", c->origin, err);
}

int mq_config_parse_listen(const char *listen, struct sockaddr *addr,
                           unsigned *addrlen, bool *loopback, char *err,
                           size_t errlen) {
  const char *colon = strrchr(listen, ':');
  char host[64];
  size_t hn = colon ? (size_t)(colon - listen) : 0;
  if (!colon || hn == 0 || hn >= sizeof host) {
    snprintf(err, errlen, "expected \"host:port\", got \"%.80s\"", listen);
    return -1;
  }
  memcpy(host, listen, hn);
  host[hn] = '\0';
  char *end;
  errno = 0;
  long port = strtol(colon + 1, &end, 10);
  if (!isdigit((unsigned char)colon[1]) || *end || port < 1 || port > 65535) {
    snprintf(err, errlen, "port must be 1 to 65535, got \"%.20s\"", colon + 1);
    return -1;
  }
  if (host[0] == '[' && host[hn - 1] == ']') {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)addr;
    host[hn - 1] = '\0';
    memset(a, 0, sizeof *a);
    if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1) {
      a->sin6_family = AF_INET6;
      a->sin6_port = htons((uint16_t)port);
      *addrlen = sizeof *a;
      *loopback = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
      return 0;
    }
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)addr;
    memset(a, 0, sizeof *a);
    if (strcmp(host, "localhost") == 0)
      snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &a->sin_addr) == 1) {
      a->sin_family = AF_INET;
      a->sin_port = htons((uint16_t)port);
      *addrlen = sizeof *a;
      *loopback = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
      return 0;
    }
  }
  snprintf(err, errlen,
           "host must be an IP address (IPv6 in brackets) or \"localhost\", "
           "got \"%.*s\"", (int)hn, listen);
  return -1;
}

int mq_config_check_http(const struct mq_config *cfg, char *err,
                         size_t errlen) {
  if (!cfg->http.listen)
    return 0;
  struct sockaddr_in6 addr;
  unsigned len;
  bool loopback;
  char why[256];
  if (mq_config_parse_listen(cfg->http.listen, (struct sockaddr *)&addr, &len,
                             &loopback, why, sizeof why) != 0) {
    snprintf(err, errlen, "http.listen: %s", why);
    return -1;
  }
  if (cfg->http.token && strlen(cfg->http.token) < HTTP_TOKEN_MIN) {
    snprintf(err, errlen, "http.token: expected at least %d bytes, got %zu",
             HTTP_TOKEN_MIN, strlen(cfg->http.token));
    return -1;
  }
  if (!loopback && !cfg->http.token) {
    snprintf(err, errlen,
             "http.token: required when http.listen (\"%s\") is not a "
             "loopback address",
             cfg->http.listen);
    return -1;
  }
  return 0;
}

/* Reads a backfill ("1h", "3600", "5 slots"; NULL, "" or "0": none) as
 * sql/011_schedules.sql's parse_backfill does. Returns 0, or -1 with a
 * message in err. */
static int parse_backfill(const char *text, char *err, size_t errlen) {
  if (!text || !*text || strcmp(text, "0") == 0)
    return 0;
  const char *s = text;
  while (isspace((unsigned char)*s))
    s++;
  const char *digits = s;
  long long n = 0;
  while (isdigit((unsigned char)*s) && s - digits < 10)
    n = n * 10 + (*s++ - '0');
  size_t nd = (size_t)(s - digits);
  const char *unit = s;
  while (isspace((unsigned char)*unit))
    unit++;
  size_t rest = strlen(unit);
  while (rest > 0 && isspace((unsigned char)unit[rest - 1]))
    rest--;
  if (nd >= 1 && nd <= 4 &&
      ((rest == 4 && strncmp(unit, "slot", 4) == 0) ||
       (rest == 5 && strncmp(unit, "slots", 5) == 0))) {
    if (n >= 1 && n <= BACKFILL_SLOTS_MAX)
      return 0;
    snprintf(err, errlen, "a count of slots must be 1 to %d, got %lld",
             BACKFILL_SLOTS_MAX, n);
    return -1;
  }
  long long total = n;
  if (digits != text || nd == 0 || nd > 9 || *s != '\0') {
    char every[64];
    struct mq_cron cron;
    bool plain = strlen(text) < 40 && !strpbrk(text, " \t\n\r\v\f");
    snprintf(every, sizeof every, "@every %s", text);
    if (!plain || mq_cron_parse(every, &cron, NULL, 0) != 0) {
      snprintf(err, errlen,
               "expected a duration (\"30m\", \"1h\", \"1d12h\"), seconds or "
               "a count (\"5 slots\"), got \"%.60s\"",
               text);
      return -1;
    }
    total = cron.every;
  }
  if (total < 1 || total > BACKFILL_SECONDS_MAX) {
    snprintf(err, errlen, "a duration must be 1s to 366d, got \"%.60s\"",
             text);
    return -1;
  }
  return 0;
}

const char *mq_config_check_schedule(const struct mq_schedule_config *s,
                                     char *err, size_t errlen) {
  size_t n = s->name ? strlen(s->name) : 0;
  if (n == 0 || n > SCHEDULE_NAME_MAX) {
    snprintf(err, errlen, "a schedule name must be 1 to %d bytes, got %zu",
             SCHEDULE_NAME_MAX, n);
    return "name";
  }
  for (const unsigned char *p = (const unsigned char *)s->name; *p; p++)
    if (*p < 0x20 || *p == 0x7f) {
      snprintf(err, errlen, "a schedule name must not contain control "
               "characters (a newline, a tab, ...)");
      return "name";
    }
  if (s->job && !*s->job) {
    snprintf(err, errlen, "job must be a job name (leave it out to enqueue "
             "the schedule's name)");
    return "job";
  }
  if (s->tz && !*s->tz) {
    snprintf(err, errlen, "tz must be a time zone name such as "
             "\"Europe/Berlin\" (leave it out for UTC)");
    return "tz";
  }
  const char *job = s->job ? s->job : s->name;
  if (strlen(job) > MQ_QUEUE_NAME_MAX) {
    snprintf(err, errlen, "job name is %zu bytes, the limit is %d",
             strlen(job), MQ_QUEUE_NAME_MAX);
    return "job";
  }
  struct mq_cron cron;
  if (mq_cron_parse(s->cron, &cron, err, errlen) != 0)
    return "cron";
  int offset;
  double now = (double)time(NULL), next;
  if (mq_cron_offset(s->tz, now, &offset, err, errlen) != 0)
    return "tz";
  if (mq_cron_next(&cron, s->tz, now, &next, err, errlen) != 0)
    return "cron";
  if (parse_backfill(s->backfill, err, errlen) != 0)
    return "backfill";
  return NULL;
}
