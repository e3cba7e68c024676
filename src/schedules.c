/* schedules.c -- cron schedules and their fires; see schedules.h and
 * sql/011_schedules.sql.
 *
 * Shapes:
 *  - entry: one enabled schedule as a firing process holds it. `cursor`
 *    is the time up to which every slot was fired or skipped here; `next`
 *    is the first slot after it. Entries are kept sorted by id, so a load
 *    (ordered by id) merges with them in one walk.
 *  - batch: the slots of one wake-up (or load), as three array literals
 *    for fire_schedules; sent every MQ_SCHEDULES_BATCH slots.
 *
 * A load, a fire and the check each carry the handle's `generation`: a
 * stop bumps it, so an answer to a request made before is ignored.
 */
#include "schedules.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "cron.h"
#include "json.h"
#include "log.h"

#define CLEANUP_EVERY 60.0   /* seconds between deletions of old fires */
#define CLEANUP_BATCH 10000  /* rows deleted per pass at most */
#define RETRY_AFTER 2.0      /* seconds before a failed load is retried */
#define FIRST_SPAN 64.0      /* seconds searched first for recent slots */

/* The columns mq_schedules_list shows, of a schedule row `x`. */
#define COLUMNS                                                            \
  "x.name, x.cron, x.tz, x.job, x.data::text, x.options::text,"            \
  " %s.backfill_text(x.backfill_seconds, x.backfill_slots), x.enabled,"    \
  " x.source, x.error, extract(epoch FROM x.next_slot)::float8,"           \
  " extract(epoch FROM x.last_slot)::float8"
enum column {
  C_NAME, C_CRON, C_TZ, C_JOB, C_DATA, C_OPTIONS, C_BACKFILL, C_ENABLED,
  C_SOURCE, C_ERROR, C_NEXT, C_LAST
};

enum stmt {
  ST_LOAD,
  ST_CHECK,
  ST_FIRE,
  ST_STORE_NEXT,
  ST_SYNC,
  ST_PUT,
  ST_UNSCHEDULE,
  ST_LIST,
  ST_CLEANUP,
  ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_LOAD] = "SELECT id, version, name, cron, tz, backfill_seconds,"
                " backfill_slots, since, next_slot FROM %s.load_schedules()",
    [ST_CHECK] = "SELECT count(*), coalesce(max(version), 0) FROM"
                 " %s.schedule WHERE enabled",
    [ST_FIRE] = "SELECT %s.fire_schedules($1::bigint[], $2::float8[],"
                " $3::float8[])",
    [ST_STORE_NEXT] = "SELECT %s.store_schedule_next($1::bigint[],"
                      " $2::float8[], $3::text[])",
    [ST_SYNC] = "SELECT %s.sync_config_schedules($1::jsonb)::text",
    [ST_PUT] = "SELECT " COLUMNS " FROM %s.put_schedule($1, $2, $3, $4,"
               " $5::jsonb, $6::jsonb, $7, 'api') x",
    [ST_UNSCHEDULE] = "SELECT %s.unschedule($1)::text",
    [ST_LIST] = "SELECT " COLUMNS " FROM %s.schedule x ORDER BY x.name",
    [ST_CLEANUP] = "SELECT %s.delete_old_fires($1::float8, $2::integer)",
};

struct entry {
  long long id, version;
  char *name;
  char *tz;         /* NULL: UTC */
  struct mq_cron cron;
  int backfill_seconds, backfill_slots; /* 0: unset */
  double stored_next; /* next_slot as the database holds it; NAN: null */
  double cursor;
  double next;      /* INFINITY: never (or bad) */
  char *error;      /* why it cannot fire (disabled when stored), or NULL */
};

/* Three PostgreSQL array literals under construction. */
struct arrays {
  char *a[3];
  size_t len[3], cap[3];
  int rows;
};

/* A fire statement's arrays, waiting for the one before it. */
struct fire {
  struct fire *next;
  char *a[3];
  int rows;
};

struct mq_schedules {
  struct ev_loop *loop;
  mq_pg *pg;
  const struct mq_config *cfg;
  int stmts[ST_COUNT];
  char channel[80]; /* "<schema>_schedules" */
  bool firing;
  bool loading;     /* a load in flight */
  bool reload;      /* load again when it is back */
  bool stale;       /* a fire failed: the next load starts every schedule
                       again from what the database holds */
  bool cleaning;    /* a deletion of old fires in flight */
  unsigned generation;
  struct entry **entries; /* sorted by id */
  size_t n;
  ev_periodic timer;  /* the earliest next slot */
  ev_timer check;     /* fallback check for changes; retries a load */
  ev_timer cleanup;
  struct arrays batch;
  /* Fires go one at a time, in the order their slots came due: a newer
   * slot committed first would make the database refuse the older ones
   * (a slot at or before a schedule's last fired slot never fires). */
  struct fire *fires, *fires_tail;
  bool fire_inflight;
};

/* What a request of the firing side remembers of its handle. */
struct call {
  mq_schedules *s;
  unsigned generation;
  int rows; /* slots of a fire */
};

static void timer_cb(struct ev_loop *loop, ev_periodic *w, int revents);
static void check_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void cleanup_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void notify_cb(const char *channel, const char *payload, void *data);
static void request_load(mq_schedules *s);
static void arm(mq_schedules *s);
static void flush_batch(mq_schedules *s);
static void drop_fires(mq_schedules *s);
static void entry_free(struct entry *e);
static void forget_entries(mq_schedules *s);
static int status_of(const struct mq_pg_reply *r);
static struct call *call_new(mq_schedules *s);
static void after(struct ev_loop *loop, ev_timer *t, double seconds);
static bool format_time(double t, const char *tz, char *out, size_t len);
static char *rows_json(const PGresult *res, bool array, char *err,
                       size_t errlen);

mq_schedules *mq_schedules_new(struct ev_loop *loop, mq_pg *pg,
                               const struct mq_config *cfg) {
  mq_schedules *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->loop = loop;
  s->pg = pg;
  s->cfg = cfg;
  for (int i = 0; i < ST_COUNT; i++) {
    if ((s->stmts[i] = mq_pg_prepare_in(pg, stmt_sql[i], cfg->schema)) < 0) {
      free(s);
      return NULL;
    }
  }
  snprintf(s->channel, sizeof s->channel, "%s_schedules", cfg->schema);
  ev_periodic_init(&s->timer, timer_cb, 0., 0., NULL);
  s->timer.data = s;
  ev_timer_init(&s->check, check_cb, MQ_SCHEDULES_CHECK, MQ_SCHEDULES_CHECK);
  s->check.data = s;
  ev_timer_init(&s->cleanup, cleanup_cb, CLEANUP_EVERY, CLEANUP_EVERY);
  s->cleanup.data = s;
  return s;
}

int mq_schedules_start(mq_schedules *s) {
  if (s->firing)
    return 0;
  if (mq_pg_listen(s->pg, s->channel, notify_cb, s) != 0)
    return MQ_SCHEDULES_EDB;
  s->firing = true;
  s->stale = false;
  after(s->loop, &s->check, MQ_SCHEDULES_CHECK);
  after(s->loop, &s->cleanup, CLEANUP_EVERY);
  request_load(s);
  return 0;
}

void mq_schedules_stop(mq_schedules *s) {
  if (!s->firing)
    return;
  s->firing = false;
  s->generation++;
  s->loading = s->reload = false;
  mq_pg_unlisten(s->pg, s->channel, notify_cb, s);
  ev_periodic_stop(s->loop, &s->timer);
  ev_timer_stop(s->loop, &s->check);
  ev_timer_stop(s->loop, &s->cleanup);
  flush_batch(s); /* the slots due so far still go, in order */
  forget_entries(s);
}

bool mq_schedules_firing(const mq_schedules *s) { return s->firing; }

void mq_schedules_close(mq_schedules *s) {
  if (!s)
    return;
  mq_schedules_stop(s);
  drop_fires(s);
  for (int i = 0; i < 3; i++)
    free(s->batch.a[i]);
  free(s->entries);
  free(s);
}

/* ---- slots ---------------------------------------------------------------- */

/* Fills out[0..*n) with the latest `max` slots of cron (in tz) in
 * (from, to], oldest first. Searches back from `to` in growing spans, so
 * that a schedule that fires every second and was last fired a year ago
 * costs what its last `max` slots cost. */
static void latest_slots(const struct mq_cron *cron, const char *tz,
                         double from, double to, int max, double *out,
                         int *n) {
  *n = 0;
  if (max < 1 || !(to > from))
    return;
  for (double span = FIRST_SPAN;; span *= 8) {
    double lo = to - span > from ? to - span : from, t = lo;
    long found = 0;
    double next;
    while (mq_cron_next(cron, tz, t < 0 ? 0 : t, &next, NULL, 0) == 0 &&
           next <= to) {
      out[found++ % max] = next;
      t = next;
    }
    if (found < max && lo > from)
      continue; /* too few: look further back */
    *n = found < max ? (int)found : max;
    if (found > max) { /* the ring's oldest element is at found % max */
      double tmp[MQ_SCHEDULES_MAX_SLOTS];
      int head = (int)(found % max);
      for (int i = 0; i < max; i++)
        tmp[i] = out[(head + i) % max];
      memcpy(out, tmp, sizeof *out * (size_t)max);
    }
    return;
  }
}

int mq_schedules_due(const struct mq_cron *cron, const char *tz,
                     int backfill_seconds, int backfill_slots, double cursor,
                     double now, double on_time, double *out) {
  double recent[MQ_SCHEDULES_MAX_SLOTS];
  double missed_end = now - on_time, from = cursor;
  int nrecent = 0, nmissed = 0;
  if (!(now > cursor))
    return 0;
  latest_slots(cron, tz, from > missed_end ? from : missed_end, now,
               MQ_SCHEDULES_MAX_SLOTS, recent, &nrecent);
  int room = MQ_SCHEDULES_MAX_SLOTS - nrecent;
  if (backfill_slots > 0) {
    latest_slots(cron, tz, from, missed_end,
                 backfill_slots < room ? backfill_slots : room, out, &nmissed);
  } else if (backfill_seconds > 0) {
    double lo = now - backfill_seconds;
    latest_slots(cron, tz, from > lo ? from : lo, missed_end, room, out,
                 &nmissed);
  }
  if (nmissed == 0 && nrecent == 0) { /* no backfill: the latest if recent */
    double lo = now - MQ_SCHEDULES_GRACE;
    latest_slots(cron, tz, from > lo ? from : lo, missed_end, 1, out,
                 &nmissed);
  }
  memcpy(out + nmissed, recent, sizeof *out * (size_t)nrecent);
  return nmissed + nrecent;
}

/* The first slot of e after t, or INFINITY. */
static double next_after(const struct entry *e, double t) {
  double next;
  if (e->error || mq_cron_next(&e->cron, e->tz, t, &next, NULL, 0) != 0)
    return INFINITY;
  return next;
}

/* ---- firing ------------------------------------------------------------- */

static int arrays_add(struct arrays *b, int i, const char *s, size_t n) {
  return mq_buf_add(&b->a[i], &b->len[i], &b->cap[i], s, n);
}

/* Appends one element to each of the three arrays (text already quoted
 * where needed). */
static int arrays_row(struct arrays *b, const char *const v[3]) {
  for (int i = 0; i < 3; i++)
    if (arrays_add(b, i, b->rows ? "," : "{", 1) != 0 ||
        arrays_add(b, i, v[i], strlen(v[i])) != 0)
      return -1;
  b->rows++;
  return 0;
}

/* Closes the arrays; returns -1 when out of memory. */
static int arrays_end(struct arrays *b) {
  for (int i = 0; i < 3; i++)
    if (arrays_add(b, i, b->rows ? "}" : "{}", b->rows ? 1 : 2) != 0)
      return -1;
  return 0;
}

static void arrays_reset(struct arrays *b) {
  for (int i = 0; i < 3; i++) {
    b->len[i] = 0;
    if (b->a[i])
      b->a[i][0] = '\0';
  }
  b->rows = 0;
}

/* Writes a time as an array element: whole seconds, or NULL. */
static const char *time_element(double t, char *buf, size_t len) {
  if (!isfinite(t))
    return "NULL";
  snprintf(buf, len, "%.0f", t);
  return buf;
}

static void send_fire(mq_schedules *s);

static void fire_free(struct fire *f) {
  for (int i = 0; i < 3; i++)
    free(f->a[i]);
  free(f);
}

/* Forgets the fires not sent yet. */
static void drop_fires(mq_schedules *s) {
  struct fire *f = s->fires;
  if (s->fire_inflight && f) /* its reply frees it */
    f = f->next, s->fires->next = NULL, s->fires_tail = s->fires;
  else
    s->fires = s->fires_tail = NULL;
  while (f) {
    struct fire *next = f->next;
    fire_free(f);
    f = next;
  }
}

static void fired(const struct mq_pg_reply *r, void *data) {
  struct call *c = data;
  mq_schedules *s = c->s;
  struct fire *f = s->fires;
  s->fires = f->next;
  if (!s->fires)
    s->fires_tail = NULL;
  s->fire_inflight = false;
  fire_free(f);
  if (r->status == MQ_PG_OK) {
    mq_log_debug("schedules", "fire slots=%d fired=%s", c->rows,
                 PQgetvalue(r->result, 0, 0));
    send_fire(s);
  } else {
    char fields[512] = "";
    mq_log_field(fields, sizeof fields, "error", r->error);
    mq_log_warn("schedules", "fire failed slots=%d%s", c->rows, fields);
    /* The later fires wait: once the database answers, a load starts every
     * schedule again from what it holds as fired, and the slots at most
     * MQ_SCHEDULES_GRACE late then (more with a backfill) fire. */
    drop_fires(s);
    if (c->generation == s->generation && s->firing) {
      s->stale = true;
      after(s->loop, &s->check, RETRY_AFTER);
    }
  }
  free(c);
}

/* Sends the oldest fire when none is in flight. */
static void send_fire(mq_schedules *s) {
  struct fire *f = s->fires;
  if (s->fire_inflight || !f)
    return;
  struct call *c = call_new(s);
  const char *params[3] = {f->a[0], f->a[1], f->a[2]};
  /* Safe to send again after a lost connection: a slot fires once. */
  if (!c || mq_pg_exec(s->pg, s->stmts[ST_FIRE], 3, params, MQ_PG_RETRY,
                       fired, c) != 0) {
    mq_log_warn("schedules", "fire failed slots=%d error=\"%s\"", f->rows,
                c ? "the connection pool is closed" : "out of memory");
    free(c);
    drop_fires(s);
    return;
  }
  c->rows = f->rows;
  s->fire_inflight = true;
}

/* Queues the batch gathered so far as a fire, after those queued before. */
static void flush_batch(mq_schedules *s) {
  struct arrays *b = &s->batch;
  if (b->rows == 0)
    return;
  struct fire *f = calloc(1, sizeof *f);
  if (!f || arrays_end(b) != 0) {
    mq_log_error("schedules", "out of memory: %d slots not fired", b->rows);
    free(f);
    arrays_reset(b);
    return;
  }
  f->rows = b->rows;
  for (int i = 0; i < 3; i++) { /* the fire takes the buffers */
    f->a[i] = b->a[i];
    b->a[i] = NULL;
    b->len[i] = b->cap[i] = 0;
  }
  b->rows = 0;
  if (s->fires_tail)
    s->fires_tail->next = f;
  else
    s->fires = f;
  s->fires_tail = f;
  send_fire(s);
}

/* Adds slot t of e (whose next slot after the batch is `next`). */
static void add_fire(mq_schedules *s, const struct entry *e, double t,
                     double next) {
  char id[32], slot[32], nx[32];
  snprintf(id, sizeof id, "%lld", e->id);
  const char *v[3] = {id, time_element(t, slot, sizeof slot),
                      time_element(next, nx, sizeof nx)};
  if (arrays_row(&s->batch, v) != 0) {
    mq_log_error("schedules", "out of memory: slot not fired name=%s",
                 e->name);
    return;
  }
  if (s->batch.rows >= MQ_SCHEDULES_BATCH)
    flush_batch(s);
}

/* Fires what is due of e at `now` (slots later than now - on_time are on
 * time) and moves its cursor to now. Returns how many slots. */
static int catch_up(mq_schedules *s, struct entry *e, double now,
                    double on_time) {
  double slots[MQ_SCHEDULES_MAX_SLOTS];
  int n = e->error ? 0
                   : mq_schedules_due(&e->cron, e->tz, e->backfill_seconds,
                                      e->backfill_slots, e->cursor, now,
                                      on_time, slots);
  if (e->cursor < now)
    e->cursor = now;
  e->next = next_after(e, e->cursor);
  for (int i = 0; i < n; i++)
    add_fire(s, e, slots[i], e->next);
  return n;
}

static void timer_cb(struct ev_loop *loop, ev_periodic *w, int revents) {
  mq_schedules *s = w->data;
  double now = ev_time(), earliest = now;
  for (size_t i = 0; i < s->n; i++) {
    struct entry *e = s->entries[i];
    if (e->next > now)
      continue;
    earliest = e->next < earliest ? e->next : earliest;
    if (s->stale) { /* a fire failed: the next load fires these */
      e->cursor = now;
      e->next = next_after(e, now);
    } else {
      catch_up(s, e, now, MQ_SCHEDULES_GRACE);
    }
  }
  if (now - earliest > MQ_SCHEDULES_GRACE) /* suspended, or the clock jumped */
    mq_log_info("schedules", "woke late: older slots are missed slots late_s=%.0f",
                now - earliest);
  flush_batch(s);
  arm(s);
}

/* Arms the timer for the earliest next slot, at its wall-clock time. */
static void arm(mq_schedules *s) {
  double at = INFINITY;
  for (size_t i = 0; i < s->n; i++)
    if (s->entries[i]->next < at)
      at = s->entries[i]->next;
  ev_periodic_stop(s->loop, &s->timer);
  if (!s->firing || !isfinite(at))
    return;
  ev_periodic_set(&s->timer, at, 0., NULL);
  ev_periodic_start(s->loop, &s->timer);
}

/* ---- loading ------------------------------------------------------------ */

static void entry_free(struct entry *e) {
  if (!e)
    return;
  free(e->name);
  free(e->tz);
  free(e->error);
  free(e);
}

static void forget_entries(mq_schedules *s) {
  for (size_t i = 0; i < s->n; i++)
    entry_free(s->entries[i]);
  s->n = 0;
}

static double get_time(const PGresult *res, int row, int col) {
  return PQgetisnull(res, row, col) ? NAN : mq_pg_getdouble(res, row, col);
}

/* A new entry from row `row` of a load; its cron read with cron.h (a
 * problem goes to e->error). NULL when out of memory. */
static struct entry *entry_from(const PGresult *res, int row) {
  struct entry *e = calloc(1, sizeof *e);
  if (!e)
    return NULL;
  const char *tz = PQgetvalue(res, row, 4);
  e->id = mq_pg_getll(res, row, 0);
  e->version = mq_pg_getll(res, row, 1);
  e->name = strdup(PQgetvalue(res, row, 2));
  e->tz = strcmp(tz, "UTC") == 0 ? NULL : strdup(tz);
  e->backfill_seconds = (int)mq_pg_getll(res, row, 5);
  e->backfill_slots = (int)mq_pg_getll(res, row, 6);
  e->cursor = get_time(res, row, 7);
  e->stored_next = get_time(res, row, 8);
  if (!e->name || (!e->tz && strcmp(tz, "UTC") != 0)) {
    entry_free(e);
    return NULL;
  }
  struct mq_schedule_config def = {.name = e->name,
                                   .cron = PQgetvalue(res, row, 3),
                                   .tz = e->tz};
  char err[512];
  const char *key = mq_config_check_schedule(&def, err, sizeof err);
  if (!key) {
    mq_cron_parse(def.cron, &e->cron, NULL, 0);
    return e;
  }
  size_t n = strlen(key) + strlen(err) + 3;
  if (!(e->error = malloc(n))) {
    entry_free(e);
    return NULL;
  }
  snprintf(e->error, n, "%s: %s", key, err);
  return e;
}

/* Logs a failed request; data is what it was doing. */
static void logged(const struct mq_pg_reply *r, void *data) {
  if (r->status != MQ_PG_OK) {
    char fields[512] = "";
    mq_log_field(fields, sizeof fields, "error", r->error);
    mq_log_warn("schedules", "%s failed%s", (const char *)data, fields);
  }
}

/* Tells the database the next slots that differ from what it holds and
 * the schedules that cannot fire (which it disables). */
static void store_next(mq_schedules *s) {
  struct arrays b = {0};
  bool failed = false;
  for (size_t i = 0; i < s->n && !failed; i++) {
    struct entry *e = s->entries[i];
    bool same = isnan(e->stored_next) ? !isfinite(e->next)
                                      : e->stored_next == e->next;
    if (same && !e->error)
      continue;
    char id[32], nx[32];
    snprintf(id, sizeof id, "%lld", e->id);
    const char *v[3] = {id, time_element(e->next, nx, sizeof nx), "NULL"};
    char *quoted = NULL;
    if (e->error) { /* an element of a text[] literal */
      size_t q = 0, cap = 0;
      failed = mq_buf_add(&quoted, &q, &cap, "\"", 1) != 0;
      for (const char *p = e->error; *p && !failed; p++)
        failed = ((*p == '"' || *p == '\\') &&
                  mq_buf_add(&quoted, &q, &cap, "\\", 1) != 0) ||
                 mq_buf_add(&quoted, &q, &cap, p, 1) != 0;
      failed = failed || mq_buf_add(&quoted, &q, &cap, "\"", 1) != 0;
      v[2] = quoted;
    }
    failed = failed || arrays_row(&b, v) != 0;
    free(quoted);
    e->stored_next = e->next;
  }
  if (!failed && b.rows > 0 && arrays_end(&b) == 0) {
    const char *params[3] = {b.a[0], b.a[1], b.a[2]};
    if (mq_pg_exec(s->pg, s->stmts[ST_STORE_NEXT], 3, params, 0, logged,
                   (void *)"storing next slots") != 0)
      mq_log_warn("schedules", "storing next slots failed error=\"the "
                  "connection pool is closed\"");
  } else if (failed) {
    mq_log_error("schedules", "out of memory: next slots not stored");
  }
  for (int i = 0; i < 3; i++)
    free(b.a[i]);
}

/* Logs a schedule that cannot fire, or the missed slots of one loaded:
 * since when, and how many slots are due now (sent to fire; a slot
 * another process fired meanwhile fires no second time). */
static void log_loaded(const struct entry *e, double since, double now,
                       int due) {
  char fields[1024] = "";
  mq_log_field(fields, sizeof fields, "name", e->name);
  if (e->error) {
    mq_log_field(fields, sizeof fields, "error", e->error);
    mq_log_error("schedules", "schedule disabled%s", fields);
    return;
  }
  double first = next_after(e, since);
  if (!(first <= now - MQ_SCHEDULES_GRACE))
    return; /* nothing older than the grace was missed */
  char at[64];
  if (!format_time(since, e->tz, at, sizeof at))
    snprintf(at, sizeof at, "%.0f", since);
  mq_log_field(fields, sizeof fields, "missed_since", at);
  snprintf(at, sizeof at, "%d", due);
  mq_log_field(fields, sizeof fields, "due", at);
  mq_log_info("schedules", "missed slots%s", fields);
}

/* A loaded row for which this process holds nothing current: takes its
 * place (freeing `old`, the entry of an older version, if any) and fires
 * its missed slots. NULL when out of memory (old is kept). */
static struct entry *load_entry(mq_schedules *s, const PGresult *res, int row,
                                struct entry *old, double now) {
  struct entry *e = entry_from(res, row);
  if (!e)
    return NULL;
  double since = e->cursor;
  if (isnan(e->cursor))
    e->cursor = now;
  /* Slots this process already fired or skipped stay done. */
  if (old && !s->stale && old->cursor > e->cursor)
    e->cursor = old->cursor;
  entry_free(old);
  /* After a failed fire this process ran on: a slot at most
   * MQ_SCHEDULES_GRACE late is on time, as it would have been. */
  int due = catch_up(s, e, now, s->stale ? MQ_SCHEDULES_GRACE : 0);
  log_loaded(e, since, now, due);
  return e;
}

/* Merges a load (rows ordered by id) into the entries (ordered by id). */
static void merge(mq_schedules *s, const PGresult *res) {
  int rows = PQntuples(res);
  struct entry **next = calloc(rows ? (size_t)rows : 1, sizeof *next);
  if (!next) {
    mq_log_error("schedules", "out of memory: schedules not loaded");
    return;
  }
  double now = ev_time();
  size_t k = 0, n = 0;
  for (int row = 0; row < rows; row++) {
    long long id = mq_pg_getll(res, row, 0);
    while (k < s->n && s->entries[k]->id < id)
      entry_free(s->entries[k++]); /* deleted or disabled */
    struct entry *old = k < s->n && s->entries[k]->id == id
                            ? s->entries[k++] : NULL;
    if (old && !s->stale && old->version == mq_pg_getll(res, row, 1)) {
      next[n++] = old;
      continue;
    }
    struct entry *e = load_entry(s, res, row, old, now);
    if (e)
      next[n++] = e;
    else if (old)
      next[n++] = old;
  }
  while (k < s->n)
    entry_free(s->entries[k++]);
  flush_batch(s);
  free(s->entries);
  s->entries = next;
  s->n = n;
  s->stale = false;
}

static void loaded(const struct mq_pg_reply *r, void *data) {
  struct call *c = data;
  mq_schedules *s = c->s;
  bool current = c->generation == s->generation && s->firing;
  free(c);
  if (!current)
    return;
  s->loading = false;
  if (r->status != MQ_PG_OK) {
    char fields[512] = "";
    mq_log_field(fields, sizeof fields, "error", r->error);
    mq_log_warn("schedules", "loading schedules failed retry_in_s=%g%s",
                RETRY_AFTER, fields);
    after(s->loop, &s->check, RETRY_AFTER);
    return;
  }
  merge(s, r->result);
  mq_log_debug("schedules", "loaded count=%zu", s->n);
  store_next(s);
  arm(s);
  if (s->reload) {
    s->reload = false;
    request_load(s);
  }
}

/* Reads the enabled schedules (again); one load in flight at a time. */
static void request_load(mq_schedules *s) {
  if (!s->firing)
    return;
  if (s->loading) {
    s->reload = true;
    return;
  }
  struct call *c = call_new(s);
  if (!c)
    return;
  if (mq_pg_exec(s->pg, s->stmts[ST_LOAD], 0, NULL, MQ_PG_RETRY, loaded, c) !=
      0) {
    free(c);
    return;
  }
  s->loading = true;
}

static void notify_cb(const char *channel, const char *payload, void *data) {
  request_load(data);
}

/* The fallback check: a count and the highest version of the enabled
 * schedules tell whether a change was missed. */
static void checked(const struct mq_pg_reply *r, void *data) {
  struct call *c = data;
  mq_schedules *s = c->s;
  bool current = c->generation == s->generation && s->firing;
  free(c);
  if (!current || r->status != MQ_PG_OK)
    return;
  long long count = mq_pg_getll(r->result, 0, 0);
  long long version = mq_pg_getll(r->result, 0, 1), held = 0;
  for (size_t i = 0; i < s->n; i++)
    if (s->entries[i]->version > held)
      held = s->entries[i]->version;
  if (count != (long long)s->n || version != held) {
    mq_log_debug("schedules", "a change was missed: loading again");
    request_load(s);
  }
}

static void check_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_schedules *s = w->data;
  after(loop, w, MQ_SCHEDULES_CHECK);
  if (s->stale || s->loading) { /* a retry after a failure */
    request_load(s);
    return;
  }
  struct call *c = call_new(s);
  if (c && mq_pg_exec(s->pg, s->stmts[ST_CHECK], 0, NULL, 0, checked, c) != 0)
    free(c);
}

/* ---- history --------------------------------------------------------------- */

static void cleaned(const struct mq_pg_reply *r, void *data) {
  struct call *c = data;
  mq_schedules *s = c->s;
  bool current = c->generation == s->generation && s->firing;
  free(c);
  s->cleaning = false;
  if (r->status != MQ_PG_OK) {
    logged(r, (void *)"deleting old fires");
    return;
  }
  if (PQgetisnull(r->result, 0, 0))
    return; /* another process is at it */
  long long n = mq_pg_getll(r->result, 0, 0);
  if (n > 0)
    mq_log_debug("schedules", "old fires deleted=%lld", n);
  if (current && n >= CLEANUP_BATCH) /* more to go: soon */
    after(s->loop, &s->cleanup, 1.);
}

static void cleanup_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_schedules *s = w->data;
  after(loop, w, CLEANUP_EVERY);
  if (s->cleaning)
    return;
  char keep[32], batch[32];
  snprintf(keep, sizeof keep, "%.0f", MQ_SCHEDULES_KEEP);
  snprintf(batch, sizeof batch, "%d", CLEANUP_BATCH);
  const char *params[2] = {keep, batch};
  struct call *c = call_new(s);
  if (c && mq_pg_exec(s->pg, s->stmts[ST_CLEANUP], 2, params, 0, cleaned, c) ==
               0)
    s->cleaning = true;
  else
    free(c);
}

/* ---- the API ------------------------------------------------------------- */

/* (Re)starts timer t to run in `seconds`, then every `seconds` (until the
 * callback asks otherwise). */
static void after(struct ev_loop *loop, ev_timer *t, double seconds) {
  t->repeat = seconds;
  ev_timer_again(loop, t);
}

static struct call *call_new(mq_schedules *s) {
  struct call *c = calloc(1, sizeof *c);
  if (c)
    *c = (struct call){s, s->generation, 0};
  return c;
}

/* The status for a failed reply: bad input (SQLSTATE class 22) or a
 * database failure. */
static int status_of(const struct mq_pg_reply *r) {
  return r->status == MQ_PG_ESQL && strncmp(r->sqlstate, "22", 2) == 0
             ? MQ_SCHEDULES_EINVAL
             : MQ_SCHEDULES_EDB;
}

/* Sends statement st and calls cb with its answer, the first column of
 * the first row as it is (raw) or all rows as schedules (list, put). */
struct api_call {
  mq_schedules_cb cb;
  void *data;
  enum stmt stmt;
};

static void answered(const struct mq_pg_reply *r, void *data) {
  struct api_call *c = data;
  if (r->status != MQ_PG_OK) {
    c->cb(status_of(r), r->error, NULL, c->data);
  } else if (c->stmt == ST_LIST || c->stmt == ST_PUT) {
    char err[256];
    char *json = rows_json(r->result, c->stmt == ST_LIST, err, sizeof err);
    if (json)
      c->cb(MQ_SCHEDULES_OK, NULL, json, c->data);
    else
      c->cb(MQ_SCHEDULES_EDB, err, NULL, c->data);
    free(json);
  } else {
    c->cb(MQ_SCHEDULES_OK, NULL, PQgetvalue(r->result, 0, 0), c->data);
  }
  free(c);
}

static int api(mq_schedules *s, enum stmt st, int nparams,
               const char *const *params, mq_schedules_cb cb, void *data) {
  struct api_call *c = malloc(sizeof *c);
  if (!c)
    return MQ_SCHEDULES_EDB;
  *c = (struct api_call){cb, data, st};
  if (mq_pg_exec(s->pg, s->stmts[st], nparams, params, 0, answered, c) != 0) {
    free(c);
    return MQ_SCHEDULES_EDB;
  }
  return 0;
}

int mq_schedules_sync_config(mq_schedules *s, mq_schedules_cb cb,
                             void *data) {
  char *json = NULL, err[256];
  size_t len = 0, cap = 0;
  int rc = mq_buf_add(&json, &len, &cap, "[", 1);
  for (size_t i = 0; i < s->cfg->nschedules && rc == 0; i++) {
    const struct mq_schedule_config *d = &s->cfg->schedules[i];
    mq_json_object *o = mq_json_object_new();
    mq_json_object_string(o, "name", d->name);
    mq_json_object_string(o, "cron", d->cron);
    mq_json_object_string(o, "tz", d->tz);
    mq_json_object_string(o, "job", d->job);
    mq_json_object_raw(o, "data", d->data_json);
    mq_json_object_raw(o, "options", d->options_json);
    mq_json_object_string(o, "backfill", d->backfill);
    char *one = mq_json_object_finish(o, err, sizeof err);
    rc = !one || (i > 0 && mq_buf_add(&json, &len, &cap, ",", 1) != 0) ||
         mq_buf_add(&json, &len, &cap, one, strlen(one)) != 0;
    free(one);
  }
  if (rc == 0)
    rc = mq_buf_add(&json, &len, &cap, "]", 1);
  const char *params[1] = {json};
  if (rc == 0)
    rc = api(s, ST_SYNC, 1, params, cb, data);
  free(json);
  return rc == 0 ? 0 : MQ_SCHEDULES_EDB;
}

int mq_schedules_schedule(mq_schedules *s,
                          const struct mq_schedule_config *def,
                          mq_schedules_cb cb, void *data, char *err,
                          size_t errlen) {
  char msg[512];
  const char *key = mq_config_check_schedule(def, msg, sizeof msg);
  if (key) {
    snprintf(err, errlen, "%s: %s", key, msg);
    return MQ_SCHEDULES_EINVAL;
  }
  size_t size = def->data_json ? strlen(def->data_json) : 0;
  if (size > (size_t)s->cfg->max_payload) {
    snprintf(err, errlen, "data: %zu bytes, more than max_payload (%d)", size,
             s->cfg->max_payload);
    return MQ_SCHEDULES_EINVAL;
  }
  const char *params[7] = {def->name,      def->cron,
                           def->tz,        def->job,
                           def->data_json, def->options_json,
                           def->backfill};
  if (api(s, ST_PUT, 7, params, cb, data) != 0) {
    snprintf(err, errlen, "the connection pool is closed");
    return MQ_SCHEDULES_EDB;
  }
  return 0;
}

int mq_schedules_unschedule(mq_schedules *s, const char *name,
                            mq_schedules_cb cb, void *data) {
  const char *params[1] = {name};
  return api(s, ST_UNSCHEDULE, 1, params, cb, data);
}

int mq_schedules_list(mq_schedules *s, mq_schedules_cb cb, void *data) {
  return api(s, ST_LIST, 0, NULL, cb, data);
}

/* ---- schedules as JSON ------------------------------------------------- */

/* Writes Unix seconds t as ISO 8601 in zone tz: "2026-03-29T03:00:00+02:00",
 * or "...Z" in UTC. Returns false when t is out of range. */
static bool format_time(double t, const char *tz, char *out, size_t len) {
  int offset;
  if (mq_cron_offset(tz, t, &offset, NULL, 0) != 0)
    return false;
  time_t local = (time_t)floor(t) + offset;
  struct tm tm;
  if (!gmtime_r(&local, &tm))
    return false;
  size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!tz || !*tz || strcmp(tz, "UTC") == 0)
    snprintf(out + n, len - n, "Z");
  else
    snprintf(out + n, len - n, "%c%02d:%02d", offset < 0 ? '-' : '+',
             abs(offset) / 3600, abs(offset) / 60 % 60);
  return true;
}

static const char *text_or_null(const PGresult *res, int row, int col) {
  return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* Row `row` of a list or put as a JSON object (see mq_schedules_list);
 * NULL with a message in err. */
static char *row_json(const PGresult *res, int row, double now, char *err,
                      size_t errlen) {
  const char *tz = PQgetvalue(res, row, C_TZ);
  const char *error = text_or_null(res, row, C_ERROR);
  bool enabled = PQgetvalue(res, row, C_ENABLED)[0] == 't';
  char next[48], last[48], why[512];
  bool has_next = false;
  if (enabled) {
    struct mq_cron cron;
    double t;
    if (mq_cron_parse(PQgetvalue(res, row, C_CRON), &cron, why, sizeof why) ==
            0 &&
        mq_cron_next(&cron, tz, now, &t, why, sizeof why) == 0)
      has_next = format_time(t, tz, next, sizeof next);
    else if (!error)
      error = why; /* the firing processes will disable it */
  }
  bool has_last = !PQgetisnull(res, row, C_LAST) &&
                  format_time(mq_pg_getdouble(res, row, C_LAST), tz, last,
                              sizeof last);
  mq_json_object *o = mq_json_object_new();
  static const struct {
    const char *key;
    enum column col;
  } texts[] = {{"name", C_NAME}, {"cron", C_CRON}, {"tz", C_TZ},
               {"job", C_JOB}};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
    mq_json_object_string(o, texts[i].key, PQgetvalue(res, row, texts[i].col));
  mq_json_object_raw(o, "data", PQgetvalue(res, row, C_DATA));
  mq_json_object_raw(o, "options", PQgetvalue(res, row, C_OPTIONS));
  mq_json_object_string(o, "backfill", text_or_null(res, row, C_BACKFILL));
  mq_json_object_bool(o, "enabled", enabled);
  mq_json_object_string(o, "source", PQgetvalue(res, row, C_SOURCE));
  mq_json_object_string(o, "error", error);
  mq_json_object_string(o, "next", has_next ? next : NULL);
  mq_json_object_string(o, "last", has_last ? last : NULL);
  return mq_json_object_finish(o, err, errlen);
}

/* The rows of a list (a JSON array) or of a put (one object). */
static char *rows_json(const PGresult *res, bool array, char *err,
                       size_t errlen) {
  char *json = NULL;
  size_t len = 0, cap = 0;
  double now = (double)time(NULL);
  int rows = PQntuples(res);
  if (errlen > 0)
    err[0] = '\0';
  if (!array && rows != 1) {
    snprintf(err, errlen, "expected one schedule, got %d", rows);
    return NULL;
  }
  bool ok = !array || mq_buf_add(&json, &len, &cap, "[", 1) == 0;
  for (int i = 0; i < rows && ok; i++) {
    char *one = row_json(res, i, now, err, errlen);
    ok = one && (i == 0 || mq_buf_add(&json, &len, &cap, ",", 1) == 0) &&
         mq_buf_add(&json, &len, &cap, one, strlen(one)) == 0;
    free(one);
  }
  if (ok && array)
    ok = mq_buf_add(&json, &len, &cap, "]", 1) == 0;
  if (!ok) {
    if (!err[0])
      snprintf(err, errlen, "out of memory");
    free(json);
    return NULL;
  }
  return json;
}
