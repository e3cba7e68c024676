/* test_http.c -- what the HTTP server reads from clients without I/O
 * (src/http.c): event stream positions (the `id:` lines a client sends back
 * as Last-Event-ID, or a plain event id in `from=`). The server itself is
 * tested with curl against `moonq run --http` in tests/cli_http.sh.
 */
#include "http.h"

#include <string.h>

#include "test.h"

static void test_position_plain_id(void) {
  char buf[256], err[256];
  struct mq_event_position pos = {"x", "y", 0};
  CHECK_INT(mq_http_parse_position("42", buf, sizeof buf, &pos, err, sizeof err), 0);
  CHECK(pos.after_id == 42);
  CHECK(pos.base == NULL && pos.target == NULL);
  CHECK_INT(mq_http_parse_position("0", buf, sizeof buf, &pos, err, sizeof err), 0);
  CHECK(pos.after_id == 0);
}

static void test_position_token(void) {
  char buf[256], err[256];
  struct mq_event_position pos;
  CHECK_INT(mq_http_parse_position("982/1510:1514:1511,1512/1514:1520:", buf,
                                   sizeof buf, &pos, err, sizeof err),
            0);
  CHECK(pos.after_id == 982);
  CHECK_STR(pos.base, "1510:1514:1511,1512");
  CHECK_STR(pos.target, "1514:1520:");
  CHECK_INT(mq_http_parse_position("7/1:1:/1:1:", buf, sizeof buf, &pos, err, sizeof err), 0);
  CHECK_STR(pos.base, "1:1:");
  /* an xip equal to xmin, repeated as PostgreSQL allows */
  CHECK_INT(mq_http_parse_position("7/5:10:5,5,9/12:12:", buf, sizeof buf,
                                   &pos, err, sizeof err),
            0);
}

/* Anything else is refused before it can reach SQL, with what it broke:
 * PostgreSQL's rules for pg_snapshot text, or the order of the two. */
static void test_position_refused(void) {
  char buf[64], err[256];
  struct mq_event_position pos;
  const char *bad[] = {"",
                       "-1",
                       "+5",
                       "abc",
                       "12abc",
                       "99999999999999999999",
                       "5/",
                       "5/1:1:",
                       "5/1:1:/",
                       "5/1:1/1:1:",
                       "5/1:1:1:/1:1:",
                       "5/1:1:,/1:1:",
                       "5/1:1:2,,3/1:1:",
                       "5/:1:/1:1:",
                       "5/1:1:/1:1:/",
                       "5/1:1:'; DROP/1:1:",
                       "5/1:1:/1:1:x",
                       /* what PostgreSQL's pg_snapshot refuses */
                       "5/0:1:/1:1:",          /* xmin 0 */
                       "5/10:1:/10:12:",       /* xmin above xmax */
                       "5/1:10:20/1:10:",      /* an xip at or above xmax */
                       "5/5:10:3/5:10:",       /* an xip below xmin */
                       "5/1:10:7,3/1:10:",     /* xips out of order */
                       "5/1:99999999999999999999:/1:1:", /* over 64 bits */
                       /* snapshots out of order: the first after the second */
                       "5/1:20:/1:10:",
                       "5/1:10:/1:10:5"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (mq_http_parse_position(bad[i], buf, sizeof buf, &pos, err, sizeof err) != -1) {
      fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
      CHECK(false);
    }
  /* longer than the buffer */
  char longer[100];
  memset(longer, '1', sizeof longer - 1);
  longer[sizeof longer - 1] = '\0';
  CHECK_INT(mq_http_parse_position(longer, buf, sizeof buf, &pos, err, sizeof err), -1);
}

int main(void) {
  RUN(test_position_plain_id);
  RUN(test_position_token);
  RUN(test_position_refused);
  return mq_test_done();
}
