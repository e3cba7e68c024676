/* buf.h -- growable NUL-terminated byte buffers, for statements and
 * documents built piece by piece (queue batches, event batches).
 *
 * A buffer is three variables the caller owns: the bytes (char *, NULL
 * when empty), their length and the capacity. The caller frees the bytes.
 *
 * Uses nothing else from moonq.
 */
#ifndef MQ_BUF_H
#define MQ_BUF_H

#include <stddef.h>

/* Appends s[0..n) to *buf (growing it by doubling) and keeps it
 * NUL-terminated. Returns 0, or -1 when out of memory (*buf unchanged). */
int mq_buf_add(char **buf, size_t *len, size_t *cap, const char *s, size_t n);

/* A PostgreSQL text[] literal ("{\"a\",\"b\"}") of list[0..n), or of
 * the NULL-terminated list when n < 0, each element quoted and escaped.
 * Returns a string the caller frees, or NULL when out of memory. */
char *mq_buf_text_array(const char *const *list, int n);

#endif
