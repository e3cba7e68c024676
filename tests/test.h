/* test.h -- the little harness every C test uses.
 *
 * A test is a program: main() calls its cases through RUN(case), each case
 * asserts with the CHECK macros, and the program prints one line per case
 * and "N passed, N failed" at the end; the exit code is nonzero if any
 * check failed. Helpers give a database URL, a private schema and a way to
 * run the loop until a condition holds.
 */
#ifndef MQ_TEST_H
#define MQ_TEST_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

extern int mq_test_failures;
extern int mq_test_case_failed;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,    \
              #cond);                                                      \
      mq_test_case_failed = 1;                                             \
    }                                                                      \
  } while (0)

#define CHECK_INT(a, b)                                                    \
  do {                                                                     \
    long long a_ = (long long)(a), b_ = (long long)(b);                    \
    if (a_ != b_) {                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n",     \
              __FILE__, __LINE__, #a, #b, a_, b_);                         \
      mq_test_case_failed = 1;                                             \
    }                                                                      \
  } while (0)

#define CHECK_STR(a, b)                                                    \
  do {                                                                     \
    const char *a_ = (a), *b_ = (b);                                       \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) {                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", \
              __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)",              \
              b_ ? b_ : "(null)");                                         \
      mq_test_case_failed = 1;                                             \
    }                                                                      \
  } while (0)

/* CHECK that string a contains string b. */
#define CHECK_CONTAINS(a, b)                                               \
  do {                                                                     \
    const char *a_ = (a), *b_ = (b);                                       \
    if (!a_ || !strstr(a_, b_)) {                                          \
      fprintf(stderr, "%s:%d: CHECK failed: \"%s\" contains \"%s\"\n",     \
              __FILE__, __LINE__, a_ ? a_ : "(null)", b_);                 \
      mq_test_case_failed = 1;                                             \
    }                                                                      \
  } while (0)

/* Fatal: stop the program (for broken preconditions). */
#define REQUIRE(cond)                                                      \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__,  \
              #cond);                                                      \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

#define RUN(fn) mq_test_run(#fn, fn)

void mq_test_run(const char *name, void (*fn)(void));
/* Prints the summary line; returns the exit code for main(). */
int mq_test_done(void);

/* DATABASE_URL, or exits with a message when unset. */
const char *mq_test_db_url(void);

/* A schema name unique to this process: "t_<tag>_<pid>". Static buffer. */
const char *mq_test_schema(const char *tag);

/* Runs one blocking statement (no parameters) on a fresh connection; for
 * set-up and inspection. Returns the first column of the first row as a
 * malloc'd string (caller frees), "" for no rows, NULL on error (printed). */
char *mq_test_sql(const char *sql);

/* Runs `loop` until *flag becomes true or `timeout` seconds pass. Returns
 * whether the flag was set. */
bool mq_test_run_until(struct ev_loop *loop, const bool *flag, double timeout);

/* Makes a fresh directory "/tmp/moonq-<tag>-XXXXXX" into buf (len bytes);
 * exits on failure. */
void mq_test_mkdtemp(char *buf, size_t len, const char *tag);

/* Removes the directory tree `path` (rm -rf); exits on failure. */
void mq_test_rmtree(const char *path);

/* Writes `text` to the file `path` (created or truncated); exits on
 * failure. */
void mq_test_write(const char *path, const char *text);

/* Runs a shell command, capturing stdout+stderr into a malloc'd string
 * (caller frees) and the exit status into *status. */
char *mq_test_shell(const char *cmd, int *status);

#endif
