/* queue.c -- the job queue on PostgreSQL; see queue.h.
 *
 * Every operation is one prepared statement calling a function of the sql/
 * migrations. Completions and failures are gathered per loop turn
 * (struct batch) and flushed from an ev_prepare watcher as one statement
 * each, with the ids as a bigint[] and the outputs or errors as one JSON
 * array parallel to them.
 *
 * A batch carries at most BATCH_BYTES of outputs (or errors) and effects,
 * unless one job's alone is larger; a fuller batch waits in `ready`, and
 * batches in flight carry at most BATCH_BYTES together (or one batch).
 * libpq grows a connection's output buffer to the most it ever had to
 * hold and never shrinks it: ten 1 MB outputs in one statement kept ~16
 * MB resident for the life of the connection.
 */
#include "queue.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "buf.h"
#include "json.h"
#include "log.h"

#define BATCH_BYTES (1024 * 1024) /* bytes of results a batch carries */

enum stmt {
  ST_SEND,
  ST_SEND_MANY,
  ST_FETCH,
  ST_FETCH_MANY,
  ST_COMPLETE,
  ST_COMPLETE_SENT,
  ST_FAIL,
  ST_GET,
  ST_LIST,
  ST_COUNTS,
  ST_QUEUES,
  ST_PAUSE,
  ST_RESUME,
  ST_IS_PAUSED,
  ST_CANCEL,
  ST_RETRY,
  ST_PURGE,
  ST_MAINTAIN,
  ST_HEARTBEAT,
  ST_UNREGISTER,
  ST_STORE_SETTINGS,
  ST_STORE_NEW_SETTINGS,
  ST_STORE_JOB_EVENTS,
  ST_STORE_FLOWS,
  ST_STORE_HANDLER_QUEUES,
  ST_NEXT_DUE,
  ST_READY,
  ST_RELEASE,
  ST_RECLAIM,
  ST_WAKE,
  ST_COUNT
};

/* "%s" is the quoted schema. */
static const char *const stmt_sql[ST_COUNT] = {
    [ST_SEND] = "SELECT %s.send($1, $2::jsonb, $3::jsonb),"
                " coalesce($3::jsonb->>'queue', $1)",
    [ST_SEND_MANY] = "SELECT coalesce($3::jsonb->>'queue', $1),"
                     " to_jsonb(%s.send_many($1, $2::jsonb, $3::jsonb))::text",
    /* A claim is a lease: if PostgreSQL crashes before its commit reaches
     * the disk, the job waits again after the restart and runs again (the
     * lost attempt's completion or failure is refused), which at-least-once
     * delivery allows, and a completion's commit makes the claims before it
     * durable too. So this statement, its own transaction, commits without
     * waiting for the WAL flush: one flush less between a send and its
     * handler's start. Not with job events on: no subscriber may see a
     * job.active event that a crash then takes back. */
    [ST_FETCH] = "SELECT id, name, data::text, attempt, priority, retry_limit,"
                 " expire_in, run_id, extract(epoch FROM now() - created_at),"
                 " extract(epoch FROM clock_timestamp() - statement_timestamp())"
                 " FROM %s.fetch_jobs($1, $2::int, $3::uuid, $4::int, $5::bigint),"
                 " (SELECT CASE WHEN %s.job_events_on() THEN NULL ELSE"
                 " set_config('synchronous_commit', 'off', true) END) AS lease",
    /* ST_FETCH for many queues (sql/027_fetch_many.sql), a lease as well:
     * each job with its queue, the queues' jobs in the order of $1. */
    [ST_FETCH_MANY] = "SELECT id, name, data::text, attempt, priority, retry_limit,"
                      " expire_in, run_id, extract(epoch FROM now() - created_at),"
                      " claim_took, queue FROM %s.fetch_jobs_many($1::text[],"
                      " $2::int[], $3::uuid, $4::int[], $5::bigint[]),"
                      " (SELECT CASE WHEN %s.job_events_on() THEN NULL ELSE"
                      " set_config('synchronous_commit', 'off', true) END) AS lease",
    [ST_COMPLETE] = "SELECT c FROM %s.complete_jobs_guarded($1::bigint[], $2::jsonb,"
                    " $3::uuid, $4::jsonb, $5::integer[]) AS c",
    /* a batch with effects: also the queues it sent jobs to (rows whose id
     * is NULL), which it did not wake (sql/019) */
    [ST_COMPLETE_SENT] = "SELECT c.id, c.queue, c.jobs FROM %s.complete_jobs_sent("
                         "$1::bigint[], $2::jsonb, $3::uuid, $4::jsonb,"
                         " $5::integer[]) AS c",
    [ST_FAIL] = "SELECT f.id, f.state::text, to_jsonb(f.start_after) #>> '{}'"
                " FROM %s.fail_jobs_at("
                "$1::bigint[], ARRAY(SELECT e.value FROM jsonb_array_elements("
                "$2::jsonb) WITH ORDINALITY AS e(value, n) ORDER BY e.n),"
                " $3::uuid, $4::integer[]) AS f",
    [ST_GET] = "SELECT %s.get_job($1::bigint)::text",
    [ST_LIST] = "SELECT %s.list_jobs($1, $2, $3::int, $4::bigint,"
                " $5 = 'newest')::text",
    [ST_COUNTS] = "SELECT %s.counts($1)::text",
    [ST_QUEUES] = "SELECT %s.queues()::text",
    [ST_PAUSE] = "SELECT %s.pause($1), 'true'",
    [ST_RESUME] = "SELECT %s.resume($1), 'true'",
    [ST_IS_PAUSED] = "SELECT to_jsonb(coalesce((SELECT paused FROM %s.queue"
                     " WHERE name = $1), false))::text",
    [ST_CANCEL] = "SELECT to_jsonb(%s.cancel($1::bigint))::text",
    [ST_RETRY] = "SELECT to_jsonb(%s.retry($1::bigint))::text",
    [ST_PURGE] = "SELECT to_jsonb(%s.purge($1, $2))::text",
    /* A pass also moves jobs left in a queue their handler no longer
     * consumes (sql/013), under maintain's lock. */
    [ST_MAINTAIN] = "SELECT (CASE WHEN m IS NULL THEN NULL ELSE m ||"
                    " jsonb_build_object('moved', %s.move_handler_jobs())"
                    " END)::text FROM %s.maintain($1::float8) AS m",
    [ST_HEARTBEAT] = "SELECT %s.heartbeat($1::uuid, $2, $3::int, $4)",
    [ST_UNREGISTER] = "DELETE FROM %s.process WHERE id = $1::uuid",
    [ST_STORE_SETTINGS] = "SELECT %s.store_queue_settings($1, $2::jsonb),"
                          " 'true'",
    [ST_STORE_NEW_SETTINGS] = "SELECT %s.store_new_queue_settings($1,"
                              " $2::jsonb), 'true'",
    [ST_STORE_FLOWS] = "SELECT %s.store_flows($1::jsonb), 'true'",
    [ST_STORE_HANDLER_QUEUES] = "SELECT %s.store_handler_queues($1::jsonb)::text",
    [ST_STORE_JOB_EVENTS] = "SELECT %s.store_job_events($1::boolean,"
                            " $2::boolean), 'true'",
    [ST_NEXT_DUE] = "SELECT to_jsonb(coalesce(array_agg(%s.next_due(u.q)"
                    " ORDER BY u.n), '{}'))::text FROM unnest($1::text[])"
                    " WITH ORDINALITY u(q, n)",
    /* one index range per queue (sql/029), however many jobs wait */
    [ST_READY] = "SELECT to_jsonb(%s.ready_queues($1::text[]))::text",
    [ST_RELEASE] = "SELECT to_jsonb(%s.release_jobs_guarded($1::bigint[], $2::uuid))::text",
    [ST_RECLAIM] = "SELECT to_jsonb(%s.release_jobs_guarded(ARRAY(SELECT j.id FROM %s.job j"
                   " WHERE j.state = 'active' AND j.process_id = $2::uuid"
                   " AND j.id <> ALL($1::bigint[])), $2::uuid))::text",
    [ST_WAKE] = "SELECT %s.wake($1)",
};

/* Statements that may run twice with the effect of once (each checks the
 * state it changes: a completion or failure only of the active attempt of
 * this process, a release only of its active jobs) or that only read:
 * after a lost connection they are sent again instead of failing with
 * "may or may not have run". Sends and fetches are not: a second run
 * would send or claim again. */
static int flags_of(enum stmt st) {
  switch (st) {
  case ST_SEND: case ST_SEND_MANY: case ST_FETCH: case ST_FETCH_MANY:
  case ST_CANCEL:
  case ST_RETRY: case ST_PURGE:
    return 0;
  default:
    return MQ_PG_RETRY;
  }
}

/* One caller waiting in a batch. */
struct waiter {
  long long id;
  mq_queue_json_cb cb;
  void *data;
};

/* Completions or failures gathered during one loop turn. */
struct batch {
  mq_queue *q;
  enum stmt stmt;
  char *ids;   /* "{1,2,3" while gathering */
  size_t ids_len, ids_cap;
  char *attempts; /* "{1,0,2" aligned with ids (0: any attempt) */
  size_t attempts_len, attempts_cap;
  char *json;  /* "[a,b,c" while gathering */
  size_t json_len, json_cap;
  char *effects; /* complete: "[null,{...}" what each handler emitted and
                     enqueued */
  size_t effects_len, effects_cap;
  bool has_effects; /* some job of the batch has effects */
  size_t bytes;     /* of the outputs (errors) and effects added */
  struct waiter *waiters;
  int n, cap;
  STAILQ_ENTRY(batch) link; /* in the queue's `ready` */
};

struct mq_queue {
  struct ev_loop *loop;
  mq_pg *pg;
  const struct mq_config *cfg;
  int stmts[ST_COUNT];
  char process_id[37];
  char host[256];
  ev_timer maintenance;
  ev_prepare flush;
  struct batch *complete; /* gathering, or NULL */
  struct batch *fail;
  STAILQ_HEAD(, batch) ready; /* gathered, to be sent, oldest first */
  int nready;
  int storing;            /* batches sent and not yet answered */
  size_t storing_bytes;   /* their `bytes` */
  char *wake;             /* "q1,q2" sent to this turn, or NULL */
  size_t wake_len, wake_cap;
  mq_queue_sent_cb sent_cb; /* mq_queue_on_sent's, or NULL */
  void *sent_data;
  bool stopped;           /* mq_queue_stop ran */
};

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);

/* ---- helpers ----------------------------------------------------------- */

/* A random version 4 UUID as text. */
static void make_uuid(char out[37]) {
  unsigned char b[16];
  int fd = open("/dev/urandom", O_RDONLY);
  ssize_t got = fd >= 0 ? read(fd, b, sizeof b) : -1;
  if (fd >= 0)
    close(fd);
  if (got != (ssize_t)sizeof b)
    for (size_t i = 0; i < sizeof b; i++)
      b[i] = (unsigned char)(rand() ^ (getpid() >> (i % 8)));
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(out, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x"
           "%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
           b[11], b[12], b[13], b[14], b[15]);
}

/* The status for a failed database reply: bad input (SQLSTATE class 22,
 * e.g. an unknown option) or a database failure. */
static int reply_status(const struct mq_pg_reply *r) {
  return r->status == MQ_PG_ESQL && strncmp(r->sqlstate, "22", 2) == 0
             ? MQ_QUEUE_EINVAL
             : MQ_QUEUE_EDB;
}

/* A single JSON value from the first column of the first row. */
static const char *first_json(const PGresult *res) {
  if (PQntuples(res) < 1 || PQgetisnull(res, 0, PQnfields(res) - 1))
    return "null";
  return PQgetvalue(res, 0, PQnfields(res) - 1);
}

struct call {
  mq_queue_json_cb cb;
  void *data;
};

static void call_done(const struct mq_pg_reply *r, void *data) {
  struct call *c = data;
  if (c->cb) {
    if (r->status == MQ_PG_OK)
      c->cb(MQ_QUEUE_OK, NULL, first_json(r->result), c->data);
    else
      c->cb(reply_status(r), r->error, NULL, c->data);
  }
  free(c);
}

/* Runs a statement whose result is one JSON value. */
static int exec_json(mq_queue *q, enum stmt st, int nparams,
                     const char *const *params, mq_queue_json_cb cb,
                     void *data) {
  struct call *c = malloc(sizeof *c);
  if (!c)
    return MQ_QUEUE_EDB;
  c->cb = cb;
  c->data = data;
  if (mq_pg_exec(q->pg, q->stmts[st], nparams, params, flags_of(st), call_done,
                 c) != 0) {
    free(c);
    return MQ_QUEUE_EDB;
  }
  return 0;
}

static void log_failure(int status, const char *error, const char *json,
                        void *data) {
  if (status < 0)
    mq_log_warn("queue", "%s failed error=\"%s\"", (const char *)data, error);
}

static void log_debug(int status, const char *error, const char *json,
                      void *data) {
  if (status < 0)
    mq_log_debug("queue", "%s failed error=\"%s\"", (const char *)data, error);
}

/* ---- process registration and maintenance ------------------------------ */

/* Registers the process; its heartbeat thread (heartbeat.h) keeps the row
 * fresh from then on. */
static void register_process(mq_queue *q) {
  char pid[16];
  snprintf(pid, sizeof pid, "%d", (int)getpid());
  const char *params[] = {q->process_id, q->host, pid, MOONQ_VERSION};
  exec_json(q, ST_HEARTBEAT, 4, params, log_failure, (void *)"heartbeat");
}

static void maintained(int status, const char *error, const char *json,
                       void *data) {
  if (status < 0) {
    mq_log_warn("queue", "maintenance failed error=\"%s\"", error);
    return;
  }
  /* Report passes that did something (any non-zero count). */
  if (strcmp(json, "null") != 0 && strpbrk(json, "123456789"))
    mq_log_info("queue", "maintenance result=%s", json);
}

static void maintenance_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_queue *q = w->data;
  char stale[32];
  snprintf(stale, sizeof stale, "%g", q->cfg->stale_after);
  const char *params[] = {stale};
  exec_json(q, ST_MAINTAIN, 1, params, maintained, NULL);
}

mq_queue *mq_queue_new(struct ev_loop *loop, mq_pg *pg,
                       const struct mq_config *cfg) {
  mq_queue *q = calloc(1, sizeof *q);
  if (!q)
    return NULL;
  q->loop = loop;
  q->pg = pg;
  q->cfg = cfg;
  for (int i = 0; i < ST_COUNT; i++) {
    q->stmts[i] = mq_pg_prepare_in(pg, stmt_sql[i], cfg->schema);
    if (q->stmts[i] < 0) {
      free(q);
      return NULL;
    }
  }
  make_uuid(q->process_id);
  if (gethostname(q->host, sizeof q->host) != 0)
    snprintf(q->host, sizeof q->host, "unknown");
  q->host[sizeof q->host - 1] = '\0';
  ev_prepare_init(&q->flush, flush_cb);
  q->flush.data = q;
  STAILQ_INIT(&q->ready);
  register_process(q);
  double every = cfg->stale_after / 2;
  every = every < 0.5 ? 0.5 : every > 15 ? 15 : every;
  ev_timer_init(&q->maintenance, maintenance_cb, every, every);
  q->maintenance.data = q;
  return q;
}

void mq_queue_start_maintenance(mq_queue *q) {
  if (ev_is_active(&q->maintenance))
    return;
  ev_timer_start(q->loop, &q->maintenance);
  ev_unref(q->loop);
}

const char *mq_queue_process_id(const mq_queue *q) { return q->process_id; }

const char *mq_queue_host(const mq_queue *q) { return q->host; }

bool mq_queue_flushed(const mq_queue *q) {
  return !q->complete && !q->fail && !q->nready && !q->wake_len;
}

int mq_queue_storing(const mq_queue *q) {
  return q->storing + q->nready + (q->complete != NULL) + (q->fail != NULL);
}

static void send_ready(mq_queue *q, bool all);

void mq_queue_stop(mq_queue *q) {
  if (q->stopped)
    return;
  q->stopped = true;
  flush_cb(q->loop, &q->flush, 0);
  if (ev_is_active(&q->maintenance)) {
    ev_ref(q->loop);
    ev_timer_stop(q->loop, &q->maintenance);
  }
  /* Maintenance removes the row anyway if this does not get through. */
  const char *params[] = {q->process_id};
  exec_json(q, ST_UNREGISTER, 1, params, log_debug, (void *)"unregister");
}

void mq_queue_close(mq_queue *q) {
  if (!q)
    return;
  mq_queue_stop(q);
  send_ready(q, true); /* the pool is closed: they fail at once */
  ev_prepare_stop(q->loop, &q->flush);
  free(q->wake);
  free(q);
}

/* ---- send ---------------------------------------------------------------- */

struct send_call {
  mq_queue *q;
  mq_queue_id_cb cb;
  void *data;
};

/* Notes that `queue` got jobs this loop turn; flush_cb wakes its workers
 * with one statement after the sends have committed. */
static void note_wake(mq_queue *q, const char *queue) {
  size_t n = strlen(queue);
  for (const char *p = q->wake; p && (p = strstr(p, queue)); p += n)
    if ((p == q->wake || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
      return;
  if ((q->wake_len && mq_buf_add(&q->wake, &q->wake_len, &q->wake_cap, ",", 1)) ||
      mq_buf_add(&q->wake, &q->wake_len, &q->wake_cap, queue, n))
    return;
  ev_prepare_start(q->loop, &q->flush);
}

static void send_done(const struct mq_pg_reply *r, void *data) {
  struct send_call *c = data;
  if (r->status == MQ_PG_OK && !PQgetisnull(r->result, 0, 0))
    note_wake(c->q, PQgetvalue(r->result, 0, 1));
  if (r->status != MQ_PG_OK)
    c->cb(reply_status(r), r->error, 0, c->data);
  else if (PQgetisnull(r->result, 0, 0))
    c->cb(MQ_QUEUE_EREFUSED, "singleton_key is taken by a waiting or active job",
          0, c->data);
  else
    c->cb(MQ_QUEUE_OK, NULL, mq_pg_getll(r->result, 0, 0), c->data);
  free(c);
}

static int check_payload(mq_queue *q, const char *json, const char *what,
                         char *err, size_t errlen) {
  size_t n = json ? strlen(json) : 0;
  if (n > (size_t)q->cfg->max_payload) {
    snprintf(err, errlen, "%s is %zu bytes, more than max_payload (%d)", what,
             n, q->cfg->max_payload);
    return MQ_QUEUE_EINVAL;
  }
  return 0;
}

int mq_queue_send(mq_queue *q, const char *name, const char *data_json,
                  const char *opts_json, mq_queue_id_cb cb, void *data,
                  char *err, size_t errlen) {
  if (!name || !*name) {
    snprintf(err, errlen, "job name must be a non-empty string");
    return MQ_QUEUE_EINVAL;
  }
  int rc = check_payload(q, data_json, "job data", err, errlen);
  if (rc != 0)
    return rc;
  struct send_call *c = malloc(sizeof *c);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return MQ_QUEUE_EDB;
  }
  c->q = q;
  c->cb = cb;
  c->data = data;
  const char *params[] = {name, data_json ? data_json : "{}",
                          opts_json ? opts_json : "{}"};
  if (mq_pg_exec(q->pg, q->stmts[ST_SEND], 3, params, 0, send_done, c) != 0) {
    free(c);
    snprintf(err, errlen, "the connection pool is closed");
    return MQ_QUEUE_EDB;
  }
  return 0;
}

struct many_call {
  mq_queue *q;
  mq_queue_json_cb cb;
  void *data;
};

static void many_done(const struct mq_pg_reply *r, void *data) {
  struct many_call *c = data;
  if (r->status != MQ_PG_OK) {
    c->cb(reply_status(r), r->error, NULL, c->data);
  } else {
    const char *ids = PQgetvalue(r->result, 0, 1);
    if (strcmp(ids, "[]") != 0)
      note_wake(c->q, PQgetvalue(r->result, 0, 0));
    c->cb(MQ_QUEUE_OK, NULL, ids, c->data);
  }
  free(c);
}

int mq_queue_send_many(mq_queue *q, const char *name, const char *list_json,
                       const char *opts_json, mq_queue_json_cb cb, void *data,
                       char *err, size_t errlen) {
  if (!name || !*name) {
    snprintf(err, errlen, "job name must be a non-empty string");
    return MQ_QUEUE_EINVAL;
  }
  /* The limit is per job; a list may be as long as it likes, but not any
   * single element, which the SQL side cannot see cheaply: bound the whole
   * list by max_payload times its count instead (checked by the caller). */
  struct many_call *c = malloc(sizeof *c);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return MQ_QUEUE_EDB;
  }
  *c = (struct many_call){q, cb, data};
  const char *params[] = {name, list_json ? list_json : "[]",
                          opts_json ? opts_json : "{}"};
  if (mq_pg_exec(q->pg, q->stmts[ST_SEND_MANY], 3, params, 0, many_done, c) !=
      0) {
    free(c);
    snprintf(err, errlen, "the connection pool is closed");
    return MQ_QUEUE_EDB;
  }
  return 0;
}

/* ---- fetch --------------------------------------------------------------- */

struct fetch_call {
  mq_queue_fetch_cb cb;           /* mq_queue_fetch's, or NULL */
  mq_queue_fetch_many_cb many_cb; /* mq_queue_fetch_many's, or NULL */
  void *data;
  int nspecs;
  char **queues; /* [nspecs] copies of the queues' names */
};

static void fetch_call_free(struct fetch_call *c) {
  for (int i = 0; c->queues && i < c->nspecs; i++)
    free(c->queues[i]);
  free(c->queues);
  free(c);
}

/* A call for nspecs queues, their names copied from specs (or `queue` for
 * one), or NULL when out of memory. */
static struct fetch_call *fetch_call_new(const struct mq_queue_fetch_spec *specs,
                                         int nspecs, const char *queue) {
  struct fetch_call *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->nspecs = nspecs;
  if (!(c->queues = calloc((size_t)nspecs, sizeof *c->queues))) {
    free(c);
    return NULL;
  }
  for (int i = 0; i < nspecs; i++)
    if (!(c->queues[i] = strdup(specs ? specs[i].queue : queue))) {
      fetch_call_free(c);
      return NULL;
    }
  return c;
}

static void fetch_failed(struct fetch_call *c, int status, const char *error) {
  if (c->many_cb)
    c->many_cb(status, error, NULL, NULL, c->nspecs, c->data);
  else
    c->cb(status, error, NULL, 0, c->data);
}

/* Row i of a fetch's reply; ST_FETCH and ST_FETCH_MANY share columns 0-9. */
static struct mq_job read_job(const PGresult *res, int i, const char *queue) {
  return (struct mq_job){
      .id = mq_pg_getll(res, i, 0),
      .name = PQgetvalue(res, i, 1),
      .queue = queue,
      .data = PQgetvalue(res, i, 2),
      .attempt = (int)mq_pg_getll(res, i, 3),
      .priority = (int)mq_pg_getll(res, i, 4),
      .retry_limit = (int)mq_pg_getll(res, i, 5),
      .expire_in = mq_pg_getdouble(res, i, 6),
      .run_id = PQgetisnull(res, i, 7) ? NULL : PQgetvalue(res, i, 7),
      .waited = mq_pg_getdouble(res, i, 8),
      .claim_took = mq_pg_getdouble(res, i, 9)};
}

static void fetch_done(const struct mq_pg_reply *r, void *data) {
  struct fetch_call *c = data;
  if (r->status != MQ_PG_OK) {
    fetch_failed(c, reply_status(r), r->error);
    fetch_call_free(c);
    return;
  }
  const PGresult *res = r->result;
  int n = PQntuples(res);
  bool many = PQnfields(res) > 10; /* ST_FETCH_MANY: column 10 the queue */
  struct mq_job stack_jobs[64];
  int stack_counts[8];
  struct mq_job *jobs = n <= 64 ? stack_jobs : malloc(sizeof *jobs * (size_t)n);
  int *counts = c->nspecs <= 8 ? stack_counts
                               : calloc((size_t)c->nspecs, sizeof *counts);
  if (!jobs || !counts) {
    if (jobs != stack_jobs)
      free(jobs);
    if (counts != stack_counts)
      free(counts);
    fetch_failed(c, MQ_QUEUE_EDB, "out of memory");
    fetch_call_free(c);
    return;
  }
  memset(counts, 0, sizeof *counts * (size_t)c->nspecs);
  int k = 0; /* the spec of row i: the rows come grouped in spec order */
  for (int i = 0; i < n; i++) {
    while (many && k < c->nspecs &&
           strcmp(PQgetvalue(res, i, 10), c->queues[k]) != 0)
      k++;
    if (k == c->nspecs) { /* not a queue asked for: cannot happen */
      n = i;
      break;
    }
    jobs[i] = read_job(res, i, c->queues[k]);
    counts[k]++;
  }
  if (c->many_cb)
    c->many_cb(MQ_QUEUE_OK, NULL, jobs, counts, c->nspecs, c->data);
  else
    c->cb(MQ_QUEUE_OK, NULL, jobs, n, c->data);
  if (jobs != stack_jobs)
    free(jobs);
  if (counts != stack_counts)
    free(counts);
  fetch_call_free(c);
}

/* Sends ST_FETCH of up to n jobs of c's queue, past *after (NULL: from
 * the head); frees c when it cannot. */
static int fetch_one(mq_queue *q, struct fetch_call *c, int n,
                     const struct mq_queue_position *after) {
  char count[16], priority[16], id[24];
  snprintf(count, sizeof count, "%d", n);
  if (after) {
    snprintf(priority, sizeof priority, "%d", after->priority);
    snprintf(id, sizeof id, "%lld", after->id);
  }
  const char *params[] = {c->queues[0], count, q->process_id,
                          after ? priority : NULL, after ? id : NULL};
  if (mq_pg_exec(q->pg, q->stmts[ST_FETCH], 5, params, 0, fetch_done, c) !=
      0) {
    fetch_call_free(c);
    return MQ_QUEUE_EDB;
  }
  return 0;
}

int mq_queue_fetch(mq_queue *q, const char *queue, int n,
                   const struct mq_queue_position *after,
                   mq_queue_fetch_cb cb, void *data) {
  if (!queue || !*queue || n < 1)
    return MQ_QUEUE_EINVAL;
  struct fetch_call *c = fetch_call_new(NULL, 1, queue);
  if (!c)
    return MQ_QUEUE_EDB;
  c->cb = cb;
  c->data = data;
  return fetch_one(q, c, n, after);
}

/* ST_FETCH_MANY's array parameters: "{10,500}" the counts, "{NULL,3}" the
 * positions' priorities and ids (NULL: from the head). 0, or -1 when out of
 * memory; the caller frees the three. */
static int fetch_many_arrays(const struct mq_queue_fetch_spec *specs,
                             int nspecs, char **counts, char **priorities,
                             char **ids) {
  size_t counts_len = 0, counts_cap = 0, prio_len = 0, prio_cap = 0,
         ids_len = 0, ids_cap = 0;
  int rc = 0;
  for (int i = 0; i < nspecs && rc == 0; i++) {
    const struct mq_queue_position *at = specs[i].after;
    char sep = i ? ',' : '{';
    char count[24], prio[24], id[32];
    int clen = snprintf(count, sizeof count, "%c%d", sep, specs[i].n);
    int plen = at ? snprintf(prio, sizeof prio, "%c%d", sep, at->priority)
                  : snprintf(prio, sizeof prio, "%cNULL", sep);
    int ilen = at ? snprintf(id, sizeof id, "%c%lld", sep, at->id)
                  : snprintf(id, sizeof id, "%cNULL", sep);
    rc = mq_buf_add(counts, &counts_len, &counts_cap, count, (size_t)clen) |
         mq_buf_add(priorities, &prio_len, &prio_cap, prio, (size_t)plen) |
         mq_buf_add(ids, &ids_len, &ids_cap, id, (size_t)ilen);
  }
  if (rc == 0)
    rc = mq_buf_add(counts, &counts_len, &counts_cap, "}", 1) |
         mq_buf_add(priorities, &prio_len, &prio_cap, "}", 1) |
         mq_buf_add(ids, &ids_len, &ids_cap, "}", 1);
  return rc;
}

int mq_queue_fetch_many(mq_queue *q, const struct mq_queue_fetch_spec *specs,
                        int nspecs, mq_queue_fetch_many_cb cb, void *data) {
  if (nspecs < 1)
    return MQ_QUEUE_EINVAL;
  for (int i = 0; i < nspecs; i++)
    if (!specs[i].queue || !*specs[i].queue || specs[i].n < 1)
      return MQ_QUEUE_EINVAL;
  struct fetch_call *c = fetch_call_new(specs, nspecs, NULL);
  if (!c)
    return MQ_QUEUE_EDB;
  c->many_cb = cb;
  c->data = data;
  if (nspecs == 1) /* one queue: the statement of one */
    return fetch_one(q, c, specs[0].n, specs[0].after);
  char *queues = mq_buf_text_array((const char *const *)c->queues, nspecs);
  char *counts = NULL, *priorities = NULL, *ids = NULL;
  int rc = queues && fetch_many_arrays(specs, nspecs, &counts, &priorities,
                                       &ids) == 0
               ? 0
               : MQ_QUEUE_EDB;
  if (rc == 0) {
    const char *params[] = {queues, counts, q->process_id, priorities, ids};
    if (mq_pg_exec(q->pg, q->stmts[ST_FETCH_MANY], 5, params, 0, fetch_done,
                   c) != 0)
      rc = MQ_QUEUE_EDB;
  }
  free(queues);
  free(counts);
  free(priorities);
  free(ids);
  if (rc != 0)
    fetch_call_free(c);
  return rc;
}

/* ---- batched complete and fail --------------------------------------- */

static struct batch *batch_new(mq_queue *q, enum stmt st) {
  struct batch *b = calloc(1, sizeof *b);
  if (!b)
    return NULL;
  b->q = q;
  b->stmt = st;
  if (mq_buf_add(&b->ids, &b->ids_len, &b->ids_cap, "{", 1) != 0 ||
      mq_buf_add(&b->json, &b->json_len, &b->json_cap, "[", 1) != 0) {
    free(b->ids);
    free(b->json);
    free(b);
    return NULL;
  }
  return b;
}

static void batch_free(struct batch *b) {
  free(b->ids);
  free(b->attempts);
  free(b->json);
  free(b->effects);
  free(b->waiters);
  free(b);
}

static int batch_add(struct batch *b, long long id, int attempt,
                     const char *json, const char *effects,
                     mq_queue_json_cb cb, void *data) {
  if (b->n == b->cap) {
    int cap = b->cap ? b->cap * 2 : 16;
    struct waiter *w = realloc(b->waiters, sizeof *w * (size_t)cap);
    if (!w)
      return -1;
    b->waiters = w;
    b->cap = cap;
  }
  char num[32], att[16];
  int len = snprintf(num, sizeof num, "%s%lld", b->n ? "," : "", id);
  int alen = snprintf(att, sizeof att, "%s%d", b->n ? "," : "{", attempt);
  if (mq_buf_add(&b->ids, &b->ids_len, &b->ids_cap, num, (size_t)len) != 0 ||
      mq_buf_add(&b->attempts, &b->attempts_len, &b->attempts_cap, att,
                 (size_t)alen) != 0 ||
      (b->n && mq_buf_add(&b->json, &b->json_len, &b->json_cap, ",", 1) != 0) ||
      mq_buf_add(&b->json, &b->json_len, &b->json_cap, json, strlen(json)) != 0)
    return -1;
  if (b->stmt == ST_COMPLETE) {
    const char *e = effects ? effects : "null";
    if (mq_buf_add(&b->effects, &b->effects_len, &b->effects_cap,
                   b->n ? "," : "[", 1) != 0 ||
        mq_buf_add(&b->effects, &b->effects_len, &b->effects_cap, e,
                   strlen(e)) != 0)
      return -1;
    b->has_effects = b->has_effects || effects;
  }
  b->waiters[b->n++] = (struct waiter){id, cb, data};
  return 0;
}

void mq_queue_on_sent(mq_queue *q, mq_queue_sent_cb cb, void *data) {
  q->sent_cb = cb;
  q->sent_data = data;
}

/* The queues a batch of completions sent jobs to (ST_COMPLETE_SENT's rows
 * without an id: queue, jobs): each goes to the on_sent callback, and is
 * woken for every process unless that fetches all of its jobs. */
static void tell_sent(mq_queue *q, const PGresult *res) {
  for (int i = 0; i < PQntuples(res); i++) {
    if (!PQgetisnull(res, i, 0))
      continue;
    const char *queue = PQgetvalue(res, i, 1);
    if (!q->sent_cb || !q->sent_cb(queue, mq_pg_getll(res, i, 2), q->sent_data))
      note_wake(q, queue);
  }
}

/* A result row's id, for finding each waiter's row. */
struct row_id {
  long long id;
  int row;
};

static int row_id_cmp(const void *a, const void *b) {
  long long x = ((const struct row_id *)a)->id,
            y = ((const struct row_id *)b)->id;
  return (x > y) - (x < y);
}

/* The ids of a complete/fail result (column 0), sorted; NULL when the
 * result is empty or memory is short (then find_row scans). Freed by the
 * caller. */
static struct row_id *index_rows(const PGresult *res) {
  int n = PQntuples(res);
  struct row_id *ix = n > 0 ? malloc(sizeof *ix * (size_t)n) : NULL;
  if (!ix)
    return NULL;
  for (int i = 0; i < n; i++) {
    ix[i].id = mq_pg_getll(res, i, 0);
    ix[i].row = i;
  }
  qsort(ix, (size_t)n, sizeof *ix, row_id_cmp);
  return ix;
}

/* The row of `id` in a complete/fail result, or -1: a binary search of
 * `ix` (index_rows), or a scan without it. */
static int find_row(const PGresult *res, const struct row_id *ix,
                    long long id) {
  int n = PQntuples(res);
  if (ix) {
    struct row_id key = {.id = id};
    const struct row_id *hit =
        bsearch(&key, ix, (size_t)n, sizeof *ix, row_id_cmp);
    return hit ? hit->row : -1;
  }
  for (int i = 0; i < n; i++)
    if (mq_pg_getll(res, i, 0) == id)
      return i;
  return -1;
}

static void batch_exec(struct batch *b);

static void batch_done(const struct mq_pg_reply *r, void *data) {
  struct batch *b = data;
  if (r->status == MQ_PG_EUNAVAILABLE) {
    /* No connection for queue_timeout: the results are kept and sent
     * again, so a finished job never stays active while this process
     * lives (stopping, the pool's close ends this with ECLOSED). */
    mq_log_warn("queue", "storing job results waits for the database "
                "count=%d error=\"%s\"", b->n, r->error);
    batch_exec(b);
    return;
  }
  b->q->storing--;
  b->q->storing_bytes -= b->bytes;
  if (b->q->nready) /* room for the next: flush_cb sends it */
    ev_prepare_start(b->q->loop, &b->q->flush);
  if (r->status == MQ_PG_OK && b->stmt == ST_COMPLETE && b->has_effects)
    tell_sent(b->q, r->result); /* first: its fetches go out sooner */
  struct row_id *ix = r->status == MQ_PG_OK ? index_rows(r->result) : NULL;
  for (int i = 0; i < b->n; i++) {
    struct waiter *w = &b->waiters[i];
    if (!w->cb)
      continue;
    if (r->status != MQ_PG_OK) {
      w->cb(reply_status(r), r->error, NULL, w->data);
      continue;
    }
    int row = find_row(r->result, ix, w->id);
    if (row < 0) {
      w->cb(MQ_QUEUE_ENOTACTIVE, "the job is no longer active", NULL,
            w->data);
    } else if (b->stmt == ST_COMPLETE) {
      w->cb(MQ_QUEUE_OK, NULL, "{\"state\":\"completed\"}", w->data);
    } else {
      mq_json_object *o = mq_json_object_new();
      mq_json_object_string(o, "state", PQgetvalue(r->result, row, 1));
      if (!PQgetisnull(r->result, row, 2))
        mq_json_object_string(o, "start_after", PQgetvalue(r->result, row, 2));
      char err[128];
      char *json = mq_json_object_finish(o, err, sizeof err);
      if (json)
        w->cb(MQ_QUEUE_OK, NULL, json, w->data);
      else
        w->cb(MQ_QUEUE_EDB, err, NULL, w->data);
      free(json);
    }
  }
  free(ix);
  batch_free(b);
}

static void batch_send(struct batch *b) {
  b->q->storing++; /* until batch_done has told every waiter */
  b->q->storing_bytes += b->bytes;
  if (mq_buf_add(&b->ids, &b->ids_len, &b->ids_cap, "}", 1) != 0 ||
      mq_buf_add(&b->attempts, &b->attempts_len, &b->attempts_cap, "}", 1) != 0 ||
      mq_buf_add(&b->json, &b->json_len, &b->json_cap, "]", 1) != 0) {
    struct mq_pg_reply oom = {.status = MQ_PG_ENOMEM, .error = "out of memory",
                              .sqlstate = ""};
    batch_done(&oom, b);
    return;
  }
  if (b->has_effects &&
      mq_buf_add(&b->effects, &b->effects_len, &b->effects_cap, "]", 1) != 0) {
    struct mq_pg_reply oom = {.status = MQ_PG_ENOMEM, .error = "out of memory",
                              .sqlstate = ""};
    batch_done(&oom, b);
    return;
  }
  batch_exec(b);
}

/* Sends a finished batch (again, after EUNAVAILABLE). */
static void batch_exec(struct batch *b) {
  const char *complete[] = {b->ids, b->json, b->q->process_id,
                            b->has_effects ? b->effects : NULL, b->attempts};
  const char *fail[] = {b->ids, b->json, b->q->process_id, b->attempts};
  const char *const *params = b->stmt == ST_COMPLETE ? complete : fail;
  int nparams = b->stmt == ST_COMPLETE ? 5 : 4;
  enum stmt st = b->stmt == ST_COMPLETE && b->has_effects ? ST_COMPLETE_SENT
                                                          : b->stmt;
  if (mq_pg_exec(b->q->pg, b->q->stmts[st], nparams, params, flags_of(st),
                 batch_done, b) != 0) {
    struct mq_pg_reply closed = {.status = MQ_PG_ECLOSED,
                                 .error = "the connection pool is closed",
                                 .sqlstate = ""};
    batch_done(&closed, b);
  }
}

/* A batch is done gathering: it is sent by the next send_ready(). */
static void batch_ready(mq_queue *q, struct batch *b) {
  STAILQ_INSERT_TAIL(&q->ready, b, link);
  q->nready++;
}

/* Sends the ready batches, oldest first, while those in flight carry less
 * than BATCH_BYTES (one at least); `all`: every one (closing). */
static void send_ready(mq_queue *q, bool all) {
  struct batch *b;
  while ((b = STAILQ_FIRST(&q->ready)) &&
         (all || q->storing == 0 ||
          q->storing_bytes + b->bytes <= BATCH_BYTES)) {
    STAILQ_REMOVE_HEAD(&q->ready, link);
    q->nready--;
    batch_send(b);
  }
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  mq_queue *q = w->data;
  ev_prepare_stop(loop, w);
  if (q->complete)
    batch_ready(q, q->complete);
  if (q->fail)
    batch_ready(q, q->fail);
  q->complete = q->fail = NULL;
  send_ready(q, false);
  if (q->wake_len) {
    const char *params[] = {q->wake};
    exec_json(q, ST_WAKE, 1, params, log_failure, (void *)"wake");
    q->wake_len = 0;
    q->wake[0] = '\0';
  }
}

/* Adds a result to the gathering batch of `slot`, which is made ready
 * first when the result would take it past BATCH_BYTES. */
static int enqueue_batch(mq_queue *q, struct batch **slot, enum stmt st,
                         long long id, int attempt, const char *json,
                         const char *effects, mq_queue_json_cb cb, void *data) {
  size_t bytes = strlen(json) + (effects ? strlen(effects) : 0);
  if (*slot && (*slot)->n > 0 && (*slot)->bytes + bytes > BATCH_BYTES) {
    batch_ready(q, *slot);
    *slot = NULL;
  }
  if (!*slot && !(*slot = batch_new(q, st)))
    return MQ_QUEUE_EDB;
  if (batch_add(*slot, id, attempt, json, effects, cb, data) != 0)
    return MQ_QUEUE_EDB;
  (*slot)->bytes += bytes;
  ev_prepare_start(q->loop, &q->flush);
  return 0;
}

int mq_queue_complete(mq_queue *q, long long id, const char *output_json,
                      mq_queue_json_cb cb, void *data) {
  return mq_queue_complete_with(q, id, 0, output_json, NULL, cb, data);
}

int mq_queue_complete_with(mq_queue *q, long long id, int attempt,
                           const char *output_json, const char *effects_json,
                           mq_queue_json_cb cb, void *data) {
  return enqueue_batch(q, &q->complete, ST_COMPLETE, id, attempt,
                       output_json ? output_json : "null", effects_json, cb,
                       data);
}

int mq_queue_fail(mq_queue *q, long long id, const char *error_json,
                  mq_queue_json_cb cb, void *data) {
  return mq_queue_fail_attempt(q, id, 0, error_json, cb, data);
}

int mq_queue_fail_attempt(mq_queue *q, long long id, int attempt,
                          const char *error_json, mq_queue_json_cb cb,
                          void *data) {
  return enqueue_batch(q, &q->fail, ST_FAIL, id, attempt,
                       error_json ? error_json : "null", NULL, cb, data);
}

/* ---- inspection and control --------------------------------------------- */

static const struct {
  enum stmt stmt;
  int nparams;
} ops[] = {
    [MQ_QUEUE_GET] = {ST_GET, 1},         [MQ_QUEUE_LIST] = {ST_LIST, 5},
    [MQ_QUEUE_COUNTS] = {ST_COUNTS, 1},   [MQ_QUEUE_PAUSE] = {ST_PAUSE, 1},
    [MQ_QUEUE_RESUME] = {ST_RESUME, 1},   [MQ_QUEUE_IS_PAUSED] = {ST_IS_PAUSED, 1},
    [MQ_QUEUE_CANCEL] = {ST_CANCEL, 1},   [MQ_QUEUE_RETRY] = {ST_RETRY, 1},
    [MQ_QUEUE_PURGE] = {ST_PURGE, 2},     [MQ_QUEUE_MAINTAIN] = {ST_MAINTAIN, 1},
    [MQ_QUEUE_NEXT_DUE] = {ST_NEXT_DUE, 1}, [MQ_QUEUE_RELEASE] = {ST_RELEASE, 2},
    [MQ_QUEUE_READY] = {ST_READY, 1},     [MQ_QUEUE_QUEUES] = {ST_QUEUES, 0},
    [MQ_QUEUE_RECLAIM] = {ST_RECLAIM, 2},
};

int mq_queue_call(mq_queue *q, enum mq_queue_op op, const char *const args[5],
                  mq_queue_json_cb cb, void *data) {
  if ((int)op < 0 || (size_t)op >= sizeof ops / sizeof ops[0])
    return MQ_QUEUE_EINVAL;
  const char *params[5] = {NULL};
  char stale[32];
  if (op == MQ_QUEUE_MAINTAIN) {
    snprintf(stale, sizeof stale, "%g", q->cfg->stale_after);
    params[0] = stale;
  } else if (op == MQ_QUEUE_RELEASE || op == MQ_QUEUE_RECLAIM) {
    params[0] = args[0];
    params[1] = q->process_id;
  } else {
    for (int i = 0; i < ops[op].nparams; i++)
      params[i] = args ? args[i] : NULL;
  }
  return exec_json(q, ops[op].stmt, ops[op].nparams, params, cb, data);
}

/* ---- queue settings ------------------------------------------------------ */

/* The settings JSON store_queue_settings reads: a key for each field set,
 * null where s asks to unset one. Returns NULL with a message in err. */
static char *settings_json(const struct mq_queue_settings *s, char *err,
                           size_t errlen) {
  mq_json_object *o = mq_json_object_new();
  if (s->has_retry_limit)
    mq_json_object_int(o, "retry_limit", s->retry_limit);
  if (s->has_retry_delay)
    mq_json_object_number(o, "retry_delay", s->retry_delay);
  if (s->has_retry_backoff)
    mq_json_object_bool(o, "retry_backoff", s->retry_backoff);
  if (s->has_retry_delay_max && s->retry_delay_max < 0)
    mq_json_object_null(o, "retry_delay_max");
  else if (s->has_retry_delay_max)
    mq_json_object_number(o, "retry_delay_max", s->retry_delay_max);
  if (s->has_expire_in)
    mq_json_object_number(o, "expire_in", s->expire_in);
  if (s->has_retention)
    mq_json_object_number(o, "retention", s->retention);
  if (s->has_dead_letter)
    mq_json_object_string(o, "dead_letter", s->dead_letter);
  return mq_json_object_finish(o, err, errlen);
}

struct store_call {
  mq_queue_json_cb cb;
  void *data;
  char queue[]; /* for the log */
};

static void log_store_failure(const char *queue, const char *error) {
  char fields[512] = "";
  mq_log_field(fields, sizeof fields, "queue", queue);
  mq_log_field(fields, sizeof fields, "error", error);
  mq_log_warn("queue", "storing queue settings failed%s", fields);
}

static void stored(int status, const char *error, const char *json,
                   void *data) {
  struct store_call *c = data;
  if (status < 0)
    log_store_failure(c->queue, error);
  if (c->cb)
    c->cb(status, error, json, c->data);
  free(c);
}

static int store(mq_queue *q, enum stmt st, const char *queue,
                 const struct mq_queue_settings *s, mq_queue_json_cb cb,
                 void *data, char *err, size_t errlen);

int mq_queue_store_settings(mq_queue *q, const char *queue,
                            const struct mq_queue_settings *s,
                            mq_queue_json_cb cb, void *data, char *err,
                            size_t errlen) {
  return store(q, ST_STORE_SETTINGS, queue, s, cb, data, err, errlen);
}

/* Stores s for `queue` with statement st (merge, or only a new row). */
static int store(mq_queue *q, enum stmt st, const char *queue,
                 const struct mq_queue_settings *s, mq_queue_json_cb cb,
                 void *data, char *err, size_t errlen) {
  char msg[256] = "out of memory";
  int rc = MQ_QUEUE_EDB;
  size_t len = strlen(queue) + 1;
  char *json = settings_json(s, msg, sizeof msg);
  struct store_call *c = json ? malloc(sizeof *c + len) : NULL;
  if (!json) {
    rc = MQ_QUEUE_EINVAL;
  } else if (c) {
    c->cb = cb;
    c->data = data;
    memcpy(c->queue, queue, len);
    const char *params[] = {queue, json};
    rc = exec_json(q, st, 2, params, stored, c);
    if (rc != 0) {
      snprintf(msg, sizeof msg, "the connection pool is closed");
      free(c);
    }
  }
  free(json);
  if (rc != 0) {
    log_store_failure(queue, msg);
    if (errlen)
      snprintf(err, errlen, "%s", msg);
  }
  return rc;
}

/* config.lua's options of one queue as settings, every field set. */
static struct mq_queue_settings config_settings(
    const struct mq_queue_options *o) {
  return (struct mq_queue_settings){
      .has_retry_limit = true, .retry_limit = o->retry_limit,
      .has_retry_delay = true, .retry_delay = o->retry_delay,
      .has_retry_backoff = true, .retry_backoff = o->retry_backoff,
      /* config.lua has no retry_delay_max: only a handler's retry sets it */
      .has_retry_delay_max = true, .retry_delay_max = -1,
      .has_expire_in = true, .expire_in = o->expire_in,
      .has_retention = true, .retention = o->retention,
      .has_dead_letter = true, .dead_letter = o->dead_letter};
}

/* Waits for every row (they may be stored on different connections)
 * before telling the caller. */
struct configure_wait {
  int left;
  int status;
  char error[512];
  mq_queue_json_cb cb;
  void *data;
};

static void configured(int status, const char *error, const char *json,
                       void *data) {
  struct configure_wait *w = data;
  if (status < 0 && w->status == 0) {
    w->status = status;
    snprintf(w->error, sizeof w->error, "%s", error);
  }
  if (--w->left > 0)
    return;
  if (w->cb)
    w->cb(w->status, w->status ? w->error : NULL, "true", w->data);
  free(w);
}

int mq_queue_store_flows(mq_queue *q, const char *flows_json) {
  const char *params[] = {flows_json};
  return exec_json(q, ST_STORE_FLOWS, 1, params, log_failure,
                   (void *)"storing flows");
}

static void handler_queues_stored(int status, const char *error,
                                  const char *json, void *data) {
  if (status < 0)
    mq_log_warn("queue", "storing the handlers' queues failed error=\"%s\"",
                error);
  else if (strcmp(json, "[]") != 0)
    mq_log_info("queue", "moved jobs to their handlers' new queues moves=%s",
                json);
}

int mq_queue_store_handler_queues(mq_queue *q, const char *handlers_json) {
  const char *params[] = {handlers_json};
  return exec_json(q, ST_STORE_HANDLER_QUEUES, 1, params,
                   handler_queues_stored, NULL);
}

int mq_queue_configure(mq_queue *q, bool only_new, mq_queue_json_cb cb,
                       void *data) {
  struct configure_wait *w = calloc(1, sizeof *w);
  if (!w)
    return MQ_QUEUE_EDB;
  w->cb = cb;
  w->data = data;
  w->left = 2 + (int)q->cfg->nqueues;
  /* Job events are written by the SQL functions, for every caller, so the
   * switch is stored in the database (sql/009_job_events.sql); a process
   * whose event store is off does not turn them on. */
  const struct mq_config *cfg = q->cfg;
  const char *params[] = {
      cfg->events.enabled && cfg->events.job_events ? "true" : "false",
      only_new ? "true" : "false"};
  int sent = exec_json(q, ST_STORE_JOB_EVENTS, 2, params, configured, w);
  if (sent != 0)
    configured(sent, "the connection pool is closed", NULL, w);
  for (size_t i = 0; i <= q->cfg->nqueues; i++) {
    const char *name = i == 0 ? "" : q->cfg->queues[i - 1].name;
    struct mq_queue_settings s = config_settings(
        i == 0 ? &q->cfg->queue : &q->cfg->queues[i - 1].options);
    char err[256];
    int rc = store(q, only_new ? ST_STORE_NEW_SETTINGS : ST_STORE_SETTINGS,
                   name, &s, configured, w, err, sizeof err);
    if (rc != 0)
      configured(rc, err, NULL, w);
  }
  return 0;
}
