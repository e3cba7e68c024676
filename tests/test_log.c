/* test_log.c -- logging: password masking in connection strings, field
 * quoting, level names, level filtering and the record format. No I/O but
 * a tmpfile. */
#include "test.h"

#include <ctype.h>
#include <unistd.h>

#include "log.h"

/* CHECKs that masking `in` gives `want`. */
#define CHECK_MASK(in, want)                                               \
  do {                                                                     \
    char out_[256];                                                        \
    CHECK_STR(mq_log_mask_conninfo(in, out_, sizeof out_), want);          \
  } while (0)

static void masks_keyvalue_passwords(void) {
  CHECK_MASK("host=db password=secret dbname=app",
             "host=db password=*** dbname=app");
  CHECK_MASK("password=secret", "password=***");
  CHECK_MASK("user=u password='se cret' dbname=app",
             "user=u password=*** dbname=app");
  CHECK_MASK("password='it\\'s a \\\\secret' user=u",
             "password=*** user=u");
  CHECK_MASK("password = secret user=u", "password = *** user=u");
  /* No whitespace is needed after a quoted value. */
  CHECK_MASK("dbname='x'password=secret", "dbname='x'password=***");
  CHECK_MASK("host=db\tpassword=secret", "host=db\tpassword=***");
  /* Unquoted values take backslash escapes too: "a\ b" is "a b". */
  CHECK_MASK("password=a\\ b user=u", "password=*** user=u");
  CHECK_MASK("password=one host=h password=two",
             "password=*** host=h password=***");
  /* libpq skips whitespace after '=': the password here is "user=u". */
  CHECK_MASK("password= user=u", "password= ***");
  CHECK_MASK("  password=secret  ", "  password=***  ");
}

static void leaves_other_keyvalue_alone(void) {
  const char *same[] = {
      "host=/run/pg port=5432 dbname=moonq user=moonq",
      "user=password dbname=password",
      "user='password' application_name='x'",
      "passfile=/home/u/.pgpass user=u",
      "host=h password",
      "",
  };
  for (size_t i = 0; i < sizeof same / sizeof *same; i++)
    CHECK_MASK(same[i], same[i]);
}

static void masks_uri_passwords(void) {
  CHECK_MASK("postgres://user:secret@host:5432/db",
             "postgres://user:***@host:5432/db");
  CHECK_MASK("postgresql://u:s@h/db?sslmode=disable&password=x&"
             "application_name=a",
             "postgresql://u:***@h/db?sslmode=disable&password=***&"
             "application_name=a");
  CHECK_MASK("postgres://h/db?password=x", "postgres://h/db?password=***");
  CHECK_MASK("postgres://h?password=x&user=u",
             "postgres://h?password=***&user=u");
  CHECK_MASK("postgres://u:p@h1:5432,h2:5433/db",
             "postgres://u:***@h1:5432,h2:5433/db");
  /* libpq takes everything up to the '@' as credentials, '?' included. */
  CHECK_MASK("postgres://u:pa?ss@h/db", "postgres://u:***@h/db");
  CHECK_MASK("postgres://u:pa/ss@h/db", "postgres://u:***@h/db");
  CHECK_MASK("postgres://u:@h/db", "postgres://u:***@h/db");
}

static void leaves_other_uris_alone(void) {
  const char *same[] = {
      "postgres://u@h/db",
      "postgres://h:5432/db?user=u&sslmode=require",
      "postgresql://",
      "postgres://h/db?passfile=/x",
      "postgres://h/db?application_name=password",
  };
  for (size_t i = 0; i < sizeof same / sizeof *same; i++)
    CHECK_MASK(same[i], same[i]);
}

static void masking_truncates_safely(void) {
  char out[12];
  memset(out, 'x', sizeof out);
  mq_log_mask_conninfo("password=secret host=h", out, sizeof out);
  CHECK(memchr(out, '\0', sizeof out) != NULL);
  CHECK(!strstr(out, "sec"));
  memset(out, 'x', sizeof out);
  mq_log_mask_conninfo("postgres://u:secret@h/db", out, sizeof out);
  CHECK(memchr(out, '\0', sizeof out) != NULL);
  CHECK(!strstr(out, "sec"));
  char one[1] = {'x'};
  mq_log_mask_conninfo("password=secret", one, 1);
  CHECK_INT(one[0], '\0');
  char none[16];
  CHECK_STR(mq_log_mask_conninfo(NULL, none, sizeof none), "(none)");
}

/* Messages that quote a connection string, as libpq's parse errors do,
 * lose every password it holds, wherever it appears. */
static void scrubs_passwords_from_messages(void) {
  char out[256];
  CHECK_STR(mq_log_scrub("in URI: \"postgresql://app:SECRET@[bad/db\"",
                         "postgresql://app:SECRET@[bad/db", out, sizeof out),
            "in URI: \"postgresql://app:***@[bad/db\"");
  CHECK_STR(mq_log_scrub("bad: 'x&password=SECRET&y' SECRET",
                         "postgres://h/db?a=x&password=SECRET&y=1", out,
                         sizeof out),
            "bad: 'x&password=***&y' ***");
  CHECK_STR(mq_log_scrub("unterminated: password='SECRET",
                         "host=h password='SECRET", out, sizeof out),
            "unterminated: password=***");
  CHECK_STR(mq_log_scrub("no secret here", "host=h user=u", out, sizeof out),
            "no secret here");
  char small[8];
  mq_log_scrub("SECRET SECRET SECRET", "password=SECRET", small, sizeof small);
  CHECK(!strstr(small, "SEC"));
}

/* CHECKs that appending key=value to "" gives `want`. */
#define CHECK_FIELD(key, value, want)                                      \
  do {                                                                     \
    char buf_[128] = "";                                                   \
    size_t n_ = mq_log_field(buf_, sizeof buf_, key, value);               \
    CHECK_STR(buf_, want);                                                 \
    CHECK_INT(n_, strlen(want));                                           \
  } while (0)

static void fields_quote_when_needed(void) {
  CHECK_FIELD("pool", "1/4", " pool=1/4");
  CHECK_FIELD("msg", "hello world", " msg=\"hello world\"");
  CHECK_FIELD("msg", "say \"hi\"", " msg=\"say \\\"hi\\\"\"");
  CHECK_FIELD("q", "a=b", " q=\"a=b\"");
  CHECK_FIELD("path", "C:\\x", " path=\"C:\\\\x\"");
  CHECK_FIELD("text", "two\nlines", " text=\"two\\nlines\"");
  CHECK_FIELD("tab", "a\tb", " tab=\"a\tb\"");
  CHECK_FIELD("cr", "a\rb", " cr=\"a\\rb\"");
  CHECK_FIELD("empty", "", " empty=\"\"");

  char buf[64] = "connected";
  mq_log_field(buf, sizeof buf, "host", "/run/pg");
  size_t n = mq_log_field(buf, sizeof buf, "pool", "1/4");
  CHECK_STR(buf, "connected host=/run/pg pool=1/4");
  CHECK_INT(n, strlen(buf));
}

static void fields_truncate(void) {
  /* " k=abcdef" is 9 bytes: fits exactly in 10. */
  char fit[10] = "";
  CHECK_INT(mq_log_field(fit, sizeof fit, "k", "abcdef"), 9);
  CHECK_STR(fit, " k=abcdef");
  char quoted[13] = "";
  CHECK_INT(mq_log_field(quoted, sizeof quoted, "k", "a \"b\""), 12);
  CHECK_STR(quoted, " k=\"a \\\"b\\\"\"");

  /* Too long: NUL-terminated, and len-1 returned. */
  char small[10] = "";
  CHECK_INT(mq_log_field(small, sizeof small, "k", "abcdefg"), 9);
  CHECK_INT(strlen(small), 9);
  char tiny[6] = "";
  CHECK_INT(mq_log_field(tiny, sizeof tiny, "key", "value"), 5);
  CHECK_INT(strlen(tiny), 5);
  char esc[8] = "";
  CHECK_INT(mq_log_field(esc, sizeof esc, "k", "\"\"\"\""), 7);
  CHECK(strlen(esc) <= 7);
  char full[4] = "abc";
  CHECK_INT(mq_log_field(full, sizeof full, "k", "v"), 3);
  CHECK_STR(full, "abc");
}

static void level_names(void) {
  CHECK_INT(mq_log_level_parse("debug"), MQ_LOG_DEBUG);
  CHECK_INT(mq_log_level_parse("info"), MQ_LOG_INFO);
  CHECK_INT(mq_log_level_parse("warn"), MQ_LOG_WARN);
  CHECK_INT(mq_log_level_parse("error"), MQ_LOG_ERROR);
  CHECK_INT(mq_log_level_parse("verbose"), -1);
  CHECK_INT(mq_log_level_parse(""), -1);
  CHECK_INT(mq_log_level_parse(NULL), -1);
  for (int l = MQ_LOG_DEBUG; l <= MQ_LOG_ERROR; l++)
    CHECK_INT(mq_log_level_parse(mq_log_level_name(l)), l);
  CHECK_STR(mq_log_level_name(MQ_LOG_OFF), "off");
}

/* Reads what was logged to f since the last rewind and truncates it. */
static char *drain(FILE *f) {
  static char buf[16384];
  fflush(f);
  rewind(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  rewind(f);
  REQUIRE(ftruncate(fileno(f), 0) == 0);
  return buf;
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* "2026-11-25T11:42:07.123Z " */
static bool is_timestamp(const char *s) {
  const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
  for (; *shape; shape++, s++)
    if (*shape == 'd' ? !isdigit((unsigned char)*s) : *s != *shape)
      return false;
  return true;
}

static void levels_filter_records(void) {
  FILE *f = tmpfile();
  REQUIRE(f);
  mq_log_set_stream(f);
  int saved = mq_log_get_level();

  mq_log_set_level(MQ_LOG_WARN);
  CHECK_INT(mq_log_get_level(), MQ_LOG_WARN);
  mq_log_debug("t", "dropped");
  mq_log_info("t", "dropped");
  mq_log_warn("t", "kept %d", 1);
  mq_log_error("t", "kept %d", 2);
  char *out = drain(f);
  CHECK_INT(count_lines(out), 2);
  CHECK(!strstr(out, "dropped"));

  mq_log_set_level(MQ_LOG_DEBUG);
  mq_log_debug("t", "a");
  mq_log_info("t", "b");
  CHECK_INT(count_lines(drain(f)), 2);

  mq_log_set_level(MQ_LOG_OFF);
  mq_log_error("t", "dropped");
  CHECK_STR(drain(f), "");

  mq_log_set_level(MQ_LOG_DEBUG);
  mq_log(7, "t", "no such level");
  mq_log(-1, "t", "no such level");
  CHECK_STR(drain(f), "");

  mq_log_set_level(saved);
  mq_log_set_stream(NULL);
  fclose(f);
}

static void record_format(void) {
  FILE *f = tmpfile();
  REQUIRE(f);
  mq_log_set_stream(f);
  int saved = mq_log_get_level();
  mq_log_set_level(MQ_LOG_DEBUG);

  mq_log_info("pg", "connected host=%s pool=%d/%d", "/run/pg", 1, 4);
  char *out = drain(f);
  CHECK(is_timestamp(out));
  CHECK_STR(out + 25, "INFO  pg: connected host=/run/pg pool=1/4\n");

  mq_log_debug("m", "x");
  CHECK_STR(drain(f) + 25, "DEBUG m: x\n");
  mq_log_warn("m", "x");
  CHECK_STR(drain(f) + 25, "WARN  m: x\n");
  mq_log_error("m", "x");
  CHECK_STR(drain(f) + 25, "ERROR m: x\n");

  /* A connection string anywhere in a message loses its password: a
   * handler's log line, an error that quotes one, its fields. */
  mq_log_info("lua", "connecting to postgresql://u:SECRET1@h/db now");
  CHECK_STR(drain(f) + 25, "INFO  lua: connecting to postgresql://u:***@h/db now\n");
  mq_log_error("worker", "job failed error=\"could not connect to "
               "postgres://u:SECRET2@h:5432/db?password=SECRET3&x=1\"");
  out = drain(f);
  CHECK(strstr(out, "SECRET") == NULL);
  CHECK(strstr(out, "postgres://u:***@h:5432/db?password=***&x=1\"") != NULL);
  mq_log_info("lua", "dsn=\"host=h password=SECRET4 dbname=d\" other "
              "PASSWORD = 'SE CRET5' end");
  out = drain(f);
  CHECK(strstr(out, "SECRET") == NULL && strstr(out, "CRET5") == NULL);
  CHECK(strstr(out, "host=h password=*** dbname=d") != NULL);
  CHECK(strstr(out, " end\n") != NULL);
  /* the word alone is left as it is */
  mq_log_warn("pg", "password authentication failed for user \"app\"");
  CHECK_STR(drain(f) + 25,
            "WARN  pg: password authentication failed for user \"app\"\n");

  /* An overlong message stays one line, newline included. */
  static char big[10000];
  memset(big, 'a', sizeof big - 1);
  mq_log_info("m", "%s", big);
  out = drain(f);
  CHECK_INT(count_lines(out), 1);
  CHECK(out[strlen(out) - 1] == '\n');

  mq_log_set_level(saved);
  mq_log_set_stream(NULL);
  fclose(f);
}

int main(void) {
  RUN(masks_keyvalue_passwords);
  RUN(leaves_other_keyvalue_alone);
  RUN(masks_uri_passwords);
  RUN(leaves_other_uris_alone);
  RUN(masking_truncates_safely);
  RUN(scrubs_passwords_from_messages);
  RUN(fields_quote_when_needed);
  RUN(fields_truncate);
  RUN(level_names);
  RUN(levels_filter_records);
  RUN(record_format);
  return mq_test_done();
}
