/* log.h -- leveled, structured logging.
 *
 * Provides one line per record on stderr (or a sink set by tests):
 *
 *   2026-11-25T11:42:07.123Z INFO  pg: connected host=/run/pg pool=1/4
 *
 * The message is free text followed by key=value fields; mq_log_field()
 * quotes a value when it holds spaces, quotes or '='. Connection strings
 * go through mq_log_mask_conninfo() before they are logged, so passwords
 * never reach a log. Uses no other moonq unit.
 */
#ifndef MQ_LOG_H
#define MQ_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

enum mq_log_level {
  MQ_LOG_DEBUG = 0,
  MQ_LOG_INFO = 1,
  MQ_LOG_WARN = 2,
  MQ_LOG_ERROR = 3,
  MQ_LOG_OFF = 4
};

/* Records below `level` are dropped. Default MQ_LOG_INFO. */
void mq_log_set_level(int level);
int mq_log_get_level(void);

/* Returns the level named "debug", "info", "warn" or "error", or -1. */
int mq_log_level_parse(const char *name);
const char *mq_log_level_name(int level);

/* Where records go; NULL restores stderr. The stream is not closed. */
void mq_log_set_stream(FILE *stream);

/* A word written before the module in every record ("w2" in the second
 * prefork worker, "supervisor"); NULL or "" for none. */
void mq_log_set_tag(const char *tag);

/* Writes one record. `module` is a short subsystem name ("pg", "config"). */
void mq_log(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mq_logv(int level, const char *module, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define mq_log_debug(mod, ...) mq_log(MQ_LOG_DEBUG, mod, __VA_ARGS__)
#define mq_log_info(mod, ...) mq_log(MQ_LOG_INFO, mod, __VA_ARGS__)
#define mq_log_warn(mod, ...) mq_log(MQ_LOG_WARN, mod, __VA_ARGS__)
#define mq_log_error(mod, ...) mq_log(MQ_LOG_ERROR, mod, __VA_ARGS__)

/* Appends " key=value" to buf (of size len, always NUL-terminated), quoting
 * and escaping the value when needed. Returns the new string length, or
 * len-1 when the result was truncated. */
size_t mq_log_field(char *buf, size_t len, const char *key, const char *value);

/* Copies a libpq connection string (key=value form or postgres:// URI) into
 * out with every password replaced by "***". Always NUL-terminates.
 * Returns out. */
char *mq_log_mask_conninfo(const char *conninfo, char *out, size_t outlen);

/* Copies text into out with the password of every connection string in it
 * replaced by "***": user:PASSWORD@ and password=... of each postgres:// or
 * postgresql:// URI, and the value of each password=VALUE (key=value
 * strings, quoted or not). Every log line goes through it. Always
 * NUL-terminates. Returns out. */
char *mq_log_mask_text(const char *text, char *out, size_t outlen);

/* Copies text (a message that may quote conninfo, such as libpq's own
 * errors, which quote a malformed URI whole) into out with every password
 * that conninfo holds replaced by "***", wherever it appears. The
 * passwords are found as mq_log_mask_conninfo() finds them, in a
 * malformed string too. Always NUL-terminates. Returns out. */
char *mq_log_scrub(const char *text, const char *conninfo, char *out,
                   size_t outlen);

#endif
