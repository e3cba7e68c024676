/* test_schedules.c -- which slots fire when a schedule is looked at
 * (mq_schedules_due, src/schedules.c): on time, late, after downtime
 * with no backfill, a duration or a count, at most MQ_SCHEDULES_MAX_SLOTS,
 * never at or before the cursor, and across a clock change. No database:
 * the firing itself is tested by spec/schedule_*_spec.lua.
 *
 * Times are written "YYYY-MM-DD HH:MM:SS" in UTC unless a case says
 * otherwise; T is 2026-06-01 12:00:00 UTC.
 */
#define _DEFAULT_SOURCE /* timegm */
#include "schedules.h"

#include <math.h>
#include <time.h>

#include "test.h"

#define T 1780315200.0 /* 2026-06-01 12:00:00 UTC */

static double out[MQ_SCHEDULES_MAX_SLOTS];

static struct mq_cron parse(const char *expr) {
  struct mq_cron c;
  char err[256];
  if (mq_cron_parse(expr, &c, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  return c;
}

/* mq_schedules_due for expr in UTC; fills `out`. */
static int due(const char *expr, int seconds, int slots, double cursor,
               double now, double on_time) {
  struct mq_cron c = parse(expr);
  return mq_schedules_due(&c, NULL, seconds, slots, cursor, now, on_time, out);
}

/* Checks that out[0..n) runs from `first` in steps of `step`. */
static void check_run(int line, int n, int want_n, double first, double step) {
  if (n != want_n) {
    fprintf(stderr, "line %d: %d slots, expected %d\n", line, n, want_n);
    mq_test_case_failed = 1;
    return;
  }
  for (int i = 0; i < n; i++) {
    if (out[i] != first + i * step) {
      fprintf(stderr, "line %d: slot %d is %.0f, expected %.0f\n", line, i,
              out[i], first + i * step);
      mq_test_case_failed = 1;
      return;
    }
  }
}
#define RUN_OF(n, want_n, first, step) check_run(__LINE__, n, want_n, first, step)

static const double G = MQ_SCHEDULES_GRACE;

/* A running process: what came due since its cursor, late ones too, as
 * long as they are at most the grace late. */
static void test_on_time(void) {
  RUN_OF(due("* * * * * *", 0, 0, T - 1, T + 0.004, G), 1, T, 1);
  RUN_OF(due("* * * * *", 0, 0, T - 60, T + 0.2, G), 1, T, 60);
  RUN_OF(due("* * * * * *", 0, 0, T - 1, T + 5.5, G), 6, T, 1);
  /* nothing new: the timer woke early or twice */
  RUN_OF(due("* * * * * *", 0, 0, T, T + 0.9, G), 0, 0, 0);
  RUN_OF(due("* * * * * *", 0, 0, T + 1, T + 0.9, G), 0, 0, 0);
  /* suspended for an hour: only the last minute of slots fires */
  RUN_OF(due("* * * * * *", 0, 0, T - 1, T + 3600, G), 60, T + 3541, 1);
  RUN_OF(due("0 * * * *", 0, 0, T - 1, T + 7200.5, G), 1, T + 7200, 0);
  RUN_OF(due("0 * * * *", 0, 0, T - 1, T + 7261, G), 0, 0, 0);
  /* ... unless a backfill says more */
  RUN_OF(due("0 * * * *", 7200, 0, T - 1, T + 7261, G), 2, T + 3600, 3600);
  RUN_OF(due("* * * * * *", 0, 100, T - 1, T + 3600, G), 160, T + 3441, 1);
}

/* A process that loads a schedule: the slots since the cursor are
 * missed; without a backfill only the latest fires, when at most the
 * grace old. */
static void test_missed_no_backfill(void) {
  RUN_OF(due("* * * * * *", 0, 0, T - 100, T + 0.5, 0), 1, T, 1);
  RUN_OF(due("* * * * *", 0, 0, T - 3600, T + 59.5, 0), 1, T, 1);
  RUN_OF(due("*/5 * * * *", 0, 0, T - 86400, T + 61, 0), 0, 0, 0);
  /* a restart across a slot does not lose it */
  RUN_OF(due("0 12 * * *", 0, 0, T - 2, T + 1.5, 0), 1, T, 1);
  /* the cursor is after it: done already */
  RUN_OF(due("0 12 * * *", 0, 0, T, T + 1.5, 0), 0, 0, 0);
  RUN_OF(due("0 12 * * *", 0, 0, T + 10, T + 1.5, 0), 0, 0, 0);
}

static void test_backfill_duration(void) {
  RUN_OF(due("* * * * * *", 20, 0, T - 100, T + 0.5, 0), 20, T - 19, 1);
  RUN_OF(due("* * * * *", 180, 0, T - 300, T + 0.5, 0), 3, T - 120, 60);
  /* no older than the cursor */
  RUN_OF(due("* * * * *", 3600, 0, T - 150, T + 0.5, 0), 3, T - 120, 60);
  /* shorter than the grace: the latest slot still fires */
  RUN_OF(due("* * * * *", 10, 0, T - 3600, T + 45, 0), 1, T, 60);
  /* a day of a slot a second: the latest MQ_SCHEDULES_MAX_SLOTS */
  RUN_OF(due("* * * * * *", 86400, 0, T - 86400 * 2, T, 0),
         MQ_SCHEDULES_MAX_SLOTS, T - MQ_SCHEDULES_MAX_SLOTS + 1, 1);
}

static void test_backfill_count(void) {
  RUN_OF(due("* * * * * *", 0, 5, T - 100, T + 0.5, 0), 5, T - 4, 1);
  RUN_OF(due("0 3 * * *", 0, 3, T - 86400 * 30, T, 0), 3, T - 9 * 3600 - 86400 * 2, 86400);
  /* fewer missed than the count */
  RUN_OF(due("* * * * * *", 0, 5, T - 2.5, T + 0.5, 0), 3, T - 2, 1);
  /* a yearly schedule a decade back */
  CHECK_INT(due("@yearly", 0, 2, 1262304000.0 /* 2010 */, T, 0), 2);
  CHECK(out[0] == 1735689600.0 && out[1] == 1767225600.0); /* 2025, 2026 */
}

/* Intervals count from the Unix epoch, whatever the zone. */
static void test_every(void) {
  RUN_OF(due("@every 1h", 0, 2, T - 86400, T + 30, 0), 2, T - 3600, 3600);
  /* T is 300 s after a slot of 7m (T mod 420 = 300): too old */
  RUN_OF(due("@every 7m", 0, 0, T - 3600, T + 1, 0), 0, 0, 0);
  RUN_OF(due("@every 7m", 0, 0, T - 3600, T + 121, 0), 1, T + 120, 0);
  struct mq_cron c = parse("@every 90m");
  int n = mq_schedules_due(&c, "Europe/Berlin", 0, 0, T - 86400, T, G, out);
  CHECK_INT(n, 1); /* T is a multiple of 5400 */
  CHECK(out[0] == T);
  n = mq_schedules_due(&c, "Europe/Berlin", 0, 0, T - 86400, T + 5400, 0, out);
  CHECK_INT(n, 1);
  CHECK(fmod(out[0], 5400) == 0);
}

/* A slot in the spring-forward gap fires once, at the end of the gap;
 * one in the repeated hour fires at its first pass. */
static void test_clock_changes(void) {
  struct mq_cron c = parse("30 2 * * *");
  double spring = 1774746000.0; /* 2026-03-29 03:00:00 +0200 (01:00 UTC) */
  int n = mq_schedules_due(&c, "Europe/Berlin", 0, 0, spring - 86400,
                           spring + 30, 0, out);
  CHECK_INT(n, 1);
  CHECK(out[0] == spring);
  double fall = 1792888200.0; /* 2026-10-25 02:30:00 +0200 (00:30 UTC) */
  n = mq_schedules_due(&c, "Europe/Berlin", 0, 0, fall - 10, fall + 3600 + 30,
                       G, out);
  CHECK_INT(n, 0); /* the second 02:30 (+0100) does not fire */
  n = mq_schedules_due(&c, "Europe/Berlin", 0, 0, fall - 10, fall + 30, G,
                       out);
  CHECK_INT(n, 1);
  CHECK(out[0] == fall);
}

int main(void) {
  RUN(test_on_time);
  RUN(test_missed_no_backfill);
  RUN(test_backfill_duration);
  RUN(test_backfill_count);
  RUN(test_every);
  RUN(test_clock_changes);
  return mq_test_done();
}
