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

char *mq_buf_text_array(const char *const *list, int n) {
  char *out = NULL;
  size_t len = 0, cap = 0;
  if (mq_buf_add(&out, &len, &cap, "{", 1) != 0)
    return NULL;
  for (int i = 0; n < 0 ? list[i] != NULL : i < n; i++) {
    if (i && mq_buf_add(&out, &len, &cap, ",", 1) != 0)
      goto oom;
    if (mq_buf_add(&out, &len, &cap, "\"", 1) != 0)
      goto oom;
    for (const char *p = list[i]; *p; p++) {
      if ((*p == '"' || *p == '\\') &&
          mq_buf_add(&out, &len, &cap, "\\", 1) != 0)
        goto oom;
      if (mq_buf_add(&out, &len, &cap, p, 1) != 0)
        goto oom;
    }
    if (mq_buf_add(&out, &len, &cap, "\"", 1) != 0)
      goto oom;
  }
  if (mq_buf_add(&out, &len, &cap, "}", 1) == 0)
    return out;
oom:
  free(out);
  return NULL;
}
