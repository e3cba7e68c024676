/* test_cron.c -- cron expressions and next fire times (src/cron.c).
 *
 * Times are written as the local wall-clock time of the case's zone with
 * its UTC offset, "2026-03-29 03:00:00 +0200", so a case reads as what a
 * person in that zone sees and the offset tells the two passes of a
 * repeated hour apart; a time without an offset is UTC. The expected
 * values were worked out by hand and checked with `zdump -v` and
 * `TZ=Europe/Berlin date -d @<seconds>`. The 2026 clock changes used:
 * Europe/Berlin 03-29 (02:00 CET -> 03:00 CEST) and 10-25 (03:00 CEST ->
 * 02:00 CET); America/New_York 03-08 (02:00 EST -> 03:00 EDT) and 11-01
 * (02:00 EDT -> 01:00 EST); America/Santiago 04-05 (00:00 -03 -> 23:00 -04
 * of the 4th) and 09-06 (00:00 -04 -> 01:00 -03); Australia/Lord_Howe
 * 04-05 (02:00 +11 -> 01:30 +1030) and 10-04 (02:00 +1030 -> 02:30 +11).
 */
#define _DEFAULT_SOURCE /* timegm */
#include "cron.h"

#include <math.h>
#include <time.h>

#include "test.h"

static char err[512];
static int cases;

/* Reads "YYYY-MM-DD HH:MM:SS[.f] [+-HHMM]" into Unix seconds; *offset gets
 * the UTC offset in seconds (0 without one). */
static double parse_time(const char *s, int *offset) {
  struct tm tm = {0};
  double sec;
  char sign = '+';
  int hh = 0, mm = 0;
  int n = sscanf(s, "%d-%d-%d %d:%d:%lf %c%2d%2d", &tm.tm_year, &tm.tm_mon,
                 &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &sec, &sign, &hh, &mm);
  REQUIRE(n == 6 || n == 9);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  *offset = (sign == '-' ? -1 : 1) * (hh * 3600 + mm * 60);
  return (double)timegm(&tm) + sec - *offset;
}

/* Formats Unix seconds t as local time at `offset`, like parse_time's
 * input. Static buffer. */
static const char *format_time(double t, int offset) {
  static char buf[64];
  time_t local = (time_t)floor(t) + offset;
  struct tm tm;
  gmtime_r(&local, &tm);
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  if (offset != 0 || strchr(buf, '+'))
    snprintf(buf + n, sizeof buf - n, " %c%02d%02d", offset < 0 ? '-' : '+',
             abs(offset) / 3600, abs(offset) / 60 % 60);
  return buf;
}

/* The first fire time of expr in tz after `after`, written in the offset
 * of `want` (so that it compares as text), or "ERR: <message>". */
static const char *next_after(const char *expr, const char *tz,
                              const char *after, const char *want) {
  static char out[600];
  struct mq_cron c;
  double next;
  int offset, want_offset = 0;
  if (mq_cron_parse(expr, &c, err, sizeof err) < 0 ||
      mq_cron_next(&c, tz, parse_time(after, &offset), &next, err, sizeof err) <
          0) {
    snprintf(out, sizeof out, "ERR: %s", err);
    return out;
  }
  if (strncmp(want, "ERR:", 4) != 0)
    parse_time(want, &want_offset);
  return format_time(next, want_offset);
}

/* Checks a chain of fire times: the first after `after`, each next one
 * after the one expected before it. */
static void check_chain(int line, const char *expr, const char *tz,
                        const char *after, const char *const *want) {
  for (; *want; after = *want++) {
    cases++;
    const char *got = next_after(expr, tz, after, *want);
    if (strcmp(got, *want) != 0) {
      fprintf(stderr, "%s:%d: \"%s\" in %s after %s: got \"%s\", want \"%s\"\n",
              __FILE__, line, expr, tz ? tz : "UTC", after, got, *want);
      mq_test_case_failed = 1;
    }
  }
}

#define NEXT(expr, tz, after, ...)                                             \
  check_chain(__LINE__, expr, tz, after, (const char *[]){__VA_ARGS__, NULL})

/* Checks that expr is refused with exactly `message`. */
#define BAD(expr, message)                                                     \
  do {                                                                         \
    struct mq_cron c_;                                                         \
    cases++;                                                                   \
    err[0] = '\0';                                                             \
    CHECK_INT(mq_cron_parse(expr, &c_, err, sizeof err), -1);                  \
    CHECK_STR(err, message);                                                   \
  } while (0)

static struct mq_cron parse(const char *expr) {
  struct mq_cron c;
  if (mq_cron_parse(expr, &c, err, sizeof err) < 0) {
    fprintf(stderr, "parse %s: %s\n", expr, err);
    exit(1);
  }
  return c;
}

static void test_parse_sets(void) {
  struct mq_cron c = parse("5/15 0-6/2,23 */10 jan,Mar-may sun,7,MON");
  CHECK(c.seconds == 1);
  CHECK(c.minutes == (1ull << 5 | 1ull << 20 | 1ull << 35 | 1ull << 50));
  CHECK(c.hours == (1u << 0 | 1u << 2 | 1u << 4 | 1u << 6 | 1u << 23));
  CHECK(c.days == (1u << 1 | 1u << 11 | 1u << 21 | 1u << 31));
  CHECK(c.months == (1u << 1 | 1u << 3 | 1u << 4 | 1u << 5));
  CHECK(c.weekdays == (1u << 0 | 1u << 1)); /* 7 and sun are Sunday */
  CHECK(c.days_restricted && c.weekdays_restricted);
  CHECK(c.every == 0);
  CHECK_STR(c.expr, "5/15 0-6/2,23 */10 jan,Mar-may sun,7,MON");

  c = parse(" \t30 * * * * *  ");
  CHECK(c.seconds == 1ull << 30);
  CHECK(c.minutes == (1ull << 60) - 1 && c.hours == 0xffffff);
  CHECK(c.days == 0xfffffffe && c.months == 0x1ffe && c.weekdays == 0x7f);
  CHECK(!c.days_restricted && !c.weekdays_restricted);

  c = parse("0 0 1-31 * 0-7");
  CHECK(!c.days_restricted && !c.weekdays_restricted);
  c = parse("0 0 * * 1/2");
  CHECK(c.weekdays == (1u << 1 | 1u << 3 | 1u << 5));

  struct mq_cron m = parse("@Daily"), f = parse("0 0 * * *");
  CHECK(m.minutes == f.minutes && m.hours == f.hours && m.days == f.days &&
        m.weekdays == f.weekdays && m.months == f.months);
  CHECK_STR(m.expr, "@Daily");

  CHECK_INT(parse("@every 30s").every, 30);
  CHECK_INT(parse("@every 5m").every, 300);
  CHECK_INT(parse("@every 1h30m").every, 5400);
  CHECK_INT(parse("@every 1d2h3m4s").every, 93784);
  CHECK_INT(parse("@every 366d").every, 366 * 86400);
}

static void test_parse_errors(void) {
  BAD("61 * * * *", "\"61 * * * *\": minute field: 61 is out of range 0-59");
  BAD("* * * * * * *", "\"* * * * * * *\": 7 fields, expected 5 or 6");
  BAD("* * * *", "\"* * * *\": 4 fields, expected 5 or 6");
  BAD("*", "\"*\": 1 field, expected 5 or 6");
  BAD("*/0 * * * *",
      "\"*/0 * * * *\": minute field: step 0 is out of range 1-59");
  BAD("*/60 * * * *",
      "\"*/60 * * * *\": minute field: step 60 is out of range 1-59");
  BAD("60 * * * * *",
      "\"60 * * * * *\": second field: 60 is out of range 0-59");
  BAD("* 24 * * *", "\"* 24 * * *\": hour field: 24 is out of range 0-23");
  BAD("* * 0 * *", "\"* * 0 * *\": day-of-month field: 0 is out of range 1-31");
  BAD("* * 32 * *",
      "\"* * 32 * *\": day-of-month field: 32 is out of range 1-31");
  BAD("* * * 13 *", "\"* * * 13 *\": month field: 13 is out of range 1-12");
  BAD("* * * * 8", "\"* * * * 8\": day-of-week field: 8 is out of range 0-7");
  BAD("99999999999 * * * *", "\"99999999999 * * * *\": minute field: "
                             "99999999999 is out of range 0-59");
  BAD("* * * foo *",
      "\"* * * foo *\": month field: unknown name \"foo\" (expected jan-dec)");
  BAD("* * * january *", "\"* * * january *\": month field: unknown name "
                         "\"january\" (expected jan-dec)");
  BAD("* * * * fry", "\"* * * * fry\": day-of-week field: unknown name \"fry\" "
                     "(expected sun-sat)");
  BAD("mon * * * *", "\"mon * * * *\": minute field: \"mon\" is not a number");
  BAD("* * * * jan", "\"* * * * jan\": day-of-week field: unknown name \"jan\" "
                     "(expected sun-sat)");
  BAD("1,,2 * * * *",
      "\"1,,2 * * * *\": minute field: empty value in \"1,,2\"");
  BAD("1, * * * *", "\"1, * * * *\": minute field: empty value in \"1,\"");
  BAD("5-1 * * * *", "\"5-1 * * * *\": minute field: range 5-1 goes backwards");
  BAD("* * * * fri-mon",
      "\"* * * * fri-mon\": day-of-week field: range fri-mon goes backwards");
  BAD("1x * * * *", "\"1x * * * *\": minute field: unexpected \"x\" in \"1x\"");
  BAD("*5 * * * *", "\"*5 * * * *\": minute field: unexpected \"5\" in \"*5\"");
  BAD("? * * * *", "\"? * * * *\": minute field: unexpected \"?\" in \"?\"");
  BAD("1-5/ * * * *",
      "\"1-5/ * * * *\": minute field: missing step in \"1-5/\"");
  BAD("1-5/2x * * * *",
      "\"1-5/2x * * * *\": minute field: unexpected \"x\" in \"1-5/2x\"");
  BAD("- * * * *", "\"- * * * *\": minute field: missing value in \"-\"");
  BAD("1- * * * *", "\"1- * * * *\": minute field: missing value in \"1-\"");
  BAD("0 0 * * 1\xff", "\"0 0 * * 1\\xff\": day-of-week field: unexpected "
                       "\"\\xff\" in \"1\\xff\"");
  BAD("0 0 * * *\n", "\"0 0 * * *\\x0a\": day-of-week field: unexpected "
                     "\"\\x0a\" in \"*\\x0a\"");
  BAD("\"0 * * * *",
      "\"\\\"0 * * * *\": minute field: unexpected \"\\\"\" in \"\\\"0\"");
  BAD("", "\"\": empty expression");
  BAD("  \t ", "\"  \\x09 \": empty expression");
  BAD("@fortnightly",
      "\"@fortnightly\": unknown macro \"@fortnightly\" (expected @yearly, "
      "@annually, @monthly, @weekly, @daily, @midnight, @hourly or @every)");
  BAD("@daily 5", "\"@daily 5\": unexpected \"5\" after @daily");
  BAD("@every",
      "\"@every\": missing interval after @every (e.g. \"@every 5m\")");
  BAD("@every 0s", "\"@every 0s\": interval \"0s\" must be at least 1s");
  BAD("@every 0h0m", "\"@every 0h0m\": interval \"0h0m\" must be at least 1s");
  BAD("@every 5",
      "\"@every 5\": interval \"5\": a number needs a unit (d, h, m or s)");
  BAD("@every 5x", "\"@every 5x\": interval \"5x\": unknown unit \"x\" "
                   "(expected d, h, m or s)");
  BAD("@every 30m1h", "\"@every 30m1h\": interval \"30m1h\": units go once "
                      "each, in the order d h m s");
  BAD("@every 1h1h", "\"@every 1h1h\": interval \"1h1h\": units go once each, "
                     "in the order d h m s");
  BAD("@every 367d",
      "\"@every 367d\": interval \"367d\" is longer than 366 days");
  BAD("@every 99999999999999999999s",
      "\"@every 99999999999999999999s\": interval \"99999999999999999999s\" is "
      "longer than 366 days");
  BAD("@every -5m",
      "\"@every -5m\": bad interval \"-5m\" (expected e.g. 30s, 5m, 1h30m)");
  BAD("@every 1h 30m",
      "\"@every 1h 30m\": unexpected \"30m\" after the interval");

  char longer[300];
  memset(longer, '*', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  BAD(longer, "cron expression longer than 256 bytes");
  BAD(NULL, "no cron expression");
  struct mq_cron c;
  CHECK_INT(mq_cron_parse("61 * * * *", &c, NULL, 0), -1); /* no message */
}

static void test_fields(void) {
  const char *t = "2026-01-15 10:17:23"; /* a Thursday */
  NEXT("* * * * *", NULL, t, "2026-01-15 10:18:00");
  NEXT("*/15 * * * *", NULL, t, "2026-01-15 10:30:00");
  NEXT("5/15 * * * *", NULL, t, "2026-01-15 10:20:00", "2026-01-15 10:35:00",
       "2026-01-15 10:50:00", "2026-01-15 11:05:00");
  NEXT("10-50/10 * * * *", NULL, t, "2026-01-15 10:20:00");
  NEXT("10-50/10 * * * *", NULL, "2026-01-15 10:50:00", "2026-01-15 11:10:00");
  NEXT("1,5,10 * * * *", NULL, t, "2026-01-15 11:01:00", "2026-01-15 11:05:00");
  NEXT("0 9-17 * * *", NULL, t, "2026-01-15 11:00:00");
  NEXT("0 9-17 * * *", NULL, "2026-01-15 17:00:00", "2026-01-16 09:00:00");
  NEXT("15 8,20 * * *", NULL, t, "2026-01-15 20:15:00", "2026-01-16 08:15:00");
  NEXT("0 0 * * mon-fri", NULL, t, "2026-01-16 00:00:00",
       "2026-01-19 00:00:00");
  NEXT("0 12 * JAN,jul *", NULL, t, "2026-01-15 12:00:00");
  NEXT("0 12 * JAN,jul *", NULL, "2026-01-31 12:00:00", "2026-07-01 12:00:00");
  NEXT("0 0 * * 7", NULL, t, "2026-01-18 00:00:00");
  NEXT("0 0 * * Sun", NULL, t, "2026-01-18 00:00:00");
  NEXT("0 0 * * 5-7", NULL, t, "2026-01-16 00:00:00", "2026-01-17 00:00:00",
       "2026-01-18 00:00:00", "2026-01-23 00:00:00");
  NEXT("0 0 * * 1/2", NULL, t, "2026-01-16 00:00:00", "2026-01-19 00:00:00",
       "2026-01-21 00:00:00");
  /* Strictly after, whole seconds. */
  NEXT("* * * * *", NULL, "2026-01-15 10:18:00", "2026-01-15 10:19:00");
  NEXT("* * * * *", NULL, "2026-01-15 10:17:59.5", "2026-01-15 10:18:00");
}

static void test_seconds_field(void) {
  const char *t = "2026-01-15 10:17:23";
  NEXT("*/10 * * * * *", NULL, t, "2026-01-15 10:17:30", "2026-01-15 10:17:40");
  NEXT("30 0 12 * * *", NULL, t, "2026-01-15 12:00:30", "2026-01-16 12:00:30");
  NEXT("0 */5 * * * *", NULL, t, "2026-01-15 10:20:00");
  NEXT("15,45 * * * * *", NULL, t, "2026-01-15 10:17:45",
       "2026-01-15 10:18:15");
  NEXT("59 59 23 31 12 *", NULL, t, "2026-12-31 23:59:59",
       "2027-12-31 23:59:59");
}

static void test_macros(void) {
  const char *t = "2026-01-15 10:17:23";
  NEXT("@hourly", NULL, t, "2026-01-15 11:00:00");
  NEXT("@daily", NULL, t, "2026-01-16 00:00:00");
  NEXT("@midnight", NULL, t, "2026-01-16 00:00:00");
  NEXT("@weekly", NULL, t, "2026-01-18 00:00:00"); /* Sunday */
  NEXT("@monthly", NULL, t, "2026-02-01 00:00:00");
  NEXT("@yearly", NULL, t, "2027-01-01 00:00:00");
  NEXT("@annually", NULL, t, "2027-01-01 00:00:00");
  NEXT("@DAILY", NULL, t, "2026-01-16 00:00:00");
}

static void test_days(void) {
  /* February 29th: four years on, and eight across 2100. */
  NEXT("0 0 29 2 *", NULL, "2026-01-15 10:17:23", "2028-02-29 00:00:00");
  NEXT("0 0 29 2 *", NULL, "2024-02-29 00:00:00", "2028-02-29 00:00:00");
  NEXT("0 0 29 2 *", NULL, "2096-03-01 00:00:00", "2104-02-29 00:00:00");
  /* The 31st skips the months without one. */
  NEXT("0 0 31 * *", NULL, "2026-01-15 00:00:00", "2026-01-31 00:00:00",
       "2026-03-31 00:00:00", "2026-05-31 00:00:00");
  NEXT("0 0 30 * *", NULL, "2026-02-01 00:00:00", "2026-03-30 00:00:00");
  /* Year rollover. */
  NEXT("0 0 1 1 *", NULL, "2026-12-31 23:59:59", "2027-01-01 00:00:00");
  NEXT("59 23 31 12 *", NULL, "2026-12-31 23:59:00", "2027-12-31 23:59:00");
  NEXT("* * * * *", NULL, "2026-12-31 23:59:30", "2027-01-01 00:00:00");
  NEXT("0 0 * * mon", NULL, "2026-12-30 00:00:00", "2027-01-04 00:00:00");
  /* Both days restricted: either fires (the 13th, and every Friday). */
  NEXT("0 0 13 * fri", NULL, "2026-04-08 00:00:00", "2026-04-10 00:00:00",
       "2026-04-13 00:00:00", "2026-04-17 00:00:00");
  NEXT("0 0 13 * *", NULL, "2026-04-08 00:00:00", "2026-04-13 00:00:00");
  NEXT("0 0 * * fri", NULL, "2026-04-08 00:00:00", "2026-04-10 00:00:00");
  /* A step restricts too: days 1, 11, 21, 31 or Mondays. */
  NEXT("0 0 */10 * 1", NULL, "2026-01-15 00:00:00", "2026-01-19 00:00:00",
       "2026-01-21 00:00:00", "2026-01-26 00:00:00", "2026-01-31 00:00:00");
  /* 1-31 leaves no day out: only Mondays. */
  NEXT("0 0 1-31 * mon", NULL, "2026-01-15 00:00:00", "2026-01-19 00:00:00");
  /* Never. */
  NEXT("0 0 30 2 *", NULL, "2026-01-15 00:00:00",
       "ERR: \"0 0 30 2 *\" never fires (no fire time within 8 years)");
  NEXT("0 0 31 4,6,9,11 *", "Europe/Berlin", "2026-01-15 00:00:00",
       "ERR: \"0 0 31 4,6,9,11 *\" never fires (no fire time within 8 years)");
}

static void test_every(void) {
  const char *t = "2026-01-15 10:17:23";
  NEXT("@every 30s", NULL, t, "2026-01-15 10:17:30");
  NEXT("@every 5m", NULL, t, "2026-01-15 10:20:00");
  /* Slots count from 1970-01-01 00:00 UTC, not from the hour. */
  NEXT("@every 7m", NULL, t, "2026-01-15 10:23:00");
  NEXT("@every 1h30m", NULL, "2026-01-15 10:30:00", "2026-01-15 12:00:00");
  NEXT("@every 1d", "America/New_York", t, "2026-01-15 19:00:00 -0500");

  struct mq_cron c = parse("@every 45m");
  int off;
  double anchor = parse_time("2026-01-15 10:00:00", &off), next;
  cases += 2;
  CHECK_INT(mq_cron_next_anchored(&c, NULL, anchor, parse_time(t, &off), &next,
                                  err, sizeof err),
            0);
  CHECK_STR(format_time(next, 0), "2026-01-15 10:45:00");
  CHECK_INT(mq_cron_next_anchored(&c, NULL, anchor,
                                  parse_time("2026-01-15 09:50:00", &off),
                                  &next, err, sizeof err),
            0);
  CHECK_STR(format_time(next, 0), "2026-01-15 10:00:00");
}

static void test_berlin_spring_forward(void) {
  const char *z = "Europe/Berlin";
  /* 02:30 does not exist on 03-29: it fires at 03:00 CEST, once. */
  NEXT("30 2 * * *", z, "2026-03-28 12:00:00 +0100",
       "2026-03-29 03:00:00 +0200", "2026-03-30 02:30:00 +0200");
  NEXT("0 3 * * *", z, "2026-03-28 12:00:00 +0100",
       "2026-03-29 03:00:00 +0200");
  NEXT("*/20 2 * * *", z, "2026-03-29 00:00:00 +0100",
       "2026-03-29 03:00:00 +0200", "2026-03-30 02:00:00 +0200");
  NEXT("0 0 * * *", z, "2026-03-28 12:00:00 +0100", "2026-03-29 00:00:00 +0100",
       "2026-03-30 00:00:00 +0200");
  NEXT("0 12 * * *", z, "2026-03-28 12:00:00 +0100",
       "2026-03-29 12:00:00 +0200");
  /* Every real hour: 01:00 CET, then 03:00 CEST an hour later. */
  NEXT("0 * * * *", z, "2026-03-29 00:30:00 +0100", "2026-03-29 01:00:00 +0100",
       "2026-03-29 03:00:00 +0200", "2026-03-29 04:00:00 +0200");
  NEXT("30 * * * *", z, "2026-03-29 00:45:00 +0100",
       "2026-03-29 01:30:00 +0100", "2026-03-29 03:30:00 +0200");
  NEXT("@every 1h", z, "2026-03-29 00:30:00 +0100", "2026-03-29 01:00:00 +0100",
       "2026-03-29 03:00:00 +0200", "2026-03-29 04:00:00 +0200");
}

static void test_berlin_fall_back(void) {
  const char *z = "Europe/Berlin";
  /* 02:00-02:59 comes twice on 10-25: 02:30 fires in the first pass. */
  NEXT("30 2 * * *", z, "2026-10-24 12:00:00 +0200",
       "2026-10-25 02:30:00 +0200", "2026-10-26 02:30:00 +0100");
  NEXT("30 2 * * *", z, "2026-10-25 02:15:00 +0100",
       "2026-10-26 02:30:00 +0100");
  NEXT("* 2 * * *", z, "2026-10-25 02:58:30 +0200", "2026-10-25 02:59:00 +0200",
       "2026-10-26 02:00:00 +0100");
  NEXT("* 2 * * *", z, "2026-10-25 02:00:30 +0100",
       "2026-10-26 02:00:00 +0100");
  /* From the second pass, 02:20 and 02:40 have fired; 03:00 has not. */
  NEXT("*/20 2-3 * * *", z, "2026-10-25 02:15:00 +0100",
       "2026-10-25 03:00:00 +0100");
  NEXT("15 2 * * sun", z, "2026-10-24 00:00:00 +0200",
       "2026-10-25 02:15:00 +0200", "2026-11-01 02:15:00 +0100");
  /* Every real hour: 02:00 twice. */
  NEXT("0 * * * *", z, "2026-10-25 00:30:00 +0200", "2026-10-25 01:00:00 +0200",
       "2026-10-25 02:00:00 +0200", "2026-10-25 02:00:00 +0100",
       "2026-10-25 03:00:00 +0100");
  NEXT("@every 30m", z, "2026-10-25 02:10:00 +0200",
       "2026-10-25 02:30:00 +0200", "2026-10-25 02:00:00 +0100",
       "2026-10-25 02:30:00 +0100");
}

static void test_new_york(void) {
  const char *z = "America/New_York";
  NEXT("30 2 * * *", z, "2026-03-07 12:00:00 -0500",
       "2026-03-08 03:00:00 -0400", "2026-03-09 02:30:00 -0400");
  NEXT("0 * * * *", z, "2026-03-08 00:30:00 -0500", "2026-03-08 01:00:00 -0500",
       "2026-03-08 03:00:00 -0400", "2026-03-08 04:00:00 -0400");
  /* On 11-01, 01:00-01:59 comes twice; 02:30 once, in EST. */
  NEXT("30 2 * * *", z, "2026-10-31 12:00:00 -0400",
       "2026-11-01 02:30:00 -0500", "2026-11-02 02:30:00 -0500");
  NEXT("30 1 * * *", z, "2026-10-31 12:00:00 -0400",
       "2026-11-01 01:30:00 -0400", "2026-11-02 01:30:00 -0500");
  NEXT("*/30 1 * * *", z, "2026-11-01 00:50:00 -0400",
       "2026-11-01 01:00:00 -0400", "2026-11-01 01:30:00 -0400",
       "2026-11-02 01:00:00 -0500");
  NEXT("0 * * * *", z, "2026-11-01 00:30:00 -0400", "2026-11-01 01:00:00 -0400",
       "2026-11-01 01:00:00 -0500", "2026-11-01 02:00:00 -0500");
  NEXT("@every 1h", z, "2026-11-01 00:30:00 -0400", "2026-11-01 01:00:00 -0400",
       "2026-11-01 01:00:00 -0500", "2026-11-01 02:00:00 -0500");
}

static void test_other_zones(void) {
  /* Half-hour offset: "0 * * * *" is on the local hour. */
  NEXT("0 * * * *", "Asia/Kolkata", "2026-01-15 10:17:23 +0530",
       "2026-01-15 11:00:00 +0530");
  NEXT("0 9 * * *", "Asia/Kolkata", "2026-01-15 10:17:23 +0530",
       "2026-01-16 09:00:00 +0530");
  /* Santiago falls back at midnight into Saturday 23:00: Saturday's hour
   * 23 comes again after Sunday has begun. */
  NEXT("30 * * * sat", "America/Santiago", "2026-04-05 00:10:00 -0300",
       "2026-04-04 23:30:00 -0400", "2026-04-11 00:30:00 -0400");
  /* ... and springs forward at midnight: 00:00 on 09-06 is 01:00. */
  NEXT("0 0 * * *", "America/Santiago", "2026-09-05 12:00:00 -0400",
       "2026-09-06 01:00:00 -0300", "2026-09-07 00:00:00 -0300");
  /* Lord Howe moves by half an hour. */
  NEXT("0 2 * * *", "Australia/Lord_Howe", "2026-10-03 12:00:00 +1030",
       "2026-10-04 02:30:00 +1100");
  NEXT("0 * * * *", "Australia/Lord_Howe", "2026-10-04 00:30:00 +1030",
       "2026-10-04 01:00:00 +1030", "2026-10-04 03:00:00 +1100");
  NEXT("45 1 * * *", "Australia/Lord_Howe", "2026-04-04 12:00:00 +1100",
       "2026-04-05 01:45:00 +1100", "2026-04-06 01:45:00 +1030");
  /* Aliases and UTC spellings. */
  NEXT("30 2 * * *", "US/Eastern", "2026-03-07 12:00:00 -0500",
       "2026-03-08 03:00:00 -0400");
  NEXT("0 0 * * *", "", "2026-01-15 10:17:23", "2026-01-16 00:00:00");
  NEXT("0 0 * * *", "UTC", "2026-01-15 10:17:23", "2026-01-16 00:00:00");
  NEXT("0 0 * * *", "Etc/UTC", "2026-01-15 10:17:23", "2026-01-16 00:00:00");
}

static void test_zone_errors(void) {
  const char *t = "2026-01-15 10:17:23";
  NEXT("* * * * *", "Mars/Olympus", t,
       "ERR: unknown time zone \"Mars/Olympus\"");
  NEXT("@every 1m", "Mars/Olympus", t,
       "ERR: unknown time zone \"Mars/Olympus\"");
  NEXT("* * * * *", "../../etc/passwd", t,
       "ERR: unknown time zone \"../../etc/passwd\"");
  NEXT("* * * * *", "Europe/../Europe/Berlin", t,
       "ERR: unknown time zone \"Europe/../Europe/Berlin\"");
  NEXT("* * * * *", "/usr/share/zoneinfo/UTC", t,
       "ERR: unknown time zone \"/usr/share/zoneinfo/UTC\"");
  NEXT("* * * * *", "Europe", t, "ERR: unknown time zone \"Europe\"");
  NEXT("* * * * *", "Europe/", t, "ERR: unknown time zone \"Europe/\"");
  NEXT("* * * * *", "Europe//Berlin", t,
       "ERR: unknown time zone \"Europe//Berlin\"");
  NEXT("* * * * *", "Europe/Berlin ", t,
       "ERR: unknown time zone \"Europe/Berlin \"");
  NEXT("* * * * *", "localtime", t, "ERR: unknown time zone \"localtime\"");
  NEXT("* * * * *", "right/UTC", t, "ERR: unknown time zone \"right/UTC\"");
  NEXT("* * * * *", "leapseconds", t, "ERR: unknown time zone \"leapseconds\"");
  NEXT("* * * * *", "zone.tab", t, "ERR: unknown time zone \"zone.tab\"");
  NEXT("* * * * *", "Europe/Berlin\n", t,
       "ERR: unknown time zone \"Europe/Berlin\\x0a\"");

  struct mq_cron c = parse("* * * * *");
  double next = -1;
  cases += 3;
  CHECK_INT(mq_cron_next(&c, NULL, NAN, &next, err, sizeof err), -1);
  CHECK_STR(err, "time nan is out of range (years 1970-9990)");
  CHECK_INT(mq_cron_next(&c, NULL, -1, &next, err, sizeof err), -1);
  CHECK_STR(err, "time -1 is out of range (years 1970-9990)");
  CHECK_INT(mq_cron_next(&c, NULL, 1e300, &next, err, sizeof err), -1);
  CHECK(next == -1);
}

/* mq_cron_offset: the offset on each side of a clock change, in the first
 * and the repeated pass of an hour, and errors as mq_cron_next's. */
static void test_offset(void) {
  static const struct {
    const char *tz, *at;
    int offset;
  } cases_[] = {
      {"UTC", "2026-03-29 01:30:00", 0},
      {NULL, "2026-03-29 01:30:00", 0},
      {"Europe/Berlin", "2026-03-29 01:59:59 +0100", 3600},
      {"Europe/Berlin", "2026-03-29 03:00:00 +0200", 7200},
      {"Europe/Berlin", "2026-10-25 02:30:00 +0200", 7200},
      {"Europe/Berlin", "2026-10-25 02:30:00 +0100", 3600},
      {"America/New_York", "2026-03-08 01:59:59 -0500", -18000},
      {"America/New_York", "2026-03-08 03:00:00 -0400", -14400},
      {"Australia/Lord_Howe", "2026-10-04 02:30:00 +1100", 39600},
      {"Australia/Lord_Howe", "2026-07-01 12:00:00 +1030", 37800},
  };
  for (size_t i = 0; i < sizeof cases_ / sizeof cases_[0]; i++) {
    int want_offset, got = -1;
    double t = parse_time(cases_[i].at, &want_offset);
    cases++;
    CHECK_INT(mq_cron_offset(cases_[i].tz, t, &got, err, sizeof err), 0);
    CHECK_INT(got, cases_[i].offset);
  }
  int got = 12345;
  cases += 2;
  CHECK_INT(mq_cron_offset("Mars/Olympus", 0, &got, err, sizeof err), -1);
  CHECK_STR(err, "unknown time zone \"Mars/Olympus\"");
  CHECK_INT(mq_cron_offset("UTC", -1, &got, err, sizeof err), -1);
  CHECK_STR(err, "time -1 is out of range (years 1970-9990)");
  CHECK_INT(got, 12345);
}

/* The process's TZ is the same after a zone is read. */
static void test_tz_restored(void) {
  struct mq_cron c = parse("0 0 * * *");
  double next;
  time_t now = 1768472243; /* 2026-01-15 10:17:23 UTC */
  struct tm tm;

  setenv("TZ", "Asia/Tokyo", 1);
  tzset();
  CHECK_INT(
      mq_cron_next(&c, "Pacific/Auckland", (double)now, &next, err, sizeof err),
      0);
  CHECK_STR(getenv("TZ"), "Asia/Tokyo");
  localtime_r(&now, &tm);
  CHECK_INT(tm.tm_hour, 19); /* Tokyo, +0900 */

  unsetenv("TZ");
  tzset();
  CHECK_INT(
      mq_cron_next(&c, "Pacific/Chatham", (double)now, &next, err, sizeof err),
      0);
  CHECK(getenv("TZ") == NULL);
}

/* Compares the search with a walk through every minute of a few days
 * around each clock change, under the rules of cron.h stated another way:
 * with restricted hours, a wall time fires at the first instant the local
 * clock reaches or passes it; with every hour, at each instant the clock
 * shows it. The walk reads the clock with localtime_r itself. */
static bool matches(const struct mq_cron *c, const struct tm *tm) {
  bool day = c->days >> tm->tm_mday & 1, wday = c->weekdays >> tm->tm_wday & 1;
  bool days =
      c->days_restricted && c->weekdays_restricted ? day || wday : day && wday;
  return days && (c->months >> (tm->tm_mon + 1) & 1) &&
         (c->hours >> tm->tm_hour & 1) && (c->minutes >> tm->tm_min & 1) &&
         (c->seconds >> tm->tm_sec & 1);
}

/* Wall-clock time of tm as seconds (timegm of a copy). */
static time_t wall_of(const struct tm *tm) {
  struct tm copy = *tm;
  return timegm(&copy);
}

static void walk(const char *expr, const char *zone, const char *around) {
  char tzvalue[128];
  int off;
  struct mq_cron c = parse(expr);
  time_t start = (time_t)parse_time(around, &off) - 2 * 86400;
  time_t end = start + 4 * 86400;
  double next;
  REQUIRE(mq_cron_next(&c, zone, (double)start, &next, err, sizeof err) == 0);
  snprintf(tzvalue, sizeof tzvalue, ":/usr/share/zoneinfo/%s", zone);
  setenv("TZ", tzvalue, 1);
  tzset();
  struct tm tm;
  localtime_r(&start, &tm);
  time_t high = wall_of(&tm); /* the latest wall time seen */
  for (time_t t = start + 60; t <= end; t += 60) {
    localtime_r(&t, &tm);
    time_t wall = wall_of(&tm);
    bool fires = false;
    if (c.hours == 0xffffff) {
      fires = matches(&c, &tm);
    } else {
      for (time_t w = high + 60; w <= wall && !fires; w += 60) {
        struct tm wt;
        gmtime_r(&w, &wt);
        fires = matches(&c, &wt);
      }
    }
    if (wall > high)
      high = wall;
    if (!fires)
      continue;
    cases++;
    if ((time_t)next != t) {
      fprintf(stderr,
              "%s:%d: \"%s\" in %s: walk fires at %lld, search at %lld\n",
              __FILE__, __LINE__, expr, zone, (long long)t, (long long)next);
      mq_test_case_failed = 1;
      break;
    }
    REQUIRE(mq_cron_next(&c, zone, next, &next, err, sizeof err) == 0);
  }
  unsetenv("TZ");
  tzset();
}

static void test_against_walk(void) {
  static const char *exprs[] = {
      "30 2 * * *",    "0 * * * *",    "*/20 * * * *",  "*/20 2 * * *",
      "0 1,2,3 * * *", "15 * * * 0,6", "45 23,0 * * *", "0 0 * * *"};
  static const struct {
    const char *zone, *around;
  } changes[] = {
      {"Europe/Berlin", "2026-03-29 01:00:00"},
      {"Europe/Berlin", "2026-10-25 01:00:00"},
      {"America/New_York", "2026-03-08 07:00:00"},
      {"America/New_York", "2026-11-01 06:00:00"},
      {"America/Santiago", "2026-04-05 03:00:00"},
      {"America/Santiago", "2026-09-06 04:00:00"},
      {"Australia/Lord_Howe", "2026-04-04 15:00:00"},
      {"Australia/Lord_Howe", "2026-10-03 15:30:00"},
  };
  for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++)
    for (size_t j = 0; j < sizeof exprs / sizeof exprs[0]; j++)
      walk(exprs[j], changes[i].zone, changes[i].around);
}

int main(void) {
  RUN(test_parse_sets);
  RUN(test_parse_errors);
  RUN(test_fields);
  RUN(test_seconds_field);
  RUN(test_macros);
  RUN(test_days);
  RUN(test_every);
  RUN(test_berlin_spring_forward);
  RUN(test_berlin_fall_back);
  RUN(test_new_york);
  RUN(test_other_zones);
  RUN(test_zone_errors);
  RUN(test_offset);
  RUN(test_tz_restored);
  RUN(test_against_walk);
  printf("%d cases\n", cases);
  return mq_test_done();
}
