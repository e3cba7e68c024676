/* cron.h -- cron expressions and their next fire times in a time zone.
 *
 * mq_cron_parse reads an expression into a struct mq_cron; mq_cron_next
 * gives its first fire time after an instant, read in an IANA time zone.
 * Both are pure: no database, and no I/O beyond the system time zone
 * database. The scheduler (issue 9) builds on them.
 *
 * Syntax
 *
 *   minute hour day-of-month month day-of-week          5 fields
 *   second minute hour day-of-month month day-of-week   6 fields
 *
 *   field          values   names
 *   second         0-59
 *   minute         0-59
 *   hour           0-23
 *   day-of-month   1-31
 *   month          1-12     jan-dec
 *   day-of-week    0-7      sun-sat (0 and 7 are both Sunday)
 *
 * Fields are separated by spaces or tabs. A field is a comma-separated
 * list of items: `*` (every value), `N`, `N-M` (M >= N), each optionally
 * followed by `/S`, every S-th value from the start of the range: a star
 * with /15 is 0,15,30,45; `10-50/10` is 10,20,...,50; `5/15` means
 * `5-59/15` (5,20,35,50), as in Quartz and robfig/cron. In day-of-week,
 * `*` and `N/S` run to 6 (`1/2` is Mon, Wed, Fri); 7 is for ranges such as
 * `5-7`. Names are three letters, case-insensitive, and only in their
 * field. Macros: @yearly and @annually
 * (0 0 1 1 *), @monthly (0 0 1 * *), @weekly (0 0 * * 0), @daily and
 * @midnight (0 0 * * *), @hourly (0 * * * *). Intervals: `@every 30s`,
 * `@every 5m`, `@every 1h30m`: numbers with the units d, h, m, s, each unit
 * once and in that order, from 1s to 366d.
 *
 * Vixie cron's day rule: when both day-of-month and day-of-week are
 * restricted, a day matching either fires (`0 0 13 * fri`: the 13th and
 * every Friday); otherwise a day must match both. A field is restricted
 * when it leaves out some day (`*` and `1-31` do not; a star with /2 does,
 * unlike Vixie cron, which counts every field starting with a star as
 * unrestricted).
 *
 * Time zones and daylight saving
 *
 * An expression is read in the wall-clock time of its zone, with these
 * rules where the clock jumps:
 *
 *  - A wall time that does not exist (spring forward: 02:30 on
 *    2026-03-29 in Europe/Berlin) fires once, at the first instant after
 *    the gap (03:00 local). Several wall times in one gap fire once.
 *  - A wall time that occurs twice (fall back: 02:30 on 2026-10-25 in
 *    Berlin) fires once, at its first occurrence.
 *  - Except: an expression whose hour field is every hour (`*`, `0-23`)
 *    follows the real clock, like Sidekiq-cron and Oban. It fires at every
 *    instant at which the local clock shows a matching time: `0 * * * *`
 *    fires every real hour, at both 02:00 of a fall-back night, and skips
 *    02:00 of a spring-forward night (its hour is not on the clock; 03:00
 *    follows an hour after 01:00).
 *  - Intervals (`@every`) are absolute: anchor + k * interval, whatever
 *    the zone and its clock changes.
 *
 * Zones come from the system tz database (/usr/share/zoneinfo) through the
 * C library: the name must be a TZif file there; "", NULL and "UTC" are
 * UTC. Names that could leave the directory ("..", a leading "/"), the
 * host's own "localtime" and the leap-second "right/" zones (their seconds
 * are not Unix seconds) are refused. glibc has no reentrant call for
 * another zone, and pointing TZ at one and back costs two reads of zone
 * files (~70 us) per call; so the first use of a zone points TZ at it,
 * reads its clock changes for the next ten years with localtime_r (about
 * a millisecond), and restores TZ and tzset(). Later calls look offsets up
 * in that table without touching TZ. Tables are kept for the 64 zones used
 * last; a kept zone's file is looked at again at most once a minute and
 * read again when it changed (a tzdata update). Reading assumes a zone
 * changes its offset at most once a day, which holds for all zones in
 * use. These functions are therefore not thread-safe (moonq runs one
 * thread per process).
 *
 * Times are Unix seconds (UTC, no leap seconds) as doubles; fire times are
 * whole seconds. Fire times are searched at most MQ_CRON_HORIZON_YEARS
 * ahead, enough for February 29th across a skipped leap year (2096 to
 * 2104); an expression with no fire time in that span never fires.
 *
 * Uses nothing else from moonq.
 */
#ifndef MQ_CRON_H
#define MQ_CRON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest expression accepted, in bytes. */
#define MQ_CRON_MAX_LEN 256
/* Longest time zone name accepted, in bytes. */
#define MQ_CRON_TZ_MAX_LEN 128
/* How far ahead mq_cron_next looks for a fire time. */
#define MQ_CRON_HORIZON_YEARS 8

/* A parsed expression: a plain value the caller owns (no pointers inside;
 * copy it freely). Bit n of a set means value n fires. */
struct mq_cron {
  uint64_t seconds;               /* bits 0-59 */
  uint64_t minutes;               /* bits 0-59 */
  uint32_t hours;                 /* bits 0-23 */
  uint32_t days;                  /* day of month, bits 1-31 */
  uint16_t months;                /* bits 1-12 */
  uint8_t weekdays;               /* bits 0-6, 0 = Sunday */
  bool days_restricted;           /* day-of-month leaves out a day */
  bool weekdays_restricted;       /* day-of-week leaves out a day */
  int64_t every;                  /* @every: the interval in seconds (the sets
                                     above are then unused); 0 otherwise */
  char expr[MQ_CRON_MAX_LEN + 1]; /* the text parsed, for messages */
};

/* Parses `expr` into *out. Returns 0, or -1 with a message in err (when
 * errlen > 0) that quotes the expression and names the field and the bad
 * token: "\"61 * * * *\": minute field: 61 is out of range 0-59". *out is
 * unspecified after an error. */
int mq_cron_parse(const char *expr, struct mq_cron *out, char *err,
                  size_t errlen);

/* Sets *next to the first fire time of c strictly after `after`, both Unix
 * seconds, with c read in time zone `tz` (see above; NULL or "" is UTC).
 * Intervals count from the Unix epoch, so every host of a cluster computes
 * the same slots: "@every 1h" fires on the hour of UTC, "@every 1d" at
 * midnight UTC whatever tz says. Returns 0, or -1 with a message in err:
 * an unknown zone (`unknown time zone "Mars/Olympus"`), an expression that
 * never fires ("0 0 30 2 *"), `after` not finite or outside the years
 * 1970-9990. */
int mq_cron_next(const struct mq_cron *c, const char *tz, double after,
                 double *next, char *err, size_t errlen);

/* mq_cron_next with intervals counted from `anchor` (Unix seconds, taken
 * down to a whole second) instead of the epoch: fire times are
 * anchor + k * interval for integers k, also before the anchor. A stored
 * anchor (a schedule's creation time) keeps hosts in agreement too; the
 * anchor is ignored for expressions other than @every. */
int mq_cron_next_anchored(const struct mq_cron *c, const char *tz,
                          double anchor, double after, double *next, char *err,
                          size_t errlen);

/* Sets *offset to the UTC offset of zone `tz` at instant t (Unix seconds),
 * in seconds east of UTC: the zone's clock shows t + *offset. Returns 0,
 * or -1 with a message in err for an unknown zone or a time outside the
 * years 1970-9990 (as mq_cron_next). For showing fire times in their
 * zone, and for checking a zone name. */
int mq_cron_offset(const char *tz, double t, int *offset, char *err,
                   size_t errlen);

#endif
