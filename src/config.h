/* config.h -- config.lua loaded into C structs and validated.
 *
 * config.lua is a Lua chunk returning a table (see docs/config.md). Loading
 * checks every key against the known schema: an unknown key (with a "did
 * you mean" suggestion when one is close), a wrong type or a bad value is an
 * error naming the key path ("queue.retry_limit") and what was expected; a
 * Lua syntax or runtime error in the file shows file:line. DATABASE_URL, when
 * set and non-empty, overrides `database`.
 *
 * Uses: json (schedule data), log (level names), cron (schedules' cron
 * expressions and zones). Needs a lua_State only while loading; the
 * resulting mq_config is plain C data.
 */
#ifndef MQ_CONFIG_H
#define MQ_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

/* The longest duration anywhere (a delay, retry_delay, expire_in,
 * retention, timeout...): 100 years of seconds, so that a time computed from
 * one stays inside PostgreSQL's timestamps (sql/014_limits.sql). */
#define MQ_DURATION_MAX 3155760000.0

/* The longest queue or job name, in bytes (sql/014_limits.sql). */
#define MQ_QUEUE_NAME_MAX 255

/* queue.prefetch = "auto": the worker claims ahead about MQ_PREFETCH_HORIZON
 * seconds of work, judged by the queue's recent handler run times, at most
 * MQ_PREFETCH_AUTO_MAX jobs (worker.c). */
#define MQ_PREFETCH_AUTO (-1)
#define MQ_PREFETCH_HORIZON 0.05
#define MQ_PREFETCH_AUTO_MAX 500

/* Defaults for the jobs of a queue; config `queue` sets them for every queue
 * and `queues.<name>` overrides them for one. Durations are in seconds. */
struct mq_queue_options {
  int retry_limit;      /* retries after the first attempt; default 3 */
  double retry_delay;   /* seconds before a retry; default 60 */
  bool retry_backoff;   /* exponential backoff with jitter; default true */
  double expire_in;     /* an active job older than this is retried; 900 */
  double retention;     /* finished jobs are deleted after this; 7 days */
  double poll_interval; /* fallback poll when no NOTIFY arrives; 2 */
  int concurrency;      /* jobs of the queue run at once per process; 10 */
  int prefetch;         /* jobs claimed ahead of free slots, so the next
                           batch is on its way while one runs; default
                           MQ_PREFETCH_AUTO (config "auto") */
  double timeout;       /* handler timeout; default 300 */
  char *dead_letter;    /* queue that receives finally failed jobs; NULL */
};

struct mq_queue_config {
  char *name;
  struct mq_queue_options options; /* `queue` merged with `queues.<name>` */
};

/* A schedule (docs/schedules.md): config.lua's `schedules` entries, and
 * the definitions moonq.schedule() passes to schedules.h. */
struct mq_schedule_config {
  char *name;         /* 1 to 200 bytes */
  char *cron;         /* a cron expression (cron.h) */
  char *tz;           /* IANA zone the expression is read in; default "UTC" */
  char *job;          /* job name to enqueue (at most 255 bytes); default:
                         name */
  char *data_json;    /* JSON text of `data`; default "{}" */
  char *options_json; /* JSON text of `options` (send options); "{}" */
  char *backfill;     /* missed slots made up for after downtime: a
                         duration ("1h", "1d12h"), whole seconds ("3600")
                         or a count ("5 slots"); NULL: none */
};

struct mq_config {
  char *path;     /* file it came from, or a description of the table */
  char *base_dir; /* directory relative paths resolve against */
  char *database; /* libpq conninfo or URI; NULL: the private cluster */
  char *schema;   /* SQL schema for moonq's tables; default "moonq" */
  char *handlers; /* handlers directory; default "handlers" */
  int workers;    /* worker processes; default 1 */
  int pool_size;  /* PostgreSQL connections per process; default 4 */
  bool hot_reload;       /* watch handler files; default true */
  double shutdown_grace; /* seconds running jobs get on SIGTERM; 30 */
  double stale_after;    /* a process silent this long is dead; 30 */
  int max_payload;       /* largest job data in bytes; default 1 MiB */
  int memory_limit;      /* MB of Lua memory per `moonq run` process;
                            default 256 */

  struct mq_queue_options queue; /* defaults for every queue */
  struct mq_queue_config *queues; /* per-queue overrides, merged */
  size_t nqueues;

  struct {
    bool enabled;    /* default true */
    bool job_events; /* job lifecycle events (SQL writes them); default false */
    int pool_size;   /* default 4 */
    int max_size;    /* largest event data in bytes; default 1 MiB */
    double retention; /* seconds events are kept; 0 (default): forever */
  } events;

  struct mq_schedule_config *schedules;
  size_t nschedules;

  struct {
    int level; /* enum mq_log_level; default info */
  } log;

  /* The HTTP API (docs/http.md); off unless `listen` is set. */
  struct {
    char *listen;     /* "host:port" (an IP address or "localhost"; IPv6
                         in brackets); NULL: no HTTP server */
    char *token;      /* bearer token every API call must carry; required
                         unless listen is a loopback address; NULL: none */
    int max_body;     /* largest request body in bytes; default
                         max_payload + 64 KiB */
    double timeout;   /* seconds an idle connection is kept; default 30 */
    double heartbeat; /* seconds between comments on an idle event stream;
                         default 15 */
    int stream_buffer; /* bytes an event stream may have unsent before a
                          batch: past it the client is cut off; default
                          1 MiB */
  } http;
};

/* Loads `path` as a Lua chunk (text only) in L, calls it and validates the
 * returned table. Returns a new config the caller frees with
 * mq_config_free(), or NULL with a message in err (several problems are
 * reported one per line). L's stack is left as it was. */
struct mq_config *mq_config_load(lua_State *L, const char *path, char *err,
                                 size_t errlen);

/* As mq_config_load(), with http.listen replaced by `listen` (a command
 * line's --http; NULL: the file's) before the http table is checked, so a
 * file's public address needing a token does not refuse a loopback one
 * given instead. */
struct mq_config *mq_config_load_listen(lua_State *L, const char *path,
                                        const char *listen, char *err,
                                        size_t errlen);

/* Validates the table at stack index idx as config.lua's table would be.
 * `origin` names it in messages. Same ownership and errors as load. */
struct mq_config *mq_config_from_table(lua_State *L, int idx,
                                       const char *origin, char *err,
                                       size_t errlen);

/* A config with every default and no file (database from DATABASE_URL). */
struct mq_config *mq_config_defaults(void);

/* Options of queue `name`: its `queues` entry or the `queue` defaults.
 * Valid while cfg lives. */
const struct mq_queue_options *mq_config_queue(const struct mq_config *cfg,
                                               const char *name);

/* Checks what cannot be seen from types alone in a schedule: the name
 * and job name lengths, the cron expression (mq_cron_parse's message, e.g.
 * "\"61 * * * *\": minute field: 61 is out of range 0-59"), the zone
 * (`unknown time zone "Mars/Olympus"`), an expression that never fires,
 * and the backfill. NULL fields other than name and cron take their
 * defaults. Returns NULL when the schedule is good, or the name of the
 * first key at fault ("name", "job", "cron", "tz", "backfill") with its
 * message in err. */
const char *mq_config_check_schedule(const struct mq_schedule_config *s,
                                     char *err, size_t errlen);

/* Parses an HTTP listen address "host:port": an IPv4 address, an IPv6
 * address in brackets ("[::1]:8080") or "localhost" (127.0.0.1), and a
 * port from 1 to 65535. Fills addr (room for a sockaddr_in6; its length
 * in *addrlen) and *loopback. Returns 0, or -1 with a message in err. */
struct sockaddr;
int mq_config_parse_listen(const char *listen, struct sockaddr *addr,
                           unsigned *addrlen, bool *loopback, char *err,
                           size_t errlen);

/* Checks cfg's `http` table as a whole: the listen address parses, and
 * one that is not a loopback address has a token of at least 16 bytes.
 * Used after loading and after `--http ADDR` replaced http.listen.
 * Returns 0, or -1 with a message naming the key in err. */
int mq_config_check_http(const struct mq_config *cfg, char *err,
                         size_t errlen);

void mq_config_free(struct mq_config *cfg);

#endif
