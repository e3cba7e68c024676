/* http_api.c -- the JSON API under /api; see http_api.h and docs/http.md.
 *
 * A route handler reads its request (path parameters, query arguments,
 * a JSON body read against a table of fields), starts one call of the C
 * API with the request as its callback data and returns; the callback
 * replies. A call that cannot start replies at once. Status codes: 400 bad
 * input (the message names it), 404 no such job or run, 409 a singleton
 * key or a run id taken, 503 the database failed or is unreachable.
 */
#include "http_api.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <libpq-fe.h>

#include "buf.h"
#include "event_groups.h"
#include "json.h"
#include "log.h"
#include "lua_host.h"

#define LIST_MAX 10000   /* jobs a list returns at most */
#define APPEND_MAX 1000  /* events one append takes at most */
#define TYPES_MAX 64     /* types an event query filters on */

struct mq_http_api {
  const struct mq_config *cfg;
  mq_pg *pg;
  mq_queue *queue;
  mq_events *events;
  mq_schedules *schedules;
  mq_http_counts *counts;
  lua_State *L;        /* decodes request bodies (json.c) */
  int st_start_flow, st_get_flow, st_list_flows, st_list_runs;
};

static void reply_list(mq_http_req *req, int status, const char *key, int n,
                       char *(*item)(const void *ctx, int i), const void *ctx);

/* ---- request bodies ------------------------------------------------------ */

enum kind {
  K_STRING, /* a string without NUL bytes */
  K_JSON,   /* any JSON value, re-encoded (json.c) */
  K_LIST,   /* an array; each element encoded and checked on its own */
  K_EVENTS  /* an array of events {type, data, run_id} */
};

struct field {
  const char *name;
  enum kind kind;
  bool required;
};

/* A field's value: text malloc'd (K_STRING, K_JSON, K_LIST: the array's
 * JSON), or events. */
struct value {
  char *text;
  struct mq_event_input *events; /* K_EVENTS: n of them, strings owned */
  int n;
  int count; /* K_LIST: elements */
};

struct body {
  mq_http_api *api;
  const char *text;
  size_t len;
  const struct field *fields;
  int nfields;
  struct value *out;
  char err[512]; /* set: the request is refused with it */
};

static const struct field event_fields[] = {
    {"type", K_STRING, true}, {"data", K_JSON, false}, {"run_id", K_STRING, false}};

static void values_free(struct value *v, int n) {
  for (int i = 0; i < n; i++) {
    free(v[i].text);
    for (int j = 0; j < v[i].n; j++) {
      free((char *)v[i].events[j].type);
      free((char *)v[i].events[j].data);
      free((char *)v[i].events[j].run_id);
    }
    free(v[i].events);
  }
}

/* Lists the names of fields[0..n) as "a, b, c". */
static void field_names(const struct field *f, int n, char *out, size_t len) {
  size_t o = 0;
  out[0] = '\0';
  for (int i = 0; i < n && o < len; i++)
    o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "", f[i].name);
}

static char *xstrdup(lua_State *L, const char *s) {
  char *d = strdup(s);
  if (!d)
    luaL_error(L, "out of memory");
  return d;
}

static bool is_array(lua_State *L, int idx) {
  if (!lua_istable(L, idx))
    return false;
  if (lua_rawlen(L, idx) > 0)
    return true;
  if (!lua_getmetatable(L, idx))
    return false;
  mq_json_push_array_mt(L);
  bool array = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return array;
}

static int read_object(lua_State *L, struct body *b, int t, const char *what,
                       const struct field *f, int n, struct value *out);

/* K_LIST: the array at idx as JSON text, each element at most max_payload
 * bytes ("list[3] is ... bytes"). */
static int read_list(lua_State *L, struct body *b, int idx, const char *name,
                     struct value *v) {
  int max = b->api->cfg->max_payload;
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (mq_buf_add(&buf, &len, &cap, "[", 1) != 0)
    return luaL_error(L, "out of memory");
  v->text = buf; /* owned from here on, freed with the values */
  for (lua_Integer i = 1; i <= n; i++) {
    char root[160];
    size_t elen;
    snprintf(root, sizeof root, "%s[%lld]", name, (long long)i);
    lua_rawgeti(L, idx, i);
    char *json = mq_json_encode_stored(L, -1, root, &elen, b->err, sizeof b->err);
    lua_pop(L, 1);
    if (!json)
      return -1;
    if (elen > (size_t)max) {
      snprintf(b->err, sizeof b->err, "%s is %zu bytes, more than max_payload (%d)",
               root, elen, max);
      free(json);
      return -1;
    }
    int rc = (i > 1 ? mq_buf_add(&buf, &len, &cap, ",", 1) : 0) |
             mq_buf_add(&buf, &len, &cap, json, elen);
    free(json);
    v->text = buf;
    if (rc != 0 || !buf)
      return luaL_error(L, "out of memory");
  }
  if (mq_buf_add(&buf, &len, &cap, "]", 1) != 0 || !buf)
    return luaL_error(L, "out of memory");
  v->text = buf;
  v->count = (int)n;
  return 0;
}

/* K_EVENTS: each element an object {type, data, run_id}. */
static int read_events(lua_State *L, struct body *b, int idx, const char *name,
                       struct value *v) {
  int n = (int)lua_rawlen(L, idx);
  if (n < 1 || n > APPEND_MAX) {
    snprintf(b->err, sizeof b->err, "%s must hold 1 to %d events", name,
             APPEND_MAX);
    return -1;
  }
  if (!(v->events = calloc((size_t)n, sizeof *v->events)))
    return luaL_error(L, "out of memory");
  for (int i = 0; i < n; i++) {
    char what[160];
    struct value ev[3] = {{0}};
    snprintf(what, sizeof what, "%s[%d]", name, i + 1);
    lua_rawgeti(L, idx, i + 1);
    int rc = read_object(L, b, lua_gettop(L), what, event_fields, 3, ev);
    lua_pop(L, 1);
    v->events[i].type = ev[0].text;
    v->events[i].data = ev[1].text;
    v->events[i].run_id = ev[2].text;
    v->n = i + 1;
    if (rc != 0)
      return -1;
  }
  return 0;
}

/* Reads the value at idx as field f into v. */
static int read_value(lua_State *L, struct body *b, int idx, const char *path,
                      const struct field *f, struct value *v) {
  size_t len;
  switch (f->kind) {
  case K_STRING:
    if (lua_type(L, idx) != LUA_TSTRING) {
      snprintf(b->err, sizeof b->err, "%s must be a string", path);
      return -1;
    }
    const char *s = lua_tolstring(L, idx, &len);
    if (strlen(s) != len) {
      snprintf(b->err, sizeof b->err, "%s holds a NUL character", path);
      return -1;
    }
    v->text = xstrdup(L, s);
    return 0;
  case K_JSON:
    v->text = mq_json_encode_stored(L, idx, path, NULL, b->err, sizeof b->err);
    return v->text ? 0 : -1;
  case K_LIST:
  case K_EVENTS:
    if (!is_array(L, idx)) {
      snprintf(b->err, sizeof b->err, "%s must be an array", path);
      return -1;
    }
    return f->kind == K_LIST ? read_list(L, b, idx, path, v)
                             : read_events(L, b, idx, path, v);
  }
  return -1;
}

/* Reads the object at t (what: "events[2]"; NULL: the request body)
 * against f[0..n): unknown keys and missing required ones are refused. */
static int read_object(lua_State *L, struct body *b, int t, const char *what,
                       const struct field *f, int n, struct value *out) {
  char names[256], path[128];
  const char *label = what ? what : "the request body";
  if (!lua_istable(L, t) || is_array(L, t)) {
    snprintf(b->err, sizeof b->err, "%s must be a JSON object", label);
    return -1;
  }
  field_names(f, n, names, sizeof names);
  for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1)) {
    int i = 0;
    const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    while (i < n && strcmp(f[i].name, key) != 0)
      i++;
    if (i == n) {
      snprintf(b->err, sizeof b->err, "%s: unknown key \"%.100s\" (known: %s)",
               label, key, names);
      return -1;
    }
  }
  for (int i = 0; i < n; i++) {
    if (what)
      snprintf(path, sizeof path, "%s.%s", what, f[i].name);
    else
      snprintf(path, sizeof path, "%s", f[i].name);
    lua_pushstring(L, f[i].name);
    if (lua_rawget(L, t) == LUA_TNIL) {
      lua_pop(L, 1);
      if (f[i].required) {
        snprintf(b->err, sizeof b->err, "%s is required", path);
        return -1;
      }
      continue;
    }
    int rc = read_value(L, b, lua_gettop(L), path, f + i, &out[i]);
    lua_pop(L, 1);
    if (rc != 0)
      return -1;
  }
  return 0;
}

/* [body] -> []: decodes and reads the body; problems go to b->err. */
static int read_body_cb(lua_State *L) {
  struct body *b = lua_touserdata(L, 1);
  char err[400];
  const char *text = b->len ? b->text : "{}";
  if (mq_json_decode_unique(L, text, b->len ? b->len : 2, err,
                            sizeof err) != 0) {
    snprintf(b->err, sizeof b->err, "the request body is not JSON: %s", err);
    return 0;
  }
  read_object(L, b, lua_gettop(L), NULL, b->fields, b->nfields, b->out);
  return 0;
}

/* Reads req's body against f[0..n) into out (zeroed by the caller; freed
 * with values_free). Returns 0, or -1 after replying 400 (500 when out of
 * memory). */
static int read_body(mq_http_api *api, mq_http_req *req, const struct field *f,
                     int n, struct value *out) {
  struct body b = {.api = api, .fields = f, .nfields = n, .out = out};
  b.text = mq_http_body(req, &b.len);
  int status = mq_lua_protect(api->L, read_body_cb, &b, 0);
  if (status != LUA_OK) {
    mq_http_reply_error(req, 500, "%s", lua_tostring(api->L, -1));
    lua_settop(api->L, 0);
    values_free(out, n);
    return -1;
  }
  lua_settop(api->L, 0);
  if (b.err[0]) {
    mq_http_reply_error(req, 400, "%s", b.err);
    values_free(out, n);
    return -1;
  }
  return 0;
}

/* ---- query arguments ------------------------------------------------------ */

struct args_check {
  mq_http_req *req;
  const char *const *known;
};

static void unknown_arg(void *data, const char *name) {
  struct args_check *a = data;
  char names[256];
  size_t o = 0;
  names[0] = '\0';
  for (const char *const *k = a->known; *k && o < sizeof names; k++)
    o += (size_t)snprintf(names + o, sizeof names - o, "%s%s",
                          k == a->known ? "" : ", ", *k);
  mq_http_reply_error(a->req, 400, "unknown query argument \"%.100s\" (known: %s)",
                      name, *names ? names : "none");
}

/* Refuses (400) a query argument not among known (NULL-terminated).
 * Returns 0, or -1 after replying. */
static int only_args(mq_http_req *req, const char *const *known) {
  struct args_check a = {req, known};
  return mq_http_unknown_args(req, known, unknown_arg, &a) ? -1 : 0;
}

/* Reads query argument `name` as an integer in [min, max] into *out (left
 * as it is when absent). Returns 0, or -1 after replying 400. */
static int int_arg(mq_http_req *req, const char *name, long long min,
                   long long max, long long *out) {
  const char *s = mq_http_arg(req, name);
  if (!s)
    return 0;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno != 0 || v < min || v > max) {
    mq_http_reply_error(req, 400, "%s must be an integer from %lld to %lld, "
                        "got \"%.40s\"", name, min, max, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* Path parameter 0 as a job id; -1 after replying 400. */
static long long job_id(mq_http_req *req) {
  const char *s = mq_http_param(req, 0);
  char *end;
  errno = 0;
  long long id = strtoll(s, &end, 10);
  if (end == s || *end || errno != 0 || id < 1) {
    mq_http_reply_error(req, 400, "a job id is a positive integer, got \"%.40s\"",
                        s);
    return -1;
  }
  return id;
}

/* ---- replies ------------------------------------------------------------ */

static int queue_status(int status) {
  return status == MQ_QUEUE_EINVAL      ? 400
         : status == MQ_QUEUE_EREFUSED  ? 409
                                        : 503;
}

/* Replies {"<key>": <json>} with `status`. */
static void reply_wrapped(mq_http_req *req, int status, const char *key,
                          const char *json) {
  char jerr[128];
  mq_json_object *o = mq_json_object_new();
  mq_json_object_raw(o, key, json);
  char *text = mq_json_object_finish(o, jerr, sizeof jerr);
  if (text)
    mq_http_reply_json(req, status, text);
  else
    mq_http_reply_error(req, 500, "%s", jerr);
  free(text);
}

static void reply_pool_closed(mq_http_req *req) {
  mq_http_reply_error(req, 503, "the connection pool is closed");
}

/* A queue call's JSON result as it is. */
static void json_done(int status, const char *error, const char *json,
                      void *data) {
  if (status < 0)
    mq_http_reply_error(data, queue_status(status), "%s", error);
  else
    mq_http_reply_json(data, 200, json);
}

/* ---- jobs --------------------------------------------------------------- */

/* A change of jobs or queues went through: counts read from now on show
 * it. */
static void counts_changed(mq_http_req *req) {
  mq_http_api *api = mq_http_route_data(req);
  mq_http_counts_changed(api->counts);
}

static void sent(int status, const char *error, long long id, void *data) {
  char json[48];
  if (status != MQ_QUEUE_OK) {
    mq_http_reply_error(data, queue_status(status), "%s", error);
    return;
  }
  counts_changed(data);
  snprintf(json, sizeof json, "{\"id\":%lld}", id);
  mq_http_reply_json(data, 201, json);
}

/* POST /api/jobs {name, data, options} -> 201 {id} */
static void h_send(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const struct field f[] = {
      {"name", K_STRING, true}, {"data", K_JSON, false}, {"options", K_JSON, false}};
  struct value v[3] = {{0}};
  if (read_body(api, req, f, 3, v) != 0)
    return;
  char err[512];
  int rc = mq_queue_send(api->queue, v[0].text, v[1].text, v[2].text, sent,
                         req, err, sizeof err);
  if (rc != 0)
    mq_http_reply_error(req, queue_status(rc), "%s", err);
  values_free(v, 3);
}

struct send_many {
  mq_http_req *req;
  int n; /* jobs asked for */
};

/* {"ids": [...]} with one entry per job asked for: its id, or null when
 * it was not created. Only the singleton index makes send_many skip a job,
 * and its options (the key with them) are every job's: the first job was
 * created and the others are skipped, or the key was taken and none is.
 * So the k ids created (0 or 1 with a key) are the first k jobs'. None
 * created is 409, as for one job. */
static void sent_many(int status, const char *error, const char *json,
                      void *data) {
  struct send_many *c = data;
  mq_http_req *req = c->req;
  int n = c->n;
  free(c);
  if (status < 0) {
    mq_http_reply_error(req, queue_status(status), "%s", error);
    return;
  }
  char *out = NULL, jerr[128];
  size_t len = 0, cap = 0;
  int k = 0, rc = mq_buf_add(&out, &len, &cap, "[", 1);
  for (const char *p = json; rc == 0 && k < n; k++) {
    char *end;
    p += strcspn(p, "0123456789]");
    long long id = *p && *p != ']' ? strtoll(p, &end, 10) : 0;
    if (!id)
      break;
    char item[24];
    snprintf(item, sizeof item, "%s%lld", k ? "," : "", id);
    rc = mq_buf_add(&out, &len, &cap, item, strlen(item));
    p = end;
  }
  int created = k;
  if (created > 0)
    counts_changed(req);
  for (; rc == 0 && k < n; k++)
    rc = mq_buf_add(&out, &len, &cap, k ? ",null" : "null", k ? 5 : 4);
  if (rc != 0 || mq_buf_add(&out, &len, &cap, "]", 1) != 0) {
    mq_http_reply_error(req, 500, "out of memory");
  } else if (created == 0 && n > 0) {
    mq_json_object *o = mq_json_object_new();
    mq_json_object_string(o, "error", "the singleton_key is taken: no job "
                          "was created");
    mq_json_object_raw(o, "ids", out);
    char *text = mq_json_object_finish(o, jerr, sizeof jerr);
    mq_http_reply_json(req, 409, text ? text : "{}");
    free(text);
  } else {
    reply_wrapped(req, 201, "ids", out);
  }
  free(out);
}

/* POST /api/jobs/batch {name, list, options} -> 201 {ids} */
static void h_send_many(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const struct field f[] = {
      {"name", K_STRING, true}, {"list", K_LIST, true}, {"options", K_JSON, false}};
  struct value v[3] = {{0}};
  if (read_body(api, req, f, 3, v) != 0)
    return;
  char err[512];
  struct send_many *c = malloc(sizeof *c);
  if (!c) {
    mq_http_reply_error(req, 500, "out of memory");
    values_free(v, 3);
    return;
  }
  *c = (struct send_many){req, v[1].count};
  int rc = mq_queue_send_many(api->queue, v[0].text, v[1].text, v[2].text,
                              sent_many, c, err, sizeof err);
  if (rc != 0) {
    free(c);
    mq_http_reply_error(req, queue_status(rc), "%s", err);
  }
  values_free(v, 3);
}

static void got_job(int status, const char *error, const char *json,
                    void *data) {
  mq_http_req *req = data;
  if (status == 0 && strcmp(json, "null") == 0)
    mq_http_reply_error(req, 404, "job %s not found", mq_http_param(req, 0));
  else
    json_done(status, error, json, req);
}

/* GET /api/jobs/{id} -> the job */
static void h_get(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {NULL};
  if (only_args(req, known) != 0 || job_id(req) < 0)
    return;
  const char *a[5] = {mq_http_param(req, 0)};
  if (mq_queue_call(api->queue, MQ_QUEUE_GET, a, got_job, req) != 0)
    reply_pool_closed(req);
}

/* [json] -> [count, last id or nil]: what a page of jobs holds. */
static int page_cb(lua_State *L) {
  const char *json = lua_touserdata(L, 1);
  char err[256];
  if (mq_json_decode(L, json, strlen(json), err, sizeof err) != 0)
    return luaL_error(L, "%s", err);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  lua_pushinteger(L, n);
  if (n > 0) {
    lua_rawgeti(L, -2, n);
    lua_getfield(L, -1, "id");
    lua_remove(L, -2);
  } else {
    lua_pushnil(L);
  }
  return 2;
}

struct list_call {
  mq_http_req *req;
  mq_http_api *api;
  long long limit;
};

static void listed(int status, const char *error, const char *json,
                   void *data) {
  struct list_call *c = data;
  mq_http_req *req = c->req;
  lua_State *L = c->api->L;
  long long limit = c->limit;
  free(c);
  if (status < 0) {
    mq_http_reply_error(req, queue_status(status), "%s", error);
    return;
  }
  /* A full page has a next one (maybe empty): after its last job. */
  char jerr[128];
  mq_json_object *o = mq_json_object_new();
  mq_json_object_raw(o, "jobs", json);
  if (mq_lua_protect(L, page_cb, (void *)json, 2) == LUA_OK &&
      lua_tointeger(L, -2) == limit && lua_isinteger(L, -1))
    mq_json_object_int(o, "next", lua_tointeger(L, -1));
  else
    mq_json_object_null(o, "next");
  lua_settop(L, 0);
  char *text = mq_json_object_finish(o, jerr, sizeof jerr);
  if (text)
    mq_http_reply_json(req, 200, text);
  else
    mq_http_reply_error(req, 500, "%s", jerr);
  free(text);
}

/* GET /api/jobs?queue=Q&state=S&limit=N&after=ID&order=newest|oldest ->
 * {jobs, next} */
static void h_list(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {"queue", "state", "limit", "after",
                                      "order", NULL};
  long long limit = 100, after = 0;
  if (only_args(req, known) != 0 ||
      int_arg(req, "limit", 1, LIST_MAX, &limit) != 0 ||
      int_arg(req, "after", 1, INT64_MAX, &after) != 0)
    return;
  const char *queue = mq_http_arg(req, "queue");
  const char *order = mq_http_arg(req, "order");
  if (!queue || !*queue) {
    mq_http_reply_error(req, 400, "queue is required");
    return;
  }
  if (order && strcmp(order, "newest") != 0 && strcmp(order, "oldest") != 0) {
    mq_http_reply_error(req, 400, "order must be \"newest\" or \"oldest\"");
    return;
  }
  char lim[24], aft[24];
  snprintf(lim, sizeof lim, "%lld", limit);
  snprintf(aft, sizeof aft, "%lld", after);
  const char *a[5] = {queue, mq_http_arg(req, "state"), lim,
                      after ? aft : NULL, order ? order : "newest"};
  struct list_call *c = malloc(sizeof *c);
  if (!c) {
    mq_http_reply_error(req, 500, "out of memory");
    return;
  }
  *c = (struct list_call){req, api, limit};
  if (mq_queue_call(api->queue, MQ_QUEUE_LIST, a, listed, c) != 0) {
    free(c);
    reply_pool_closed(req);
  }
}

/* cancel and retry: true, or 404 naming what the job must be. */
static void changed(int status, const char *error, const char *json,
                    void *data, const char *key, const char *must) {
  mq_http_req *req = data;
  char out[48];
  if (status < 0) {
    mq_http_reply_error(req, queue_status(status), "%s", error);
  } else if (strcmp(json, "true") != 0) {
    mq_http_reply_error(req, 404, "job %s not found %s", mq_http_param(req, 0),
                        must);
  } else {
    counts_changed(req);
    snprintf(out, sizeof out, "{\"%s\":true}", key);
    mq_http_reply_json(req, 200, out);
  }
}

static void cancelled(int status, const char *error, const char *json,
                      void *data) {
  changed(status, error, json, data, "cancelled", "among waiting or active jobs");
}

static void retried(int status, const char *error, const char *json,
                    void *data) {
  changed(status, error, json, data, "retried", "among failed or cancelled jobs");
}

static void job_op(mq_http_req *req, mq_http_api *api, enum mq_queue_op op,
                   mq_queue_json_cb cb) {
  static const char *const known[] = {NULL};
  if (only_args(req, known) != 0 || job_id(req) < 0)
    return;
  const char *a[5] = {mq_http_param(req, 0)};
  if (mq_queue_call(api->queue, op, a, cb, req) != 0)
    reply_pool_closed(req);
}

/* POST /api/jobs/{id}/cancel -> {cancelled: true} */
static void h_cancel(mq_http_req *req, void *data) {
  job_op(req, data, MQ_QUEUE_CANCEL, cancelled);
}

/* POST /api/jobs/{id}/retry -> {retried: true} */
static void h_retry(mq_http_req *req, void *data) {
  job_op(req, data, MQ_QUEUE_RETRY, retried);
}

/* ---- queues ------------------------------------------------------------- */

static void queue_op(mq_http_req *req, mq_http_api *api, enum mq_queue_op op,
                     const char *state, mq_queue_json_cb cb) {
  const char *a[5] = {mq_http_param(req, 0), state};
  if (mq_queue_call(api->queue, op, a, cb, req) != 0)
    reply_pool_closed(req);
}

/* The counts of `queue` from rows of http_counts.h (family 1 rows of one
 * queue are consecutive) as {waiting, paused, delayed, ...}: zeros for a
 * queue without rows, as counts() has them. */
static char *counts_json(const PGresult *rows, const char *queue) {
  static const char *const states[] = {"waiting", "paused", "delayed",
                                       "active", "completed", "failed",
                                       "cancelled"};
  long long n[7] = {0};
  for (int i = 0, rn = PQntuples(rows); i < rn; i++) {
    if (mq_pg_getll(rows, i, 0) != 1 ||
        strcmp(PQgetvalue(rows, i, 1), queue) != 0)
      continue;
    for (int k = 0; k < 7; k++)
      if (strcmp(PQgetvalue(rows, i, 2), states[k]) == 0)
        n[k] = mq_pg_getll(rows, i, 3);
  }
  char err[128];
  mq_json_object *o = mq_json_object_new();
  for (int k = 0; k < 7; k++)
    mq_json_object_int(o, states[k], n[k]);
  return mq_json_object_finish(o, err, sizeof err);
}

/* The family 2 rows (one per queue, by name) of the counts read. */
struct queue_rows {
  const PGresult *rows;
  int first;
};

static char *queue_item(const void *ctx, int i) {
  const struct queue_rows *q = ctx;
  int row = q->first + i;
  const char *name = PQgetvalue(q->rows, row, 1);
  char *counts = counts_json(q->rows, name), err[128];
  if (!counts)
    return NULL;
  mq_json_object *o = mq_json_object_new();
  mq_json_object_string(o, "name", name);
  mq_json_object_bool(o, "paused", mq_pg_getll(q->rows, row, 3) != 0);
  mq_json_object_raw(o, "counts", counts);
  free(counts);
  return mq_json_object_finish(o, err, sizeof err);
}

/* The counts' age as an Age header (whole seconds, as HTTP has it). */
static void reply_age(mq_http_req *req, double age) {
  char value[24];
  snprintf(value, sizeof value, "%d", age > 0 ? (int)age : 0);
  mq_http_reply_header(req, "Age", value);
}

static void queues_counted(const PGresult *rows, double age, const char *error,
                           void *data) {
  mq_http_req *req = data;
  if (error) {
    mq_http_reply_error(req, 503, "%s", error);
    return;
  }
  struct queue_rows q = {rows, 0};
  int n = 0;
  for (int i = 0, rn = PQntuples(rows); i < rn; i++) {
    if (mq_pg_getll(rows, i, 0) != 2)
      continue;
    if (n++ == 0)
      q.first = i;
  }
  reply_list(req, 200, "queues", n, queue_item, &q);
  reply_age(req, age);
}

/* GET /api/queues -> {queues: [{name, paused, counts}]} */
static void h_queues(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {NULL};
  if (only_args(req, known) == 0)
    mq_http_counts_get(api->counts, queues_counted, req);
}

static void queue_counted(const PGresult *rows, double age, const char *error,
                          void *data) {
  mq_http_req *req = data;
  char *json = error ? NULL : counts_json(rows, mq_http_param(req, 0));
  if (json)
    mq_http_reply_json(req, 200, json);
  else
    mq_http_reply_error(req, error ? 503 : 500, "%s",
                        error ? error : "out of memory");
  reply_age(req, age);
  free(json);
}

/* GET /api/queues/{queue}/counts -> {waiting, paused, delayed, ...} */
static void h_counts(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {NULL};
  size_t n = strlen(mq_http_param(req, 0));
  if (n > MQ_QUEUE_NAME_MAX) { /* no queue has it: not zeros, but why */
    mq_http_reply_error(req, 400, "queue name is %zu bytes, the limit is %d",
                        n, MQ_QUEUE_NAME_MAX);
    return;
  }
  if (only_args(req, known) == 0)
    mq_http_counts_get(api->counts, queue_counted, req);
}

static void paused(int status, const char *error, const char *json,
                   void *data) {
  if (status >= 0)
    counts_changed(data);
  json_done(status, error, "{\"paused\":true}", data);
}

static void resumed(int status, const char *error, const char *json,
                    void *data) {
  if (status >= 0)
    counts_changed(data);
  json_done(status, error, "{\"paused\":false}", data);
}

/* POST /api/queues/{queue}/pause -> {paused: true} */
static void h_pause(mq_http_req *req, void *data) {
  static const char *const known[] = {NULL};
  if (only_args(req, known) == 0)
    queue_op(req, data, MQ_QUEUE_PAUSE, NULL, paused);
}

/* POST /api/queues/{queue}/resume -> {paused: false} */
static void h_resume(mq_http_req *req, void *data) {
  static const char *const known[] = {NULL};
  if (only_args(req, known) == 0)
    queue_op(req, data, MQ_QUEUE_RESUME, NULL, resumed);
}

static void purged(int status, const char *error, const char *json,
                   void *data) {
  if (status < 0) {
    mq_http_reply_error(data, queue_status(status), "%s", error);
    return;
  }
  counts_changed(data);
  reply_wrapped(data, 200, "purged", json);
}

/* DELETE /api/queues/{queue}/jobs?state=S -> {purged: n} */
static void h_purge(mq_http_req *req, void *data) {
  static const char *const known[] = {"state", NULL};
  if (only_args(req, known) == 0)
    queue_op(req, data, MQ_QUEUE_PURGE, mq_http_arg(req, "state"), purged);
}

/* ---- events ------------------------------------------------------------- */

static bool have_events(mq_http_api *api, mq_http_req *req) {
  if (!api->events)
    mq_http_reply_error(req, 503,
                        "the event store is disabled (config events.enabled)");
  return api->events != NULL;
}

/* Replies {"<key>": [item(ctx, 0), ..., item(ctx, n - 1)]}, each item
 * an object's JSON text (the callee's to free; NULL: failed). */
static void reply_list(mq_http_req *req, int status, const char *key, int n,
                       char *(*item)(const void *ctx, int i), const void *ctx) {
  char *buf = NULL, head[64];
  size_t len = 0, cap = 0;
  snprintf(head, sizeof head, "{\"%s\":[", key);
  int rc = mq_buf_add(&buf, &len, &cap, head, strlen(head));
  for (int i = 0; i < n && rc == 0; i++) {
    char *json = item(ctx, i);
    rc = !json || (i > 0 && mq_buf_add(&buf, &len, &cap, ",", 1) != 0) ||
                 mq_buf_add(&buf, &len, &cap, json, strlen(json)) != 0
             ? -1
             : 0;
    free(json);
  }
  if (rc == 0 && mq_buf_add(&buf, &len, &cap, "]}", 2) == 0)
    mq_http_reply_json(req, status, buf);
  else
    mq_http_reply_error(req, 500, "out of memory");
  free(buf);
}

static char *event_item(const void *ctx, int i) {
  char err[128];
  return mq_event_json((const struct mq_event *)ctx + i, err, sizeof err);
}

/* Events as {"events": [...]} (mq_event_json each). */
static void reply_events(mq_http_req *req, int status,
                         const struct mq_event *events, int n) {
  reply_list(req, status, "events", n, event_item, events);
}

/* What an append keeps until it is stored: the stored events are the
 * inputs with their new ids and times. */
struct append_call {
  mq_http_req *req;
  struct value v[5];
  struct mq_event_input *in;
  int n;
  bool single;
};

static void append_free(struct append_call *c) {
  values_free(c->v, 5);
  if (c->in != c->v[4].events)
    free(c->in);
  free(c);
}

static void appended(int status, const char *error, const long long *ids,
                     const char *const *ts, int n, void *data) {
  struct append_call *c = data;
  if (status != MQ_EVENTS_OK) {
    mq_http_reply_error(c->req, status == MQ_EVENTS_EINVAL ? 400 : 503, "%s",
                        error);
    append_free(c);
    return;
  }
  struct mq_event *events = calloc((size_t)n, sizeof *events);
  char jerr[128];
  for (int i = 0; events && i < n; i++)
    events[i] = (struct mq_event){.id = ids[i], .stream = c->in[i].stream,
                                  .type = c->in[i].type, .ts = ts[i],
                                  .data = c->in[i].data ? c->in[i].data : "{}",
                                  .run_id = c->in[i].run_id, .attempt = -1};
  char *one = events && c->single ? mq_event_json(events, jerr, sizeof jerr)
                                  : NULL;
  if (!events || (c->single && !one))
    mq_http_reply_error(c->req, 500, "out of memory");
  else if (c->single)
    mq_http_reply_json(c->req, 201, one);
  else
    reply_events(c->req, 201, events, n);
  free(one);
  free(events);
  append_free(c);
}

/* POST /api/events {stream, type, data, run_id} -> 201 the stored event;
 * {stream, events: [{type, data, run_id}...]} -> 201 {events} */
static void h_append(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const struct field f[] = {
      {"stream", K_STRING, true}, {"type", K_STRING, false},
      {"data", K_JSON, false},    {"run_id", K_STRING, false},
      {"events", K_EVENTS, false}};
  if (!have_events(api, req))
    return;
  struct append_call *c = calloc(1, sizeof *c);
  if (!c) {
    mq_http_reply_error(req, 500, "out of memory");
    return;
  }
  c->req = req;
  if (read_body(api, req, f, 5, c->v) != 0) {
    free(c);
    return;
  }
  struct value *v = c->v;
  c->single = v[4].n == 0;
  if (c->single && !v[1].text) {
    mq_http_reply_error(req, 400, "type (or events) is required");
    append_free(c);
    return;
  }
  if (!c->single && (v[1].text || v[2].text || v[3].text)) {
    mq_http_reply_error(req, 400, "type, data and run_id go inside each of "
                        "events");
    append_free(c);
    return;
  }
  if (c->single) {
    c->in = calloc(1, sizeof *c->in);
    if (c->in)
      *c->in = (struct mq_event_input){.type = v[1].text, .data = v[2].text,
                                       .run_id = v[3].text};
  } else {
    c->in = v[4].events;
  }
  c->n = c->single ? 1 : v[4].n;
  for (int i = 0; c->in && i < c->n; i++)
    c->in[i].stream = v[0].text;
  char err[1024];
  int rc = c->in ? mq_events_append(api->events, c->in, c->n, appended, c,
                                    err, sizeof err)
                 : MQ_EVENTS_EDB;
  if (rc != 0) {
    if (!c->in)
      snprintf(err, sizeof err, "out of memory");
    mq_http_reply_error(req, rc == MQ_EVENTS_EINVAL ? 400 : 503, "%s", err);
    append_free(c);
  }
}

static void queried(int status, const char *error,
                    const struct mq_event *events, int n, void *data) {
  if (status != MQ_EVENTS_OK)
    mq_http_reply_error(data, status == MQ_EVENTS_EINVAL ? 400 : 503, "%s",
                        error);
  else
    reply_events(data, 200, events, n);
}

/* Splits "a,b,c" (copied into buf) into types (at most TYPES_MAX). Returns
 * the count, or -1 when there are too many. */
static int split_types(const char *list, char *buf, size_t buflen,
                       const char **types) {
  snprintf(buf, buflen, "%s", list);
  int n = 0;
  for (char *save, *t = strtok_r(buf, ",", &save); t;
       t = strtok_r(NULL, ",", &save)) {
    if (n == TYPES_MAX)
      return -1;
    types[n++] = t;
  }
  types[n] = NULL;
  return n;
}

/* GET /api/events?stream=P&types=a,b&after=&before=&limit=&run_id=
 * &from_ts=&to_ts= -> {events} */
static void h_query(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {"stream", "types", "after", "before",
                                      "limit", "run_id", "from_ts", "to_ts",
                                      NULL};
  long long after = 0, before = 0, limit = MQ_EVENTS_QUERY_DEFAULT;
  if (!have_events(api, req) || only_args(req, known) != 0 ||
      int_arg(req, "after", 0, INT64_MAX, &after) != 0 ||
      int_arg(req, "before", 0, INT64_MAX, &before) != 0 ||
      int_arg(req, "limit", 1, MQ_EVENTS_QUERY_MAX, &limit) != 0)
    return;
  const char *stream = mq_http_arg(req, "stream");
  const char *list = mq_http_arg(req, "types");
  char why[160];
  if (!stream) {
    mq_http_reply_error(req, 400, "stream is required (a stream or a "
                        "pattern such as \"orders:*\")");
    return;
  }
  if (mq_events_check_pattern(stream, why, sizeof why) != 0) {
    mq_http_reply_error(req, 400, "%s", why);
    return;
  }
  char buf[4096];
  const char *types[TYPES_MAX + 1];
  if (list && (strlen(list) >= sizeof buf ||
               split_types(list, buf, sizeof buf, types) < 0)) {
    mq_http_reply_error(req, 400, "types: at most %d types", TYPES_MAX);
    return;
  }
  struct mq_events_query q = {.types = list ? types : NULL,
                              .after = after, .before = before,
                              .run_id = mq_http_arg(req, "run_id"),
                              .from_ts = mq_http_arg(req, "from_ts"),
                              .to_ts = mq_http_arg(req, "to_ts"),
                              .limit = (int)limit};
  if (mq_events_query(api->events, stream, &q, queried, req) != 0)
    reply_pool_closed(req);
}

/* GET /api/events/stream?stream=P&from=start|end|ID -> text/event-stream;
 * a Last-Event-ID header (an `id:` the stream sent) takes over from. */
static void h_stream(mq_http_req *req, void *data) {
  static const char *const known[] = {"stream", "from", NULL};
  if (!have_events(data, req) || only_args(req, known) != 0)
    return;
  const char *pattern = mq_http_arg(req, "stream");
  const char *from = mq_http_arg(req, "from");
  const char *last = mq_http_header(req, "Last-Event-ID");
  char buf[2048], why[256];
  struct mq_event_position pos;
  if (last && *last) {
    if (mq_http_parse_position(last, buf, sizeof buf, &pos, why,
                               sizeof why) != 0) {
      mq_http_reply_error(req, 400, "Last-Event-ID \"%.60s%s\" %s", last,
                          strlen(last) > 60 ? "..." : "", why);
      return;
    }
  } else if (!from || strcmp(from, "end") == 0) {
    mq_http_reply_stream(req, pattern, MQ_EVENTS_FROM_END, 0, NULL);
    return;
  } else if (strcmp(from, "start") == 0) {
    mq_http_reply_stream(req, pattern, MQ_EVENTS_FROM_START, 0, NULL);
    return;
  } else if (mq_http_parse_position(from, buf, sizeof buf, &pos, why,
                                     sizeof why) != 0) {
    mq_http_reply_error(req, 400, "from must be \"start\", \"end\" or an "
                        "event id (0 to %lld) or position, got \"%.60s%s\": "
                        "it %s", LLONG_MAX, from, strlen(from) > 60 ? "..." : "",
                        why);
    return;
  }
  if (pos.base)
    mq_http_reply_stream(req, pattern, MQ_EVENTS_FROM_ID, 0, &pos);
  else
    mq_http_reply_stream(req, pattern, MQ_EVENTS_FROM_ID, pos.after_id, NULL);
}

/* ---- flows, schedules, groups ------------------------------------------ */

/* The status for a failed statement: 400 for bad input (SQLSTATE class
 * 22), 409 for a conflict with stored data (23505, e.g. a run id taken),
 * 503 otherwise. */
static int sql_status(const struct mq_pg_reply *r) {
  if (r->status != MQ_PG_ESQL)
    return 503;
  if (strncmp(r->sqlstate, "22", 2) == 0)
    return 400;
  return strcmp(r->sqlstate, "23505") == 0 ? 409 : 503;
}

/* [run id] -> [its JSON string] */
static int quote_cb(lua_State *L) {
  char err[128];
  lua_pushstring(L, lua_touserdata(L, 1));
  char *json = mq_json_encode(L, -1, "run_id", NULL, err, sizeof err);
  if (!json)
    return luaL_error(L, "%s", err);
  lua_pushstring(L, json);
  free(json);
  return 1;
}

static void run_started(const struct mq_pg_reply *r, void *data) {
  void **call = data;
  mq_http_req *req = call[0];
  mq_http_api *api = call[1];
  free(call);
  if (r->status != MQ_PG_OK) {
    mq_http_reply_error(req, sql_status(r), "%s", r->error);
    return;
  }
  mq_http_counts_changed(api->counts);
  if (mq_lua_protect(api->L, quote_cb, PQgetvalue(r->result, 0, 0), 1) ==
      LUA_OK)
    reply_wrapped(req, 201, "run_id", lua_tostring(api->L, -1));
  else
    mq_http_reply_error(req, 500, "%s", lua_tostring(api->L, -1));
  lua_settop(api->L, 0);
}

/* POST /api/flows/{name}/runs {data, options} -> 201 {run_id} */
static void h_start_flow(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const struct field f[] = {{"data", K_JSON, false},
                                   {"options", K_JSON, false}};
  struct value v[2] = {{0}};
  if (read_body(api, req, f, 2, v) != 0)
    return;
  const char *params[] = {mq_http_param(req, 0), v[0].text ? v[0].text : "{}",
                          v[1].text ? v[1].text : "{}"};
  void **call = malloc(2 * sizeof *call);
  if (!call) {
    mq_http_reply_error(req, 500, "out of memory");
  } else {
    call[0] = req;
    call[1] = api;
    if (mq_pg_exec(api->pg, api->st_start_flow, 3, params, 0, run_started,
                   call) != 0) {
      free(call);
      reply_pool_closed(req);
    }
  }
  values_free(v, 2);
}

static void got_run(const struct mq_pg_reply *r, void *data) {
  mq_http_req *req = data;
  if (r->status != MQ_PG_OK)
    mq_http_reply_error(req, sql_status(r), "%s", r->error);
  else if (PQgetisnull(r->result, 0, 0))
    mq_http_reply_error(req, 404, "run %s not found", mq_http_param(req, 0));
  else
    mq_http_reply_json(req, 200, PQgetvalue(r->result, 0, 0));
}

/* GET /api/runs/{run_id} -> the run with its steps */
static void h_get_run(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {NULL};
  if (only_args(req, known) != 0)
    return;
  const char *params[] = {mq_http_param(req, 0)};
  if (mq_pg_exec(api->pg, api->st_get_flow, 1, params, 0, got_run, req) != 0)
    reply_pool_closed(req);
}

/* The single JSON value of a row as it is. */
static void got_json(const struct mq_pg_reply *r, void *data) {
  mq_http_req *req = data;
  if (r->status != MQ_PG_OK)
    mq_http_reply_error(req, sql_status(r), "%s", r->error);
  else
    mq_http_reply_json(req, 200, PQgetvalue(r->result, 0, 0));
}

/* GET /api/flows -> {flows: [{flow, steps: [{step, job, queue, entry}]}]}:
 * the flows processes have stored, by name. */
static void h_list_flows(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {NULL};
  if (only_args(req, known) == 0 &&
      mq_pg_exec(api->pg, api->st_list_flows, 0, NULL, 0, got_json, req) != 0)
    reply_pool_closed(req);
}

/* GET /api/runs?flow=F&status=S&limit=N&before=T -> {runs: [...], next}:
 * runs of flow F newest first, as moonq.flow.list returns them; a full
 * page's `next` is the `before` of the following page. */
static void h_list_runs(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {"flow", "status", "limit", "before",
                                      NULL};
  static const char *const statuses[] = {"running", "completed", "failed",
                                         "cancelled", NULL};
  long long limit = 100;
  if (only_args(req, known) != 0 ||
      int_arg(req, "limit", 1, LIST_MAX, &limit) != 0)
    return;
  const char *flow = mq_http_arg(req, "flow");
  const char *status = mq_http_arg(req, "status");
  if (!flow) {
    mq_http_reply_error(req, 400, "flow is required");
    return;
  }
  bool known_status = !status;
  for (const char *const *k = statuses; status && *k; k++)
    known_status = known_status || strcmp(*k, status) == 0;
  if (!known_status) {
    mq_http_reply_error(req, 400, "unknown status \"%.40s\" (hint: running, "
                        "completed, failed or cancelled)", status);
    return;
  }
  /* before: a started_at (runs before it), or a page's next,
   * "<started_at>|<run_id>" (runs after that one in the order) */
  char n[24], at[64];
  snprintf(n, sizeof n, "%lld", limit);
  const char *before = mq_http_arg(req, "before"), *before_run = NULL;
  const char *bar = before ? strchr(before, '|') : NULL;
  if (bar) {
    if ((size_t)(bar - before) >= sizeof at) {
      mq_http_reply_error(req, 400, "before: the time before '|' is over %zu "
                          "bytes", sizeof at - 1);
      return;
    }
    memcpy(at, before, (size_t)(bar - before));
    at[bar - before] = '\0';
    before = at;
    before_run = bar + 1;
  }
  const char *params[] = {flow, status, n, before, before_run};
  if (mq_pg_exec(api->pg, api->st_list_runs, 5, params, 0, got_json, req) != 0)
    reply_pool_closed(req);
}

static void schedules_listed(int status, const char *error, const char *json,
                             void *data) {
  if (status != 0)
    mq_http_reply_error(data, status == MQ_SCHEDULES_EINVAL ? 400 : 503, "%s",
                        error);
  else
    reply_wrapped(data, 200, "schedules", json);
}

/* GET /api/schedules -> {schedules} */
static void h_schedules(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {NULL};
  if (only_args(req, known) == 0 &&
      mq_schedules_list(api->schedules, schedules_listed, req) != 0)
    reply_pool_closed(req);
}

/* Row i of event_groups as an object. */
static char *group_item(const void *ctx, int i) {
  const PGresult *rows = ctx;
  char err[128];
  mq_json_object *o = mq_json_object_new();
  mq_json_object_string(o, "group", PQgetvalue(rows, i, 0));
  mq_json_object_string(o, "pattern", PQgetvalue(rows, i, 1));
  mq_json_object_int(o, "partitions", mq_pg_getll(rows, i, 2));
  mq_json_object_raw(o, "members", PQgetvalue(rows, i, 3));
  const char *counts[] = {"last_id", "handled", "lag", "parked"};
  for (int k = 0; k < 4; k++)
    if (PQgetisnull(rows, i, 4 + k))
      mq_json_object_null(o, counts[k]);
    else
      mq_json_object_int(o, counts[k], mq_pg_getll(rows, i, 4 + k));
  return mq_json_object_finish(o, err, sizeof err);
}

static void groups_listed(int status, const char *error, const PGresult *rows,
                          void *data) {
  if (status != MQ_EVENTS_OK)
    mq_http_reply_error(data, status == MQ_EVENTS_EINVAL ? 400 : 503, "%s",
                        error);
  else
    reply_list(data, 200, "groups", PQntuples(rows), group_item, rows);
}

/* GET /api/groups?group=G -> {groups: [{group, pattern, partitions,
 * members, last_id, handled, lag, parked}]} */
static void h_groups(mq_http_req *req, void *data) {
  mq_http_api *api = data;
  static const char *const known[] = {"group", NULL};
  if (!have_events(api, req) || only_args(req, known) != 0)
    return;
  if (mq_group_list(api->events, mq_http_arg(req, "group"), groups_listed,
                    req) != 0)
    reply_pool_closed(req);
}

/* ---- the API -------------------------------------------------------------- */

static const struct mq_http_route routes[] = {
    {"POST", "/api/jobs", h_send, 0},
    {"POST", "/api/jobs/batch", h_send_many, 0},
    {"GET", "/api/jobs", h_list, 0},
    {"GET", "/api/jobs/{}", h_get, 0},
    {"POST", "/api/jobs/{}/cancel", h_cancel, 0},
    {"POST", "/api/jobs/{}/retry", h_retry, 0},
    {"GET", "/api/queues", h_queues, 0},
    {"GET", "/api/queues/{}/counts", h_counts, 0},
    {"POST", "/api/queues/{}/pause", h_pause, 0},
    {"POST", "/api/queues/{}/resume", h_resume, 0},
    {"DELETE", "/api/queues/{}/jobs", h_purge, 0},
    {"POST", "/api/events", h_append, 0},
    {"GET", "/api/events", h_query, 0},
    {"GET", "/api/events/stream", h_stream, 0},
    {"POST", "/api/flows/{}/runs", h_start_flow, 0},
    {"GET", "/api/flows", h_list_flows, 0},
    {"GET", "/api/runs", h_list_runs, 0},
    {"GET", "/api/runs/{}", h_get_run, 0},
    {"GET", "/api/schedules", h_schedules, 0},
    {"GET", "/api/groups", h_groups, 0},
    {NULL, NULL, NULL, 0}};

mq_http_api *mq_http_api_new(const struct mq_http_api_deps *deps) {
  mq_http_api *api = calloc(1, sizeof *api);
  if (!api)
    return NULL;
  api->cfg = deps->cfg;
  api->pg = deps->pg;
  api->queue = deps->queue;
  api->events = deps->events;
  api->schedules = deps->schedules;
  api->counts = deps->counts;
  api->st_start_flow = mq_pg_prepare_in(
      deps->pg, "SELECT %s.start_flow($1, $2::jsonb, $3::jsonb)",
      deps->cfg->schema);
  api->st_get_flow =
      mq_pg_prepare_in(deps->pg, "SELECT %s.get_flow($1)::text",
                       deps->cfg->schema);
  api->st_list_flows = mq_pg_prepare_in(
      deps->pg,
      "SELECT jsonb_build_object('flows', coalesce(jsonb_agg(jsonb_build_object("
      "'flow', f.flow_name, 'steps', f.steps) ORDER BY f.flow_name), '[]'))::text"
      " FROM (SELECT flow_name, jsonb_agg(jsonb_build_object('step', step_name,"
      " 'job', job_name, 'queue', queue, 'entry', entry) ORDER BY step_name)"
      " AS steps FROM %s.queue_flow_steps GROUP BY flow_name) f",
      deps->cfg->schema);
  api->st_list_runs = mq_pg_prepare_in(
      deps->pg,
      "SELECT jsonb_build_object('runs', coalesce(jsonb_agg(jsonb_build_object("
      "'flow', r.flow_name, 'run_id', r.run_id, 'status', r.status,"
      " 'started_at', r.started_at, 'completed_at', r.completed_at,"
      " 'failed_step', r.failed_step, 'error', r.error)"
      " ORDER BY r.started_at DESC, r.run_id DESC), '[]'),"
      " 'next', CASE WHEN count(*) = $3::integer THEN (array_agg("
      "r.started_at::text || '|' || r.run_id ORDER BY r.started_at,"
      " r.run_id))[1] END)::text"
      " FROM %s.list_flows($1, $2, $3::integer, $4::timestamptz, $5) r",
      deps->cfg->schema);
  if (api->st_start_flow < 0 || api->st_get_flow < 0 ||
      api->st_list_flows < 0 || api->st_list_runs < 0 ||
      !(api->L = luaL_newstate())) {
    free(api);
    return NULL;
  }
  return api;
}

static const char *api_unavailable(void *data) {
  mq_http_api *api = data;
  return mq_http_db_unreachable(api->pg, api->events);
}

struct mq_http_routes mq_http_api_routes(mq_http_api *api) {
  return (struct mq_http_routes){routes, api, api_unavailable};
}

void mq_http_api_close(mq_http_api *api) {
  if (!api)
    return;
  lua_close(api->L);
  free(api);
}
