/* heartbeat.c -- the process's heartbeat thread; see heartbeat.h.
 *
 * Shape: the thread sleeps on a condition variable for `interval` seconds
 * (stop() wakes it), then decides from two stamps whether the process is
 * live and, if so, runs the heartbeat statement on its own blocking
 * connection (connect_timeout and statement_timeout 5 s bound a beat). The
 * loop's timer writes `last_turn`; task.c writes `busy_until`. Both are
 * atomics: the only state the two threads share.
 */
#include "heartbeat.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "log.h"

#define BEAT_TIMEOUT "5" /* seconds a connect or a beat may take */

struct mq_heartbeat {
  struct ev_loop *loop;
  ev_timer stamp;           /* on the loop: stamps last_turn */
  _Atomic double last_turn; /* ev_time() of the loop's latest turn */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  bool stop; /* under mu */
  double interval, stale_after;
  char *conninfo;
  char sql[256];
  char process_id[40];
  char host[256];
  PGconn *conn;  /* the thread's */
  bool failing;  /* the last beat failed (logged once) */
  bool wedged;   /* the last look found the loop stuck (logged once) */
};

static _Atomic double busy_until;

void mq_heartbeat_busy_until(double deadline) { busy_until = deadline; }

static void stamp_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_heartbeat *hb = w->data;
  hb->last_turn = ev_time();
}

/* Whether the process is live at `now`; see heartbeat.h. */
static bool live(mq_heartbeat *hb, double now) {
  double busy = busy_until;
  return now - hb->last_turn < hb->stale_after ||
         (busy > 0 && now < busy + hb->stale_after);
}

static void beat_failed(mq_heartbeat *hb, const char *why) {
  char line[512], scrubbed[512];
  snprintf(line, sizeof line, "%s", why && *why ? why : "unknown error");
  for (char *p = line; *p; p++)
    if (*p == '\n' || *p == '\t' || *p == '"')
      *p = *p == '"' ? '\'' : ' ';
  mq_log_scrub(line, hb->conninfo, scrubbed, sizeof scrubbed);
  if (!hb->failing)
    mq_log_warn("heartbeat", "heartbeat failed error=\"%s\" (tried again "
                "every %g s)", scrubbed, hb->interval);
  hb->failing = true;
  PQfinish(hb->conn);
  hb->conn = NULL;
}

/* Connects when there is no connection; false (logged) when it fails. */
static bool ensure_connected(mq_heartbeat *hb) {
  if (hb->conn && PQstatus(hb->conn) == CONNECTION_OK)
    return true;
  PQfinish(hb->conn);
  const char *keys[] = {"dbname", "connect_timeout", "options", NULL};
  const char *values[] = {hb->conninfo, BEAT_TIMEOUT,
                          "-c statement_timeout=" BEAT_TIMEOUT "s", NULL};
  hb->conn = PQconnectdbParams(keys, values, 1);
  if (!hb->conn || PQstatus(hb->conn) != CONNECTION_OK) {
    beat_failed(hb, hb->conn ? PQerrorMessage(hb->conn) : "out of memory");
    return false;
  }
  return true;
}

static void beat(mq_heartbeat *hb) {
  if (!ensure_connected(hb))
    return;
  char pid[16];
  snprintf(pid, sizeof pid, "%d", (int)getpid());
  const char *params[] = {hb->process_id, hb->host, pid, MOONQ_VERSION};
  PGresult *res = PQexecParams(hb->conn, hb->sql, 4, NULL, params, NULL, NULL,
                               0);
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    beat_failed(hb, res ? PQresultErrorMessage(res) : PQerrorMessage(hb->conn));
  } else if (hb->failing) {
    hb->failing = false;
    mq_log_info("heartbeat", "heartbeat stored again");
  }
  PQclear(res);
}

/* Sleeps `interval` seconds or until stopped; returns false when stopped.
 * Called with mu held. */
static bool wait_interval(mq_heartbeat *hb) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  double whole = (double)(long)hb->interval;
  until.tv_sec += (time_t)whole;
  until.tv_nsec += (long)((hb->interval - whole) * 1e9);
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  while (!hb->stop &&
         pthread_cond_timedwait(&hb->cond, &hb->mu, &until) != ETIMEDOUT)
    ;
  return !hb->stop;
}

static void *run(void *arg) {
  mq_heartbeat *hb = arg;
  pthread_mutex_lock(&hb->mu);
  while (wait_interval(hb)) {
    pthread_mutex_unlock(&hb->mu);
    double now = ev_time();
    if (live(hb, now)) {
      hb->wedged = false;
      beat(hb);
    } else if (!hb->wedged) {
      hb->wedged = true;
      mq_log_error("heartbeat", "the event loop has not run for %.0f s, past "
                   "every handler's timeout: no more heartbeats, so that "
                   "this process's jobs are recovered", now - hb->last_turn);
    }
    pthread_mutex_lock(&hb->mu);
  }
  pthread_mutex_unlock(&hb->mu);
  PQfinish(hb->conn);
  hb->conn = NULL;
  return NULL;
}

mq_heartbeat *mq_heartbeat_start(struct ev_loop *loop,
                                 const struct mq_heartbeat_options *o,
                                 char *err, size_t errlen) {
  mq_heartbeat *hb = calloc(1, sizeof *hb);
  if (!hb || !(hb->conninfo = strdup(o->conninfo))) {
    free(hb);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  hb->loop = loop;
  hb->stale_after = o->stale_after;
  hb->interval = o->stale_after / 6 < 0.5 ? 0.5 : o->stale_after / 6;
  snprintf(hb->sql, sizeof hb->sql,
           "SELECT \"%s\".heartbeat($1::uuid, $2, $3::int, $4)", o->schema);
  snprintf(hb->process_id, sizeof hb->process_id, "%s", o->process_id);
  snprintf(hb->host, sizeof hb->host, "%s", o->host);
  hb->last_turn = ev_time();
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&hb->cond, &attr);
  pthread_condattr_destroy(&attr);
  pthread_mutex_init(&hb->mu, NULL);
  /* The thread takes no signals: the loop's thread handles them all. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&hb->thread, NULL, run, hb);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    snprintf(err, errlen, "cannot start the heartbeat thread: %s",
             strerror(rc));
    pthread_cond_destroy(&hb->cond);
    pthread_mutex_destroy(&hb->mu);
    free(hb->conninfo);
    free(hb);
    return NULL;
  }
  ev_timer_init(&hb->stamp, stamp_cb, 0., hb->interval / 2);
  hb->stamp.data = hb;
  ev_timer_again(loop, &hb->stamp);
  ev_unref(loop); /* stamping alone does not keep the loop running */
  return hb;
}

void mq_heartbeat_stop(mq_heartbeat *hb) {
  if (!hb)
    return;
  ev_ref(hb->loop);
  ev_timer_stop(hb->loop, &hb->stamp);
  pthread_mutex_lock(&hb->mu);
  hb->stop = true;
  pthread_cond_signal(&hb->cond);
  pthread_mutex_unlock(&hb->mu);
  pthread_join(hb->thread, NULL);
  pthread_cond_destroy(&hb->cond);
  pthread_mutex_destroy(&hb->mu);
  free(hb->conninfo);
  free(hb);
}
