/* event_groups.h -- consumer groups over the event store.
 *
 * A group reads one stream pattern; each of its events is handled by one
 * member. The group's events are split into partitions by stream (every
 * event of a stream in one partition, so a stream is handled in order);
 * each partition has a checkpoint in PostgreSQL and at most one owner.
 * Members join under a consumer name, renew a lease every lease/5 seconds,
 * take a fair share of the partitions and give back what is over it; a
 * member that stops renewing (killed) has its partitions taken over once
 * its lease has run out. Checkpoints are positions of the gap-safe reader
 * (events.h), written after each batch by the owner only (an epoch fences
 * a member that lost its partition while paused). See
 * sql/008_event_groups.sql.
 *
 * The member (this module) reads and checkpoints; the caller handles the
 * events of each batch in order, retries and parks (mq_group_park) as it
 * sees fit, and says when it is done with a batch.
 *
 * Uses: events, pg, log.
 */
#ifndef MQ_EVENT_GROUPS_H
#define MQ_EVENT_GROUPS_H

#include <stdbool.h>
#include <stddef.h>

#include "events.h"

typedef struct mq_group_member mq_group_member;

enum mq_group_batch {
  MQ_GROUP_EVENTS, /* the partition's next events */
  MQ_GROUP_REPLAY  /* parked events an operator asked to replay */
};

struct mq_group_options {
  const char *group;      /* 1-200 bytes */
  const char *consumer;   /* this member's name in the group, 1-200 bytes */
  const char *pattern;    /* the group's stream pattern (fixed at creation) */
  const char *process_id; /* shown by mq_group_list; may be NULL */
  int partitions;         /* 0: the group's (a new group gets 16); 1-1024 */
  double lease;           /* seconds; 0: 10 */
  int batch;              /* events per read; 0: 100 */
};

/* The first join's outcome: MQ_EVENTS_OK (partitions may follow) or an
 * error (MQ_EVENTS_EINVAL: the message names the bad option, e.g. another
 * pattern than the group's); after an error the member is freed when the
 * callback returns. */
typedef void (*mq_group_joined_cb)(int status, const char *error, void *data);

/* A batch of `partition` in stream order (strings valid until the callback
 * returns). The caller must answer each batch with mq_group_done, once.
 * Status MQ_EVENTS_ECLOSED (no events) is the last call: the member is
 * gone (it left, was replaced by a newer process under its consumer name,
 * or the event store closed). Other errors are reported and retried. */
typedef void (*mq_group_cb)(int status, const char *error, int partition,
                            enum mq_group_batch kind,
                            const struct mq_event *events, int n, void *data);

/* Joins a group (creating it with o->pattern and o->partitions if it does
 * not exist). Options are copied. Returns the member, or NULL with a
 * message in err (bad options, out of memory); joined is called once the
 * database answered. */
mq_group_member *mq_group_join(mq_events *ev, const struct mq_group_options *o,
                               mq_group_joined_cb joined, mq_group_cb cb,
                               void *data, char *err, size_t errlen);

/* The caller is done with the batch of `partition`: events up to and
 * including `last_id` (0: none) were handled, `handled` of them in all.
 * For MQ_GROUP_EVENTS the checkpoint moves past last_id, then the next
 * batch is read (unless the member is leaving) — from after last_id when
 * the caller stopped inside the batch; for MQ_GROUP_REPLAY the
 * replayed events up to last_id leave the parked list, unless the caller
 * parked them again. */
void mq_group_done(mq_group_member *m, int partition, enum mq_group_batch kind,
                   long long last_id, int handled);

/* Whether the caller may start handling another event of `partition`:
 * the member owns it and its lease, as last renewed, has not run out (a
 * member paused past its lease stops at the event it is in, until a
 * renewal says what it owns). When not, the caller ends the batch where it
 * is (mq_group_done with the last event handled). */
bool mq_group_may_handle(const mq_group_member *m, int partition);

/* Parks an event of `partition` the caller gave up on after `attempts`
 * tries with `error` (copied; bytes that are not UTF-8 become '?'; cut to
 * 8000 bytes). cb(status, error, data)
 * follows; MQ_EVENTS_OK also when the member no longer owned the partition
 * (the new owner handles the event again); another status when it could
 * not be written: the caller must not pass over the event then (end the
 * batch before it). Returns 0 or a negative status (cb is then not
 * called). */
int mq_group_park(mq_group_member *m, int partition, long long event_id,
                  int attempts, const char *error,
                  void (*cb)(int status, const char *error, void *data),
                  void *data);

/* Leaves the group: no batch is delivered after this; batches the caller
 * holds are still answered with mq_group_done (their checkpoints are
 * written), then the member's partitions are freed for the others and the
 * callback gets MQ_EVENTS_ECLOSED. */
void mq_group_leave(mq_group_member *m);

/* Groups as rows: group_name, pattern, partitions, members (JSON), last_id,
 * handled, lag, parked (sql/008 event_groups). `group` NULL: all. */
typedef void (*mq_group_rows_cb)(int status, const char *error,
                                 const PGresult *rows, void *data);
int mq_group_list(mq_events *ev, const char *group, mq_group_rows_cb cb,
                  void *data);

/* A group's parked events as rows (sql/008 parked_events), at most n. */
int mq_group_parked(mq_events *ev, const char *group, int n,
                    mq_group_rows_cb cb, void *data);

/* Marks parked events of a group for a replay: ids (n of them) or all
 * (ids NULL). The result row holds how many. */
int mq_group_replay(mq_events *ev, const char *group, const long long *ids,
                    int n, mq_group_rows_cb cb, void *data);

#endif
