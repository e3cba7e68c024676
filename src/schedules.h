/* schedules.h -- cron schedules stored in PostgreSQL, each slot fired
 * exactly once across the cluster (sql/011_schedules.sql; users' guide in
 * docs/schedules.md).
 *
 * The handle has two roles. In any process it is the API: store a
 * schedule (mq_schedules_schedule), delete one, list them with their next
 * fire times computed here with cron.h. In a process that runs handlers
 * it also fires them (mq_schedules_start): it holds the enabled schedules
 * in memory, sleeps on one ev_periodic until the earliest slot of any of
 * them (an absolute wall-clock time, so a clock that jumps is followed),
 * and fires the slots that are due with one statement per
 * MQ_SCHEDULES_BATCH slots. Every process of the cluster may fire the same
 * slot; the database's unique key on (schedule, slot) lets exactly one of
 * them enqueue its job. A NOTIFY on "<schema>_schedules", sent by every
 * change from any process or from SQL, makes it read the schedules again;
 * a cheap count every MQ_SCHEDULES_CHECK seconds covers a notification
 * lost with a connection.
 *
 * Late and missed slots. A firing process fires every slot of its
 * schedules that comes due while it runs, late ones too, as long as it is
 * at most MQ_SCHEDULES_GRACE seconds late. Slots older than that (the
 * process was suspended, the clock jumped) and slots that passed before
 * it loaded a schedule (no process ran it) are missed slots: without a
 * backfill only the most recent one fires, and only when it is at most
 * MQ_SCHEDULES_GRACE seconds old (a restart across a slot does not lose
 * it); with a backfill of a duration, every missed slot within it fires;
 * with a backfill of N slots, the N most recent. They fire oldest first,
 * each once, at most MQ_SCHEDULES_MAX_SLOTS per schedule at a time (the
 * most recent). A slot older than the schedule's last fired slot never
 * fires, and missed slots start at the later of the last fired slot and
 * the last change of the schedule's cron, tz or enabled flag.
 *
 * Uses: cron, config, pg, json, buf, log.
 */
#ifndef MQ_SCHEDULES_H
#define MQ_SCHEDULES_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "config.h"
#include "cron.h"
#include "pg.h"

typedef struct mq_schedules mq_schedules;

enum mq_schedules_status {
  MQ_SCHEDULES_OK = 0,
  MQ_SCHEDULES_EINVAL = -1, /* bad input; the message names it */
  MQ_SCHEDULES_EDB = -2     /* the database failed; the message says why */
};

#define MQ_SCHEDULES_GRACE 60.0   /* seconds; see "Late and missed slots" */
#define MQ_SCHEDULES_MAX_SLOTS 1000
#define MQ_SCHEDULES_BATCH 500    /* slots per fire statement */
#define MQ_SCHEDULES_CHECK 30.0   /* seconds between checks for changes */
#define MQ_SCHEDULES_KEEP 86400.0 /* seconds rows of fired slots are kept */

/* A result: `json` is the answer (see each call) when status is 0, else
 * `error` says why. Both are valid until the callback returns. */
typedef void (*mq_schedules_cb)(int status, const char *error,
                                const char *json, void *data);

/* The rules above as a pure function: fills out (room for
 * MQ_SCHEDULES_MAX_SLOTS) with the slots of `cron` read in `tz` (NULL:
 * UTC) that fire when a process looks at the schedule at `now`, every
 * slot up to `cursor` being done already, oldest first, and returns how
 * many. Slots after now - on_time are on time and all fire (a running
 * process: on_time is MQ_SCHEDULES_GRACE); older ones are missed, and the
 * backfill (seconds, or slots; 0 and 0: none) picks among them (a process
 * that loads a schedule: on_time is 0). Times are Unix seconds. */
int mq_schedules_due(const struct mq_cron *cron, const char *tz,
                     int backfill_seconds, int backfill_slots, double cursor,
                     double now, double on_time, double *out);

/* Makes the handle for cfg's schema on pg; it fires nothing until
 * mq_schedules_start. loop, pg and cfg must outlive it. NULL when out of
 * memory. */
mq_schedules *mq_schedules_new(struct ev_loop *loop, mq_pg *pg,
                               const struct mq_config *cfg);

/* Stores config.lua's schedules in the database (source "config"): each
 * is created or replaced; one that came from config.lua before and is no
 * longer there is disabled when it has fired, deleted when it has not.
 * cb gets {"stored": n, "disabled": n, "deleted": n}. Returns 0, or
 * MQ_SCHEDULES_EDB when the request cannot be made (cb is then not
 * called). */
int mq_schedules_sync_config(mq_schedules *s, mq_schedules_cb cb, void *data);

/* Starts firing in this process: listens for changes, reads the enabled
 * schedules, fires the missed slots the rules above pick and arms the
 * timer. Idempotent. Returns 0, or MQ_SCHEDULES_EDB when the pool is
 * closed. */
int mq_schedules_start(mq_schedules *s);

/* Stops firing: timers stop, the schedules held are forgotten, answers
 * still in flight are ignored (fires already sent complete). The API
 * still works; mq_schedules_start starts again. Idempotent. */
void mq_schedules_stop(mq_schedules *s);

/* True while firing. */
bool mq_schedules_firing(const mq_schedules *s);

/* Stops and frees the handle. Every request it made must have completed
 * (the runtime closes the pool first, which completes them). NULL-safe. */
void mq_schedules_close(mq_schedules *s);

/* Creates schedule def->name or replaces its definition (and enables it
 * again); its history is kept. def is checked with
 * mq_config_check_schedule and its data against max_payload first: a
 * problem is MQ_SCHEDULES_EINVAL with the message in err (naming the key,
 * "cron: ...") and cb is not called. Bad send options are reported by the
 * database (MQ_SCHEDULES_EINVAL through cb). def is read before this
 * returns. cb gets the stored schedule as mq_schedules_list shows it. */
int mq_schedules_schedule(mq_schedules *s,
                          const struct mq_schedule_config *def,
                          mq_schedules_cb cb, void *data, char *err,
                          size_t errlen);

/* Deletes schedule `name` and its history; cb gets "true", or "false"
 * when there was none. Returns 0 or MQ_SCHEDULES_EDB (cb not called). */
int mq_schedules_unschedule(mq_schedules *s, const char *name,
                            mq_schedules_cb cb, void *data);

/* Lists every schedule by name; cb gets a JSON array of objects {name,
 * cron, tz, job, data, options, backfill ("1h", "5 slots" or null),
 * enabled, source ("config" or "api"), error (why it was disabled, or
 * null), next (its next fire time after now, computed here, or null when
 * disabled), last (the last slot fired, or null)}. Times are ISO 8601 in
 * the schedule's zone with its offset ("2026-03-29T03:00:00+02:00"; "Z"
 * for UTC). Returns 0 or MQ_SCHEDULES_EDB (cb not called). */
int mq_schedules_list(mq_schedules *s, mq_schedules_cb cb, void *data);

#endif
