/* scheduler.c -- wake-ups for delayed jobs; see scheduler.h.
 *
 * One `due` entry per queue ever asked about, kept until close, so an
 * answer arriving late always finds its entry (never freed memory). An
 * entry without a wake callback ignores answers and timers.
 */
#include "scheduler.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"

struct due {
  mq_scheduler *s;
  char *queue;
  mq_scheduler_wake_cb wake; /* NULL: nobody waits */
  void *data;
  ev_timer timer;
  LIST_ENTRY(due) link;
};

struct mq_scheduler {
  struct ev_loop *loop;
  mq_queue *q;
  bool stopped;
  LIST_HEAD(, due) dues;
};

mq_scheduler *mq_scheduler_new(struct ev_loop *loop, mq_queue *q) {
  mq_scheduler *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->loop = loop;
  s->q = q;
  LIST_INIT(&s->dues);
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

/* The answer: seconds until the next delayed job is due, or null. */
static void answered(int status, const char *error, const char *json,
                     void *data) {
  struct due *d = data;
  if (status != 0) {
    mq_log_debug("scheduler", "next_due failed queue=%s error=\"%s\"",
                 d->queue, error);
    return;
  }
  if (!d->wake || d->s->stopped || strcmp(json, "null") == 0)
    return;
  double seconds = strtod(json, NULL);
  ev_timer_stop(d->s->loop, &d->timer);
  ev_timer_set(&d->timer, seconds + 0.001, 0.);
  ev_timer_start(d->s->loop, &d->timer);
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
  const char *a[5] = {queue};
  return mq_queue_call(s->q, MQ_QUEUE_NEXT_DUE, a, answered, d);
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
