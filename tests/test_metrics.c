/* test_metrics.c -- the per-process job counters and histograms and their
 * Prometheus text: counters by queue and outcome, cumulative buckets with
 * _sum and _count, label escaping, queues interned, families present with
 * no queue yet. No I/O. */
#include "test.h"

#include "metrics.h"

/* The value of the series line that starts with `series ` in text, or -1. */
static double value_of(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
    if (strncmp(p, series, n) == 0 && p[n] == ' ')
      return atof(p + n + 1);
  return -1;
}

static char *render(const mq_metrics *m) {
  struct mq_metrics_text t = {0};
  mq_metrics_render(m, &t);
  CHECK(!t.nomem);
  return t.buf;
}

static void families_without_queues(void) {
  mq_metrics *m = mq_metrics_new();
  char *text = render(m);
  CHECK_CONTAINS(text, "# TYPE moonq_jobs_completed_total counter\n");
  CHECK_CONTAINS(text, "# TYPE moonq_jobs_failed_total counter\n");
  CHECK_CONTAINS(text, "# TYPE moonq_jobs_retried_total counter\n");
  CHECK_CONTAINS(text, "# TYPE moonq_job_run_seconds histogram\n");
  CHECK_CONTAINS(text, "# TYPE moonq_job_wait_seconds histogram\n");
  CHECK(!strstr(text, "{queue="));
  free(text);
  mq_metrics_free(m);
}

static void counts_by_queue_and_outcome(void) {
  mq_metrics *m = mq_metrics_new();
  mq_metrics_queue *a = mq_metrics_queue_of(m, "a");
  mq_metrics_queue *b = mq_metrics_queue_of(m, "b");
  CHECK(a && b && a != b);
  CHECK(mq_metrics_queue_of(m, "a") == a); /* interned */
  mq_metrics_ended(a, MQ_METRICS_COMPLETED);
  mq_metrics_ended(a, MQ_METRICS_COMPLETED);
  mq_metrics_ended(a, MQ_METRICS_RETRIED);
  mq_metrics_ended(b, MQ_METRICS_FAILED);
  mq_metrics_ended(NULL, MQ_METRICS_FAILED); /* out of memory: ignored */
  char *text = render(m);
  CHECK(value_of(text, "moonq_jobs_completed_total{queue=\"a\"}") == 2);
  CHECK(value_of(text, "moonq_jobs_retried_total{queue=\"a\"}") == 1);
  CHECK(value_of(text, "moonq_jobs_failed_total{queue=\"a\"}") == 0);
  CHECK(value_of(text, "moonq_jobs_failed_total{queue=\"b\"}") == 1);
  CHECK(value_of(text, "moonq_jobs_completed_total{queue=\"b\"}") == 0);
  free(text);
  mq_metrics_free(m);
}

static void histograms_are_cumulative(void) {
  mq_metrics *m = mq_metrics_new();
  mq_metrics_queue *q = mq_metrics_queue_of(m, "q");
  mq_metrics_ran(q, 0.003);  /* <= 0.005 */
  mq_metrics_ran(q, 0.005);  /* on a bound: in it */
  mq_metrics_ran(q, 0.7);    /* <= 1 */
  mq_metrics_ran(q, 7200);   /* beyond the last bound: +Inf only */
  mq_metrics_ran(q, -1);     /* a clock step back counts as 0 */
  mq_metrics_waited(q, 2);
  char *text = render(m);
  CHECK(value_of(text, "moonq_job_run_seconds_bucket{queue=\"q\",le=\"0.005\"}") == 3);
  CHECK(value_of(text, "moonq_job_run_seconds_bucket{queue=\"q\",le=\"0.5\"}") == 3);
  CHECK(value_of(text, "moonq_job_run_seconds_bucket{queue=\"q\",le=\"1\"}") == 4);
  CHECK(value_of(text, "moonq_job_run_seconds_bucket{queue=\"q\",le=\"3600\"}") == 4);
  CHECK(value_of(text, "moonq_job_run_seconds_bucket{queue=\"q\",le=\"+Inf\"}") == 5);
  CHECK(value_of(text, "moonq_job_run_seconds_count{queue=\"q\"}") == 5);
  CHECK(value_of(text, "moonq_job_run_seconds_sum{queue=\"q\"}") > 7200.7 &&
        value_of(text, "moonq_job_run_seconds_sum{queue=\"q\"}") < 7200.71);
  CHECK(value_of(text, "moonq_job_wait_seconds_bucket{queue=\"q\",le=\"1\"}") == 0);
  CHECK(value_of(text, "moonq_job_wait_seconds_bucket{queue=\"q\",le=\"2.5\"}") == 1);
  CHECK(value_of(text, "moonq_job_wait_seconds_count{queue=\"q\"}") == 1);
  free(text);
  mq_metrics_free(m);
}

static void labels_are_escaped(void) {
  mq_metrics *m = mq_metrics_new();
  mq_metrics_ended(mq_metrics_queue_of(m, "a\"b\\c\nd"), MQ_METRICS_COMPLETED);
  char *text = render(m);
  CHECK(value_of(text, "moonq_jobs_completed_total{queue=\"a\\\"b\\\\c\\nd\"}") == 1);
  free(text);
  struct mq_metrics_text t = {0};
  mq_metrics_add_label(&t, "<b>\"x\"</b>");
  CHECK_STR(t.buf, "<b>\\\"x\\\"</b>");
  free(t.buf);
  mq_metrics_free(m);
}

int main(void) {
  RUN(families_without_queues);
  RUN(counts_by_queue_and_outcome);
  RUN(histograms_are_cumulative);
  RUN(labels_are_escaped);
  return mq_test_done();
}
