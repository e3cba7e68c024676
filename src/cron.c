/* cron.c -- cron expressions and their next fire times (see cron.h).
 *
 * Parsing turns each field into a bit set. The search walks wall-clock
 * time field by field (month, day, hour, minute, second), jumping to the
 * next set bit rather than stepping second by second. "Wall seconds" are
 * seconds since 1970-01-01 00:00 of the local calendar, so that calendar
 * arithmetic is integer arithmetic. A zone is a table of segments of
 * constant UTC offset between clock changes, read once through the C
 * library (zone_load); with it, wall seconds and instants convert both
 * ways exactly, gaps and repeated hours included.
 */
#include "cron.h"

#include <ctype.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

#define DAY 86400
#define HORIZON ((int64_t)MQ_CRON_HORIZON_YEARS * 366 * DAY)
/* Larger than any UTC offset (tzdata's stay within -12h..+14h). */
#define MAX_OFFSET (26 * 3600)

#define ZONEINFO "/usr/share/zoneinfo"
/* Zones whose tables are kept, and clock changes a table holds (ten
 * years of a zone that changes four times a year need 42). */
#define ZONE_CACHE 64
#define ZONE_MAX_CHANGES 128
/* A table covers `after` from 3 days before to the horizon plus this
 * much, so that it serves the calls of the next two years. */
#define ZONE_SLACK ((int64_t)2 * 366 * DAY)
/* Seconds a kept table is used before its file is looked at again. */
#define ZONE_RECHECK 60

/* A field of an expression: its values and, for month and day-of-week,
 * its names (three letters each, the first one naming `min`). `last` ends
 * `*` and `N/S`; it differs from max only in day-of-week (6, not 7). */
struct field {
  const char *name;
  int min, max, last;
  const char *names;
};

static const struct field fields[6] = {
    {"second", 0, 59, 59, NULL},
    {"minute", 0, 59, 59, NULL},
    {"hour", 0, 23, 23, NULL},
    {"day-of-month", 1, 31, 31, NULL},
    {"month", 1, 12, 12, "janfebmaraprmayjunjulaugsepoctnovdec"},
    {"day-of-week", 0, 7, 6, "sunmontuewedthufrisat"},
};

struct macro {
  const char *name, *fields;
};

static const struct macro macros[] = {
    {"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"},
    {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
    {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

/* The expression being parsed and where its error goes. */
struct parser {
  const char *expr;
  size_t len;
  char *err;
  size_t errlen;
};

/* A word of the expression: a field, a macro or an interval. */
struct word {
  const char *s;
  size_t n;
};

/* A zone's offsets over [from, to): segment i runs from at[i - 1] (from,
 * for i = 0) to at[i] (to, for i = n) with UTC offset off[i] seconds. */
struct zone {
  char name[MQ_CRON_TZ_MAX_LEN + 1];
  dev_t dev; /* the file the table was read from */
  ino_t ino;
  off_t size;
  struct timespec mtime;
  int64_t from, to;
  int n;
  int64_t at[ZONE_MAX_CHANGES];
  int32_t off[ZONE_MAX_CHANGES + 1];
  time_t checked;     /* when the file was last looked at (monotonic) */
  unsigned long used; /* last use, for replacement; 0: a free entry */
};

static struct zone utc = {
    .name = "UTC", .from = INT64_MIN / 4, .to = INT64_MAX / 4};
static struct zone zones[ZONE_CACHE];
static unsigned long zone_clock;

static int fail(const struct parser *p, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void set_error(char *err, size_t errlen, const char *fmt, ...)
    PRINTF_LIKE(3, 4);
static const char *printable(char *buf, size_t size, const char *s, size_t n);
static int split(const char *s, size_t len, struct word *w, int max);
static int parse_fields(struct parser *p, const struct word *w, int n,
                        struct mq_cron *out);
static int parse_macro(struct parser *p, const struct word *w, int n,
                       struct mq_cron *out);
static int parse_field(struct parser *p, const struct field *f, struct word w,
                       uint64_t *bits);
static int parse_interval(struct parser *p, struct word w, int64_t *every);
static int next_wall(const struct mq_cron *c, int64_t from, int64_t limit,
                     int64_t *out);
static int next_fixed(const struct mq_cron *c, const struct zone *z, int64_t a,
                      int64_t *out);
static int next_real(const struct mq_cron *c, const struct zone *z, int64_t a,
                     int64_t *out);
static const struct zone *zone_find(const char *tz, int64_t a, char *err,
                                    size_t errlen);
static int segment(const struct zone *z, int64_t t);
static int64_t days_from_civil(int64_t y, int m, int d);
static void civil_from_days(int64_t z, int *y, int *m, int *d);
static int64_t floor_div(int64_t a, int64_t b);

/* Public functions */

int mq_cron_parse(const char *expr, struct mq_cron *out, char *err,
                  size_t errlen) {
  if (!expr) {
    set_error(err, errlen, "no cron expression");
    return -1;
  }
  struct parser p = {expr, strnlen(expr, MQ_CRON_MAX_LEN + 1), err, errlen};
  if (p.len > MQ_CRON_MAX_LEN) {
    set_error(err, errlen, "cron expression longer than %d bytes",
              MQ_CRON_MAX_LEN);
    return -1;
  }
  memset(out, 0, sizeof *out);
  memcpy(out->expr, expr, p.len);
  struct word w[7];
  int n = split(expr, p.len, w, 7);
  if (n == 0)
    return fail(&p, "empty expression");
  if (w[0].s[0] == '@')
    return parse_macro(&p, w, n, out);
  if (n != 5 && n != 6)
    return fail(&p, "%d field%s, expected 5 or 6", n, n == 1 ? "" : "s");
  return parse_fields(&p, w, n, out);
}

int mq_cron_next(const struct mq_cron *c, const char *tz, double after,
                 double *next, char *err, size_t errlen) {
  return mq_cron_next_anchored(c, tz, 0, after, next, err, errlen);
}

/* Whether t is within the years 1970-9990; else an error in err. */
static bool in_range(double t, char *err, size_t errlen) {
  const double lo = 0, hi = (double)days_from_civil(9991, 1, 1) * DAY;
  if (t >= lo && t < hi)
    return true;
  set_error(err, errlen, "time %.17g is out of range (years 1970-9990)", t);
  return false;
}

int mq_cron_next_anchored(const struct mq_cron *c, const char *tz,
                          double anchor, double after, double *next, char *err,
                          size_t errlen) {
  if (!in_range(after, err, errlen) || !in_range(anchor, err, errlen))
    return -1;
  int64_t a = (int64_t)floor(after), t;
  const struct zone *z = zone_find(tz, a, err, errlen);
  if (!z)
    return -1;
  int rc;
  if (c->every > 0) {
    int64_t an = (int64_t)floor(anchor);
    t = an + (floor_div(a - an, c->every) + 1) * c->every;
    rc = 0;
  } else if (c->hours == 0xffffff) {
    rc = next_real(c, z, a, &t);
  } else {
    rc = next_fixed(c, z, a, &t);
  }
  if (rc < 0) {
    char q[4 * MQ_CRON_MAX_LEN + 1];
    set_error(err, errlen, "\"%s\" never fires (no fire time within %d years)",
              printable(q, sizeof q, c->expr, strlen(c->expr)),
              MQ_CRON_HORIZON_YEARS);
    return -1;
  }
  *next = (double)t;
  return 0;
}

int mq_cron_offset(const char *tz, double t, int *offset, char *err,
                   size_t errlen) {
  if (!in_range(t, err, errlen))
    return -1;
  int64_t a = (int64_t)floor(t);
  const struct zone *z = zone_find(tz, a, err, errlen);
  if (!z)
    return -1;
  *offset = z->off[segment(z, a)];
  return 0;
}

/* Parsing */

/* Formats a parse error: the quoted expression, then the message. */
static int fail(const struct parser *p, const char *fmt, ...) {
  if (p->errlen == 0)
    return -1;
  char q[4 * MQ_CRON_MAX_LEN + 1];
  int k = snprintf(p->err, p->errlen,
                   "\"%s\": ", printable(q, sizeof q, p->expr, p->len));
  if (k >= 0 && (size_t)k < p->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static void set_error(char *err, size_t errlen, const char *fmt, ...) {
  if (errlen == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* Copies s[0..n) into buf for a message: printable ASCII stays, quotes and
 * backslashes are escaped, other bytes become \xNN. Returns buf, which
 * 4 * n + 1 bytes always hold. */
static const char *printable(char *buf, size_t size, const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 5 <= size; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\')
      k += (size_t)snprintf(buf + k, size - k, "\\%c", ch);
    else if (ch >= 0x20 && ch < 0x7f)
      buf[k++] = (char)ch;
    else
      k += (size_t)snprintf(buf + k, size - k, "\\x%02x", ch);
  }
  buf[k] = '\0';
  return buf;
}

/* Splits s[0..len) at spaces and tabs into at most `max` words. Returns
 * the number of words there are, which may be more than max. */
static int split(const char *s, size_t len, struct word *w, int max) {
  int n = 0;
  size_t i = 0;
  for (;;) {
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
      i++;
    if (i == len)
      return n;
    size_t start = i;
    while (i < len && s[i] != ' ' && s[i] != '\t')
      i++;
    if (n < max)
      w[n] = (struct word){s + start, i - start};
    n++;
  }
}

/* Fills the bit sets of *out from 5 or 6 field words. */
static int parse_fields(struct parser *p, const struct word *w, int n,
                        struct mq_cron *out) {
  uint64_t bits[6] = {1}; /* without a seconds field: second 0 */
  for (int i = 0; i < n; i++)
    if (parse_field(p, &fields[6 - n + i], w[i], &bits[6 - n + i]) < 0)
      return -1;
  out->seconds = bits[0];
  out->minutes = bits[1];
  out->hours = (uint32_t)bits[2];
  out->days = (uint32_t)bits[3];
  out->months = (uint16_t)bits[4];
  out->weekdays = (uint8_t)((bits[5] | bits[5] >> 7) & 0x7f); /* 7: Sun */
  out->days_restricted = out->days != 0xfffffffe;
  out->weekdays_restricted = out->weekdays != 0x7f;
  return 0;
}

/* Parses "@name" macros and "@every <interval>". */
static int parse_macro(struct parser *p, const struct word *w, int n,
                       struct mq_cron *out) {
  char q[4 * MQ_CRON_MAX_LEN + 1];
  if (w[0].n == 6 && strncasecmp(w[0].s, "@every", 6) == 0) {
    if (n == 1)
      return fail(p, "missing interval after @every (e.g. \"@every 5m\")");
    if (n > 2)
      return fail(p, "unexpected \"%s\" after the interval",
                  printable(q, sizeof q, w[2].s, w[2].n));
    return parse_interval(p, w[1], &out->every);
  }
  for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++) {
    if (strlen(macros[i].name) != w[0].n ||
        strncasecmp(w[0].s, macros[i].name, w[0].n) != 0)
      continue;
    if (n > 1)
      return fail(p, "unexpected \"%s\" after %s",
                  printable(q, sizeof q, w[1].s, w[1].n), macros[i].name);
    struct word fw[5];
    split(macros[i].fields, strlen(macros[i].fields), fw, 5);
    return parse_fields(p, fw, 5, out);
  }
  return fail(p,
              "unknown macro \"%s\" (expected @yearly, @annually, @monthly, "
              "@weekly, @daily, @midnight, @hourly or @every)",
              printable(q, sizeof q, w[0].s, w[0].n));
}

/* Reads a number or a name of field f at *s (before end) into *v. */
static int parse_value(struct parser *p, const struct field *f,
                       struct word item, const char **s, int *v) {
  char q[4 * MQ_CRON_MAX_LEN + 1], qi[4 * MQ_CRON_MAX_LEN + 1];
  const char *start = *s, *end = item.s + item.n;
  if (start < end && isdigit((unsigned char)*start)) {
    long x = 0;
    while (*s < end && isdigit((unsigned char)**s)) {
      if (x <= 999)
        x = x * 10 + (**s - '0');
      (*s)++;
    }
    if (x < f->min || x > f->max)
      return fail(p, "%s field: %.*s is out of range %d-%d", f->name,
                  (int)(*s - start), start, f->min, f->max);
    *v = (int)x;
    return 0;
  }
  if (start < end && isalpha((unsigned char)*start)) {
    while (*s < end && isalpha((unsigned char)**s))
      (*s)++;
    size_t n = (size_t)(*s - start);
    const char *tok = printable(q, sizeof q, start, n);
    if (!f->names)
      return fail(p, "%s field: \"%s\" is not a number", f->name, tok);
    for (int i = 0; n == 3 && f->names[3 * i]; i++) {
      if (strncasecmp(start, f->names + 3 * i, 3) == 0) {
        *v = f->min + i;
        return 0;
      }
    }
    return fail(p, "%s field: unknown name \"%s\" (expected %.3s-%.3s)",
                f->name, tok, f->names, f->names + strlen(f->names) - 3);
  }
  const char *it = printable(qi, sizeof qi, item.s, item.n);
  if (start == end || *start == '-' || *start == '/')
    return fail(p, "%s field: missing value in \"%s\"", f->name, it);
  return fail(p, "%s field: unexpected \"%s\" in \"%s\"", f->name,
              printable(q, sizeof q, start, 1), it);
}

/* Parses one list item: `*`, N, N-M, each with an optional /S. */
static int parse_item(struct parser *p, const struct field *f, struct word item,
                      uint64_t *bits) {
  char q[4 * MQ_CRON_MAX_LEN + 1], qi[4 * MQ_CRON_MAX_LEN + 1];
  const char *s = item.s, *end = item.s + item.n;
  int lo, hi, step = 1;
  if (*s == '*') {
    lo = f->min;
    hi = f->last;
    s++;
  } else {
    if (parse_value(p, f, item, &s, &lo) < 0)
      return -1;
    hi = lo;
    if (s < end && *s == '-') {
      s++;
      if (parse_value(p, f, item, &s, &hi) < 0)
        return -1;
      if (hi < lo)
        return fail(p, "%s field: range %s goes backwards", f->name,
                    printable(q, sizeof q, item.s, (size_t)(s - item.s)));
    } else if (s < end && *s == '/') {
      hi = f->last;
    }
  }
  if (s < end && *s == '/') {
    const char *digits = ++s;
    long x = 0;
    while (s < end && isdigit((unsigned char)*s)) {
      if (x <= 999)
        x = x * 10 + (*s - '0');
      s++;
    }
    if (s == digits && s == end)
      return fail(p, "%s field: missing step in \"%s\"", f->name,
                  printable(qi, sizeof qi, item.s, item.n));
    if (s == digits)
      return fail(p, "%s field: unexpected \"%s\" in \"%s\"", f->name,
                  printable(q, sizeof q, s, 1),
                  printable(qi, sizeof qi, item.s, item.n));
    if (x < 1 || x > f->max - f->min)
      return fail(p, "%s field: step %.*s is out of range 1-%d", f->name,
                  (int)(s - digits), digits, f->max - f->min);
    step = (int)x;
  }
  if (s < end)
    return fail(p, "%s field: unexpected \"%s\" in \"%s\"", f->name,
                printable(q, sizeof q, s, 1),
                printable(qi, sizeof qi, item.s, item.n));
  for (int v = lo; v <= hi; v += step)
    *bits |= (uint64_t)1 << v;
  return 0;
}

/* Parses a field: items separated by commas. */
static int parse_field(struct parser *p, const struct field *f, struct word w,
                       uint64_t *bits) {
  char q[4 * MQ_CRON_MAX_LEN + 1];
  *bits = 0;
  const char *s = w.s, *end = w.s + w.n;
  for (;;) {
    const char *comma = memchr(s, ',', (size_t)(end - s));
    struct word item = {s, (size_t)((comma ? comma : end) - s)};
    if (item.n == 0)
      return fail(p, "%s field: empty value in \"%s\"", f->name,
                  printable(q, sizeof q, w.s, w.n));
    if (parse_item(p, f, item, bits) < 0)
      return -1;
    if (!comma)
      return 0;
    s = comma + 1;
  }
}

/* Parses "1h30m": numbers with units d, h, m, s, each once, in order. */
static int parse_interval(struct parser *p, struct word w, int64_t *every) {
  static const char units[] = "dhms";
  static const int64_t seconds[] = {DAY, 3600, 60, 1};
  char q[4 * MQ_CRON_MAX_LEN + 1], qu[8];
  const char *s = w.s, *end = w.s + w.n;
  const char *iv = printable(q, sizeof q, w.s, w.n);
  int64_t total = 0;
  int next_unit = 0;
  while (s < end) {
    if (!isdigit((unsigned char)*s))
      return fail(p, "bad interval \"%s\" (expected e.g. 30s, 5m, 1h30m)", iv);
    int64_t x = 0;
    while (s < end && isdigit((unsigned char)*s)) {
      if (x <= 366 * DAY)
        x = x * 10 + (*s - '0');
      s++;
    }
    if (s == end)
      return fail(p, "interval \"%s\": a number needs a unit (d, h, m or s)",
                  iv);
    const char *u = memchr(units, *s, 4);
    if (!u)
      return fail(p,
                  "interval \"%s\": unknown unit \"%s\" (expected d, h, "
                  "m or s)",
                  iv, printable(qu, sizeof qu, s, 1));
    if (u - units < next_unit)
      return fail(p,
                  "interval \"%s\": units go once each, in the order d h "
                  "m s",
                  iv);
    next_unit = (int)(u - units) + 1;
    total += x * seconds[u - units];
    if (total > 366 * DAY)
      return fail(p, "interval \"%s\" is longer than 366 days", iv);
    s++;
  }
  if (total == 0)
    return fail(p, "interval \"%s\" must be at least 1s", iv);
  *every = total;
  return 0;
}

/* Searching wall-clock time */

/* The smallest set bit of mask at or above `from`, or -1. */
static int next_bit(uint64_t mask, int from) {
  if (from >= 64)
    return -1;
  mask &= ~(uint64_t)0 << from;
  return mask ? __builtin_ctzll(mask) : -1;
}

static int days_in_month(int y, int m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

/* The days of month m of year y that fire, as bits 1-31, with Vixie
 * cron's rule for day-of-month and day-of-week. */
static uint64_t day_set(const struct mq_cron *c, int y, int m) {
  int n = days_in_month(y, m);
  int wday = (int)((days_from_civil(y, m, 1) % 7 + 11) % 7); /* 0 = Sun */
  uint64_t by_weekday = 0;
  for (int d = 1; d <= n; d++, wday = (wday + 1) % 7)
    if (c->weekdays >> wday & 1)
      by_weekday |= (uint64_t)1 << d;
  uint64_t by_day = c->days & ((((uint64_t)1 << n) - 1) << 1);
  if (c->days_restricted && c->weekdays_restricted)
    return by_day | by_weekday;
  return by_day & by_weekday;
}

/* Sets *out to the first wall time at or after `from` that the fields of
 * c match. Returns 0, or -1 when there is none up to `limit`. */
static int next_wall(const struct mq_cron *c, int64_t from, int64_t limit,
                     int64_t *out) {
  int64_t days = floor_div(from, DAY), sec = from - days * DAY;
  int y, mo, d, last_year, unused;
  civil_from_days(days, &y, &mo, &d);
  civil_from_days(floor_div(limit, DAY), &last_year, &unused, &unused);
  int h = (int)(sec / 3600), mi = (int)(sec / 60 % 60), s = (int)(sec % 60);
  /* Each step moves to the next value of one field and resets the
   * smaller ones; a field with no value left carries into the larger. */
  for (;;) {
    if (y > last_year)
      return -1;
    int m2 = next_bit(c->months, mo);
    if (m2 < 0) {
      y++, mo = 1, d = 1, h = mi = s = 0;
      continue;
    }
    if (m2 > mo)
      mo = m2, d = 1, h = mi = s = 0;
    int d2 = next_bit(day_set(c, y, mo), d);
    if (d2 < 0) {
      mo++, d = 1, h = mi = s = 0;
      continue;
    }
    if (d2 > d)
      d = d2, h = mi = s = 0;
    int h2 = next_bit(c->hours, h);
    if (h2 < 0) {
      d++, h = mi = s = 0;
      continue;
    }
    if (h2 > h)
      h = h2, mi = s = 0;
    int mi2 = next_bit(c->minutes, mi);
    if (mi2 < 0) {
      h++, mi = s = 0;
      continue;
    }
    if (mi2 > mi)
      mi = mi2, s = 0;
    int s2 = next_bit(c->seconds, s);
    if (s2 < 0) {
      mi++, s = 0;
      continue;
    }
    int64_t w = (days_from_civil(y, mo, d) * 24 + h) * 3600 + mi * 60 + s2;
    if (w > limit)
      return -1;
    *out = w;
    return 0;
  }
}

/* Zones: offsets, and the instants of wall times */

/* The segment of z holding instant t. */
static int segment(const struct zone *z, int64_t t) {
  int lo = 0, hi = z->n;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (z->at[mid] <= t)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int64_t segment_start(const struct zone *z, int i) {
  return i == 0 ? z->from : z->at[i - 1];
}

static int64_t segment_end(const struct zone *z, int i) {
  return i == z->n ? z->to : z->at[i];
}

/* The instant at which wall time w fires under the fixed rules: its first
 * occurrence, or for a wall time that a change skipped, the change. Sets
 * *seg to that instant's segment. */
static int64_t first_instant(const struct zone *z, int64_t w, int *seg) {
  int last = segment(z, w + MAX_OFFSET);
  for (int i = segment(z, w - MAX_OFFSET); i <= last; i++) {
    int64_t t = w - z->off[i];
    if (t >= segment_start(z, i) && t < segment_end(z, i)) {
      *seg = i;
      return t;
    }
    /* The change ending segment i skips [at + old, at + new). */
    if (i < z->n && w >= z->at[i] + z->off[i] && w < z->at[i] + z->off[i + 1]) {
      *seg = i + 1;
      return z->at[i];
    }
  }
  /* Unreachable: every wall time is in a segment or a gap. */
  *seg = last;
  return w - z->off[last];
}

/* Fixed rules (hours restricted): the first wall time after the one at
 * instant a whose fire instant lies after a. */
static int next_fixed(const struct mq_cron *c, const struct zone *z, int64_t a,
                      int64_t *out) {
  int64_t w = a + z->off[segment(z, a)] + 1, limit = w + HORIZON;
  for (;;) {
    if (next_wall(c, w, limit, &w) < 0)
      return -1;
    int seg;
    int64_t t = first_instant(z, w, &seg);
    if (t > a) {
      *out = t;
      return 0;
    }
    /* a is in the second pass of a repeated hour and w fired in the
     * first: so did every wall time whose instant in t's segment is no
     * later than a. Go on after them. */
    int64_t end = segment_end(z, seg) - 1;
    int64_t skip = (a < end ? a : end) + (w - t) + 1;
    w = skip > w + 1 ? skip : w + 1;
  }
}

/* Real-clock rules (every hour): the first instant after a whose wall
 * time matches, found segment by segment. */
static int next_real(const struct mq_cron *c, const struct zone *z, int64_t a,
                     int64_t *out) {
  int64_t t = a + 1, limit = a + 1 + HORIZON;
  for (int i = segment(z, t);; i++) {
    int64_t o = z->off[i], w;
    if (next_wall(c, t + o, limit + o, &w) < 0)
      return -1;
    if (w - o < segment_end(z, i)) {
      *out = w - o;
      return 0;
    }
    if (i == z->n) /* unreachable: the table covers the horizon */
      return -1;
    t = z->at[i];
  }
}

/* Whether tz may name a file under ZONEINFO: components of letters,
 * digits, "_", "+" and "-" (so no ".." and no leading "/"), and not the
 * host's "localtime" or the leap-second zones "right/...". */
static bool zone_name_ok(const char *tz) {
  size_t n = strnlen(tz, MQ_CRON_TZ_MAX_LEN + 1);
  if (n > MQ_CRON_TZ_MAX_LEN || strcmp(tz, "localtime") == 0 ||
      strncmp(tz, "right/", 6) == 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)tz[i];
    if (ch == '/' ? i == 0 || i == n - 1 || tz[i + 1] == '/'
                  : !isalnum(ch) && ch != '_' && ch != '+' && ch != '-')
      return false;
  }
  return true;
}

/* The UTC offset of instant t in the zone TZ names, or INT32_MIN. */
static int32_t offset_at(int64_t t) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!localtime_r(&tt, &tm))
    return INT32_MIN;
  int64_t wall =
      days_from_civil(tm.tm_year + 1900LL, tm.tm_mon + 1, tm.tm_mday) * DAY +
      tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
  return (int32_t)(wall - t);
}

/* Fills z's changes over [from, to) from the zone TZ names now: probes
 * the offset once a day and bisects the days where it changes. */
static int read_changes(struct zone *z, int64_t from, int64_t to) {
  z->from = from;
  z->to = to;
  z->n = 0;
  int32_t o = offset_at(from);
  z->off[0] = o;
  for (int64_t p = from; p < to && o != INT32_MIN;) {
    int64_t q = p + DAY;
    int32_t oq = offset_at(q);
    if (oq == o) {
      p = q;
      continue;
    }
    while (q - p > 1) {
      int64_t mid = p + (q - p) / 2;
      if (offset_at(mid) == o)
        p = mid;
      else
        q = mid;
    }
    if (z->n == ZONE_MAX_CHANGES)
      return -1;
    z->at[z->n++] = q;
    o = z->off[z->n] = offset_at(q);
    p = q;
  }
  return o == INT32_MIN ? -1 : 0;
}

/* Reads the table of zone file `path` into z for calls around instant a,
 * with TZ pointing at the file meanwhile; TZ is restored afterwards. */
static int zone_load(struct zone *z, const char *path, int64_t a,
                     const char *tz, char *err, size_t errlen) {
  char magic[4], q[4 * MQ_CRON_TZ_MAX_LEN + 1];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t got = fd < 0 ? -1 : read(fd, magic, 4);
  if (fd >= 0)
    close(fd);
  if (got != 4 || memcmp(magic, "TZif", 4) != 0) {
    set_error(err, errlen, "unknown time zone \"%s\"",
              printable(q, sizeof q, tz, strlen(tz)));
    return -1;
  }
  const char *old = getenv("TZ");
  char *saved = old ? strdup(old) : NULL;
  char value[sizeof ZONEINFO + MQ_CRON_TZ_MAX_LEN + 2];
  snprintf(value, sizeof value, ":%s", path);
  if ((old && !saved) || setenv("TZ", value, 1) < 0) {
    free(saved);
    set_error(err, errlen, "out of memory");
    return -1;
  }
  tzset();
  int rc = read_changes(z, a - 3 * DAY, a + HORIZON + 3 * DAY + ZONE_SLACK);
  if (saved)
    setenv("TZ", saved, 1);
  else
    unsetenv("TZ");
  tzset();
  free(saved);
  if (rc < 0)
    set_error(err, errlen, "time zone \"%s\" changes its offset too often",
              printable(q, sizeof q, tz, strlen(tz)));
  return rc;
}

/* The kept table of zone tz, or NULL; *lru gets the entry to replace. */
static struct zone *zone_kept(const char *tz, struct zone **lru) {
  *lru = &zones[0];
  for (int i = 0; i < ZONE_CACHE; i++) {
    if (zones[i].used && strcmp(zones[i].name, tz) == 0)
      return &zones[i];
    if (zones[i].used < (*lru)->used)
      *lru = &zones[i];
  }
  return NULL;
}

/* Whether z covers the instants a call for `after` = a may need. */
static bool zone_covers(const struct zone *z, int64_t a) {
  return z->from <= a - 2 * DAY && z->to >= a + HORIZON + 2 * DAY;
}

static bool same_file(const struct zone *z, const struct stat *st) {
  return z->dev == st->st_dev && z->ino == st->st_ino &&
         z->size == st->st_size && z->mtime.tv_sec == st->st_mtim.tv_sec &&
         z->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* The table of zone tz covering the calls around instant a: the kept one,
 * whose file is looked at again once a minute, or one read now. NULL
 * (message in err) for an unknown zone. */
static const struct zone *zone_find(const char *tz, int64_t a, char *err,
                                    size_t errlen) {
  if (!tz || !*tz || strcmp(tz, "UTC") == 0)
    return &utc;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  struct zone *lru, *z = zone_kept(tz, &lru);
  if (z && zone_covers(z, a) && ts.tv_sec - z->checked < ZONE_RECHECK) {
    z->used = ++zone_clock;
    return z;
  }
  char path[sizeof ZONEINFO + MQ_CRON_TZ_MAX_LEN + 1], q[4 * 512 + 1];
  struct stat st;
  if (!zone_name_ok(tz)) {
    set_error(err, errlen, "unknown time zone \"%s\"",
              printable(q, sizeof q, tz, strnlen(tz, 512)));
    return NULL;
  }
  snprintf(path, sizeof path, "%s/%s", ZONEINFO, tz);
  if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
    set_error(err, errlen, "unknown time zone \"%s\"",
              printable(q, sizeof q, tz, strlen(tz)));
    if (z)
      z->used = 0; /* the file went away */
    return NULL;
  }
  if (!z || !same_file(z, &st) || !zone_covers(z, a)) {
    if (!z)
      z = lru;
    z->used = 0;
    if (zone_load(z, path, a, tz, err, errlen) < 0)
      return NULL;
    snprintf(z->name, sizeof z->name, "%s", tz);
    z->dev = st.st_dev;
    z->ino = st.st_ino;
    z->size = st.st_size;
    z->mtime = st.st_mtim;
  }
  z->checked = ts.tv_sec;
  z->used = ++zone_clock;
  return z;
}

/* Calendar arithmetic (Howard Hinnant's algorithms, proleptic Gregorian) */

static int64_t floor_div(int64_t a, int64_t b) {
  return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Days since 1970-01-01 of y-m-d. */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = floor_div(y, 400), yoe = y - era * 400;
  int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *y, int *m, int *d) {
  z += 719468;
  int64_t era = floor_div(z, 146097), doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yoe + era * 400 + (*m <= 2));
}
