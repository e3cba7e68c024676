/* metrics.h -- what one process counts about the jobs it runs, for
 * /metrics (http_metrics.c).
 *
 * Per queue: jobs completed, failed for good and retried (counters from
 * the process start), and two histograms in seconds: run time (a
 * handler's start to its end, every attempt) and wait time (a job's send
 * to the start of its first attempt, a delay included). The worker
 * records; the metrics route renders them in the Prometheus text format
 * with the gauges it reads from the database.
 *
 * Queues are interned: mq_metrics_queue returns a handle that lives as
 * long as the registry, so a completion callback can carry it.
 *
 * Uses: buf.
 */
#ifndef MQ_METRICS_H
#define MQ_METRICS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct mq_metrics mq_metrics;
typedef struct mq_metrics_queue mq_metrics_queue;

/* How an attempt ended, as the queue stored it. */
enum mq_metrics_end {
  MQ_METRICS_COMPLETED,
  MQ_METRICS_FAILED,  /* no retry left: the job is failed */
  MQ_METRICS_RETRIED  /* it waits for another attempt */
};

/* A new, empty registry; NULL when out of memory. */
mq_metrics *mq_metrics_new(void);

/* Frees the registry and every queue handle. NULL-safe. */
void mq_metrics_free(mq_metrics *m);

/* The handle of queue `name` (copied), made on first use; NULL when out
 * of memory (the record functions take NULL and do nothing). */
mq_metrics_queue *mq_metrics_queue_of(mq_metrics *m, const char *name);

/* Counts an attempt's end. */
void mq_metrics_ended(mq_metrics_queue *q, enum mq_metrics_end end);

/* Observes a handler's run time (seconds) in the run-time histogram. */
void mq_metrics_ran(mq_metrics_queue *q, double seconds);

/* Observes a job's wait before its first attempt (seconds). */
void mq_metrics_waited(mq_metrics_queue *q, double seconds);

/* A document in the Prometheus text format being written: a buffer as in
 * buf.h (the caller frees buf) and whether an append ran out of memory
 * (then the document is incomplete). Start it zeroed. */
struct mq_metrics_text {
  char *buf;
  size_t len, cap;
  bool nomem;
};

/* Appends printf-formatted text (at most 511 bytes at a time). */
void mq_metrics_add(struct mq_metrics_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends `value` as a label value: backslash, double quote and newline
 * escaped. */
void mq_metrics_add_label(struct mq_metrics_text *t, const char *value);

/* Appends a family's HELP and TYPE lines. */
void mq_metrics_family(struct mq_metrics_text *t, const char *name,
                       const char *type, const char *help);

/* Appends the counters and histograms of every queue (HELP and TYPE lines
 * even with no queue yet). */
void mq_metrics_render(const mq_metrics *m, struct mq_metrics_text *t);

#endif
