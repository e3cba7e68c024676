/* handlers.c -- handler files loaded into structs; see handlers.h.
 *
 * One entry per file seen: its stat (inode, mtime, size) for change
 * detection and the handler it last loaded, if any. Handler functions are
 * anchored by registry references; a running job holds its function in
 * its coroutine, so replacing or removing the reference never affects it.
 *
 * Watching (hot reload): every scan renews the inotify watches of the
 * directories it reads, of the directories that symlinked files point
 * into and of each entry on the path to the handlers directory (dirwatch.h);
 * an event arms `tick`, which scans SETTLE s later. Without inotify, tick
 * repeats every POLL s instead.
 */
#define _DEFAULT_SOURCE /* DT_LNK, realpath(); before any header */
#include "handlers.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ev.h>
#include <lauxlib.h>

#include "dirwatch.h"
#include "log.h"
#include "lua_host.h"

#define LOAD_TIMEOUT 5.0 /* seconds a handler file's top level may run */
#define QUIET 0.1   /* seconds a changed file stays unchanged before it is read */
#define SETTLE 0.15 /* seconds from a change notified to the scan */
#define POLL 0.5    /* seconds between scans without change notification */

struct entry {
  char *path;
  dev_t dev;
  ino_t ino;
  time_t mtime;
  long mtime_ns;
  off_t size;
  bool seen;
  bool loaded;            /* h holds a handler */
  struct mq_handler h;    /* name, file and queue point into owned strings */
  char *name, *queue;
  char *error;            /* why the file's last load failed, or NULL */
};

struct mq_handlers {
  lua_State *L;
  char *dir;
  struct entry *entries;
  size_t n, cap;
  size_t next; /* where find_entry looks first: after its last find */
  /* Loaded handlers by name (mq_handlers_find, once per job run): open
   * addressing, each slot 1 + an index into entries or 0 (empty),
   * index_cap slots (a power of two, at least twice the entries). Rebuilt
   * at the end of every scan, the only place entries change; NULL (during
   * a scan, out of memory): entries are searched in order. */
  size_t *index;
  size_t index_cap;
  bool settling; /* the last scan saw a file changed too recently to read */
  /* Watching (mq_handlers_watch): */
  struct ev_loop *loop;  /* NULL: not watching */
  mq_dirwatch *watch;    /* NULL while watching: polling */
  ev_timer tick;         /* the next scan */
  void (*on_change)(void *data); /* after a scan that loaded or removed */
  void *data;
};

static void watch_dir(mq_handlers *h, const char *path, const char *suffix);
static void watch_target(mq_handlers *h, const char *path);
static void watch_path(mq_handlers *h);

/* "billing/charge.lua" -> "billing.charge" (caller frees). */
static char *job_name(const char *rel) {
  size_t n = strlen(rel) - 4;
  char *name = malloc(n + 1);
  if (!name)
    return NULL;
  for (size_t i = 0; i < n; i++)
    name[i] = rel[i] == '/' ? '.' : rel[i];
  name[n] = '\0';
  return name;
}

static void unload(mq_handlers *h, struct entry *e) {
  if (!e->loaded)
    return;
  luaL_unref(h->L, LUA_REGISTRYINDEX, e->h.fn_ref);
  free(e->queue);
  e->queue = NULL;
  e->loaded = false;
}

struct load {
  const char *path, *name;
  int fn_ref;
};

/* [.. spec] -> [.. spec]: the flow graph with this file's step (or with
 * its step gone, when the new version has none) is checked by
 * lua/moonq/flows.lua: errors raise (the file is refused and its previous
 * version stays), warnings are logged; then the step is taken. */
static void flows_accept(lua_State *L, struct load *ld) {
  int spec = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.flows");
  lua_call(L, 1, 1); /* [.. spec flows] */
  int flows = lua_gettop(L);
  lua_getfield(L, flows, "check");
  lua_pushstring(L, ld->name);
  lua_pushstring(L, ld->path);
  lua_getfield(L, spec, "flow");
  lua_call(L, 3, 2); /* [.. spec flows errors warnings] (the warnings
                        are logged once the whole scan is in) */
  if (luaL_len(L, -2) > 0) {
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "concat");
    lua_pushvalue(L, -4);
    lua_pushliteral(L, "; ");
    lua_call(L, 2, 1);
    lua_error(L);
  }
  lua_pop(L, 2);
  lua_getfield(L, flows, "set");
  lua_pushstring(L, ld->name);
  lua_pushstring(L, ld->path);
  lua_getfield(L, spec, "flow");
  lua_getfield(L, spec, "queue");
  lua_call(L, 4, 0);
  lua_settop(L, spec);
}

/* [] -> [spec]: loads the file in its environment and normalises what it
 * returned (lua/moonq/handler.lua); anchors the handler function. */
static int load_cb(lua_State *L) {
  struct load *ld = lua_touserdata(L, 1);
  if (luaL_loadfilex(L, ld->path, "t") != LUA_OK) /* [ld chunk] */
    return lua_error(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.handler");
  lua_call(L, 1, 1); /* [ld chunk mod] */
  lua_getfield(L, -1, "env");
  lua_pushstring(L, ld->path);
  lua_call(L, 1, 1); /* [ld chunk mod env] */
  if (!lua_setupvalue(L, 2, 1)) /* the chunk's _ENV */
    lua_pop(L, 1);
  lua_pushvalue(L, 2);
  lua_call(L, 0, 1); /* [ld chunk mod value] */
  lua_getfield(L, 3, "normalise");
  lua_pushstring(L, ld->name);
  lua_pushvalue(L, 4);
  lua_pushstring(L, ld->path);
  lua_call(L, 3, 1); /* [ld chunk mod value spec] */
  flows_accept(L, ld);
  lua_getfield(L, -1, "handler");
  ld->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* Reads the retry table at the top of L into s (only the keys given). */
static void read_retry(lua_State *L, struct mq_queue_settings *s) {
  memset(s, 0, sizeof *s);
  if (lua_getfield(L, -1, "limit") == LUA_TNUMBER) {
    s->has_retry_limit = true;
    s->retry_limit = (int)lua_tointeger(L, -1);
  }
  if (lua_getfield(L, -2, "delay") == LUA_TNUMBER) {
    s->has_retry_delay = true;
    s->retry_delay = lua_tonumber(L, -1);
  }
  if (lua_getfield(L, -3, "backoff") == LUA_TBOOLEAN) {
    s->has_retry_backoff = true;
    s->retry_backoff = lua_toboolean(L, -1);
  }
  if (lua_getfield(L, -4, "delay_max") == LUA_TNUMBER) {
    s->has_retry_delay_max = true;
    s->retry_delay_max = lua_tonumber(L, -1);
  }
  lua_pop(L, 4);
}

static ev_tstamp load_deadline;

/* A file whose top level runs too long (a loop meant for the handler) is
 * stopped, so loading never hangs the process. */
static void load_hook(lua_State *L, lua_Debug *ar) {
  if (ev_time() > load_deadline)
    luaL_error(L, "loading took longer than %f s (code at the top level of "
               "the file that does not finish?)", LOAD_TIMEOUT);
}

/* Loads e's file; on success e holds the new handler, otherwise the error
 * is logged and e keeps what it had. */
static bool load(mq_handlers *h, struct entry *e) {
  lua_State *L = h->L;
  struct load ld = {.path = e->path, .name = e->name, .fn_ref = LUA_NOREF};
  load_deadline = ev_time() + LOAD_TIMEOUT;
  lua_sethook(L, load_hook, LUA_MASKCOUNT, 10000);
  int status = mq_lua_protect(L, load_cb, &ld, 1);
  lua_sethook(L, NULL, 0, 0);
  free(e->error);
  e->error = NULL;
  if (status != LUA_OK) {
    const char *why = lua_tostring(L, -1);
    mq_log_error("handlers", "cannot load handler file=%s error=\"%s\"",
                 e->path, why ? why : "(error object)");
    e->error = strdup(why ? why : "(error object)");
    lua_pop(L, 1);
    return false;
  }
  /* [spec]: a plain table made by normalise; reading it cannot raise. */
  struct mq_handler n = {.name = e->name, .file = e->path, .fn_ref = ld.fn_ref};
  lua_getfield(L, -1, "queue");
  char *queue = strdup(lua_tostring(L, -1));
  lua_getfield(L, -2, "concurrency");
  n.concurrency = (int)lua_tointeger(L, -1);
  lua_getfield(L, -3, "timeout");
  n.timeout = lua_tonumber(L, -1);
  if (lua_getfield(L, -4, "retry") == LUA_TTABLE) {
    n.has_retry = true;
    read_retry(L, &n.retry);
  }
  lua_pop(L, 5);
  if (!queue) {
    luaL_unref(L, LUA_REGISTRYINDEX, ld.fn_ref);
    mq_log_error("handlers", "out of memory loading file=%s", e->path);
    return false;
  }
  unload(h, e);
  e->queue = queue;
  n.queue = queue;
  e->h = n;
  e->loaded = true;
  return true;
}

/* The entry of `path`, or NULL. A scan reads the directory in the order
 * of the last scan, so the search starts after the last entry found: a
 * scan of an unchanged directory costs one comparison per file, not a
 * search of every entry (a thousand handler files, twice a second). */
static struct entry *find_entry(mq_handlers *h, const char *path) {
  for (size_t k = 0; k < h->n; k++) {
    size_t i = (h->next + k) % h->n;
    if (strcmp(h->entries[i].path, path) == 0) {
      h->next = i + 1;
      return &h->entries[i];
    }
  }
  return NULL;
}

static struct entry *add_entry(mq_handlers *h, const char *path,
                               const char *rel) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 16;
    struct entry *e = realloc(h->entries, sizeof *e * cap);
    if (!e)
      return NULL;
    h->entries = e;
    h->cap = cap;
  }
  struct entry *e = &h->entries[h->n];
  memset(e, 0, sizeof *e);
  e->path = strdup(path);
  e->name = job_name(rel);
  if (!e->path || !e->name) {
    free(e->path);
    free(e->name);
    return NULL;
  }
  h->n++;
  return e;
}

/* True when the file at `st` changed (another file renamed into place
 * has another inode, whatever its mtime) and has been quiet for QUIET s;
 * a change too recent marks the scan settling. */
static bool changed(mq_handlers *h, const struct entry *e,
                    const struct stat *st, ev_tstamp now) {
  if (e->ino == st->st_ino && e->dev == st->st_dev &&
      e->mtime == st->st_mtim.tv_sec && e->mtime_ns == st->st_mtim.tv_nsec &&
      e->size == st->st_size)
    return false;
  double age = now - ((double)st->st_mtim.tv_sec + st->st_mtim.tv_nsec / 1e9);
  if (age >= QUIET)
    return true;
  h->settling = true;
  return false;
}

/* Walks dir (rel: its path below the handlers directory), loading new and
 * changed files. Returns the number of handlers loaded. */
static int scan_dir(mq_handlers *h, const char *dir, const char *rel,
                    ev_tstamp now) {
  watch_dir(h, dir, ".lua"); /* before reading: a later change is notified */
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.')
      continue;
    char path[4096], sub[4096];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
    struct stat st;
    if (stat(path, &st) != 0)
      continue;
    if (S_ISDIR(st.st_mode)) {
      n += scan_dir(h, path, sub, now);
      continue;
    }
    size_t len = strlen(de->d_name);
    if (!S_ISREG(st.st_mode) || len < 5 || strcmp(de->d_name + len - 4, ".lua"))
      continue;
    if (de->d_type == DT_LNK || de->d_type == DT_UNKNOWN)
      watch_target(h, path);
    struct entry *e = find_entry(h, path);
    if (e) {
      e->seen = true;
      if (!changed(h, e, &st, now))
        continue;
    } else if (!(e = add_entry(h, path, sub))) {
      continue;
    }
    e->seen = true;
    e->dev = st.st_dev;
    e->ino = st.st_ino;
    e->mtime = st.st_mtim.tv_sec;
    e->mtime_ns = st.st_mtim.tv_nsec;
    e->size = st.st_size;
    if (load(h, e)) {
      mq_log_info("handlers", "loaded handler job=%s file=%s", e->name, path);
      n++;
    }
  }
  closedir(d);
  return n;
}

/* [] -> []: logs the warnings of every flow's graph. */
static int flow_warnings_cb(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.flows");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "warnings");
  lua_call(L, 0, 1);
  lua_Integer n = luaL_len(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, -1, i);
    mq_log_warn("handlers", "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return 0;
}

/* [name] -> []: the file of job `name` is gone; so is its flow step. */
static int forget_step_cb(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.flows");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "remove");
  lua_pushstring(L, lua_touserdata(L, 1));
  lua_call(L, 1, 0);
  return 0;
}

static void forget_step(lua_State *L, const char *name) {
  if (mq_lua_protect(L, forget_step_cb, (void *)name, 0) != LUA_OK) {
    mq_log_error("handlers", "cannot forget a flow step job=%s error=\"%s\"",
                 name, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

/* FNV-1a of a handler's name. */
static size_t name_hash(const char *name) {
  size_t x = (size_t)14695981039346656037ULL;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    x = (x ^ *p) * (size_t)1099511628211ULL;
  return x;
}

/* Rebuilds h->index from the loaded entries; where two files give one name
 * ("a/b.lua", "a.b.lua"), the first entry keeps it, as a search in order
 * finds it. */
static void index_handlers(mq_handlers *h) {
  size_t cap = 16;
  while (cap < 2 * h->n)
    cap *= 2;
  free(h->index);
  h->index_cap = 0;
  if (!(h->index = calloc(cap, sizeof *h->index)))
    return;
  h->index_cap = cap;
  for (size_t i = 0; i < h->n; i++) {
    if (!h->entries[i].loaded)
      continue;
    size_t k = name_hash(h->entries[i].name) & (cap - 1);
    while (h->index[k] &&
           strcmp(h->entries[h->index[k] - 1].name, h->entries[i].name) != 0)
      k = (k + 1) & (cap - 1);
    if (!h->index[k])
      h->index[k] = i + 1;
  }
}

int mq_handlers_scan(mq_handlers *h, bool force) {
  free(h->index); /* entries change: searched in order until rebuilt */
  h->index = NULL;
  for (size_t i = 0; i < h->n; i++) {
    h->entries[i].seen = false;
    if (force)
      h->entries[i].size = -1;
  }
  h->settling = false;
  if (h->watch) {
    mq_dirwatch_begin(h->watch);
    watch_path(h);
  }
  int n = scan_dir(h, h->dir, "", ev_time());
  if (h->watch)
    mq_dirwatch_end(h->watch);
  for (size_t i = 0; i < h->n;) {
    struct entry *e = &h->entries[i];
    if (e->seen) {
      i++;
      continue;
    }
    mq_log_info("handlers", "handler removed job=%s file=%s", e->name,
                e->path);
    if (e->loaded)
      n++;
    forget_step(h->L, e->name);
    unload(h, e);
    free(e->path);
    free(e->name);
    free(e->error);
    *e = h->entries[--h->n];
  }
  index_handlers(h);
  if (n > 0 && mq_lua_protect(h->L, flow_warnings_cb, NULL, 0) != LUA_OK)
    lua_pop(h->L, 1);
  return n;
}

mq_handlers *mq_handlers_new(lua_State *L, const char *dir, char *err,
                             size_t errlen) {
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "handlers directory %s: %s", dir,
             errno ? strerror(errno) : "not a directory");
    return NULL;
  }
  mq_handlers *h = calloc(1, sizeof *h);
  if (!h || !(h->dir = strdup(dir))) {
    free(h);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  h->L = L;
  mq_handlers_scan(h, false);
  return h;
}

const struct mq_handler *mq_handlers_find(const mq_handlers *h,
                                          const char *name) {
  if (h->index) {
    size_t mask = h->index_cap - 1;
    for (size_t k = name_hash(name) & mask; h->index[k]; k = (k + 1) & mask)
      if (strcmp(h->entries[h->index[k] - 1].name, name) == 0)
        return &h->entries[h->index[k] - 1].h;
    return NULL;
  }
  for (size_t i = 0; i < h->n; i++)
    if (h->entries[i].loaded && strcmp(h->entries[i].name, name) == 0)
      return &h->entries[i].h;
  return NULL;
}

size_t mq_handlers_count(const mq_handlers *h) {
  size_t n = 0;
  for (size_t i = 0; i < h->n; i++)
    n += h->entries[i].loaded;
  return n;
}

const struct mq_handler *mq_handlers_at(const mq_handlers *h, size_t i) {
  for (size_t k = 0; k < h->n; k++)
    if (h->entries[k].loaded && i-- == 0)
      return &h->entries[k].h;
  return NULL;
}

const char *mq_handlers_error(const mq_handlers *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (strcmp(h->entries[i].name, name) == 0)
      return h->entries[i].error;
  return NULL;
}

void mq_handlers_missing(const mq_handlers *h, const char *name, char *out,
                         size_t len) {
  int w = snprintf(out, len, "no handler for job \"%s\" (known: ", name);
  size_t used = w < 0 ? 0 : (size_t)w, n = 0;
  for (size_t i = 0; i < h->n && used < len; i++) {
    if (!h->entries[i].loaded)
      continue;
    w = snprintf(out + used, len - used, "%s%s", n++ ? ", " : "",
                 h->entries[i].name);
    used += w < 0 ? 0 : (size_t)w;
  }
  if (used < len)
    snprintf(out + used, len - used, "%s", n ? ")" : "none)");
}

/* ---- watching --------------------------------------------------------- */

/* Watching failed for a reason other than a vanished directory (the
 * system's watch limit, memory): scans every POLL s from now on. */
static void fall_back(mq_handlers *h, const char *why) {
  mq_log_warn("handlers", "cannot watch the handlers directory for changes "
              "(%s): scanning it every %g s instead dir=%s", why, POLL, h->dir);
  mq_dirwatch_close(h->watch);
  h->watch = NULL;
  ev_timer_stop(h->loop, &h->tick);
  ev_timer_set(&h->tick, POLL, POLL);
  ev_timer_start(h->loop, &h->tick);
  ev_unref(h->loop); /* polling alone keeps no loop running */
}

/* A watch that could not be added: a directory that vanished meanwhile is
 * the next scan's business, anything else ends watching. */
static void watch_failed(mq_handlers *h, const char *path) {
  if (errno == ENOENT || errno == ENOTDIR || errno == EACCES)
    return;
  char why[4200];
  snprintf(why, sizeof why, "%s: %s%s", path, strerror(errno),
           errno == ENOSPC ? " (fs.inotify.max_user_watches reached)" : "");
  fall_back(h, why);
}

/* suffix: which files' writes count (NULL: every file's). */
static void watch_dir(mq_handlers *h, const char *path, const char *suffix) {
  if (h->watch && mq_dirwatch_dir(h->watch, path, suffix) != 0)
    watch_failed(h, path);
}

/* A symlinked file: the directory it resolves into, where it changes
 * (whatever the name it has there). */
static void watch_target(mq_handlers *h, const char *path) {
  if (!h->watch)
    return;
  char *target = realpath(path, NULL);
  char *slash = target ? strrchr(target, '/') : NULL;
  if (slash) {
    slash[slash == target] = '\0'; /* "/f.lua" -> "/" */
    watch_dir(h, target, NULL);
  }
  free(target);
}

/* Each entry on the path to the handlers directory ("/srv/app/handlers":
 * handlers in /srv/app, app in /srv, srv in /), so that the directory
 * renamed into place or a symlink on its path swapped is noticed. */
static void watch_path(mq_handlers *h) {
  char path[4096];
  snprintf(path, sizeof path, "%s", h->dir);
  size_t len = strlen(path);
  while (len > 1 && path[len - 1] == '/')
    path[--len] = '\0';
  char *slash;
  while (h->watch && (slash = strrchr(path, '/'))) {
    *slash = '\0';
    const char *parent = slash == path ? "/" : path;
    if (slash[1] && mq_dirwatch_entry(h->watch, parent, slash + 1) != 0)
      watch_failed(h, parent);
  }
  if (h->watch && path[0] && mq_dirwatch_entry(h->watch, ".", path) != 0)
    watch_failed(h, "."); /* the first name of a relative path */
}

/* Something under the directory may have changed: scan after SETTLE s,
 * counted from the first change (more changes do not postpone it). */
static void notified(void *data) {
  mq_handlers *h = data;
  if (!ev_is_active(&h->tick)) {
    ev_timer_set(&h->tick, SETTLE, 0.);
    ev_timer_start(h->loop, &h->tick);
  }
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  mq_handlers *h = t->data;
  int n = mq_handlers_scan(h, false);
  if (h->watch && h->settling)
    notified(h); /* a file still being written: look again */
  if (n > 0 && h->on_change)
    h->on_change(h->data);
}

int mq_handlers_watch(mq_handlers *h, struct ev_loop *loop,
                      void (*on_change)(void *data), void *data) {
  h->loop = loop;
  h->on_change = on_change;
  h->data = data;
  ev_init(&h->tick, tick_cb);
  h->tick.data = h;
  char err[256];
  if (!(h->watch = mq_dirwatch_new(loop, notified, h, err, sizeof err)))
    fall_back(h, err);
  return mq_handlers_scan(h, false);
}

void mq_handlers_unwatch(mq_handlers *h) {
  if (!h->loop)
    return;
  if (!h->watch && ev_is_active(&h->tick))
    ev_ref(h->loop); /* the poll was unreferenced */
  ev_timer_stop(h->loop, &h->tick);
  mq_dirwatch_close(h->watch);
  h->watch = NULL;
  h->loop = NULL;
}

void mq_handlers_free(mq_handlers *h) {
  if (!h)
    return;
  mq_handlers_unwatch(h);
  for (size_t i = 0; i < h->n; i++) {
    unload(h, &h->entries[i]);
    forget_step(h->L, h->entries[i].name);
    free(h->entries[i].path);
    free(h->entries[i].name);
    free(h->entries[i].error);
  }
  free(h->entries);
  free(h->index);
  free(h->dir);
  free(h);
}
