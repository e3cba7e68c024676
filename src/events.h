/* events.h -- the event store on PostgreSQL: append, query, subscribe.
 *
 * Events live in <schema>.queue_events (sql/005_events.sql): id (stream
 * order), stream, type, ts, data (JSON), run_id and the flow columns.
 * Appends made during one loop turn go to PostgreSQL as one statement
 * (append_events, parallel arrays) with one wake-up NOTIFY on
 * "<schema>_events"; SQL appends (`SELECT moonq.append(...)`) notify the
 * same channel once per transaction.
 *
 * A subscription delivers the events of a stream or pattern (`*` is the
 * only wildcard) from a position, history first and then live, with no gap
 * and no duplicate: readers move from snapshot to snapshot, never over ids
 * (see the comment at the top of sql/005_events.sql). Each wake-up reads
 * new events in batches; after a reconnect every subscription catches up
 * from where it was; a slow fallback poll covers a lost notification.
 * Delivery is in batches to the subscriber's callback, which tells when it
 * is done with a batch (mq_subscription_next), so a slow subscriber reads
 * no further than it handles. Followers (mq_events_follow, the HTTP event
 * streams) of one pattern share one reader instead, each batch read once
 * for all of them.
 *
 * Uses: pg, config, json, buf, log.
 */
#ifndef MQ_EVENTS_H
#define MQ_EVENTS_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "config.h"
#include "pg.h"

typedef struct mq_events mq_events;
typedef struct mq_subscription mq_subscription;

enum mq_events_status {
  MQ_EVENTS_OK = 0,
  MQ_EVENTS_EINVAL = -1, /* bad input; the message names it */
  MQ_EVENTS_EDB = -2,    /* the database failed; the message says why */
  MQ_EVENTS_ECLOSED = -3 /* subscription: the event store closed (last call) */
};

/* A stored event. Strings are valid until the callback returns; NULL for
 * columns that are NULL. */
struct mq_event {
  long long id;
  const char *stream;
  const char *type;
  const char *ts;   /* timestamptz as PostgreSQL prints it */
  const char *data; /* JSON text */
  const char *run_id, *flow_name, *step_name, *step_id;
  int attempt;      /* -1: none (job.created events have 0) */
};

/* An event to append. data NULL means {}. */
struct mq_event_input {
  const char *stream;
  const char *type;
  const char *data; /* JSON text */
  const char *run_id;
};

/* Result of an append: the new events' ids and timestamps in input order
 * (valid until the callback returns), or an error. */
typedef void (*mq_events_append_cb)(int status, const char *error,
                                    const long long *ids,
                                    const char *const *ts, int n, void *data);

/* Events of a query or a subscription batch, in stream order. */
typedef void (*mq_events_cb)(int status, const char *error,
                             const struct mq_event *events, int n, void *data);

/* Makes the event store for cfg's schema on pg and starts listening for
 * wake-ups. cfg and pg must outlive it. NULL when out of memory. */
mq_events *mq_events_new(struct ev_loop *loop, mq_pg *pg,
                         const struct mq_config *cfg);

/* Checks one event by the rules of mq_events_append (nth names it in the
 * message). Returns 0 or MQ_EVENTS_EINVAL with a message in err. */
int mq_events_check(const mq_events *ev, const struct mq_event_input *e,
                    int nth, char *err, size_t errlen);

/* Checks and appends n events (batched with the other appends of this
 * loop turn: one statement). An event with an empty stream or type, a
 * stream containing '*', a stream, type or run_id that is not UTF-8, data
 * holding \u0000 or larger than events.max_size is MQ_EVENTS_EINVAL with
 * a message in err naming it, nothing of this call is appended and cb is
 * not called. data must be JSON text (the caller's promise: it is not
 * parsed here). One bad event found by the database fails the whole
 * batch it went in (nothing of it is stored). */
int mq_events_append(mq_events *ev, const struct mq_event_input *events,
                     int n, mq_events_append_cb cb, void *data, char *err,
                     size_t errlen);

/* The limits the event store's callers share (the Lua API, the HTTP
 * routes): a stream or pattern is 1 to MQ_EVENTS_PATTERN_MAX bytes, a
 * query returns 1 to MQ_EVENTS_QUERY_MAX events (default
 * MQ_EVENTS_QUERY_DEFAULT), a subscription reads MQ_EVENTS_READ_BATCH
 * events at a time. */
#define MQ_EVENTS_PATTERN_MAX 500
#define MQ_EVENTS_QUERY_MAX 100000
#define MQ_EVENTS_QUERY_DEFAULT 1000
#define MQ_EVENTS_READ_BATCH 500

/* Checks a stream or pattern (NULL: none given, fine) against
 * MQ_EVENTS_PATTERN_MAX. Returns 0, or MQ_EVENTS_EINVAL with a message
 * naming the limit in err. */
int mq_events_check_pattern(const char *pattern, char *err, size_t errlen);

/* Query options; NULL / 0 fields do not filter. */
struct mq_events_query {
  const char *const *types; /* NULL-terminated list, or NULL */
  long long after;          /* id */
  long long before;         /* id */
  const char *run_id;
  const char *from_ts, *to_ts; /* timestamptz text */
  int limit;                /* default MQ_EVENTS_QUERY_DEFAULT */
};

/* Events of `pattern` (a stream or `prefix*`) matching q, in stream
 * order. Returns 0 or a negative status (cb never called). */
int mq_events_query(mq_events *ev, const char *pattern,
                    const struct mq_events_query *q, mq_events_cb cb,
                    void *data);

/* Where a subscription starts. */
enum mq_events_from {
  MQ_EVENTS_FROM_START, /* every stored event */
  MQ_EVENTS_FROM_END,   /* events appended after the subscription began */
  MQ_EVENTS_FROM_ID     /* events with an id above from_id */
};

/* A reader position (sql/005_events.sql, "Gap safety"): every event
 * visible in snapshot `base` was delivered, and of those visible in
 * `target` (a step in progress; NULL: none) every one up to id after_id.
 * Snapshots are pg_snapshot text. */
struct mq_event_position {
  const char *base;
  const char *target;
  long long after_id;
};

/* Subscribes cb to `pattern` (NULL: every stream). cb gets each batch;
 * after handling it the subscriber calls mq_subscription_next() (at once
 * or later), and only then is the next batch read. cb gets a status < 0
 * when a read failed (the read is tried again later; nothing is skipped).
 * Returns the subscription or NULL (out of memory, or a pattern over 500
 * bytes: message in err). */
mq_subscription *mq_events_subscribe(mq_events *ev, const char *pattern,
                                     enum mq_events_from from,
                                     long long from_id, mq_events_cb cb,
                                     void *data, char *err, size_t errlen);

/* As mq_events_subscribe, from a position an earlier subscription gave
 * (mq_subscription_position): delivery goes on exactly where that one's
 * subscriber was, missing and repeating nothing. The snapshots must be
 * pg_snapshot text (a bad one fails every read). */
mq_subscription *mq_events_subscribe_at(mq_events *ev, const char *pattern,
                                        const struct mq_event_position *from,
                                        mq_events_cb cb, void *data,
                                        char *err, size_t errlen);

/* For a subscription from the end: asks for fn(arg, error) once its
 * starting position is fixed (error NULL: every event committed from then
 * on is delivered) or could not be (error: why, a message valid during the
 * call; the subscription reads again later). fn may close s. Returns 1
 * when fn will be called, 0 when s has its position already (fn is not
 * called), -1 when its first read could not be sent (the pool is closed).
 * A subscription's position is fixed by its first read, which runs on any
 * connection of the pool: until fn is called, an event appended on another
 * connection may commit before it and be missed. */
int mq_subscription_on_start(mq_subscription *s,
                             void (*fn)(void *arg, const char *error),
                             void *arg);


/* Follows `pattern` (NULL: every stream) as a subscription does, from
 * `from` / from_id or, with pos (base not NULL), from a position, for a
 * subscriber that takes batches as they come (an event stream to a
 * client). The followers of one pattern share one reader: from the end, a
 * follower shares it at once; from an earlier position it reads on its own
 * (a batch at a time, each after mq_subscription_next) until it reads live,
 * then reads up to the reader's position and shares the reader from there:
 * no gap, no duplicate. A follower that shares the reader gets each of its
 * batches without waiting for mq_subscription_next (the reader does not
 * wait for the slowest): the subscriber bounds what it keeps, and closes
 * the subscription when it cannot keep up. Its callback may close its own
 * subscription, no other. mq_subscription_position and
 * mq_subscription_on_start work as for a subscription. Returns the
 * follower or NULL (message in err: out of memory, a bad pattern). */
mq_subscription *mq_events_follow(mq_events *ev, const char *pattern,
                                  enum mq_events_from from, long long from_id,
                                  const struct mq_event_position *pos,
                                  mq_events_cb cb, void *data, char *err,
                                  size_t errlen);

/* True when every transaction visible in snapshot a is visible in b (both
 * pg_snapshot text): a reader at b has had every event one at a has. */
bool mq_snapshot_covers(const char *a, const char *b);

/* The id of the batch s's subscriber is given (or holds): the same for the
 * followers that get one batch of their shared reader, and different for
 * every other batch, so that what a subscriber makes of a batch (its
 * events as text) can be kept under this id for the others. */
unsigned long long mq_subscription_batch_id(const mq_subscription *s);

/* For consumer groups (event_groups.h): subscribes to partition `part` of
 * `parts` of pattern from a stored position, reading `batch` events at a
 * time (0: the default, 500). Otherwise as mq_events_subscribe, except
 * that the store's wake-ups do not reach it: its owner wakes it
 * (mq_subscription_wake) when its partition may have new events. */
mq_subscription *mq_events_subscribe_partition(
    mq_events *ev, const char *pattern, int part, int parts, int batch,
    const struct mq_event_position *from, mq_events_cb cb, void *data,
    char *err, size_t errlen);

/* Wakes a partition subscription. One reading or holding a batch is told
 * to read again after that, and NULL is returned. An idle one reads now
 * (and NULL is returned), or with if_busy, unless a read is due anyway,
 * only returns its position's base snapshot (valid until it reads) for its
 * owner to find out first whether its partition has anything new. */
const char *mq_subscription_wake(mq_subscription *s, bool if_busy);

/* While the subscriber holds a batch: the position just past its event
 * `last_id` (an id of the batch), to store as a checkpoint or to
 * subscribe from again (mq_events_subscribe_at). The strings
 * are the subscription's, valid until mq_subscription_next. false when
 * there is none (out of memory earlier: store nothing this time). */
bool mq_subscription_position(const mq_subscription *s, long long last_id,
                              struct mq_event_position *pos);

/* A statement of the event store's pool for tmpl, a static string whose
 * "%s" stand for the schema: prepared on the first call, the same id
 * after. Returns the id or a negative mq_pg_status (at most 16 such). */
int mq_events_stmt(mq_events *ev, const char *tmpl);

/* The event store's pool and config, for the modules built on it. */
mq_pg *mq_events_pg(const mq_events *ev);
const struct mq_config *mq_events_config(const mq_events *ev);
struct ev_loop *mq_events_loop(const mq_events *ev);
/* The wake-up channel ("<schema>_events"). */
const char *mq_events_channel(const mq_events *ev);

/* Event e as a JSON object, the shape the Lua API and the HTTP API show:
 * {id, stream, type, ts, data, and run_id, flow_name, step_name, step_id,
 * attempt when set}. Returns the text (caller frees) or NULL with a
 * message in err. */
char *mq_event_json(const struct mq_event *e, char *err, size_t errlen);

/* Fills e from row `row` of res, whose columns from col0 on are id,
 * stream, ts, type, run_id, flow_name, step_name, step_id, attempt, data.
 * The strings point into res. */
void mq_events_fill(const PGresult *res, int row, int col0, struct mq_event *e);

/* Lets a module built on the event store (consumer groups) hear when it
 * stops (stop reading, give back what it holds) and closes (free; nothing
 * is in flight any more). h stays the caller's; remove it before freeing. */
struct mq_events_hook {
  void (*stop)(void *data);
  void (*close)(void *data);
  void *data;
  struct mq_events_hook *next;
};
void mq_events_hook_add(mq_events *ev, struct mq_events_hook *h);
void mq_events_hook_remove(mq_events *ev, struct mq_events_hook *h);

/* The subscriber is done with the batch it was given. */
void mq_subscription_next(mq_subscription *s);

/* Stops delivery: cb is not called again. Frees s now or, with a read in
 * flight, when it completes. */
void mq_subscription_close(mq_subscription *s);

/* With events.retention set, deletes events older than that every few
 * seconds, in batches (one process of the cluster per pass). moonq run
 * starts it; scripts need not. */
void mq_events_start_retention(mq_events *ev);

/* Stops listening and every subscription's reads; appends still batched
 * are sent. Idempotent. */
void mq_events_stop(mq_events *ev);

/* Frees the event store and its subscriptions. Every request it made must
 * have completed (close the pool first). NULL-safe. */
void mq_events_close(mq_events *ev);

#endif
