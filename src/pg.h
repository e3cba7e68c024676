/* pg.h -- asynchronous PostgreSQL on libev.
 *
 * An mq_pg is a small pool of non-blocking libpq connections driven by one
 * libev loop, plus one connection that only LISTENs. Requests are
 * parameterised statements with a completion callback; every connection runs
 * in libpq pipeline mode, so many requests share a round trip and none waits
 * for another unless its caller chains them. Each request is its own
 * transaction (a pipeline sync follows it), so one failing statement never
 * affects another.
 *
 * Failure rules:
 *  - A request's callback is called exactly once: with a result, or with an
 *    error (SQL error, connection lost, database unavailable, pool closed).
 *    If mq_pg_query() returns an error, the callback is never called.
 *  - A connection that breaks is reconnected with exponential backoff (100 ms
 *    doubling to `reconnect_max`, with jitter), each attempt logged with the
 *    password masked. LISTEN channels are restored on the new connection.
 *  - Requests not yet sent wait for a connection; they fail with
 *    MQ_PG_EUNAVAILABLE once they have waited `queue_timeout` seconds.
 *  - Requests already sent when a connection broke may or may not have run:
 *    they fail with MQ_PG_ECONNLOST, unless made with MQ_PG_RETRY (the caller
 *    says the statement is safe to run twice), in which case they are sent
 *    again after reconnecting.
 *
 * Uses: log.
 */
#ifndef MQ_PG_H
#define MQ_PG_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>
#include <libpq-fe.h>

typedef struct mq_pg mq_pg;

enum mq_pg_status {
  MQ_PG_OK = 0,
  MQ_PG_ESQL = -1,         /* the server rejected the statement */
  MQ_PG_ECONNLOST = -2,    /* sent, then the connection broke */
  MQ_PG_EUNAVAILABLE = -3, /* no connection within queue_timeout */
  MQ_PG_ECLOSED = -4,      /* the pool was closed first */
  MQ_PG_ENOMEM = -5,
  MQ_PG_EINVAL = -6
};

/* Flags for mq_pg_query(). */
enum {
  MQ_PG_RETRY = 1 << 0 /* safe to send again after a lost connection */
};

/* What a request's callback receives; valid until the callback returns. */
struct mq_pg_reply {
  int status;          /* enum mq_pg_status */
  PGresult *result;    /* tuples or command status when status == OK */
  const char *error;   /* message when status != OK */
  const char *sqlstate; /* five-character SQLSTATE for MQ_PG_ESQL, or "" */
};

typedef void (*mq_pg_cb)(const struct mq_pg_reply *reply, void *data);

/* Called for each NOTIFY on a channel the subscriber listens to; `payload`
 * is valid until the callback returns. */
typedef void (*mq_pg_notify_cb)(const char *channel, const char *payload,
                                void *data);

struct mq_pg_options {
  const char *conninfo;  /* libpq conninfo or URI (copied) */
  int pool_size;         /* query connections; default 4 */
  double reconnect_max;  /* cap of the reconnect backoff, s; default 10 */
  double queue_timeout;  /* how long a request waits for a connection; 30 */
  bool listen;           /* open the LISTEN connection; default true */
  const char *init_sql;  /* run first on every new query connection, e.g.
                            session settings (copied); NULL: none */
};

/* Checks that libpq can parse conninfo (a key=value string or a URI):
 * a malformed URI, an unknown parameter or keyword is an error no retry
 * can mend. Returns 0, or -1 with "invalid database connection string: "
 * and libpq's reason in err, every password replaced by "***" (libpq
 * quotes a malformed URI whole). */
int mq_pg_check_conninfo(const char *conninfo, char *err, size_t errlen);

/* Creates the pool and starts connecting (it does not wait). Returns NULL
 * only when out of memory. Every message it logs or returns (connection
 * errors included) has conninfo's passwords masked. */
mq_pg *mq_pg_new(struct ev_loop *loop, const struct mq_pg_options *opts);

/* Queues `sql` with nparams text parameters (NULL entries are SQL NULL;
 * values are copied). cb(reply, data) is called exactly once from the loop,
 * never from inside this call. Returns 0, or a negative mq_pg_status (and
 * cb is never called). */
int mq_pg_query(mq_pg *pg, const char *sql, int nparams,
                const char *const *params, int flags, mq_pg_cb cb, void *data);

/* Declares a statement that every connection prepares on first use and
 * keeps prepared (re-preparing after a reconnect). Returns a statement id
 * >= 0 for mq_pg_exec(), or a negative mq_pg_status. The SQL is copied. */
int mq_pg_prepare(mq_pg *pg, const char *sql);

/* mq_pg_prepare() of tmpl with every "%s" in it replaced by `schema`
 * quoted as an identifier (schema: [a-z0-9_], as config checks). SQL over
 * 4 KiB is MQ_PG_EINVAL. */
int mq_pg_prepare_in(mq_pg *pg, const char *tmpl, const char *schema);

/* Like mq_pg_query() with a statement declared by mq_pg_prepare(). */
int mq_pg_exec(mq_pg *pg, int stmt, int nparams, const char *const *params,
               int flags, mq_pg_cb cb, void *data);

/* Subscribes cb to `channel` (an identifier; quoted by the pool). The
 * LISTEN is issued now and again after every reconnect. Returns 0 or a
 * negative status. Several subscribers may share a channel. */
int mq_pg_listen(mq_pg *pg, const char *channel, mq_pg_notify_cb cb,
                 void *data);

/* Removes the subscription made with the same channel, cb and data;
 * UNLISTENs when it was the channel's last. */
int mq_pg_unlisten(mq_pg *pg, const char *channel, mq_pg_notify_cb cb,
                   void *data);

/* Called with true when at least one query connection is up and with false
 * when the last one goes down; lets a caller log or pause work. */
void mq_pg_on_state(mq_pg *pg, void (*cb)(bool up, void *data), void *data);

/* True when some query connection is connected. */
bool mq_pg_is_up(const mq_pg *pg);

/* Number of requests queued or in flight. */
size_t mq_pg_pending(const mq_pg *pg);

/* The pool's connections now (the LISTEN connection not counted): busy
 * ones have requests in flight, idle ones none, down ones are connecting
 * or waiting to reconnect; reconnects counts connections (the LISTEN one
 * too) made again after one was lost, since mq_pg_new. */
struct mq_pg_stats {
  int busy, idle, down;
  long long reconnects;
};
void mq_pg_stats(const mq_pg *pg, struct mq_pg_stats *out);

/* The most recent connection error, "" if none. */
const char *mq_pg_last_error(const mq_pg *pg);

/* Closes every connection. Requests still queued or in flight complete now
 * with MQ_PG_ECLOSED. Frees the pool; safe to call from a pg callback (the
 * memory is released once that callback returns). */
void mq_pg_close(mq_pg *pg);

/* Value helpers for results. */
long long mq_pg_getll(const PGresult *res, int row, int col);
double mq_pg_getdouble(const PGresult *res, int row, int col);

#endif
