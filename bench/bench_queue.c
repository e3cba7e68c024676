/* bench_queue.c -- throughput and latency of moonq's queue C API.
 *
 * Connects to DATABASE_URL, recreates a private schema (default
 * "moonq_bench"), migrates it, opens a runtime (pool + queue) and measures:
 *
 *   send   mq_queue_send one at a time, each waiting for the previous reply:
 *          jobs/s, p50/p90/p99 latency.
 *   many   mq_queue_send_many in batches (JSON array built in C), with 1 and
 *          more batches in flight: jobs/s.
 *   drain  a prefilled queue fetched in batches (several fetches in flight),
 *          each job completed at once with mq_queue_complete (no handler):
 *          jobs/s from the first fetch to the last completion confirmed,
 *          tuple writes per job (pg_stat_user_tables), CPU split.
 *   explain  EXPLAIN (ANALYZE, BUFFERS) of the statements inside fetch_jobs
 *          and complete_jobs (auto_explain, nested) for one big batch.
 *   profile  pg_stat_statements reset before, and its top statements
 *          written after, one series of sends and one drain (run with
 *          PGOPTIONS='-c pg_stat_statements.track=all' to see nested ones).
 *   none   nothing: just make the migrated (and --patch'ed) schema.
 *
 * CPU is reported per job for this process, the whole machine and
 * PostgreSQL (its postmaster and children, from /proc, when the server runs
 * here): PostgreSQL's CPU per job ignores time taken by other programs.
 *
 * Every figure is printed as a line "RESULT key value" (bench/run.sh parses
 * them); everything else is commentary.
 *
 *   bench_queue [--schema S] [--pool N] [--phases send,many,drain,explain,profile,none]
 *               [--send-n N] [--many-total N] [--many-batch N]
 *               [--many-inflight 1,2,4,8] [--drain-jobs N]
 *               [--drain 500x1,500x2,1000x4] [--reps N] [--patch FILE.sql]
 *               [--out DIR]
 *
 * Each measurement runs --reps times (default 3); a figure is reported as
 * the best run ("..._best", or the plain key) and the median run
 * ("..._median"): this machine's CPU speed varies by a third from one
 * second to the next, and the best run is the least disturbed one.
 *
 * --patch (up to 4 times) applies an SQL file (with @schema@ replaced by the
 * schema) after the migrations: it lets bench/run.sh measure a variant of
 * the queue SQL without touching sql/.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <libpq-fe.h>

#include "config.h"
#include "log.h"
#include "queue.h"
#include "runtime.h"

/* ---- options -------------------------------------------------------------- */

#define MAX_LIST 16

static struct {
  const char *schema;
  int pool;
  char phases[256];
  int send_n;
  int many_total, many_batch;
  int many_inflight[MAX_LIST], n_many_inflight;
  int drain_jobs;
  int drain_batch[MAX_LIST], drain_inflight[MAX_LIST], n_drain;
  int reps;
  const char *patch[4];
  int npatch;
  const char *out;
} opt = {
    .reps = 3,
    .schema = "moonq_bench",
    .pool = 4,
    .phases = "send,many,drain,explain",
    .send_n = 5000,
    .many_total = 200000,
    .many_batch = 1000,
    .many_inflight = {1, 2, 4},
    .n_many_inflight = 3,
    .drain_jobs = 50000,
    .drain_batch = {500, 500, 1000, 1000, 2000},
    .drain_inflight = {1, 2, 2, 4, 2},
    .n_drain = 5,
    .out = ".",
};

static bool phase(const char *name) {
  size_t n = strlen(name);
  for (const char *p = opt.phases; (p = strstr(p, name)); p += n)
    if ((p == opt.phases || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
      return true;
  return false;
}

static int parse_ints(const char *s, int *out) {
  int n = 0;
  while (*s && n < MAX_LIST) {
    out[n++] = atoi(s);
    s = strchr(s, ',');
    if (!s)
      break;
    s++;
  }
  return n;
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench_queue [--schema S] [--pool N] [--phases LIST]\n"
          "  [--send-n N] [--many-total N] [--many-batch N] [--many-inflight LIST]\n"
          "  [--drain-jobs N] [--drain BATCHxINFLIGHT,...] [--reps N] [--patch FILE]\n"
          "  [--out DIR]\n");
  exit(2);
}

static void parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v)
      usage();
    i++;
    if (!strcmp(a, "--schema"))
      opt.schema = v;
    else if (!strcmp(a, "--pool"))
      opt.pool = atoi(v);
    else if (!strcmp(a, "--phases"))
      snprintf(opt.phases, sizeof opt.phases, "%s", v);
    else if (!strcmp(a, "--send-n"))
      opt.send_n = atoi(v);
    else if (!strcmp(a, "--many-total"))
      opt.many_total = atoi(v);
    else if (!strcmp(a, "--many-batch"))
      opt.many_batch = atoi(v);
    else if (!strcmp(a, "--many-inflight"))
      opt.n_many_inflight = parse_ints(v, opt.many_inflight);
    else if (!strcmp(a, "--drain-jobs"))
      opt.drain_jobs = atoi(v);
    else if (!strcmp(a, "--drain")) {
      opt.n_drain = 0;
      for (const char *p = v; p && *p && opt.n_drain < MAX_LIST;) {
        int b, k;
        if (sscanf(p, "%dx%d", &b, &k) != 2)
          usage();
        opt.drain_batch[opt.n_drain] = b;
        opt.drain_inflight[opt.n_drain++] = k;
        p = strchr(p, ',');
        if (p)
          p++;
      }
    } else if (!strcmp(a, "--reps"))
      opt.reps = atoi(v) < 1 ? 1 : atoi(v);
    else if (!strcmp(a, "--patch") && opt.npatch < 4)
      opt.patch[opt.npatch++] = v;
    else if (!strcmp(a, "--out"))
      opt.out = v;
    else
      usage();
  }
}

/* ---- helpers -------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_queue: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *sorted, int n, double p) {
  int i = (int)ceil(p / 100.0 * n) - 1;
  return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* The median of n values (sorts them). */
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* CPU seconds of this process, and busy CPU seconds of the whole machine
 * (from /proc/stat), to split a phase's CPU between moonq and PostgreSQL. */
struct cpu {
  double self, busy, total;
  double pg; /* PostgreSQL: postmaster, its live children, reaped children */
};

/* The postmaster's pid when the server runs on this machine and its data
 * directory is readable (found at start-up), else 0. */
static long pm_pid;

/* utime+stime (and cutime+cstime) of one /proc/<pid>/stat, in ticks; the
 * parent pid in *ppid. Returns -1 when unreadable. */
static long long proc_ticks(const char *stat_path, long *ppid, bool children) {
  FILE *f = fopen(stat_path, "r");
  if (!f)
    return -1;
  char buf[1024];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  if (!p)
    return -1;
  /* Fields after the command: state ppid pgrp session tty tpgid flags minflt
   * cminflt majflt cmajflt utime stime cutime cstime ... */
  char state;
  long pp;
  unsigned long long ut, st;
  long long cut, cst;
  if (sscanf(p + 2,
             "%c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld",
             &state, &pp, &ut, &st, &cut, &cst) != 6)
    return -1;
  *ppid = pp;
  return (long long)(ut + st) + (children ? cut + cst : 0);
}

static double pg_cpu(void) {
  if (!pm_pid)
    return 0;
  char path[64];
  long ppid;
  snprintf(path, sizeof path, "/proc/%ld/stat", pm_pid);
  long long ticks = proc_ticks(path, &ppid, true);
  if (ticks < 0)
    return 0;
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9')
      continue;
    snprintf(path, sizeof path, "/proc/%.20s/stat", e->d_name);
    long long t = proc_ticks(path, &ppid, false);
    if (t > 0 && ppid == pm_pid)
      ticks += t;
  }
  if (d)
    closedir(d);
  return (double)ticks / (double)sysconf(_SC_CLK_TCK);
}

static struct cpu cpu_now(void) {
  struct cpu c = {0};
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  c.pg = pg_cpu();
  c.self = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  FILE *f = fopen("/proc/stat", "r");
  if (f) {
    unsigned long long v[10] = {0};
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
               &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
      long hz = sysconf(_SC_CLK_TCK);
      unsigned long long idle = v[3] + v[4], all = 0;
      for (int i = 0; i < 8; i++)
        all += v[i];
      c.busy = (double)(all - idle) / (double)hz;
      c.total = (double)all / (double)hz;
    }
    fclose(f);
  }
  return c;
}

/* ---- the admin connection (blocking) -------------------------------------- */

static PGconn *admin;
static FILE *notice_sink;

static mq_runtime *rt;
static struct ev_loop *loop;
static mq_queue *queue;

static void notice_cb(void *arg, const PGresult *res) {
  (void)arg;
  if (notice_sink)
    fputs(PQresultErrorMessage(res), notice_sink);
}

static PGresult *sql_res(const char *sql) {
  PGresult *r = PQexec(admin, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    fprintf(stderr, "bench_queue: %s\n  in: %.200s\n", PQerrorMessage(admin),
            sql);
    exit(1);
  }
  return r;
}

static void sql_exec(const char *sql) { PQclear(sql_res(sql)); }

static void sqlf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sqlf(const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  sql_exec(buf);
}

static long long sql_ll(const char *sql) {
  PGresult *r = sql_res(sql);
  long long v = PQntuples(r) && !PQgetisnull(r, 0, 0)
                    ? strtoll(PQgetvalue(r, 0, 0), NULL, 10)
                    : 0;
  PQclear(r);
  return v;
}

/* Makes every pool connection run a statement, so that each backend
 * reaches its idle point with its last statistics flush more than a second
 * ago and flushes (PostgreSQL 15 otherwise keeps pending table statistics
 * for up to 10 s of idleness). */
static int pokes_left;

static void poke_done(const struct mq_pg_reply *r, void *data) {
  (void)r;
  (void)data;
  pokes_left--;
}

static void poke_pool(void) {
  struct timespec ts = {1, 100 * 1000 * 1000};
  nanosleep(&ts, NULL);
  pokes_left = opt.pool;
  for (int i = 0; i < opt.pool; i++)
    if (mq_pg_query(mq_runtime_pg(rt), "SELECT 1", 0, NULL, 0, poke_done, NULL) != 0)
      pokes_left--;
  while (pokes_left > 0)
    ev_run(loop, EVRUN_ONCE);
}

/* n_tup_ins + n_tup_upd + n_tup_del of job and job_archive, once the
 * backends have flushed their statistics. */
static long long tuple_writes(void) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables"
           " WHERE schemaname = '%s' AND relname IN ('job', 'job_archive')",
           opt.schema);
  poke_pool();
  long long prev = -1, v = 0;
  for (int i = 0; i < 10; i++) {
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    sql_exec("SELECT pg_stat_clear_snapshot()");
    v = sql_ll(sql);
    if (v == prev)
      break;
    prev = v;
  }
  return v;
}

static void apply_patch(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    die("cannot open patch %s", path);
  size_t cap = 1 << 16, len = 0;
  char *text = malloc(cap);
  size_t n;
  while ((n = fread(text + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (len + 1 == cap)
      text = realloc(text, cap *= 2);
  }
  fclose(f);
  text[len] = '\0';
  /* Replace @schema@ with the quoted schema. */
  char q[200];
  snprintf(q, sizeof q, "\"%s\"", opt.schema);
  size_t outcap = len * 2 + 1024, o = 0;
  char *out = malloc(outcap);
  for (const char *p = text; *p;) {
    if (!strncmp(p, "@schema@", 8)) {
      o += (size_t)sprintf(out + o, "%s", q);
      p += 8;
    } else {
      out[o++] = *p++;
    }
  }
  out[o] = '\0';
  sql_exec(out);
  free(text);
  free(out);
}

/* ---- the runtime ---------------------------------------------------------- */

static void open_runtime(const char *url) {
  struct mq_config *cfg = mq_config_defaults();
  if (!cfg)
    die("%s", "out of memory");
  free(cfg->schema);
  cfg->schema = strdup(opt.schema);
  free(cfg->database);
  cfg->database = strdup(url);
  cfg->pool_size = opt.pool;
  char err[1024];
  rt = mq_runtime_new(NULL, cfg, NULL);
  if (!rt)
    die("%s", "out of memory");
  if (mq_runtime_prepare_db(rt, false, err, sizeof err) != 0)
    die("migrate: %s", err);
  for (int i = 0; i < opt.npatch; i++)
    apply_patch(opt.patch[i]);
  if (mq_runtime_open(rt, err, sizeof err) != 0)
    die("open: %s", err);
  loop = mq_runtime_loop(rt);
  queue = mq_runtime_queue(rt);
}

/* ---- a. send, one at a time ----------------------------------------------- */

static struct {
  int n, done, errors;
  double issued;
  double *lat;
  bool finished;
} snd;

static void send_next(void);

static void send_cb(int status, const char *error, long long id, void *data) {
  (void)id;
  (void)data;
  double t = now_s();
  if (status != MQ_QUEUE_OK) {
    if (snd.errors++ < 3)
      fprintf(stderr, "send failed: %s\n", error ? error : "?");
  }
  snd.lat[snd.done++] = (t - snd.issued) * 1000.0;
  if (snd.done < snd.n)
    send_next();
  else
    snd.finished = true;
}

static void send_next(void) {
  char data[64], err[256];
  snprintf(data, sizeof data, "{\"n\":%d}", snd.done);
  snd.issued = now_s();
  if (mq_queue_send(queue, "bench_send", data, NULL, send_cb, NULL, err,
                    sizeof err) != 0)
    die("send: %s", err);
}

static void run_sends(int n) {
  snd.n = n;
  snd.done = snd.errors = 0;
  snd.finished = false;
  snd.lat = realloc(snd.lat, sizeof(double) * (size_t)n);
  send_next();
  while (!snd.finished)
    ev_run(loop, EVRUN_ONCE);
}

static void bench_send(void) {
  printf("\n== a. send, one at a time (each waits for the previous reply),"
         " %d jobs x %d runs\n",
         opt.send_n, opt.reps);
  run_sends(300); /* warm up: connections, prepared statements, caches */
  double p50[64], rates[64];
  double best_p50 = 1e9, best[6] = {0};
  int reps = opt.reps > 64 ? 64 : opt.reps, errors = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    run_sends(opt.send_n);
    double dt = now_s() - t0;
    errors += snd.errors;
    qsort(snd.lat, (size_t)snd.n, sizeof(double), cmp_double);
    double sum = 0;
    for (int i = 0; i < snd.n; i++)
      sum += snd.lat[i];
    double v[6] = {snd.n / dt,           sum / snd.n,
                   pct(snd.lat, snd.n, 50), pct(snd.lat, snd.n, 90),
                   pct(snd.lat, snd.n, 99), snd.lat[snd.n - 1]};
    printf("  run %d: %.0f jobs/s, mean %.3f ms, p50 %.3f, p90 %.3f, p99 %.3f,"
           " max %.3f\n",
           r + 1, v[0], v[1], v[2], v[3], v[4], v[5]);
    p50[r] = v[2];
    rates[r] = v[0];
    if (v[2] < best_p50) {
      best_p50 = v[2];
      memcpy(best, v, sizeof best);
    }
  }
  printf("RESULT send_n %d\n", opt.send_n);
  printf("RESULT send_errors %d\n", errors);
  printf("RESULT send_jobs_per_s %.0f\n", best[0]);
  printf("RESULT send_mean_ms %.3f\n", best[1]);
  printf("RESULT send_p50_ms %.3f\n", best[2]);
  printf("RESULT send_p90_ms %.3f\n", best[3]);
  printf("RESULT send_p99_ms %.3f\n", best[4]);
  printf("RESULT send_max_ms %.3f\n", best[5]);
  printf("RESULT send_p50_ms_median %.3f\n", median(p50, reps));
  printf("RESULT send_jobs_per_s_median %.0f\n", median(rates, reps));
}

/* ---- b. send_many ----------------------------------------------------------- */

static struct {
  int total, batch, sent_jobs, done_jobs, inflight, errors;
  long long ids;
  bool finished;
  const char *name;
} many;

static void many_next(void);

static void many_cb(int status, const char *error, const char *json,
                    void *data) {
  int n = (int)(long)data;
  if (status != MQ_QUEUE_OK) {
    if (many.errors++ < 3)
      fprintf(stderr, "send_many failed: %s\n", error ? error : "?");
  } else if (json && json[0] == '[' && json[1] != ']') {
    long long k = 1;
    for (const char *p = json; *p; p++)
      k += *p == ',';
    many.ids += k;
  }
  many.done_jobs += n;
  many.inflight--;
  if (many.sent_jobs < many.total)
    many_next();
  else if (many.inflight == 0)
    many.finished = true;
}

static char *many_buf;
static size_t many_cap;

static void many_next(void) {
  int n = many.total - many.sent_jobs;
  if (n > many.batch)
    n = many.batch;
  size_t need = (size_t)n * 32 + 16;
  if (need > many_cap)
    many_buf = realloc(many_buf, many_cap = need);
  size_t len = 0;
  many_buf[len++] = '[';
  for (int i = 0; i < n; i++)
    len += (size_t)sprintf(many_buf + len, "%s{\"n\":%d}", i ? "," : "",
                           many.sent_jobs + i);
  many_buf[len++] = ']';
  many_buf[len] = '\0';
  char err[256];
  if (mq_queue_send_many(queue, many.name, many_buf, NULL, many_cb,
                         (void *)(long)n, err, sizeof err) != 0)
    die("send_many: %s", err);
  many.sent_jobs += n;
  many.inflight++;
}

/* Sends `total` jobs in batches with `inflight` batches in flight; returns
 * the elapsed seconds. */
static double run_many(const char *name, int total, int batch, int inflight) {
  memset(&many, 0, sizeof many);
  many.name = name;
  many.total = total;
  many.batch = batch;
  double t0 = now_s();
  for (int i = 0; i < inflight && many.sent_jobs < total; i++)
    many_next();
  while (!many.finished)
    ev_run(loop, EVRUN_ONCE);
  double dt = now_s() - t0;
  if (many.errors || many.ids != total) {
    fprintf(stderr, "send_many: %d errors, %lld ids for %d jobs\n", many.errors,
            many.ids, total);
    exit(1);
  }
  return dt;
}

static void reset_tables(void) {
  sqlf("TRUNCATE \"%s\".job, \"%s\".job_archive", opt.schema, opt.schema);
}

static void settle(void) {
  sqlf("VACUUM ANALYZE \"%s\".job", opt.schema);
  sqlf("VACUUM ANALYZE \"%s\".job_archive", opt.schema);
  sql_exec("CHECKPOINT");
}

static void bench_many(void) {
  printf("\n== b. send_many, %d jobs in batches of %d, %d runs each\n",
         opt.many_total, opt.many_batch, opt.reps);
  reset_tables();
  run_many("bench_many", 20 * opt.many_batch, opt.many_batch, 1); /* warm up */
  double best = 0;
  int best_k = 0;
  for (int i = 0; i < opt.n_many_inflight; i++) {
    int k = opt.many_inflight[i];
    double rates[64], pgus[64], top = 0;
    int reps = opt.reps > 64 ? 64 : opt.reps;
    for (int r = 0; r < reps; r++) {
      reset_tables();
      settle();
      struct cpu c0 = cpu_now();
      double dt = run_many("bench_many", opt.many_total, opt.many_batch, k);
      struct cpu c1 = cpu_now();
      rates[r] = opt.many_total / dt;
      pgus[r] = (c1.pg - c0.pg) / opt.many_total * 1e6;
      printf("  inflight=%d run %d: %.0f jobs/s, %.3f s, PostgreSQL CPU %.1f"
             " us/job, moonq CPU %.2f s, machine busy %.2f of %.2f s\n",
             k, r + 1, rates[r], dt, pgus[r], c1.self - c0.self,
             c1.busy - c0.busy, c1.total - c0.total);
      if (rates[r] > top)
        top = rates[r];
    }
    printf("RESULT many_inflight%d_pg_cpu_us_per_job %.1f\n", k,
           median(pgus, reps));
    printf("RESULT many_inflight%d_jobs_per_s %.0f\n", k, top);
    printf("RESULT many_inflight%d_jobs_per_s_median %.0f\n", k,
           median(rates, reps));
    if (top > best) {
      best = top;
      best_k = k;
    }
  }
  printf("RESULT many_best_jobs_per_s %.0f\n", best);
  printf("RESULT many_best_inflight %d\n", best_k);
}

/* ---- c. drain ------------------------------------------------------------- */

static struct {
  int batch, fetchers, fetches;
  long long fetched, completed, errors, target;
  double t_end;
  bool finished;
} drn;

static void drain_fetch(void);

static void complete_cb(int status, const char *error, const char *json,
                        void *data) {
  (void)json;
  (void)data;
  if (status != MQ_QUEUE_OK && drn.errors++ < 3)
    fprintf(stderr, "complete failed (%d): %s\n", status, error ? error : "?");
  if (++drn.completed == drn.target)
    drn.t_end = now_s();
  if (drn.completed == drn.fetched && drn.fetchers == 0)
    drn.finished = true;
}

static void fetch_cb(int status, const char *error, const struct mq_job *jobs,
                     int njobs, void *data) {
  (void)data;
  if (status != MQ_QUEUE_OK) {
    fprintf(stderr, "fetch failed: %s\n", error ? error : "?");
    exit(1);
  }
  drn.fetches++;
  for (int i = 0; i < njobs; i++)
    if (mq_queue_complete(queue, jobs[i].id, NULL, complete_cb, NULL) != 0)
      die("%s", "complete: cannot queue");
  drn.fetched += njobs;
  if (njobs > 0) {
    drain_fetch();
  } else if (--drn.fetchers == 0 && drn.completed == drn.fetched) {
    drn.finished = true;
  }
}

static void drain_fetch(void) {
  if (mq_queue_fetch(queue, "bench_drain", drn.batch, NULL, fetch_cb, NULL) != 0)
    die("%s", "fetch: cannot queue");
}

struct drain_result {
  double rate, secs, writes_per_job, cpu_self, cpu_busy, cpu_total, cpu_pg;
  int fetches;
};

static void prefill(int jobs) {
  reset_tables();
  run_many("bench_drain", jobs, 1000, 4);
  settle();
}

static struct drain_result run_drain(int jobs, int batch, int inflight) {
  struct drain_result res = {0};
  prefill(jobs);
  long long w0 = tuple_writes();
  memset(&drn, 0, sizeof drn);
  drn.batch = batch;
  drn.fetchers = inflight;
  drn.target = jobs;
  struct cpu c0 = cpu_now();
  double t0 = now_s();
  for (int i = 0; i < inflight; i++)
    drain_fetch();
  while (!drn.finished)
    ev_run(loop, EVRUN_ONCE);
  struct cpu c1 = cpu_now();
  if (drn.completed != jobs || drn.errors) {
    fprintf(stderr, "drain: completed %lld of %d, %lld errors\n", drn.completed,
            jobs, drn.errors);
    exit(1);
  }
  res.secs = drn.t_end - t0;
  res.rate = jobs / res.secs;
  res.fetches = drn.fetches;
  res.cpu_self = c1.self - c0.self;
  res.cpu_busy = c1.busy - c0.busy;
  res.cpu_total = c1.total - c0.total;
  res.cpu_pg = c1.pg - c0.pg;
  long long w1 = tuple_writes();
  res.writes_per_job = (double)(w1 - w0) / jobs;
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT (SELECT count(*) FROM \"%s\".job) * 1000000000 +"
           " (SELECT count(*) FROM \"%s\".job_archive)",
           opt.schema, opt.schema);
  long long counts = sql_ll(sql);
  if (counts != jobs) {
    fprintf(stderr, "drain: job/archive counts wrong (%lld)\n", counts);
    exit(1);
  }
  return res;
}

static void bench_drain(void) {
  printf("\n== c. drain %d jobs: fetch in batches, complete each at once,"
         " %d runs each\n",
         opt.drain_jobs, opt.reps);
  run_drain(5000, 500, 2); /* warm up */
  struct drain_result best = {0};
  double best_median = 0, best_pg = 0;
  int best_b = 0, best_k = 0;
  for (int i = 0; i < opt.n_drain; i++) {
    int b = opt.drain_batch[i], k = opt.drain_inflight[i];
    struct drain_result top = {0};
    double rates[64], pgus[64];
    int reps = opt.reps > 64 ? 64 : opt.reps;
    for (int rep = 0; rep < reps; rep++) {
      struct drain_result r = run_drain(opt.drain_jobs, b, k);
      rates[rep] = r.rate;
      pgus[rep] = r.cpu_pg / opt.drain_jobs * 1e6;
      printf("  batch=%d inflight=%d run %d: %.0f jobs/s, %.3f s, %d fetches,"
             " %.2f tuple writes/job, CPU per job: PostgreSQL %.1f us, moonq"
             " %.1f us, machine busy %.1f us (%.2f of %.2f s)\n",
             b, k, rep + 1, r.rate, r.secs, r.fetches, r.writes_per_job,
             pgus[rep], r.cpu_self / opt.drain_jobs * 1e6,
             r.cpu_busy / opt.drain_jobs * 1e6, r.cpu_busy, r.cpu_total);
      if (r.rate > top.rate)
        top = r;
    }
    double med = median(rates, reps), pg_med = median(pgus, reps);
    printf("RESULT drain_b%d_k%d_jobs_per_s %.0f\n", b, k, top.rate);
    printf("RESULT drain_b%d_k%d_jobs_per_s_median %.0f\n", b, k, med);
    printf("RESULT drain_b%d_k%d_pg_cpu_us_per_job %.1f\n", b, k, pg_med);
    if (top.rate > best.rate) {
      best = top;
      best_median = med;
      best_pg = pg_med;
      best_b = b;
      best_k = k;
    }
  }
  printf("RESULT drain_best_jobs_per_s %.0f\n", best.rate);
  printf("RESULT drain_best_jobs_per_s_median %.0f\n", best_median);
  printf("RESULT drain_best_batch %d\n", best_b);
  printf("RESULT drain_best_inflight %d\n", best_k);
  printf("RESULT drain_tuple_writes_per_job %.2f\n", best.writes_per_job);
  printf("RESULT drain_pg_cpu_us_per_job %.1f\n", best_pg);
  printf("RESULT drain_cpu_moonq_us_per_job %.1f\n",
         best.cpu_self / opt.drain_jobs * 1e6);
  printf("RESULT drain_cpu_machine_us_per_job %.1f\n",
         best.cpu_busy / opt.drain_jobs * 1e6);
}

/* ---- explain and profile --------------------------------------------------- */

static void bench_explain(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s/explain.txt", opt.out);
  printf("\n== explain: statements inside fetch_jobs/complete_jobs, batch 1000"
         " (auto_explain) -> %s\n",
         path);
  prefill(opt.drain_jobs);
  notice_sink = fopen(path, "w");
  if (!notice_sink)
    die("cannot write %s", path);
  sql_exec("LOAD 'auto_explain'");
  sql_exec("SET auto_explain.log_min_duration = 0");
  sql_exec("SET auto_explain.log_analyze = on");
  sql_exec("SET auto_explain.log_buffers = on");
  sql_exec("SET auto_explain.log_nested_statements = on");
  sql_exec("SET client_min_messages = log");
  const char *process = "00000000-0000-4000-8000-000000000001";
  /* Twice: the first call of a plpgsql function plans its statements. */
  for (int round = 0; round < 2; round++) {
    fprintf(notice_sink, "\n######## round %d: fetch_jobs(1000)\n", round + 1);
    sql_exec("BEGIN");
    sqlf("SELECT count(*) FROM \"%s\".fetch_jobs('bench_drain', 1000, '%s')",
         opt.schema, process);
    fprintf(notice_sink, "\n######## round %d: complete_jobs(1000 ids)\n",
            round + 1);
    sqlf("SELECT count(*) FROM \"%s\".complete_jobs("
         "ARRAY(SELECT id FROM \"%s\".job WHERE process_id = '%s' ORDER BY id),"
         " (SELECT jsonb_agg(NULL::jsonb) FROM \"%s\".job WHERE process_id = '%s'),"
         " '%s')",
         opt.schema, opt.schema, process, opt.schema, process, process);
    sql_exec(round == 0 ? "ROLLBACK" : "COMMIT");
  }
  sql_exec("SET client_min_messages = notice");
  sql_exec("SET auto_explain.log_min_duration = -1");
  fclose(notice_sink);
  notice_sink = NULL;
}

/* Writes the top statements of pg_stat_statements (this database) to f. */
static void dump_statements(FILE *f, const char *title) {
  fprintf(f, "\n######## %s\n", title);
  PGresult *r = sql_res(
      "SELECT round(total_exec_time::numeric, 1) AS total_ms, calls, rows,"
      " round((total_exec_time / greatest(calls, 1))::numeric, 4) AS mean_ms,"
      " shared_blks_hit AS hit, shared_blks_dirtied AS dirtied, wal_records,"
      " wal_fpi, wal_bytes, toplevel,"
      " regexp_replace(left(query, 110), '\\s+', ' ', 'g') AS query"
      " FROM pg_stat_statements"
      " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
      " AND query NOT LIKE '%pg_stat_statements%'"
      " ORDER BY total_exec_time DESC LIMIT 12");
  int nf = PQnfields(r);
  for (int j = 0; j < nf; j++)
    fprintf(f, "%s%s", j ? " | " : "", PQfname(r, j));
  fprintf(f, "\n");
  for (int i = 0; i < PQntuples(r); i++) {
    for (int j = 0; j < nf; j++)
      fprintf(f, "%s%s", j ? " | " : "", PQgetvalue(r, i, j));
    fprintf(f, "\n");
  }
  PQclear(r);
}

/* pg_stat_statements around one series of sends and one drain. Run with
 * PGOPTIONS='-c pg_stat_statements.track=all' to see the statements inside
 * the SQL functions too. */
static void bench_profile(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s/pg_stat_statements.txt", opt.out);
  int b = opt.drain_batch[0], k = opt.drain_inflight[0];
  printf("\n== profile: %d sends, then a drain of %d jobs (batch %d, inflight"
         " %d), with pg_stat_statements -> %s\n",
         opt.send_n, opt.drain_jobs, b, k, path);
  PGresult *ext =
      PQexec(admin, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
  bool have = PQresultStatus(ext) == PGRES_COMMAND_OK;
  PQclear(ext);
  if (!have) {
    printf("  pg_stat_statements is not available: %s\n",
           PQerrorMessage(admin));
    return;
  }
  FILE *f = fopen(path, "w");
  if (!f)
    die("cannot write %s", path);
  PGresult *tr = sql_res("SHOW pg_stat_statements.track");
  fprintf(f, "pg_stat_statements.track = %s; schema %s\n",
          PQgetvalue(tr, 0, 0), opt.schema);
  PQclear(tr);

  reset_tables();
  run_sends(300);
  sql_exec("SELECT pg_stat_statements_reset()");
  double t0 = now_s();
  run_sends(opt.send_n);
  double dt = now_s() - t0;
  qsort(snd.lat, (size_t)snd.n, sizeof(double), cmp_double);
  printf("RESULT profile_send_p50_ms %.3f\n", pct(snd.lat, snd.n, 50));
  char title[200];
  snprintf(title, sizeof title, "%d sends one at a time (%.3f s, p50 %.3f ms)",
           opt.send_n, dt, pct(snd.lat, snd.n, 50));
  dump_statements(f, title);

  prefill(opt.drain_jobs);
  sql_exec("SELECT pg_stat_statements_reset()");
  memset(&drn, 0, sizeof drn);
  drn.batch = b;
  drn.fetchers = k;
  drn.target = opt.drain_jobs;
  t0 = now_s();
  for (int i = 0; i < k; i++)
    drain_fetch();
  while (!drn.finished)
    ev_run(loop, EVRUN_ONCE);
  dt = drn.t_end - t0;
  printf("RESULT profile_drain_jobs_per_s %.0f\n", opt.drain_jobs / dt);
  snprintf(title, sizeof title,
           "drain of %d jobs, batch %d, %d fetches in flight (%.3f s)",
           opt.drain_jobs, b, k, dt);
  dump_statements(f, title);
  fclose(f);
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv) {
  parse_args(argc, argv);
  const char *url = getenv("DATABASE_URL");
  if (!url || !*url)
    die("%s", "set DATABASE_URL");
  for (const char *p = opt.schema; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
      die("schema must be [a-z0-9_]: %s", opt.schema);
  mq_log_set_level(MQ_LOG_WARN);
  setvbuf(stdout, NULL, _IOLBF, 0);

  admin = PQconnectdb(url);
  if (PQstatus(admin) != CONNECTION_OK)
    die("cannot connect: %s", PQerrorMessage(admin));
  PQsetNoticeReceiver(admin, notice_cb, NULL);
  {
    PGresult *r = PQexec(admin, "SELECT current_setting('data_directory')");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
      char path[1200];
      snprintf(path, sizeof path, "%s/postmaster.pid", PQgetvalue(r, 0, 0));
      FILE *f = fopen(path, "r");
      if (f) {
        if (fscanf(f, "%ld", &pm_pid) != 1)
          pm_pid = 0;
        fclose(f);
      }
    }
    PQclear(r);
    if (pm_pid == 0)
      printf("(PostgreSQL's CPU cannot be measured: its data directory is"
             " not readable here)\n");
  }
  sql_exec("SET client_min_messages = warning");
  sqlf("DROP SCHEMA IF EXISTS \"%s\" CASCADE", opt.schema);
  sql_exec("SET client_min_messages = notice");
  open_runtime(url);

  printf("schema %s, pool %d, pid %d\n", opt.schema, opt.pool, (int)getpid());
  if (phase("send"))
    bench_send();
  if (phase("many"))
    bench_many();
  if (phase("drain"))
    bench_drain();
  if (phase("profile"))
    bench_profile();
  if (phase("explain"))
    bench_explain();

  mq_runtime_close(rt);
  reset_tables();
  PQfinish(admin);
  return 0;
}
