/* migrate.c -- applies the compiled-in sql/NNN_name.sql migrations; see
 * migrate.h.
 *
 * One blocking connection does it all: take a session-level advisory lock
 * keyed on the schema (so concurrent runs queue up instead of racing; a crash
 * releases it with the connection), make sure the schema and its migrations
 * table exist, then apply each missing migration in its own transaction
 * together with the row that records it. A migration that fails leaves the
 * ones before it applied and nothing of itself. One that PostgreSQL chose
 * as a deadlock's victim (processes of an older moonq still write the tables
 * it changes, in an order of their own) is rolled back and run again, up to
 * MIGRATION_TRIES times.
 */
#include "migrate.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "log.h"
#include "pg.h"

#define MODULE "migrate"

/* PostgreSQL silently truncates identifiers longer than this, which would
 * make two different configured names share one schema. */
#define MAX_SCHEMA_LEN 63

/* Runs of one migration, the first included, before a deadlock fails it;
 * the n-th retry starts n * 200 ms after the failure. */
#define MIGRATION_TRIES 5

/* One mq_migrate() call. */
struct run {
  PGconn *conn;
  const char *schema;
  char *qschema; /* schema as a quoted identifier; PQfreemem */
  char *err;     /* caller's buffer, may be NULL */
  size_t errlen;
};

static int connect_db(struct run *r, const char *conninfo);
static int prepare_schema(struct run *r);
static PGresult *read_applied(struct run *r);
static bool is_applied(const PGresult *applied, int version);
static int max_applied(const PGresult *applied);
static const struct mq_migration **sorted_migrations(struct run *r);
static int apply_one(struct run *r, const struct mq_migration *m);
static int exec_ok(struct run *r, const char *what, const char *sql,
                   int nparams, const char *const *params, PGresult **out);
static void sql_error(struct run *r, const char *what, const PGresult *res,
                      const char *sql);
static char *subst_schema(const char *sql, const char *qschema);
static void on_notice(void *arg, const PGresult *res);
static void set_err(struct run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void one_line(char *s);

int mq_migrate(const char *conninfo, const char *schema, char *err,
               size_t errlen) {
  return mq_migrate_to(conninfo, schema, mq_migrate_latest(), err, errlen);
}

int mq_migrate_to(const char *conninfo, const char *schema, int version,
                  char *err, size_t errlen) {
  struct run r = {.schema = schema, .err = err, .errlen = errlen};
  const struct mq_migration **order = NULL;
  PGresult *applied = NULL;
  const char *key[] = {schema};
  bool locked = false;
  int count = 0, rc = -1, current, latest;
  char fields[256] = "";

  set_err(&r, "%s", "");
  if (!schema || !*schema || strlen(schema) > MAX_SCHEMA_LEN) {
    set_err(&r, "invalid schema name \"%s\": must be 1 to %d bytes",
            schema ? schema : "", MAX_SCHEMA_LEN);
    return -1;
  }
  if (connect_db(&r, conninfo) < 0)
    goto done;

  if (exec_ok(&r, "cannot take the migration lock",
              "SELECT pg_advisory_lock("
              "hashtextextended('moonq.migrate:' || $1, 0))",
              1, key, NULL) < 0)
    goto done;
  locked = true;

  if (prepare_schema(&r) < 0 || !(applied = read_applied(&r)))
    goto done;
  current = max_applied(applied);
  latest = mq_migrate_latest();
  if (current > latest) {
    set_err(&r, "schema %s is at version %d, newer than this moonq (%d)",
            schema, current, latest);
    goto done;
  }
  if (!(order = sorted_migrations(&r)))
    goto done;

  mq_log_field(fields, sizeof fields, "schema", schema);
  for (int i = 0; i < mq_migrations_count; i++) {
    const struct mq_migration *m = order[i];
    if (is_applied(applied, m->version) || m->version > version)
      continue;
    int applied_rc;
    for (int try = 1; (applied_rc = apply_one(&r, m)) == -2; try++) {
      if (try == MIGRATION_TRIES)
        goto done;
      PQclear(PQexec(r.conn, "ROLLBACK"));
      set_err(&r, "%s", "");
      mq_log_warn(MODULE, "deadlock, running it again version=%d try=%d%s",
                  m->version, try + 1, fields);
      struct timespec pause = {.tv_sec = try / 5,
                               .tv_nsec = (long)(try % 5) * 200000000L};
      nanosleep(&pause, NULL);
    }
    if (applied_rc < 0)
      goto done;
    count++;
    char name[128] = "";
    mq_log_field(name, sizeof name, "name", m->name);
    mq_log_info(MODULE, "applied version=%d%s%s", m->version, name, fields);
  }
  mq_log(count ? MQ_LOG_INFO : MQ_LOG_DEBUG, MODULE, "%s version=%d applied=%d%s",
              count ? "schema migrated" : "schema up to date",
              version < latest ? version : latest, count, fields);
  rc = count;

done:
  if (r.conn && PQstatus(r.conn) == CONNECTION_OK) {
    /* ROLLBACK first: an aborted transaction would refuse the unlock. */
    if (PQtransactionStatus(r.conn) != PQTRANS_IDLE)
      PQclear(PQexec(r.conn, "ROLLBACK"));
    if (locked)
      PQclear(PQexecParams(r.conn,
                           "SELECT pg_advisory_unlock("
                           "hashtextextended('moonq.migrate:' || $1, 0))",
                           1, NULL, key, NULL, NULL, 0));
  }
  PQclear(applied);
  free(order);
  if (r.qschema)
    PQfreemem(r.qschema);
  PQfinish(r.conn);
  return rc;
}

int mq_migrate_latest(void) {
  int latest = 0;
  for (int i = 0; i < mq_migrations_count; i++)
    if (mq_migrations[i].version > latest)
      latest = mq_migrations[i].version;
  return latest;
}

/* Opens the connection and sets the session up: warnings and worse are
 * logged (NOTICEs of IF NOT EXISTS are not), and the client encoding is
 * UTF-8 like the migration files. The message never shows `conninfo`: it
 * may hold a password. */
static int connect_db(struct run *r, const char *conninfo) {
  if (mq_pg_check_conninfo(conninfo, r->err, r->errlen) != 0)
    return -1; /* not "cannot connect": trying again cannot help */
  r->conn = PQconnectdb(conninfo ? conninfo : "");
  if (!r->conn) {
    set_err(r, "cannot connect to PostgreSQL: out of memory");
    return -1;
  }
  if (PQstatus(r->conn) != CONNECTION_OK) {
    char msg[1024];
    mq_log_scrub(PQerrorMessage(r->conn), conninfo, msg, sizeof msg);
    set_err(r, "cannot connect to PostgreSQL: %s", msg);
    return -1;
  }
  PQsetNoticeReceiver(r->conn, on_notice, r);
  r->qschema = PQescapeIdentifier(r->conn, r->schema, strlen(r->schema));
  if (!r->qschema) {
    set_err(r, "invalid schema name \"%s\": %s", r->schema,
            PQerrorMessage(r->conn));
    return -1;
  }
  return exec_ok(r, "cannot set up the session",
                 "SET client_min_messages = warning; "
                 "SET client_encoding = 'UTF8'",
                 0, NULL, NULL);
}

/* Creates the schema and its migrations table when missing. Existence is
 * checked first because CREATE ... IF NOT EXISTS still demands the CREATE
 * privilege, which a role given a ready-made schema may lack. */
static int prepare_schema(struct run *r) {
  const char *params[] = {r->schema};
  PGresult *res;
  if (exec_ok(r, "cannot inspect the schema",
              "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),"
              " EXISTS (SELECT 1 FROM pg_class c"
              " JOIN pg_namespace n ON n.oid = c.relnamespace"
              " WHERE n.nspname = $1 AND c.relname = 'migrations')",
              1, params, &res) < 0)
    return -1;
  bool have_schema = PQgetvalue(res, 0, 0)[0] == 't';
  bool have_table = PQgetvalue(res, 0, 1)[0] == 't';
  PQclear(res);

  char sql[512];
  if (!have_schema) {
    snprintf(sql, sizeof sql, "CREATE SCHEMA IF NOT EXISTS %s", r->qschema);
    if (exec_ok(r, "cannot create the schema", sql, 0, NULL, NULL) < 0)
      return -1;
  }
  if (!have_table) {
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s.migrations ("
             "version integer PRIMARY KEY, "
             "name text NOT NULL, "
             "applied_at timestamptz NOT NULL DEFAULT now())",
             r->qschema);
    if (exec_ok(r, "cannot create the migrations table", sql, 0, NULL,
                NULL) < 0)
      return -1;
  }
  return 0;
}

/* Returns the applied versions in ascending order (caller PQclear's), or
 * NULL with the error set. */
static PGresult *read_applied(struct run *r) {
  char sql[256];
  PGresult *res = NULL;
  snprintf(sql, sizeof sql,
           "SELECT version FROM %s.migrations ORDER BY version", r->qschema);
  if (exec_ok(r, "cannot read the applied migrations", sql, 0, NULL, &res) <
      0)
    return NULL;
  return res;
}

static bool is_applied(const PGresult *applied, int version) {
  for (int i = 0; i < PQntuples(applied); i++)
    if (atoi(PQgetvalue(applied, i, 0)) == version)
      return true;
  return false;
}

static int max_applied(const PGresult *applied) {
  int n = PQntuples(applied);
  return n ? atoi(PQgetvalue(applied, n - 1, 0)) : 0;
}

static int by_version(const void *a, const void *b) {
  const struct mq_migration *x = *(const struct mq_migration *const *)a;
  const struct mq_migration *y = *(const struct mq_migration *const *)b;
  return (x->version > y->version) - (x->version < y->version);
}

/* The compiled migrations in version order (caller frees), or NULL with the
 * error set. Two files with one version number would be applied as one, so
 * they are refused. */
static const struct mq_migration **sorted_migrations(struct run *r) {
  size_t n = (size_t)mq_migrations_count;
  const struct mq_migration **order = malloc((n ? n : 1) * sizeof *order);
  if (!order) {
    set_err(r, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < n; i++)
    order[i] = &mq_migrations[i];
  qsort(order, n, sizeof *order, by_version);
  for (size_t i = 1; i < n; i++)
    if (order[i]->version == order[i - 1]->version) {
      set_err(r, "migrations %03d_%s and %03d_%s share a version",
              order[i - 1]->version, order[i - 1]->name, order[i]->version,
              order[i]->name);
      free(order);
      return NULL;
    }
  return order;
}

/* Runs one migration and records it, in one transaction: 0 when done, -2
 * when PostgreSQL rolled it back to break a deadlock (running it again can
 * succeed), -1 on another failure; with the error set either way. On failure
 * the transaction is left for the caller's ROLLBACK. */
static int apply_one(struct run *r, const struct mq_migration *m) {
  char what[160], insert[256], version[16];
  snprintf(what, sizeof what, "migration %03d_%s failed", m->version,
           m->name);
  snprintf(insert, sizeof insert,
           "INSERT INTO %s.migrations (version, name) VALUES ($1, $2)",
           r->qschema);
  snprintf(version, sizeof version, "%d", m->version);
  const char *params[] = {version, m->name};

  char *sql = subst_schema(m->sql, r->qschema);
  if (!sql) {
    set_err(r, "%s: out of memory", what);
    return -1;
  }
  int rc = -1;
  if (exec_ok(r, what, "BEGIN", 0, NULL, NULL) < 0)
    goto out;
  PGresult *res = PQexec(r->conn, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    sql_error(r, what, res, sql);
    if (state && strcmp(state, "40P01") == 0) /* deadlock_detected */
      rc = -2;
    PQclear(res);
    goto out;
  }
  PQclear(res);
  /* A COMMIT inside the file would record the version outside the
   * migration's transaction. */
  if (PQtransactionStatus(r->conn) != PQTRANS_INTRANS) {
    set_err(r, "%s: the SQL must not end its transaction", what);
    goto out;
  }
  if (exec_ok(r, what, insert, 2, params, NULL) == 0 &&
      exec_ok(r, what, "COMMIT", 0, NULL, NULL) == 0)
    rc = 0;
out:
  free(sql);
  return rc;
}

/* Runs one statement (with text parameters when nparams > 0) and checks
 * that it succeeded. With `out`, hands over the result (caller PQclear's);
 * on failure sets "<what>: <server message>" and returns -1. */
static int exec_ok(struct run *r, const char *what, const char *sql,
                   int nparams, const char *const *params, PGresult **out) {
  PGresult *res = nparams
                      ? PQexecParams(r->conn, sql, nparams, NULL, params,
                                     NULL, NULL, 0)
                      : PQexec(r->conn, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    sql_error(r, what, res, NULL);
    PQclear(res);
    return -1;
  }
  if (out)
    *out = res;
  else
    PQclear(res);
  return 0;
}

/* Sets "<what>: <message>[; <detail>][ (LINE n: <text>)]". The line is
 * found from the error position in `sql`, when given; @schema@ never spans
 * lines, so it is the line of the .sql file too. */
static void sql_error(struct run *r, const char *what, const PGresult *res,
                      const char *sql) {
  const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
  const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
  if (!primary) {
    /* No server error: the connection broke or memory ran out. */
    set_err(r, "%s: %s", what,
            res && *PQresultErrorMessage(res) ? PQresultErrorMessage(res)
                                               : PQerrorMessage(r->conn));
    return;
  }
  char where[160] = "";
  if (pos && sql) {
    /* The position counts characters (UTF-8 here), from 1. */
    long chars = atol(pos) - 1, line = 1;
    const char *p = sql, *start = sql;
    for (; *p && chars > 0; p++) {
      if (((unsigned char)*p & 0xC0) != 0x80)
        chars--;
      if (*p == '\n') {
        line++;
        start = p + 1;
      }
    }
    while (*start == ' ' || *start == '\t')
      start++;
    int len = (int)strcspn(start, "\r\n");
    snprintf(where, sizeof where, " (LINE %ld: %.*s%s)", line,
             len > 100 ? 100 : len, start, len > 100 ? "..." : "");
  }
  set_err(r, "%s: %s%s%s%s", what, primary, detail ? "; " : "",
          detail ? detail : "", where);
}

/* Returns a malloc'd copy of sql with every "@schema@" replaced by
 * qschema, or NULL when out of memory. */
static char *subst_schema(const char *sql, const char *qschema) {
  static const char tag[] = "@schema@";
  const size_t taglen = sizeof tag - 1, qlen = strlen(qschema);
  size_t n = 0;
  for (const char *p = sql; (p = strstr(p, tag)); p += taglen)
    n++;
  char *out = malloc(strlen(sql) + n * qlen + 1);
  if (!out)
    return NULL;
  char *o = out;
  for (const char *p = sql, *hit;; p = hit + taglen) {
    hit = strstr(p, tag);
    size_t len = hit ? (size_t)(hit - p) : strlen(p);
    memcpy(o, p, len);
    o += len;
    if (!hit)
      break;
    memcpy(o, qschema, qlen);
    o += qlen;
  }
  *o = '\0';
  return out;
}

/* Server warnings (client_min_messages hides NOTICEs) go to the log, not
 * to libpq's default of printing on stderr. */
static void on_notice(void *arg, const PGresult *res) {
  const struct run *r = arg;
  const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  char fields[128] = "";
  mq_log_field(fields, sizeof fields, "schema", r->schema);
  mq_log_warn(MODULE, "server: %s%s", msg ? msg : "(no message)", fields);
}

/* Formats into the caller's error buffer, if any, as one line. */
static void set_err(struct run *r, const char *fmt, ...) {
  if (!r->err || r->errlen == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->err, r->errlen, fmt, ap);
  va_end(ap);
  one_line(r->err);
}

/* Joins libpq's multi-line messages ("...failed: ...\n\tIs the server
 * running...?\n") into one line and trims trailing whitespace. */
static void one_line(char *s) {
  char *o = s;
  for (const char *p = s; *p;) {
    if (*p == '\n' || *p == '\r') {
      while (*p == '\n' || *p == '\r' || *p == ' ' || *p == '\t')
        p++;
      *o++ = ' ';
    } else {
      *o++ = *p++;
    }
  }
  while (o > s && (o[-1] == ' ' || o[-1] == '\t'))
    o--;
  *o = '\0';
}
