/* test_migrate.c -- migrations: first run, rerun, concurrent runs, a bad
 * connection, a database newer than the binary, a schema name that needs
 * quoting, an upgrade of a database holding jobs, an upgrade that brings
 * durations within 014's limits, an upgrade that claims for many queues
 * (027), 036 while an older moonq's processes complete and retry jobs. Each
 * case uses its own
 * schema and drops it at the end. */
#include "test.h"

#include <stdarg.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "migrate.h"

static char err[512];

/* The process that runs the jobs of upgrade_keeps_jobs. */
#define PROCESS "'00000000-0000-4000-8000-000000000001'::uuid"

/* mq_test_sql() of a formatted statement. */
static char *sqlf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *sqlf(const char *fmt, ...) {
  char sql[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  return mq_test_sql(sql);
}

static void drop_schema(const char *schema) {
  free(sqlf("SET client_min_messages = warning;"
            " DROP SCHEMA IF EXISTS \"%s\" CASCADE",
            schema));
}

/* The compiled versions as "1,2,3", the way string_agg prints them. */
static void compiled_versions(char *buf, size_t len) {
  buf[0] = '\0';
  for (int v = 1, first = 1; v <= mq_migrate_latest(); v++)
    for (int i = 0; i < mq_migrations_count; i++)
      if (mq_migrations[i].version == v) {
        size_t n = strlen(buf);
        snprintf(buf + n, len - n, "%s%d", first ? "" : ",", v);
        first = 0;
      }
}

static void first_run_applies_everything(void) {
  const char *schema = mq_test_schema("migrate_first");
  drop_schema(schema);
  REQUIRE(mq_migrations_count >= 1);

  int n = mq_migrate(mq_test_db_url(), schema, err, sizeof err);
  CHECK_INT(n, mq_migrations_count);
  CHECK_STR(err, "");

  char *s = sqlf("SELECT to_regclass('%s.migrations') IS NOT NULL"
                 " AND to_regclass('%s.process') IS NOT NULL",
                 schema, schema);
  CHECK_STR(s, "t");
  free(s);
  s = sqlf("SELECT count(*) FROM pg_indexes WHERE schemaname = '%s'"
           " AND tablename = 'process' AND indexdef LIKE '%%(heartbeat_at)'",
           schema);
  CHECK_STR(s, "1");
  free(s);

  char want[256];
  compiled_versions(want, sizeof want);
  s = sqlf("SELECT string_agg(version::text, ',' ORDER BY version)"
           " FROM %s.migrations",
           schema);
  CHECK_STR(s, want);
  free(s);
  s = sqlf("SELECT name FROM %s.migrations WHERE version = 1", schema);
  CHECK_STR(s, "base");
  free(s);

  /* The process table takes a row with its defaults filled in. */
  s = sqlf("INSERT INTO %s.process (host, pid, version)"
           " VALUES ('h', 42, '0.1.0')"
           " RETURNING id IS NOT NULL AND started_at = heartbeat_at",
           schema);
  CHECK_STR(s, "t");
  free(s);
  drop_schema(schema);
}

/* "version@applied_at,..." of the migrations table (caller frees). */
static char *applied_snapshot(const char *schema) {
  return sqlf("SELECT string_agg(version || '@' || applied_at, ','"
              " ORDER BY version) FROM %s.migrations",
              schema);
}

static void second_run_changes_nothing(void) {
  const char *schema = mq_test_schema("migrate_again");
  drop_schema(schema);
  REQUIRE(mq_migrate(mq_test_db_url(), schema, err, sizeof err) ==
          mq_migrations_count);

  char *before = applied_snapshot(schema);
  CHECK_INT(mq_migrate(mq_test_db_url(), schema, err, sizeof err), 0);
  CHECK_STR(err, "");
  char *after = applied_snapshot(schema);
  CHECK(before && *before);
  CHECK_STR(after, before);
  free(before);
  free(after);
  drop_schema(schema);
}

enum { NCHILD = 4 };

struct child_result {
  int rc;
  char err[256];
};

static void concurrent_runs_apply_once(void) {
  const char *schema = mq_test_schema("migrate_conc");
  drop_schema(schema);
  int go[2], done[2];
  REQUIRE(pipe(go) == 0 && pipe(done) == 0);
  fflush(stdout);
  fflush(stderr);

  pid_t pids[NCHILD];
  for (int i = 0; i < NCHILD; i++) {
    pids[i] = fork();
    REQUIRE(pids[i] >= 0);
    if (pids[i] == 0) {
      close(go[1]);
      close(done[0]);
      char c;
      /* Blocks until the parent closes its end: all start together. */
      (void)!read(go[0], &c, 1);
      struct child_result res = {0};
      res.rc = mq_migrate(mq_test_db_url(), schema, res.err, sizeof res.err);
      /* Smaller than PIPE_BUF, so the write is atomic. */
      (void)!write(done[1], &res, sizeof res);
      _exit(0);
    }
  }
  close(go[0]);
  close(done[1]);
  close(go[1]);

  int sum = 0;
  for (int i = 0; i < NCHILD; i++) {
    struct child_result res;
    ssize_t got = read(done[0], &res, sizeof res);
    CHECK_INT(got, sizeof res);
    if (got != (ssize_t)sizeof res)
      break;
    CHECK(res.rc >= 0);
    CHECK_STR(res.err, "");
    sum += res.rc;
  }
  close(done[0]);
  for (int i = 0; i < NCHILD; i++) {
    int status;
    CHECK_INT(waitpid(pids[i], &status, 0), pids[i]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  CHECK_INT(sum, mq_migrations_count);

  char *s = sqlf("SELECT count(*) FROM %s.migrations", schema);
  char want[16];
  snprintf(want, sizeof want, "%d", mq_migrations_count);
  CHECK_STR(s, want);
  free(s);
  drop_schema(schema);
}

static void bad_conninfo_fails_without_leaking_it(void) {
  int n = mq_migrate("host=/nonexistent port=1 connect_timeout=2 "
                     "password=hunter2",
                     "moonq", err, sizeof err);
  CHECK_INT(n, -1);
  CHECK_CONTAINS(err, "cannot connect to PostgreSQL: ");
  CHECK(!strstr(err, "hunter2"));
  CHECK(!strchr(err, '\n'));
  CHECK(strlen(err) > strlen("cannot connect to PostgreSQL: "));

  CHECK_INT(mq_migrate(mq_test_db_url(), "", err, sizeof err), -1);
  CHECK_CONTAINS(err, "invalid schema name");
}

static void newer_database_is_refused(void) {
  const char *schema = mq_test_schema("migrate_newer");
  drop_schema(schema);
  REQUIRE(mq_migrate(mq_test_db_url(), schema, err, sizeof err) ==
          mq_migrations_count);
  free(sqlf("INSERT INTO %s.migrations (version, name)"
            " VALUES (9999, 'future')",
            schema));

  CHECK_INT(mq_migrate(mq_test_db_url(), schema, err, sizeof err), -1);
  char want[160];
  snprintf(want, sizeof want,
           "schema %s is at version 9999, newer than this moonq (%d)", schema,
           mq_migrate_latest());
  CHECK_STR(err, want);
  drop_schema(schema);
}

static void schema_name_is_quoted(void) {
  char schema[64], quoted[80];
  snprintf(schema, sizeof schema, "t_Mig \"q\" %d", (int)getpid());
  snprintf(quoted, sizeof quoted, "\"t_Mig \"\"q\"\" %d\"", (int)getpid());
  free(sqlf("SET client_min_messages = warning;"
            " DROP SCHEMA IF EXISTS %s CASCADE",
            quoted));

  CHECK_INT(mq_migrate(mq_test_db_url(), schema, err, sizeof err),
            mq_migrations_count);
  CHECK_STR(err, "");
  char *s = sqlf("SELECT count(*) FROM %s.migrations", quoted);
  char want[16];
  snprintf(want, sizeof want, "%d", mq_migrations_count);
  CHECK_STR(s, want);
  free(s);
  CHECK_INT(mq_migrate(mq_test_db_url(), schema, err, sizeof err), 0);
  free(sqlf("SET client_min_messages = warning;"
            " DROP SCHEMA IF EXISTS %s CASCADE",
            quoted));
}

/* Jobs in every state, made with the functions of version 3 (their
 * process parameter was owner_id then; it is passed by position). */
static const char *const jobs_at_version_3 =
    "SET moonq.no_wake = on;"
    "INSERT INTO process (id, host, pid, version) VALUES (" PROCESS ", 'h', 1, 'x');"
    "SELECT send('waiting', '{}');"                          /* id 1 */
    "SELECT send('retry', '{}', '{\"retry_delay\": 3600}');" /* id 2 */
    "SELECT send('active', '{}', '{\"retry_delay\": 0}');"   /* id 3 */
    "SELECT send('completed', '{}');"                        /* id 4 */
    "SELECT send('failed', '{}', '{\"retry_limit\": 1, \"retry_delay\": 0}');"
    "SELECT send('cancelled', '{}');"                        /* id 6 */
    "SELECT send('cancelled_running', '{}');"                /* id 7 */
    "SELECT send('released', '{}');"                         /* id 8 */
    "SELECT fetch_jobs('retry', 1, " PROCESS ");"
    "SELECT fail_jobs('{2}', ARRAY['{}'::jsonb], " PROCESS ");"
    "SELECT fetch_jobs('active', 1, " PROCESS ");"
    "SELECT fail_jobs('{3}', ARRAY['{}'::jsonb], " PROCESS ");"
    "SELECT fetch_jobs('active', 1, " PROCESS ");"
    "SELECT fetch_jobs('completed', 1, " PROCESS ");"
    "SELECT complete_jobs('{4}', '[null]', " PROCESS ");"
    "SELECT fetch_jobs('failed', 1, " PROCESS ");"
    "SELECT fail_jobs('{5}', ARRAY['{}'::jsonb], " PROCESS ");"
    "SELECT fetch_jobs('failed', 1, " PROCESS ");"
    "SELECT fail_jobs('{5}', ARRAY['{}'::jsonb], " PROCESS ");"
    "SELECT cancel(6);"
    "SELECT fetch_jobs('cancelled_running', 1, " PROCESS ");"
    "SELECT cancel(7);"
    "SELECT fetch_jobs('released', 1, " PROCESS ");"
    "SELECT release_jobs('{8}', " PROCESS ");";

/* A database at version 3 holding jobs is upgraded by migration 4: owner
 * becomes process_id and retry_count (failures so far) becomes attempt
 * (the attempt that runs or last ran), and the queue works on. */
static void upgrade_keeps_jobs(void) {
  const char *schema = mq_test_schema("migrate_upgrade");
  drop_schema(schema);
  REQUIRE(mq_migrate_to(mq_test_db_url(), schema, 3, err, sizeof err) == 3);
  char sql[4096];
  snprintf(sql, sizeof sql, "SET search_path = %s; %s", schema,
           jobs_at_version_3);
  free(mq_test_sql(sql));

  CHECK_INT(mq_migrate(mq_test_db_url(), schema, err, sizeof err),
            mq_migrations_count - 3);
  char *s = sqlf("SELECT string_agg(name || ' ' || attempt || ' '"
                 " || (process_id IS NOT NULL), ', ' ORDER BY id)"
                 " FROM %s.all_jobs", schema);
  CHECK_STR(s, "waiting 0 false, retry 1 false, active 2 true, "
               "completed 1 true, failed 2 true, cancelled 0 false, "
               "cancelled_running 1 true, released 0 false");
  free(s);
  s = sqlf("SELECT %s.get_job(3) - 'created_at' - 'started_at' - 'start_after'",
           schema);
  CHECK_STR(s, "{\"id\": 3, \"data\": {}, \"name\": \"active\", "
               "\"error\": {}, \"queue\": \"active\", \"state\": "
               "\"active\", \"attempt\": 2, \"priority\": 0, "
               "\"expire_in\": 900, \"retention\": 604800, \"process_id\": "
               "\"00000000-0000-4000-8000-000000000001\", \"retry_delay\": 0, "
               "\"retry_limit\": 3, \"stored_state\": \"active\", "
               "\"retry_backoff\": true}");
  free(s);
  s = sqlf("SELECT %s.complete_jobs('{3}', '[null]', " PROCESS ");"
           " SELECT attempt FROM %s.job_archive WHERE id = 3",
           schema, schema);
  CHECK_STR(s, "2");
  free(s);
  drop_schema(schema);
}

/* A database at version 12 holding a job and a queue whose durations
 * overflow a timestamp (retention and expire_in of 1e13 seconds, accepted
 * then) is brought within 014's limits: the job completes in one batch with
 * a good one, and the queue's setting is clamped too. */
static void upgrade_clamps_durations(void) {
  const char *schema = mq_test_schema("migrate_limits");
  drop_schema(schema);
  REQUIRE(mq_migrate_to(mq_test_db_url(), schema, 12, err, sizeof err) == 12);
  free(sqlf("SET search_path = %s; SET moonq.no_wake = on;"
            " INSERT INTO process (id, host, pid, version)"
            "   VALUES (" PROCESS ", 'h', 1, 'x');"
            " SELECT store_queue_settings('slow', '{\"expire_in\": 1e13}');"
            " SELECT send('big', '{}', '{\"retention\": 1e13, \"queue\": \"q\"}');"
            " SELECT send('good', '{}', '{\"queue\": \"q\"}');"
            " SELECT fetch_jobs('q', 2, " PROCESS ")",
            schema));
  CHECK(mq_migrate(mq_test_db_url(), schema, err, sizeof err) > 0);
  char *s = sqlf("SELECT string_agg(c::text, ',' ORDER BY c) FROM"
                 " %s.complete_jobs_guarded('{1,2}', '[null, null]', " PROCESS ") c",
                 schema);
  CHECK_STR(s, "1,2");
  free(s);
  s = sqlf("SELECT string_agg(retention::text, ',' ORDER BY id) FROM %s.job_archive",
           schema);
  CHECK_STR(s, "3155760000,604800");
  free(s);
  s = sqlf("SELECT expire_in FROM %s.queue WHERE name = 'slow'", schema);
  CHECK_STR(s, "3155760000");
  free(s);
  drop_schema(schema);
}

/* A job that a SQL caller claimed without a process (fetch_jobs accepted
 * that before 023) gets the nil process in 025, so crash recovery takes
 * it back (expiry and recovery find running jobs by their process). */
static void upgrade_adopts_claims_without_process(void) {
  const char *schema = mq_test_schema("migrate_unowned");
  drop_schema(schema);
  REQUIRE(mq_migrate_to(mq_test_db_url(), schema, 22, err, sizeof err) > 0);
  free(sqlf("SET search_path = %s; SET moonq.no_wake = on;"
            " SELECT send('lost', '{}', '{\"queue\": \"q\"}');"
            " SELECT fetch_jobs('q', 1, NULL);"
            " UPDATE job SET started_at = now() - interval '1 hour'",
            schema));
  char *s = sqlf("SELECT state || ',' || (process_id IS NULL) FROM %s.job", schema);
  CHECK_STR(s, "active,true");
  free(s);
  CHECK(mq_migrate(mq_test_db_url(), schema, err, sizeof err) > 0);
  s = sqlf("SELECT process_id FROM %s.job", schema);
  CHECK_STR(s, "00000000-0000-0000-0000-000000000000");
  free(s);
  s = sqlf("SELECT %s.maintain(30)->>'recovered'", schema);
  CHECK_STR(s, "1");
  free(s);
  s = sqlf("SELECT state || ',' || (start_after <= now()) FROM %s.job", schema);
  CHECK_STR(s, "retry,true"); /* it waits again, due at once */
  free(s);
  drop_schema(schema);
}

/* Jobs sent at version 25 are claimed by 027's fetch_jobs_many, each queue's
 * in claim order, after the upgrade. */
static void upgrade_claims_many_queues(void) {
  const char *schema = mq_test_schema("migrate_many");
  drop_schema(schema);
  REQUIRE(mq_migrate_to(mq_test_db_url(), schema, 25, err, sizeof err) > 0);
  free(sqlf("SET search_path = %s; SET moonq.no_wake = on;"
            " INSERT INTO process (id, host, pid, version)"
            "   VALUES (" PROCESS ", 'h', 1, 'x');"
            " SELECT send('a', '{}'), send('b', '{}'),"
            "   send('b', '{}', '{\"priority\": 1}')",
            schema));
  CHECK(mq_migrate(mq_test_db_url(), schema, err, sizeof err) > 0);
  char *s = sqlf("SELECT string_agg(queue || id, ',') FROM %s.fetch_jobs_many("
                 "ARRAY['b', 'a'], ARRAY[5, 5], " PROCESS ", NULL, NULL)",
                 schema);
  CHECK_STR(s, "b3,b2,a1");
  free(s);
  drop_schema(schema);
}

/* A migration to `version` in a child process, with PGOPTIONS set to
 * `options` there when not NULL; its struct child_result comes through
 * *fd (the parent's end of a pipe, to close). Returns the child's pid. */
static pid_t migrate_in_child(const char *schema, int version,
                              const char *options, int *fd) {
  int p[2];
  REQUIRE(pipe(p) == 0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    if (options)
      setenv("PGOPTIONS", options, 1);
    struct child_result res = {0};
    res.rc = mq_migrate_to(mq_test_db_url(), schema, version, res.err,
                           sizeof res.err);
    (void)!write(p[1], &res, sizeof res);
    _exit(0);
  }
  close(p[1]);
  *fd = p[0];
  return pid;
}

/* Waits (up to 30 s) until the migration `name` waits for a lock. */
static bool migration_waits(const char *name) {
  for (int i = 0; i < 1500; i++) {
    char *s = sqlf("SELECT count(*) FROM pg_stat_activity"
                   " WHERE wait_event_type = 'Lock' AND query LIKE '-- %s%%'",
                   name);
    bool waits = s && strcmp(s, "0") != 0;
    free(s);
    if (waits)
      return true;
    nanosleep(&(struct timespec){.tv_nsec = 20000000L}, NULL);
  }
  return false;
}

/* The child's result, after it exits. */
static struct child_result migrated_in_child(pid_t pid, int fd) {
  struct child_result res = {.rc = -100};
  CHECK_INT(read(fd, &res, sizeof res), sizeof res);
  close(fd);
  int status;
  CHECK_INT(waitpid(pid, &status, 0), pid);
  return res;
}

/* One statement on `c`; its first value ("" for none), or the error. */
static char *exec_on(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  char *out = strdup(st == PGRES_TUPLES_OK && PQntuples(r) > 0
                         ? PQgetvalue(r, 0, 0)
                     : st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK
                         ? ""
                         : PQresultErrorMessage(r));
  PQclear(r);
  return out;
}

/* A connection for `schema` in a transaction, as a process of an older
 * moonq is while it completes or retries jobs; `setup` runs first. */
static PGconn *older_process(const char *schema, const char *setup) {
  PGconn *c = PQconnectdb(mq_test_db_url());
  REQUIRE(PQstatus(c) == CONNECTION_OK);
  char sql[512];
  snprintf(sql, sizeof sql,
           "SET search_path = %s; SET moonq.no_wake = on; %s; BEGIN", schema,
           setup);
  char *s = exec_on(c, sql);
  CHECK_STR(s, "");
  free(s);
  return c;
}

/* A migration to 036 of a schema at 035 holding `jobs` (run there with a
 * process PROCESS), while a process of the older moonq is in a transaction
 * (after `setup`) that holds `locks` and then runs `work`, whose first value
 * must be `want`. PGOPTIONS `options` go to the migration. Then the
 * migration has succeeded and `queue`'s counts hold `counts`. */
static void upgrade_36_while(const char *tag, const char *jobs,
                             const char *setup, const char *locks,
                             const char *options, const char *work,
                             const char *want, const char *queue,
                             const char *counts) {
  const char *schema = mq_test_schema(tag);
  drop_schema(schema);
  REQUIRE(mq_migrate_to(mq_test_db_url(), schema, 35, err, sizeof err) > 0);
  free(sqlf("SET search_path = %s; SET moonq.no_wake = on;"
            " INSERT INTO process (id, host, pid, version)"
            "   VALUES (" PROCESS ", 'h', 1, 'x'); %s",
            schema, jobs));
  PGconn *w = older_process(schema, setup);
  char *s = exec_on(w, locks);
  CHECK_STR(s, "");
  free(s);

  int fd;
  pid_t pid = migrate_in_child(schema, 36, options, &fd);
  CHECK(migration_waits("036_job_counts"));
  s = exec_on(w, work);
  CHECK_STR(s, want);
  free(s);
  s = exec_on(w, "COMMIT");
  CHECK_STR(s, "");
  free(s);
  PQfinish(w);
  struct child_result res = migrated_in_child(pid, fd);
  CHECK_INT(res.rc, 1);
  CHECK_STR(res.err, "");

  s = sqlf("SELECT %s.counts('%s') @> '%s'", schema, queue, counts);
  CHECK_STR(s, "t");
  free(s);
  drop_schema(schema);
}

/* 036 while a process of the older moonq completes jobs: the completion
 * has written job and job_archive (the LOCK stands for that) when the
 * migration starts, and its trigger then writes the counts. The migration
 * waits for it instead of deadlocking with it. The migration's own
 * deadlock check is put off, so that a deadlock fails the completion. */
static void upgrade_while_jobs_complete(void) {
  upgrade_36_while("migrate_complete",
                   "SELECT send('a', '{}'), send('a', '{}');"
                   " SELECT count(*) FROM fetch_jobs('a', 2, " PROCESS ")",
                   "SELECT 1", "LOCK TABLE job, job_archive IN ROW EXCLUSIVE MODE",
                   "-c deadlock_timeout=60s",
                   "SELECT count(*) FROM complete_jobs(ARRAY[1]::bigint[],"
                   " '[null]', " PROCESS ")",
                   "1", "a", "{\"active\": 1, \"completed\": 1}");
}

/* 036 while a process of the older moonq retries a failed job: retry_job
 * has deleted the job from job_archive (the LOCK stands for that) when the
 * migration starts, and then inserts it into job, which the migration has
 * locked first. PostgreSQL breaks the deadlock by failing the migration
 * (the process's own deadlock check is put off); the migration runs again
 * once the retry has committed. */
static void upgrade_while_jobs_retry(void) {
  upgrade_36_while("migrate_retry",
                   "SELECT send('b', '{}', '{\"retry_limit\": 0}');"
                   " SELECT count(*) FROM fetch_jobs('b', 1, " PROCESS ");"
                   " SELECT count(*) FROM fail_jobs(ARRAY[1]::bigint[],"
                   "   ARRAY['{\"message\": \"no\"}'::jsonb], " PROCESS ")",
                   "SET deadlock_timeout = '60s'",
                   "LOCK TABLE job_archive IN ROW EXCLUSIVE MODE", NULL,
                   "SELECT retry_job(1)", "t", "b",
                   "{\"waiting\": 1, \"failed\": 0}");
}

int main(void) {
  mq_test_db_url();
  RUN(first_run_applies_everything);
  RUN(second_run_changes_nothing);
  RUN(concurrent_runs_apply_once);
  RUN(bad_conninfo_fails_without_leaking_it);
  RUN(newer_database_is_refused);
  RUN(schema_name_is_quoted);
  RUN(upgrade_keeps_jobs);
  RUN(upgrade_clamps_durations);
  RUN(upgrade_adopts_claims_without_process);
  RUN(upgrade_claims_many_queues);
  RUN(upgrade_while_jobs_complete);
  RUN(upgrade_while_jobs_retry);
  return mq_test_done();
}
