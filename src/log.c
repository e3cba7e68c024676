/* log.c -- leveled, structured logging; see log.h. */
#include "log.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static int min_level = MQ_LOG_INFO;
static FILE *out_stream;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_tags[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void mq_log_set_level(int level) { min_level = level; }

int mq_log_get_level(void) { return min_level; }

int mq_log_level_parse(const char *name) {
  for (int i = 0; i < 4; i++)
    if (strcmp(name, level_names[i]) == 0)
      return i;
  return -1;
}

const char *mq_log_level_name(int level) {
  return level >= 0 && level < 4 ? level_names[level] : "off";
}

void mq_log_set_stream(FILE *stream) { out_stream = stream; }

void mq_logv(int level, const char *module, const char *fmt, va_list ap) {
  if (level < min_level || level < 0 || level > MQ_LOG_ERROR)
    return;
  FILE *f = out_stream ? out_stream : stderr;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char line[4096];
  int n = snprintf(line, sizeof line,
                   "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s: ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                   level_tags[level], module);
  if (n < 0)
    return;
  if ((size_t)n < sizeof line)
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  /* One fputs per record keeps lines whole when processes share stderr. */
  size_t len = strlen(line);
  if (len > sizeof line - 2)
    len = sizeof line - 2;
  line[len] = '\n';
  line[len + 1] = '\0';
  fputs(line, f);
  fflush(f);
}

void mq_log(int level, const char *module, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  mq_logv(level, module, fmt, ap);
  va_end(ap);
}

static bool needs_quotes(const char *v) {
  if (*v == '\0')
    return true;
  for (; *v; v++)
    if (isspace((unsigned char)*v) || *v == '"' || *v == '=' || *v == '\\')
      return true;
  return false;
}

size_t mq_log_field(char *buf, size_t len, const char *key, const char *value) {
  size_t n = strlen(buf);
  int w = snprintf(buf + n, len - n, " %s=", key);
  if (w < 0 || (size_t)w >= len - n)
    return len - 1;
  n += (size_t)w;
  bool quote = needs_quotes(value);
  if (quote && n + 1 < len)
    buf[n++] = '"';
  for (const char *p = value; *p && n + 2 < len; p++) {
    char c = *p;
    if (c == '"' || c == '\\') {
      buf[n++] = '\\';
      buf[n++] = c;
    } else if (c == '\n') {
      buf[n++] = '\\';
      buf[n++] = 'n';
    } else {
      buf[n++] = c;
    }
  }
  if (quote && n + 1 < len)
    buf[n++] = '"';
  buf[n < len ? n : len - 1] = '\0';
  return strlen(buf);
}

/* Masks the value after "password=" in key=value conninfo, which may be
 * quoted with single quotes and contain backslash escapes. */
static void mask_keyvalue(const char *in, char *out, size_t outlen) {
  size_t o = 0;
  const char *p = in;
  while (*p && o + 1 < outlen) {
    bool at_word = p == in || isspace((unsigned char)p[-1]);
    if (at_word && strncmp(p, "password", 8) == 0) {
      const char *q = p + 8;
      while (isspace((unsigned char)*q))
        q++;
      if (*q == '=') {
        q++;
        while (isspace((unsigned char)*q))
          q++;
        if (*q == '\'') {
          q++;
          while (*q && *q != '\'') {
            if (*q == '\\' && q[1])
              q++;
            q++;
          }
          if (*q == '\'')
            q++;
        } else {
          while (*q && !isspace((unsigned char)*q))
            q++;
        }
        int w = snprintf(out + o, outlen - o, "password=***");
        o += w > 0 ? (size_t)w : 0;
        if (o >= outlen)
          o = outlen - 1;
        p = q;
        continue;
      }
    }
    out[o++] = *p++;
  }
  out[o] = '\0';
}

/* Masks user:PASSWORD@ in the authority and password=... in the query of a
 * postgres:// or postgresql:// URI. */
static void mask_uri(const char *in, char *out, size_t outlen) {
  const char *scheme_end = strstr(in, "://");
  const char *auth = scheme_end + 3;
  const char *auth_end = auth + strcspn(auth, "/?");
  const char *at = NULL;
  for (const char *s = auth; s < auth_end; s++)
    if (*s == '@')
      at = s;
  const char *colon = NULL;
  if (at)
    for (const char *s = auth; s < at; s++)
      if (*s == ':') {
        colon = s;
        break;
      }
  size_t o = 0;
  for (const char *p = in; *p && o + 1 < outlen;) {
    if (colon && p == colon + 1) {
      int w = snprintf(out + o, outlen - o, "***");
      o += w > 0 ? (size_t)w : 0;
      if (o >= outlen)
        o = outlen - 1;
      p = at;
      continue;
    }
    bool param = p > auth_end && (p[-1] == '?' || p[-1] == '&');
    if (param && strncmp(p, "password=", 9) == 0) {
      int w = snprintf(out + o, outlen - o, "password=***");
      o += w > 0 ? (size_t)w : 0;
      if (o >= outlen)
        o = outlen - 1;
      p += 9;
      while (*p && *p != '&')
        p++;
      continue;
    }
    out[o++] = *p++;
  }
  out[o] = '\0';
}

char *mq_log_mask_conninfo(const char *conninfo, char *out, size_t outlen) {
  if (outlen == 0)
    return out;
  if (!conninfo) {
    snprintf(out, outlen, "(none)");
    return out;
  }
  if (strncmp(conninfo, "postgres://", 11) == 0 ||
      strncmp(conninfo, "postgresql://", 13) == 0)
    mask_uri(conninfo, out, outlen);
  else
    mask_keyvalue(conninfo, out, outlen);
  return out;
}
