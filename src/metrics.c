/* metrics.c -- per-process job counters and histograms; see metrics.h. */
#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

/* Upper bounds (seconds) of the histogram buckets; +Inf follows. They
 * span a quick handler (5 ms) to a job that waited an hour. */
static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                0.5,   1,    2.5,   5,    10,  30,
                                60,    300,  900,   3600};
#define NBOUNDS (sizeof bounds / sizeof bounds[0])

struct histogram {
  unsigned long long buckets[NBOUNDS]; /* observations <= bounds[i] only */
  unsigned long long count;
  double sum;
};

struct mq_metrics_queue {
  char *name;
  unsigned long long ended[3]; /* by enum mq_metrics_end */
  struct histogram run, wait;
  struct mq_metrics_queue *next;
};

struct mq_metrics {
  struct mq_metrics_queue *queues; /* newest first */
};

mq_metrics *mq_metrics_new(void) { return calloc(1, sizeof(mq_metrics)); }

void mq_metrics_free(mq_metrics *m) {
  if (!m)
    return;
  while (m->queues) {
    struct mq_metrics_queue *q = m->queues;
    m->queues = q->next;
    free(q->name);
    free(q);
  }
  free(m);
}

mq_metrics_queue *mq_metrics_queue_of(mq_metrics *m, const char *name) {
  if (!m)
    return NULL;
  for (struct mq_metrics_queue *q = m->queues; q; q = q->next)
    if (strcmp(q->name, name) == 0)
      return q;
  struct mq_metrics_queue *q = calloc(1, sizeof *q);
  if (!q || !(q->name = strdup(name))) {
    free(q);
    return NULL;
  }
  q->next = m->queues;
  m->queues = q;
  return q;
}

void mq_metrics_ended(mq_metrics_queue *q, enum mq_metrics_end end) {
  if (q)
    q->ended[end]++;
}

static void observe(struct histogram *h, double seconds) {
  if (seconds < 0)
    seconds = 0;
  for (size_t i = 0; i < NBOUNDS; i++)
    if (seconds <= bounds[i]) {
      h->buckets[i]++;
      break;
    }
  h->count++;
  h->sum += seconds;
}

void mq_metrics_ran(mq_metrics_queue *q, double seconds) {
  if (q)
    observe(&q->run, seconds);
}

void mq_metrics_waited(mq_metrics_queue *q, double seconds) {
  if (q)
    observe(&q->wait, seconds);
}

/* ---- rendering ------------------------------------------------------------ */

void mq_metrics_add(struct mq_metrics_text *t, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof line ||
      mq_buf_add(&t->buf, &t->len, &t->cap, line, (size_t)n) != 0)
    t->nomem = true;
}

void mq_metrics_add_label(struct mq_metrics_text *t, const char *value) {
  for (const char *p = value; *p; p++) {
    const char *esc = *p == '\\'  ? "\\\\"
                      : *p == '"' ? "\\\""
                      : *p == '\n' ? "\\n"
                                   : NULL;
    if (mq_buf_add(&t->buf, &t->len, &t->cap, esc ? esc : p, esc ? 2 : 1) != 0)
      t->nomem = true;
  }
}

void mq_metrics_family(struct mq_metrics_text *t, const char *name,
                       const char *type, const char *help) {
  mq_metrics_add(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{queue="<q>"<extra>} */
static void series(struct mq_metrics_text *t, const char *name,
                   const char *queue, const char *extra) {
  mq_metrics_add(t, "%s{queue=\"", name);
  mq_metrics_add_label(t, queue);
  mq_metrics_add(t, "\"%s}", extra);
}

static void render_counter(struct mq_metrics_text *t, const mq_metrics *m,
                           enum mq_metrics_end end, const char *name,
                           const char *help) {
  mq_metrics_family(t, name, "counter", help);
  for (const struct mq_metrics_queue *q = m->queues; q; q = q->next) {
    series(t, name, q->name, "");
    mq_metrics_add(t, " %llu\n", q->ended[end]);
  }
}

static void render_histogram(struct mq_metrics_text *t, const mq_metrics *m,
                             bool run, const char *name, const char *help) {
  mq_metrics_family(t, name, "histogram", help);
  char bucket[128], sum[128], count[128], le[64];
  snprintf(bucket, sizeof bucket, "%s_bucket", name);
  snprintf(sum, sizeof sum, "%s_sum", name);
  snprintf(count, sizeof count, "%s_count", name);
  for (const struct mq_metrics_queue *q = m->queues; q; q = q->next) {
    const struct histogram *h = run ? &q->run : &q->wait;
    unsigned long long cumulative = 0;
    for (size_t i = 0; i < NBOUNDS; i++) {
      cumulative += h->buckets[i];
      snprintf(le, sizeof le, ",le=\"%g\"", bounds[i]);
      series(t, bucket, q->name, le);
      mq_metrics_add(t, " %llu\n", cumulative);
    }
    series(t, bucket, q->name, ",le=\"+Inf\"");
    mq_metrics_add(t, " %llu\n", h->count);
    series(t, sum, q->name, "");
    mq_metrics_add(t, " %.9g\n", h->sum);
    series(t, count, q->name, "");
    mq_metrics_add(t, " %llu\n", h->count);
  }
}

void mq_metrics_render(const mq_metrics *m, struct mq_metrics_text *t) {
  render_counter(t, m, MQ_METRICS_COMPLETED, "moonq_jobs_completed_total",
                 "Attempts this process completed.");
  render_counter(t, m, MQ_METRICS_FAILED, "moonq_jobs_failed_total",
                 "Jobs that failed for good in this process (no retry left).");
  render_counter(t, m, MQ_METRICS_RETRIED, "moonq_jobs_retried_total",
                 "Attempts that failed in this process and will run again.");
  render_histogram(t, m, true, "moonq_job_run_seconds",
                   "Handler run time of the attempts this process ran.");
  render_histogram(t, m, false, "moonq_job_wait_seconds",
                   "Time from send to the first attempt's start, for jobs "
                   "this process started.");
}
