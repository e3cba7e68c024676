/* event_groups.c -- consumer groups: membership, partition readers,
 * checkpoints, parking and replays; see event_groups.h and
 * sql/008_event_groups.sql.
 *
 * Shapes:
 *  - member: one handle in a group; its lease is renewed by a timer
 *    (join_group), whose answer says which partitions it owns now.
 *  - wake-ups: the member listens itself. Partitions busy reading or
 *    handling are told to read again after; the idle ones are named to
 *    one probe_partitions, and only those with something new read.
 *  - part: one partition the member knows of. While owned it has a
 *    subscription reading that partition from its checkpoint; the caller
 *    holds at most one batch of events and one batch of replays of it.
 *    A partition is given back (or dropped, when another member took it)
 *    only once nothing of it is held or being written.
 */
#include "event_groups.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "json.h"
#include "log.h"

#define DEFAULT_LEASE 10.0    /* seconds */
#define DEFAULT_BATCH 100     /* events per read */
#define REPLAY_BATCH "100"    /* parked events fetched per replay request */
#define MAX_NAME 200          /* bytes: group and consumer names */

enum stmt { ST_JOIN, ST_LEAVE, ST_CHECKPOINT, ST_PARK, ST_REPLAYS, ST_UNPARK,
            ST_PROBE, ST_COUNT };

static const char *const stmt_sql[ST_COUNT] = {
    [ST_JOIN] = "SELECT state, partition, epoch, base, target, after_id, share, "
                "replays, group_partitions FROM %s.join_group($1, $2, "
                "$3::integer, $4, $5, $6, $7::float8, $8::boolean, "
                "$9::integer[])",
    [ST_LEAVE] = "SELECT %s.leave_group($1, $2, $3)",
    [ST_CHECKPOINT] = "SELECT %s.checkpoint_group($1, $2, $3::integer[], "
                      "$4::bigint[], $5::pg_snapshot[], $6::pg_snapshot[], "
                      "$7::bigint[], $8::bigint[], $9::integer[])",
    [ST_PARK] = "SELECT %s.park_event($1, $2::integer, $3, $4::bigint, "
                "$5::bigint, $6::integer, $7)",
    [ST_REPLAYS] = "SELECT part, owned_epoch, attempts, id, stream, ts, type, "
                   "run_id, flow_name, step_name, step_id, attempt, data FROM "
                   "%s.parked_replays($1, $2, $3::integer)",
    [ST_UNPARK] = "SELECT %s.unpark_events($1, $2::integer, $3, $4::bigint, "
                  "$5::bigint[])",
    [ST_PROBE] = "SELECT %s.probe_partitions($1, $2::integer, "
                 "$3::pg_snapshot[])",
};

struct part {
  mq_group_member *m;
  int index;
  long long epoch;
  mq_subscription *sub; /* reading the partition; NULL when not */
  bool owned;           /* the member owns it (as far as it knows) */
  bool giving_back;     /* over the member's share: to be given back */
  bool sent_back;       /* in the join_group in flight as given back */
  bool holding;         /* the caller holds a batch of its events */
  /* The checkpoint to write (after a batch), and the one being written. */
  struct checkpoint {
    char *base, *target;
    long long after_id, last_id;
    int handled;
  } due, sending;
  bool dirty;           /* `due` holds a checkpoint to write */
  long long batch_last; /* the last id of the batch held */
  char *stored_base;    /* the base last written for it while idle */
  bool in_flush;        /* `sending` is in the checkpoint write in flight */
  bool replaying;       /* the caller holds a batch of its replays */
  int replays;          /* parked events waiting for a replay */
  long long *replay_ids;
  int n_replay;
};

struct mq_group_member {
  mq_events *ev;
  mq_pg *pg;
  struct ev_loop *loop;
  struct mq_events_hook hook;
  char *group, *consumer, *pattern, *process_id;
  char token[64];
  int want_partitions; /* 0: the group's */
  double lease;
  int batch;
  mq_group_joined_cb joined;
  mq_group_cb cb;
  void *data;
  struct part *parts; /* the group's partitions, once known */
  int n_parts;
  ev_timer renew;
  bool joining;    /* the first join_group is in flight */
  bool renewing;   /* a join_group in flight */
  bool fetching;   /* a parked_replays in flight */
  bool probing;    /* a probe_partitions in flight */
  bool flushing;   /* a checkpoint_group in flight */
  bool probe_again; /* a wake-up came meanwhile */
  bool listening;
  bool leaving;    /* no new batches; leave once nothing is held */
  bool caller_gone; /* the caller had its last callback: nothing is held */
  bool left;       /* leave_group sent (or not needed): wait for requests */
  bool stopped;    /* the event store closed: no more requests */
  int requests;    /* requests in flight */
  ev_tstamp renew_sent;  /* when the join_group in flight went out */
  ev_tstamp valid_until; /* the lease as this member knows it: ownership
                            may be taken over after this */
};

static void renew_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void renew(mq_group_member *m);
static void consider_leaving(mq_group_member *m);
static void hook_stop(void *data);
static void hook_close(void *data);

/* ---- array literals for statement parameters --------------------------- */

/* An array literal being built; `ok` false once memory ran out. */
struct literal {
  char *text;
  size_t len, cap;
  int n;
  bool ok;
};

static void lit_add(struct literal *l, const char *item, bool quote) {
  if (!l->ok)
    return;
  bool first = l->n++ == 0;
  l->ok = mq_buf_add(&l->text, &l->len, &l->cap, first ? "{" : ",", 1) == 0 &&
          (!quote || mq_buf_add(&l->text, &l->len, &l->cap, "\"", 1) == 0) &&
          mq_buf_add(&l->text, &l->len, &l->cap, item, strlen(item)) == 0 &&
          (!quote || mq_buf_add(&l->text, &l->len, &l->cap, "\"", 1) == 0);
}

static void lit_add_ll(struct literal *l, long long v) {
  char num[24];
  snprintf(num, sizeof num, "%lld", v);
  lit_add(l, num, false);
}

/* The finished literal ("{}" when empty), or NULL when memory ran out;
 * the caller frees it. */
static char *lit_end(struct literal *l) {
  if (l->ok && l->n == 0)
    l->ok = mq_buf_add(&l->text, &l->len, &l->cap, "{", 1) == 0;
  if (l->ok)
    l->ok = mq_buf_add(&l->text, &l->len, &l->cap, "}", 1) == 0;
  if (!l->ok) {
    free(l->text);
    return NULL;
  }
  return l->text;
}

/* ---- lifetime ------------------------------------------------------------ */

static void member_wake(const char *channel, const char *payload, void *data);

static void stop_listening(mq_group_member *m) {
  if (m->listening && !m->stopped)
    mq_pg_unlisten(m->pg, mq_events_channel(m->ev), member_wake, m);
  m->listening = false;
}

static void member_free(mq_group_member *m) {
  stop_listening(m);
  if (ev_is_active(&m->renew)) {
    ev_ref(m->loop);
    ev_timer_stop(m->loop, &m->renew);
  }
  mq_events_hook_remove(m->ev, &m->hook);
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    mq_subscription_close(p->sub);
    free(p->replay_ids);
    free(p->due.base);
    free(p->due.target);
    free(p->sending.base);
    free(p->sending.target);
    free(p->stored_base);
  }
  free(m->parts);
  free(m->group);
  free(m->consumer);
  free(m->pattern);
  free(m->process_id);
  free(m);
}

/* Gives the caller its last callback: it answers no batch after it, so
 * nothing counts as held any more. Reading and renewing stop. */
static void caller_gone(mq_group_member *m, const char *why) {
  if (m->caller_gone)
    return;
  m->caller_gone = true;
  m->leaving = true;
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    mq_subscription_close(p->sub);
    p->sub = NULL;
    p->holding = p->replaying = false;
  }
  if (ev_is_active(&m->renew)) {
    ev_ref(m->loop);
    ev_timer_stop(m->loop, &m->renew);
  }
  stop_listening(m);
  m->cb(MQ_EVENTS_ECLOSED, why, -1, MQ_GROUP_EVENTS, NULL, 0, m->data);
}

/* The member is done: frees it once no request of it is in flight. */
static void member_end(mq_group_member *m, const char *why) {
  caller_gone(m, why);
  m->left = true;
  if (m->requests == 0)
    member_free(m);
}

/* Every completion starts here: false when the member is ending (and may
 * have been freed now). */
static bool request_done(mq_group_member *m) {
  m->requests--;
  if (m->left) {
    if (m->requests == 0)
      member_free(m);
    return false;
  }
  return true;
}

static int exec(mq_group_member *m, enum stmt st, int n,
                const char *const *params, mq_pg_cb cb, void *data) {
  if (m->stopped)
    return MQ_EVENTS_ECLOSED;
  int id = mq_events_stmt(m->ev, stmt_sql[st]);
  /* A checkpoint write only moves the member's own partitions (epoch
   * checked): after a lost connection it is sent again at once. */
  int flags = st == ST_CHECKPOINT ? MQ_PG_RETRY : 0;
  if (id < 0 || mq_pg_exec(m->pg, id, n, params, flags, cb, data) != 0)
    return MQ_EVENTS_EDB;
  m->requests++;
  return 0;
}

/* ---- reading ------------------------------------------------------------- */

static struct part *part_of(mq_group_member *m, int partition) {
  return partition >= 0 && partition < m->n_parts ? &m->parts[partition]
                                                  : NULL;
}

/* Nothing of the partition is held or being written. */
static bool part_idle(const struct part *p) {
  return !p->holding && !p->dirty && !p->in_flush && !p->replaying;
}

static void delivered(int status, const char *error,
                      const struct mq_event *events, int n, void *data) {
  struct part *p = data;
  mq_group_member *m = p->m;
  if (status == MQ_EVENTS_ECLOSED) {
    p->sub = NULL;
    return;
  }
  if (status != MQ_EVENTS_OK) {
    m->cb(status, error, p->index, MQ_GROUP_EVENTS, NULL, 0, m->data);
    return;
  }
  p->holding = true;
  p->batch_last = events[n - 1].id;
  m->cb(MQ_EVENTS_OK, NULL, p->index, MQ_GROUP_EVENTS, events, n, m->data);
}

/* Starts reading partition p from the checkpoint in row `row` of res. */
static void start_reading(mq_group_member *m, struct part *p,
                          const PGresult *res, int row) {
  struct mq_event_position from = {
      .base = PQgetvalue(res, row, 3),
      .target = PQgetisnull(res, row, 4) ? NULL : PQgetvalue(res, row, 4),
      .after_id = mq_pg_getll(res, row, 5)};
  char err[256];
  p->sub = mq_events_subscribe_partition(m->ev, m->pattern, p->index,
                                         m->n_parts, m->batch, &from,
                                         delivered, p, err, sizeof err);
  if (!p->sub)
    mq_log_error("events", "cannot read a partition group=%s partition=%d "
                 "error=\"%s\" (tried again at the next renewal)", m->group,
                 p->index, err);
}

/* Stops reading p; while the caller holds a batch of it the subscription
 * stays until the batch is done (part_continue). */
static void stop_reading(struct part *p) {
  if (!p->sub || p->holding)
    return;
  mq_subscription_close(p->sub);
  p->sub = NULL;
}

static void after_idle(struct part *p);

/* A batch of events is finished: reads on, or closes the subscription
 * when p is no longer to be read. */
static void part_continue(struct part *p) {
  mq_group_member *m = p->m;
  if (p->sub && p->owned && !p->giving_back && !m->leaving)
    mq_subscription_next(p->sub);
  else
    stop_reading(p);
  after_idle(p);
}

/* ---- membership ---------------------------------------------------------- */

static bool make_parts(mq_group_member *m, int n) {
  if (m->parts)
    return m->n_parts == n;
  if (!(m->parts = calloc((size_t)n, sizeof *m->parts)))
    return false;
  m->n_parts = n;
  for (int i = 0; i < n; i++) {
    m->parts[i].m = m;
    m->parts[i].index = i;
  }
  return true;
}

static void fetch_replays(mq_group_member *m);
static void probe(mq_group_member *m);

/* Applies join_group's answer: the partitions owned now. */
static void apply_join(mq_group_member *m, const PGresult *res) {
  int rows = PQntuples(res);
  if (rows < 1 || !make_parts(m, atoi(PQgetvalue(res, 0, 8))))
    return;
  int share = atoi(PQgetvalue(res, 0, 6));
  bool *now = calloc((size_t)m->n_parts, sizeof *now);
  if (!now)
    return;
  for (int r = 0; r < rows; r++) {
    if (PQgetisnull(res, r, 1))
      continue;
    struct part *p = part_of(m, atoi(PQgetvalue(res, r, 1)));
    if (!p)
      continue;
    now[p->index] = true;
    long long epoch = mq_pg_getll(res, r, 2);
    p->replays = atoi(PQgetvalue(res, r, 7));
    if (p->owned && p->epoch == epoch) {
      if (!p->sub && !p->holding && !p->giving_back)
        start_reading(m, p, res, r);
      continue;
    }
    /* Newly owned (or owned again after a change of owner): read from
     * the stored checkpoint once nothing of the old ownership is held. */
    if (!part_idle(p)) {
      now[p->index] = false; /* take it at a later renewal */
      continue;
    }
    stop_reading(p);
    p->owned = true;
    p->giving_back = false;
    p->epoch = epoch;
    start_reading(m, p, res, r);
  }
  int owned = 0;
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (p->owned && !now[i]) { /* another member has it now */
      p->owned = false;
      p->giving_back = false;
      stop_reading(p);
    }
    if (p->owned && !p->giving_back)
      owned++;
  }
  free(now);
  /* Over the fair share (a member joined): give back the last ones, those
   * not held first; they go at the next renewal once idle. */
  for (int pass = 0; pass < 2 && owned > share; pass++) {
    for (int i = m->n_parts - 1; i >= 0 && owned > share; i--) {
      struct part *p = &m->parts[i];
      if (!p->owned || p->giving_back || (pass == 0 && !part_idle(p)))
        continue;
      p->giving_back = true;
      stop_reading(p);
      owned--;
    }
  }
  fetch_replays(m);
  probe(m); /* the fallback for a lost wake-up */
  for (int i = 0; i < m->n_parts; i++)
    if (m->parts[i].giving_back && part_idle(&m->parts[i])) {
      renew(m); /* give them back now, not at the next renewal */
      break;
    }
}

static void joined_reply(const struct mq_pg_reply *r, void *data) {
  mq_group_member *m = data;
  m->renewing = false;
  if (!request_done(m))
    return;
  bool first = m->joining;
  m->joining = false;
  if (r->status != MQ_PG_OK)
    for (int i = 0; i < m->n_parts; i++)
      m->parts[i].sent_back = false; /* given back next time */
  if (r->status != MQ_PG_OK) {
    if (first) {
      int status = r->status == MQ_PG_ESQL && strncmp(r->sqlstate, "22", 2) == 0
                       ? MQ_EVENTS_EINVAL : MQ_EVENTS_EDB;
      m->joined(status, r->error, m->data);
      m->caller_gone = m->left = true; /* the caller forgets it */
      if (m->requests == 0)
        member_free(m);
      return;
    }
    mq_log_warn("events", "renewing a group lease failed group=%s consumer=%s "
                "error=\"%s\" (tried again)", m->group, m->consumer, r->error);
    return;
  }
  if (PQntuples(r->result) > 0 &&
      strcmp(PQgetvalue(r->result, 0, 0), "replaced") == 0) {
    mq_log_warn("events", "consumer taken over by another process group=%s "
                "consumer=%s", m->group, m->consumer);
    member_end(m, "another process joined the group under this consumer name");
    return;
  }
  m->valid_until = m->renew_sent + m->lease;
  /* Partitions given back in this call are free now. */
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (p->sent_back) {
      p->owned = false;
      p->giving_back = false;
      p->sent_back = false;
    }
  }
  apply_join(m, r->result);
  if (first)
    m->joined(MQ_EVENTS_OK, NULL, m->data);
}

/* The partitions to give back now, as an integer[] literal (caller
 * frees); NULL when out of memory. */
static char *giving_back(mq_group_member *m) {
  struct literal l = {.ok = true};
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (!p->giving_back || !part_idle(p))
      continue;
    p->sent_back = true;
    lit_add_ll(&l, i);
  }
  return lit_end(&l);
}

static void renew(mq_group_member *m) {
  if (m->renewing || m->leaving || m->stopped)
    return;
  char parts[16], lease[32];
  snprintf(parts, sizeof parts, "%d", m->want_partitions);
  snprintf(lease, sizeof lease, "%.17g", m->lease);
  char *back = giving_back(m);
  if (!back)
    return;
  const char *params[] = {m->group,      m->pattern,
                          m->want_partitions ? parts : NULL,
                          m->consumer,   m->token,
                          m->process_id, lease,
                          m->joining ? "true" : "false",
                          back};
  if (exec(m, ST_JOIN, 9, params, joined_reply, m) == 0) {
    m->renewing = true;
    m->renew_sent = ev_now(m->loop);
  }
  free(back);
}

static void keep_idle_positions(mq_group_member *m);
static void flush(mq_group_member *m);

/* Every lease/5 s: renews the lease, and writes what is due (checkpoints a
 * failed write left, the positions idle partitions moved to). */
static void renew_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_group_member *m = w->data;
  renew(m);
  keep_idle_positions(m);
  flush(m);
}

/* ---- wake-ups ------------------------------------------------------------ */

static void probed(const struct mq_pg_reply *r, void *data) {
  mq_group_member *m = data;
  m->probing = false;
  if (!request_done(m))
    return;
  if (r->status == MQ_PG_OK) {
    for (int row = 0; row < PQntuples(r->result); row++) {
      struct part *p = part_of(m, atoi(PQgetvalue(r->result, row, 0)));
      if (p && p->owned && p->sub && !p->giving_back)
        mq_subscription_wake(p->sub, false);
    }
  } else {
    mq_log_warn("events", "probing a group's partitions failed group=%s "
                "error=\"%s\" (the next renewal tries again)", m->group,
                r->error);
  }
  if (m->probe_again) {
    m->probe_again = false;
    probe(m);
  }
}

/* Wakes the partitions that may have new events: the busy ones read again
 * when done; the idle ones go to one probe_partitions, unless `all`. */
static void wake_parts(mq_group_member *m, bool all) {
  if (m->leaving)
    return;
  if (m->probing && !all) {
    m->probe_again = true;
    return;
  }
  struct literal l = {.ok = true};
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (!p->owned || !p->sub || p->giving_back)
      continue;
    const char *base = mq_subscription_wake(p->sub, !all);
    if (base) /* "xmin:xmax:xip,...": quoted for the commas */
      lit_add(&l, base, true);
  }
  int idle = l.n;
  char *bases = lit_end(&l);
  if (idle > 0) {
    char parts[16];
    snprintf(parts, sizeof parts, "%d", m->n_parts);
    const char *params[] = {m->pattern, parts, bases};
    if (!bases || exec(m, ST_PROBE, 3, params, probed, m) != 0)
      wake_parts(m, true); /* read them all instead */
    else
      m->probing = true;
  }
  free(bases);
}

static void probe(mq_group_member *m) { wake_parts(m, false); }

/* A wake-up on the event store's channel; payload NULL after a reconnect
 * (some may be lost): every partition reads. */
static void member_wake(const char *channel, const char *payload, void *data) {
  mq_group_member *m = data;
  wake_parts(m, payload == NULL);
}

/* ---- checkpoints --------------------------------------------------------- */

/* Gives back a partition over the share as soon as it is idle. */
static void after_idle(struct part *p) {
  if (!part_idle(p))
    return;
  mq_group_member *m = p->m;
  if (m->leaving)
    consider_leaving(m);
  else if (p->giving_back && part_idle(p))
    renew(m);
}

static void checkpoint_clear(struct checkpoint *c) {
  free(c->base);
  free(c->target);
  *c = (struct checkpoint){0};
}

static void flush(mq_group_member *m);

static void flushed(const struct mq_pg_reply *r, void *data) {
  mq_group_member *m = data;
  m->flushing = false;
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (!p->in_flush)
      continue;
    if (r->status != MQ_PG_OK && !p->dirty) { /* due again: written at the
                                                 next renewal tick */
      p->due = p->sending;
      p->sending = (struct checkpoint){0};
      p->dirty = true;
    } else {
      checkpoint_clear(&p->sending);
    }
  }
  bool alive = request_done(m);
  for (int i = 0; alive && i < m->n_parts; i++)
    m->parts[i].in_flush = false;
  if (!alive)
    return;
  if (r->status != MQ_PG_OK) {
    mq_log_warn("events", "writing group checkpoints failed group=%s "
                "error=\"%s\" (written again at the next renewal)", m->group,
                r->error);
    for (int i = 0; i < m->n_parts; i++)
      after_idle(&m->parts[i]);
    return;
  } else {
    for (int row = 0; row < PQntuples(r->result); row++) {
      struct part *p = part_of(m, atoi(PQgetvalue(r->result, row, 0)));
      if (!p || !p->owned)
        continue;
      mq_log_warn("events", "partition taken over by another member group=%s "
                  "consumer=%s partition=%d", m->group, m->consumer, p->index);
      p->owned = false;
      stop_reading(p);
    }
  }
  flush(m);
  for (int i = 0; i < m->n_parts; i++)
    after_idle(&m->parts[i]);
}

/* Writes every due checkpoint in one statement; one write in flight at a
 * time, so the checkpoints of batches done meanwhile go together next. */
static void flush(mq_group_member *m) {
  if (m->flushing || m->stopped)
    return;
  struct literal parts = {.ok = true}, epochs = {.ok = true},
                 bases = {.ok = true}, targets = {.ok = true},
                 afters = {.ok = true}, lasts = {.ok = true},
                 handled = {.ok = true};
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (!p->dirty)
      continue;
    lit_add_ll(&parts, p->index);
    lit_add_ll(&epochs, p->epoch);
    lit_add(&bases, p->due.base, true);
    lit_add(&targets, p->due.target ? p->due.target : "NULL",
            p->due.target != NULL);
    lit_add_ll(&afters, p->due.after_id);
    lit_add_ll(&lasts, p->due.last_id);
    lit_add_ll(&handled, p->due.handled);
  }
  if (parts.n == 0) {
    free(lit_end(&parts));
    return;
  }
  char *lits[] = {lit_end(&parts), lit_end(&epochs), lit_end(&bases),
                  lit_end(&targets), lit_end(&afters), lit_end(&lasts),
                  lit_end(&handled)};
  bool ok = true;
  for (int k = 0; k < 7; k++)
    ok = ok && lits[k];
  const char *params[] = {m->group, m->consumer, lits[0], lits[1], lits[2],
                          lits[3],  lits[4],     lits[5], lits[6]};
  if (ok && exec(m, ST_CHECKPOINT, 9, params, flushed, m) == 0) {
    m->flushing = true;
    for (int i = 0; i < m->n_parts; i++) {
      struct part *p = &m->parts[i];
      if (p->dirty) {
        p->sending = p->due;
        p->due = (struct checkpoint){0};
        p->dirty = false;
        p->in_flush = true;
      }
    }
  }
  for (int k = 0; k < 7; k++)
    free(lits[k]);
}

/* Keeps the position after `last_id` of p's batch as its due checkpoint
 * (the subscription's strings change with its next read). */
static void keep_checkpoint(struct part *p, const struct mq_event_position *pos,
                            long long last_id, int handled) {
  char *base = strdup(pos->base);
  char *target = pos->target ? strdup(pos->target) : NULL;
  if (!base || (pos->target && !target)) {
    free(base);
    free(target);
    return; /* the next one covers it */
  }
  int before = p->dirty ? p->due.handled : 0;
  checkpoint_clear(&p->due);
  p->due = (struct checkpoint){base, target, pos->after_id, last_id,
                               before + handled};
  p->dirty = true;
}

static void unparked(const struct mq_pg_reply *r, void *data) {
  mq_group_member *m = data;
  if (r->status != MQ_PG_OK && r->status != MQ_PG_ECLOSED)
    mq_log_warn("events", "unparking replayed events failed group=%s "
                "error=\"%s\" (they stay parked)", m->group, r->error);
  request_done(m);
}

/* Reads p again from `from` (a due checkpoint), or from the checkpoint
 * stored in the database (at the next renewal) when there is none. */
static void read_again(struct part *p, const struct checkpoint *from) {
  mq_group_member *m = p->m;
  mq_subscription_close(p->sub);
  p->sub = NULL;
  if (!from) {
    p->owned = false; /* taken again, with its stored checkpoint */
    return;
  }
  struct mq_event_position pos = {from->base, from->target, from->after_id};
  char err[256];
  p->sub = mq_events_subscribe_partition(m->ev, m->pattern, p->index,
                                         m->n_parts, m->batch, &pos,
                                         delivered, p, err, sizeof err);
  if (!p->sub)
    p->owned = false;
}

bool mq_group_may_handle(const mq_group_member *m, int partition) {
  const struct part *p = partition >= 0 && partition < m->n_parts
                             ? &m->parts[partition] : NULL;
  return p && p->owned && !m->caller_gone &&
         ev_now(m->loop) < m->valid_until;
}

/* Idle partitions whose reads moved on since their last checkpoint get
 * their position written, so that a restart (and the lag in groups())
 * does not start from far back. */
static void keep_idle_positions(mq_group_member *m) {
  for (int i = 0; i < m->n_parts; i++) {
    struct part *p = &m->parts[i];
    if (!p->owned || !p->sub || !part_idle(p) || p->giving_back)
      continue;
    const char *base = mq_subscription_wake(p->sub, true);
    if (!base || (p->stored_base && strcmp(base, p->stored_base) == 0))
      continue;
    char *copy = strdup(base), *kept = strdup(base);
    if (!copy || !kept) {
      free(copy);
      free(kept);
      continue;
    }
    free(p->stored_base);
    p->stored_base = kept;
    p->due = (struct checkpoint){copy, NULL, 0, 0, 0};
    p->dirty = true;
  }
}

void mq_group_done(mq_group_member *m, int partition, enum mq_group_batch kind,
                   long long last_id, int handled) {
  struct part *p = part_of(m, partition);
  if (!p || m->caller_gone)
    return;
  if (kind == MQ_GROUP_REPLAY) {
    p->replaying = false;
    struct literal l = {.ok = true};
    for (int i = 0; i < p->n_replay; i++)
      if (p->replay_ids[i] <= last_id)
        lit_add_ll(&l, p->replay_ids[i]);
    char *ids = lit_end(&l);
    bool ok = ids != NULL;
    p->n_replay = 0;
    char part[16], epoch[24];
    snprintf(part, sizeof part, "%d", p->index);
    snprintf(epoch, sizeof epoch, "%lld", p->epoch);
    const char *params[] = {m->group, part, m->consumer, epoch, ids};
    if (ok && last_id > 0)
      exec(m, ST_UNPARK, 5, params, unparked, m);
    free(ids);
    after_idle(p);
    return;
  }
  p->holding = false;
  if (last_id <= 0 && !m->leaving) {
    /* Nothing of it handled (the caller could not take it): read it again
     * from the stored checkpoint, as at the next renewal. */
    p->owned = false;
    stop_reading(p);
    after_idle(p);
    return;
  }
  struct mq_event_position pos;
  bool have = last_id > 0 && p->sub && p->owned &&
              mq_subscription_position(p->sub, last_id, &pos);
  if (have)
    keep_checkpoint(p, &pos, last_id, handled);
  if (last_id < p->batch_last && !m->leaving && p->owned) {
    /* The caller stopped inside the batch (an event it could not park,
     * a lease it was no longer sure of): read again from after last_id. */
    read_again(p, have ? &p->due : NULL);
    after_idle(p);
  } else {
    part_continue(p);
  }
  flush(m);
}

/* ---- parking and replays ------------------------------------------------- */

struct park_call {
  mq_group_member *m;
  void (*cb)(int status, const char *error, void *data);
  void *data;
};

static void parked(const struct mq_pg_reply *r, void *data) {
  struct park_call *c = data;
  mq_group_member *m = c->m;
  bool alive = request_done(m);
  (void)alive; /* the caller holds the batch: it hears either way */
  c->cb(r->status == MQ_PG_OK ? MQ_EVENTS_OK : MQ_EVENTS_EDB, r->error,
        c->data);
  free(c);
}

/* A copy of s whose bytes that are not UTF-8 are '?' (text columns take
 * only UTF-8); NULL when out of memory. */
static char *utf8_clean(const char *s) {
  char *out = strdup(s);
  if (out)
    mq_json_utf8_repair(out);
  return out;
}

int mq_group_park(mq_group_member *m, int partition, long long event_id,
                  int attempts, const char *error,
                  void (*cb)(int status, const char *error, void *data),
                  void *data) {
  struct part *p = part_of(m, partition);
  struct park_call *c = p ? malloc(sizeof *c) : NULL;
  if (!c)
    return p ? MQ_EVENTS_EDB : MQ_EVENTS_EINVAL;
  *c = (struct park_call){m, cb, data};
  char part[16], epoch[24], id[24], n[16];
  snprintf(part, sizeof part, "%d", p->index);
  snprintf(epoch, sizeof epoch, "%lld", p->epoch);
  snprintf(id, sizeof id, "%lld", event_id);
  snprintf(n, sizeof n, "%d", attempts);
  char *clean = utf8_clean(error ? error : "");
  if (!clean) {
    free(c);
    return MQ_EVENTS_EDB;
  }
  const char *params[] = {m->group, part, m->consumer, epoch, id, n, clean};
  int rc = exec(m, ST_PARK, 7, params, parked, c);
  free(clean);
  if (rc != 0)
    free(c);
  return rc;
}

static void replays_fetched(const struct mq_pg_reply *r, void *data) {
  mq_group_member *m = data;
  m->fetching = false;
  if (!request_done(m))
    return;
  if (r->status != MQ_PG_OK) {
    mq_log_warn("events", "fetching replays failed group=%s error=\"%s\"",
                m->group, r->error);
    return;
  }
  const PGresult *res = r->result;
  int rows = PQntuples(res);
  struct mq_event *events = calloc((size_t)rows + 1, sizeof *events);
  if (!events)
    return;
  /* Rows come by event id; each partition gets its own as one batch. */
  for (int i = 0; i < m->n_parts && !m->leaving; i++) {
    struct part *p = &m->parts[i];
    if (!p->owned || p->giving_back || p->replaying)
      continue;
    int n = 0;
    for (int row = 0; row < rows; row++)
      if (atoi(PQgetvalue(res, row, 0)) == i &&
          mq_pg_getll(res, row, 1) == p->epoch)
        mq_events_fill(res, row, 3, &events[n++]);
    if (n == 0)
      continue;
    long long *ids = realloc(p->replay_ids, sizeof *ids * (size_t)n);
    if (!ids)
      continue;
    p->replay_ids = ids;
    for (int k = 0; k < n; k++)
      ids[k] = events[k].id;
    p->n_replay = n;
    p->replaying = true;
    p->replays = 0;
    m->cb(MQ_EVENTS_OK, NULL, i, MQ_GROUP_REPLAY, events, n, m->data);
  }
  free(events);
}

/* Asks for parked events to replay when an owned partition has some. */
static void fetch_replays(mq_group_member *m) {
  if (m->fetching || m->leaving)
    return;
  bool any = false;
  for (int i = 0; i < m->n_parts && !any; i++)
    any = m->parts[i].owned && m->parts[i].replays > 0 &&
          !m->parts[i].replaying;
  if (!any)
    return;
  const char *params[] = {m->group, m->consumer, REPLAY_BATCH};
  if (exec(m, ST_REPLAYS, 3, params, replays_fetched, m) == 0)
    m->fetching = true;
}

/* ---- join and leave ------------------------------------------------------ */

static bool name_ok(const char *name, const char *what, char *err,
                    size_t errlen) {
  if (name && *name && strlen(name) <= MAX_NAME)
    return true;
  snprintf(err, errlen, "%s must be 1 to %d bytes", what, MAX_NAME);
  return false;
}

mq_group_member *mq_group_join(mq_events *ev, const struct mq_group_options *o,
                               mq_group_joined_cb joined, mq_group_cb cb,
                               void *data, char *err, size_t errlen) {
  if (!name_ok(o->group, "group name", err, errlen) ||
      !name_ok(o->consumer, "consumer name", err, errlen))
    return NULL;
  if (!o->pattern || !*o->pattern || strlen(o->pattern) > 500) {
    snprintf(err, errlen, "stream pattern must be 1 to 500 bytes");
    return NULL;
  }
  if (o->partitions < 0 || o->partitions > 1024) {
    snprintf(err, errlen, "partitions is %d, it must be 1 to 1024",
             o->partitions);
    return NULL;
  }
  if (o->lease < 0 || o->batch < 0) {
    snprintf(err, errlen, "lease and batch must be > 0");
    return NULL;
  }
  mq_group_member *m = calloc(1, sizeof *m);
  if (!m)
    goto oom;
  m->ev = ev;
  m->pg = mq_events_pg(ev);
  m->loop = mq_events_loop(ev);
  if (!(m->group = strdup(o->group)) || !(m->consumer = strdup(o->consumer)) ||
      !(m->pattern = strdup(o->pattern)) ||
      (o->process_id && !(m->process_id = strdup(o->process_id))))
    goto oom;
  static unsigned long long counter;
  snprintf(m->token, sizeof m->token, "%s/%llu",
           o->process_id ? o->process_id : "-", ++counter);
  m->want_partitions = o->partitions;
  m->lease = o->lease > 0 ? o->lease : DEFAULT_LEASE;
  m->batch = o->batch > 0 ? o->batch : DEFAULT_BATCH;
  m->joined = joined;
  m->cb = cb;
  m->data = data;
  double every = m->lease / 5;
  ev_timer_init(&m->renew, renew_cb, every, every);
  m->renew.data = m;
  ev_timer_again(m->loop, &m->renew);
  ev_unref(m->loop); /* renewing alone keeps no loop running */
  m->hook = (struct mq_events_hook){hook_stop, hook_close, m, NULL};
  mq_events_hook_add(ev, &m->hook);
  if (mq_pg_listen(m->pg, mq_events_channel(ev), member_wake, m) == 0)
    m->listening = true;
  m->joining = true;
  renew(m);
  if (!m->renewing) {
    snprintf(err, errlen, "the event store is stopped");
    member_free(m);
    return NULL;
  }
  return m;
oom:
  snprintf(err, errlen, "out of memory");
  if (m) {
    free(m->group);
    free(m->consumer);
    free(m->pattern);
    free(m->process_id);
    free(m);
  }
  return NULL;
}

static void left_reply(const struct mq_pg_reply *r, void *data) {
  mq_group_member *m = data;
  if (r->status != MQ_PG_OK && r->status != MQ_PG_ECLOSED)
    mq_log_warn("events", "leaving a group failed group=%s consumer=%s "
                "error=\"%s\" (its partitions free up when its lease ends)",
                m->group, m->consumer, r->error);
  request_done(m);
}

/* Once nothing is held or being written (a checkpoint must not arrive
 * after the partition was freed): frees the partitions in the database,
 * and ends the member. */
static void consider_leaving(mq_group_member *m) {
  if (m->left)
    return;
  for (int i = 0; i < m->n_parts; i++)
    if (!part_idle(&m->parts[i]))
      return;
  const char *params[] = {m->group, m->consumer, m->token};
  int rc = exec(m, ST_LEAVE, 3, params, left_reply, m);
  (void)rc; /* failing: the lease runs out instead */
  member_end(m, "left the group");
}

void mq_group_leave(mq_group_member *m) {
  if (!m || m->leaving)
    return;
  m->leaving = true;
  for (int i = 0; i < m->n_parts; i++)
    stop_reading(&m->parts[i]);
  if (ev_is_active(&m->renew)) {
    ev_ref(m->loop);
    ev_timer_stop(m->loop, &m->renew);
  }
  consider_leaving(m);
}

/* The event store stops: the member leaves now, whatever the caller still
 * holds (its events are handled again by the next owner), once the
 * checkpoints being written are in. */
static void hook_stop(void *data) {
  mq_group_member *m = data;
  caller_gone(m, "the event store stopped");
  consider_leaving(m);
}

static void hook_close(void *data) {
  mq_group_member *m = data;
  m->stopped = true;
  m->requests = 0; /* the pool is closed: nothing will answer */
  member_end(m, "the event store is closed");
}

/* ---- listing ------------------------------------------------------------- */

static const char list_sql[] =
    "SELECT group_name, pattern, partitions, members, last_id, handled, lag, "
    "parked FROM %s.event_groups($1)";
static const char parked_sql[] =
    "SELECT event_id, part, consumer, attempts, error, parked_at, replay, "
    "stream, type, ts, data FROM %s.parked_events($1, $2::integer)";
static const char replay_sql[] =
    "SELECT %s.replay_parked($1, $2::bigint[])";

struct rows_call {
  mq_group_rows_cb cb;
  void *data;
};

static void rows_reply(const struct mq_pg_reply *r, void *data) {
  struct rows_call *c = data;
  c->cb(r->status == MQ_PG_OK ? MQ_EVENTS_OK
        : r->status == MQ_PG_ESQL && strncmp(r->sqlstate, "22", 2) == 0
            ? MQ_EVENTS_EINVAL : MQ_EVENTS_EDB,
        r->error, r->status == MQ_PG_OK ? r->result : NULL, c->data);
  free(c);
}

static int rows_query(mq_events *ev, const char *tmpl, int n,
                      const char *const *params, mq_group_rows_cb cb,
                      void *data) {
  int id = mq_events_stmt(ev, tmpl);
  struct rows_call *c = id >= 0 ? malloc(sizeof *c) : NULL;
  if (!c)
    return MQ_EVENTS_EDB;
  *c = (struct rows_call){cb, data};
  if (mq_pg_exec(mq_events_pg(ev), id, n, params, 0, rows_reply, c) != 0) {
    free(c);
    return MQ_EVENTS_EDB;
  }
  return 0;
}

int mq_group_list(mq_events *ev, const char *group, mq_group_rows_cb cb,
                  void *data) {
  const char *params[] = {group};
  return rows_query(ev, list_sql, 1, params, cb, data);
}

int mq_group_parked(mq_events *ev, const char *group, int n,
                    mq_group_rows_cb cb, void *data) {
  char limit[16];
  snprintf(limit, sizeof limit, "%d", n > 0 ? n : 1000);
  const char *params[] = {group, limit};
  return rows_query(ev, parked_sql, 2, params, cb, data);
}

int mq_group_replay(mq_events *ev, const char *group, const long long *ids,
                    int n, mq_group_rows_cb cb, void *data) {
  char *list = NULL;
  if (ids) {
    struct literal l = {.ok = true};
    for (int i = 0; i < n; i++)
      lit_add_ll(&l, ids[i]);
    if (!(list = lit_end(&l)))
      return MQ_EVENTS_EDB;
  }
  const char *params[] = {group, list};
  int rc = rows_query(ev, replay_sql, 2, params, cb, data);
  free(list);
  return rc;
}
