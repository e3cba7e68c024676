/* buf.c -- growable byte buffers; see buf.h. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

int mq_buf_add(char **buf, size_t *len, size_t *cap, const char *s,
               size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 256;
    while (c < *len + n + 1)
      c *= 2;
    char *b = realloc(*buf, c);
    if (!b)
      return -1;
    *buf = b;
    *cap = c;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}
