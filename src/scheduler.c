/* scheduler.c -- wake-ups for delayed jobs; see scheduler.h.
 *
 * One `due` entry per queue ever asked about, kept until close, so an
 * answer arriving late always finds its entry (never freed memory). An
 * entry without a wake callback ignores answers and timers. The look-ups
 * asked for in one loop turn go out as one statement (ask_cb), at most
 * MAX_ASK queues each.
 */
#include "scheduler.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "buf.h"
#include "log.h"

#define MAX_ASK 1000 /* queues one look-up statement asks about */

struct due {
  mq_scheduler *s;
  char *queue;
  mq_scheduler_wake_cb wake; /* NULL: nobody waits */
  void *data;
  ev_timer timer;
  bool asking; /* in the scheduler's `asks` */
  LIST_ENTRY(due) link;
  STAILQ_ENTRY(due) ask_link;
};

struct mq_scheduler {
  struct ev_loop *loop;
  mq_queue *q;
  bool stopped;
  LIST_HEAD(, due) dues;
  STAILQ_HEAD(, due) asks; /* to look up at the end of this loop turn */
  ev_prepare ask;
  ev_idle ask_kick; /* keeps the loop from blocking before ask_cb runs */
};

/* One look-up statement in flight: its queues' entries. */
struct ask {
  int n;
  struct due *list[];
};

static void ask_cb(struct ev_loop *loop, ev_prepare *w, int revents);

static void kick_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  ev_idle_stop(loop, w);
}

mq_scheduler *mq_scheduler_new(struct ev_loop *loop, mq_queue *q) {
  mq_scheduler *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->loop = loop;
  s->q = q;
  LIST_INIT(&s->dues);
  STAILQ_INIT(&s->asks);
  ev_prepare_init(&s->ask, ask_cb);
  s->ask.data = s;
  ev_idle_init(&s->ask_kick, kick_cb);
  return s;
}

static void fire(struct ev_loop *loop, ev_timer *t, int revents) {
  struct due *d = t->data;
  mq_scheduler_wake_cb wake = d->wake;
  d->wake = NULL;
  if (wake)
    wake(d->queue, d->data);
}

static struct due *due_for(mq_scheduler *s, const char *queue) {
  struct due *d;
  LIST_FOREACH(d, &s->dues, link)
    if (strcmp(d->queue, queue) == 0)
      return d;
  d = calloc(1, sizeof *d);
  if (!d || !(d->queue = strdup(queue))) {
    free(d);
    return NULL;
  }
  d->s = s;
  ev_init(&d->timer, fire);
  d->timer.data = d;
  LIST_INSERT_HEAD(&s->dues, d, link);
  return d;
}

/* Arms d's timer for an answer: seconds until the next delayed job of its
 * queue is due, or NULL (none). */
static void arm(struct due *d, const char *seconds) {
  if (!d->wake || d->s->stopped || !seconds)
    return;
  ev_timer_stop(d->s->loop, &d->timer);
  ev_timer_set(&d->timer, strtod(seconds, NULL) + 0.001, 0.);
  ev_timer_start(d->s->loop, &d->timer);
}

/* The answer: a JSON array with, for each queue asked about in order, the
 * seconds until its next delayed job is due, or null. */
static void answered(int status, const char *error, const char *json,
                     void *data) {
  struct ask *a = data;
  if (status != 0) {
    mq_log_debug("scheduler", "next_due failed queue=%s queues=%d error=\"%s\"",
                 a->list[0]->queue, a->n, error);
    free(a);
    return;
  }
  const char *p = json;
  for (int i = 0; i < a->n && *p; i++) {
    p += strspn(p, "[, \t\n");
    if (*p == 'n') { /* null */
      p += strcspn(p, ",]");
      continue;
    }
    arm(a->list[i], p);
    p += strcspn(p, ",]");
  }
  free(a);
}

/* Sends the look-ups asked for in this loop turn. */
static void ask_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  mq_scheduler *s = w->data;
  ev_prepare_stop(loop, w);
  while (!STAILQ_EMPTY(&s->asks)) {
    struct ask *a = malloc(sizeof *a + sizeof a->list[0] * MAX_ASK);
    const char *names[MAX_ASK];
    int n = 0;
    struct due *d;
    while (n < MAX_ASK && (d = STAILQ_FIRST(&s->asks))) {
      STAILQ_REMOVE_HEAD(&s->asks, ask_link);
      d->asking = false;
      if (a && d->wake) {
        a->list[n] = d;
        names[n++] = d->queue;
      }
    }
    char *literal = n > 0 ? mq_buf_text_array(names, n) : NULL;
    const char *args[5] = {literal};
    if (a)
      a->n = n;
    if (!literal || mq_queue_call(s->q, MQ_QUEUE_NEXT_DUE, args, answered, a) != 0) {
      if (n > 0) /* the poll timers look again */
        mq_log_debug("scheduler", "cannot look up when delayed jobs are due "
                     "queues=%d", n);
      free(a);
    }
    free(literal);
  }
}

int mq_scheduler_wake_when_due(mq_scheduler *s, const char *queue,
                               mq_scheduler_wake_cb wake, void *data) {
  if (s->stopped)
    return MQ_QUEUE_EINVAL;
  struct due *d = due_for(s, queue);
  if (!d)
    return MQ_QUEUE_EDB;
  d->wake = wake;
  d->data = data;
  if (!d->asking) {
    d->asking = true;
    STAILQ_INSERT_TAIL(&s->asks, d, ask_link);
  }
  if (!ev_is_active(&s->ask)) {
    ev_prepare_start(s->loop, &s->ask);
    ev_idle_start(s->loop, &s->ask_kick);
  }
  return 0;
}

void mq_scheduler_cancel(mq_scheduler *s, mq_scheduler_wake_cb wake,
                         void *data) {
  struct due *d;
  LIST_FOREACH(d, &s->dues, link) {
    if (d->wake == wake && d->data == data) {
      d->wake = NULL;
      ev_timer_stop(s->loop, &d->timer);
    }
  }
}

void mq_scheduler_stop(mq_scheduler *s) {
  s->stopped = true;
  ev_prepare_stop(s->loop, &s->ask);
  ev_idle_stop(s->loop, &s->ask_kick);
  while (!STAILQ_EMPTY(&s->asks)) {
    STAILQ_FIRST(&s->asks)->asking = false;
    STAILQ_REMOVE_HEAD(&s->asks, ask_link);
  }
  struct due *d;
  LIST_FOREACH(d, &s->dues, link) {
    d->wake = NULL;
    ev_timer_stop(s->loop, &d->timer);
  }
}

void mq_scheduler_close(mq_scheduler *s) {
  if (!s)
    return;
  mq_scheduler_stop(s);
  while (!LIST_EMPTY(&s->dues)) {
    struct due *d = LIST_FIRST(&s->dues);
    LIST_REMOVE(d, link);
    free(d->queue);
    free(d);
  }
  free(s);
}
