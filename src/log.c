/* log.c -- leveled, structured logging; see log.h. */
#include "log.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

static int min_level = MQ_LOG_INFO;
static FILE *out_stream;
static char tag[32]; /* "w1 " in prefork worker 1, else empty */

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_tags[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void mq_log_set_level(int level) { min_level = level; }

int mq_log_get_level(void) { return min_level; }

int mq_log_level_parse(const char *name) {
  if (!name)
    return -1;
  for (int i = 0; i < 4; i++)
    if (strcmp(name, level_names[i]) == 0)
      return i;
  return -1;
}

const char *mq_log_level_name(int level) {
  return level >= 0 && level < 4 ? level_names[level] : "off";
}

void mq_log_set_stream(FILE *stream) { out_stream = stream; }

void mq_log_set_tag(const char *t) {
  snprintf(tag, sizeof tag, "%s%s", t ? t : "", t && *t ? " " : "");
}

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
                   "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s%s: ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                   level_tags[level], tag, module);
  if (n < 0)
    return;
  if ((size_t)n < sizeof line) {
    /* a connection string anywhere in the message (a handler's log line,
     * an error quoting one) loses its password */
    char msg[4096];
    vsnprintf(msg, sizeof msg, fmt, ap);
    mq_log_mask_text(msg, line + n, sizeof line - (size_t)n);
  }
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

/* The two-byte escape for c inside a field value, or NULL. */
static const char *escape_of(char c) {
  switch (c) {
  case '"':
    return "\\\"";
  case '\\':
    return "\\\\";
  case '\n':
    return "\\n";
  case '\r':
    return "\\r";
  default:
    return NULL;
  }
}

/* A bounded string being built: at most len-1 bytes, always terminated. */
/* Where the masked passwords of a connection string are: each secret is
 * len bytes at at[i] of the input. */
#define MAX_SECRETS 8
struct secrets {
  const char *at[MAX_SECRETS];
  size_t len[MAX_SECRETS];
  int n;
};

struct sink {
  char *buf;
  size_t len, n;
  bool truncated;
  struct secrets *found; /* NULL, or where masked spans are noted */
};

static void note_secret(struct sink *o, const char *at, size_t len) {
  if (o->found && o->found->n < MAX_SECRETS && len > 0) {
    o->found->at[o->found->n] = at;
    o->found->len[o->found->n++] = len;
  }
}

/* Appends k bytes of s, or as many as fit. */
static void put(struct sink *o, const char *s, size_t k) {
  size_t room = o->len - 1 - o->n;
  if (k > room) {
    k = room;
    o->truncated = true;
  }
  memcpy(o->buf + o->n, s, k);
  o->n += k;
  o->buf[o->n] = '\0';
}

size_t mq_log_field(char *buf, size_t len, const char *key, const char *value) {
  if (len == 0)
    return 0;
  struct sink o = {buf, len, strnlen(buf, len - 1), false, NULL};
  buf[o.n] = '\0';
  bool quote = needs_quotes(value);
  put(&o, " ", 1);
  put(&o, key, strlen(key));
  put(&o, quote ? "=\"" : "=", quote ? 2 : 1);
  for (const char *p = value; *p && !o.truncated; p++) {
    const char *esc = escape_of(*p);
    /* An escape goes in whole or not at all. */
    if (esc && o.n + 2 > len - 1)
      o.truncated = true;
    else
      put(&o, esc ? esc : p, esc ? 2 : 1);
  }
  if (quote && !o.truncated)
    put(&o, "\"", 1);
  return o.truncated ? len - 1 : o.n;
}

/* Returns the end of the conninfo value at p: single-quoted or up to
 * whitespace, with backslash escapes in both forms (as libpq reads it). */
static const char *skip_value(const char *p) {
  bool quoted = *p == '\'';
  if (quoted)
    p++;
  while (*p && (quoted ? *p != '\'' : !isspace((unsigned char)*p))) {
    if (*p == '\\' && p[1])
      p++;
    p++;
  }
  return quoted && *p == '\'' ? p + 1 : p;
}

/* Masks the value of every "password" key in key=value conninfo. Parses
 * the string the way libpq does (whitespace around '=', no whitespace
 * needed after a quoted value) and copies everything else unchanged. A
 * malformed rest, which libpq refuses, is copied as it is. */
static void mask_keyvalue(const char *in, struct sink *o) {
  const char *p = in, *copied = in;
  for (;;) {
    while (isspace((unsigned char)*p))
      p++;
    if (!*p)
      break;
    const char *key = p;
    while (*p && *p != '=' && !isspace((unsigned char)*p))
      p++;
    size_t keylen = (size_t)(p - key);
    while (isspace((unsigned char)*p))
      p++;
    if (*p != '=')
      break;
    p++;
    while (isspace((unsigned char)*p))
      p++;
    const char *value = p;
    p = skip_value(p);
    if (keylen == 8 && strncmp(key, "password", 8) == 0) {
      note_secret(o, value, (size_t)(p - value));
      put(o, copied, (size_t)(value - copied));
      put(o, "***", 3);
      copied = p;
    }
  }
  put(o, copied, strlen(copied));
}

/* Masks user:PASSWORD@ in the authority and password=... in the query of a
 * postgres:// or postgresql:// URI. The credentials end at the last '@', so
 * a password holding an unencoded '@', '/' or '?' is masked whole (at worst
 * an '@' in the query masks too much, never too little). */
static void mask_uri(const char *in, struct sink *o) {
  const char *auth = strstr(in, "://") + 3;
  const char *at = strrchr(auth, '@');
  const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  const char *p = in;
  if (colon) {
    note_secret(o, colon + 1, (size_t)(at - colon - 1));
    put(o, in, (size_t)(colon + 1 - in));
    put(o, "***", 3);
    p = at;
  }
  const char *query = strchr(at ? at : auth, '?');
  for (; *p; p++) {
    bool param = query && p > query && (p[-1] == '?' || p[-1] == '&');
    if (param && strncmp(p, "password=", 9) == 0) {
      put(o, "password=***", 12);
      note_secret(o, p + 9, strcspn(p + 9, "&"));
      p += 9 + strcspn(p + 9, "&");
      if (!*p)
        break;
    }
    put(o, p, 1);
  }
}

/* Masks conninfo into o (noting where its secrets are when o->found). */
static void mask(const char *conninfo, struct sink *o) {
  if (!conninfo)
    put(o, "(none)", 6);
  else if (strncmp(conninfo, "postgres://", 11) == 0 ||
           strncmp(conninfo, "postgresql://", 13) == 0)
    mask_uri(conninfo, o);
  else
    mask_keyvalue(conninfo, o);
}

char *mq_log_mask_conninfo(const char *conninfo, char *out, size_t outlen) {
  if (outlen == 0)
    return out;
  struct sink o = {out, outlen, 0, false, NULL};
  out[0] = '\0';
  mask(conninfo, &o);
  return out;
}

/* The length of the connection-string token at p (up to white space or a
 * quote). */
static size_t token_len(const char *p) {
  size_t k = 0;
  while (p[k] && !isspace((unsigned char)p[k]) && p[k] != '"' &&
         p[k] != '\'' && p[k] != '\\')
    k++;
  return k;
}

char *mq_log_mask_text(const char *text, char *out, size_t outlen) {
  if (outlen == 0)
    return out;
  struct sink o = {out, outlen, 0, false, NULL};
  out[0] = '\0';
  const char *p = text ? text : "";
  while (*p && !o.truncated) {
    bool word = p == text || !isalnum((unsigned char)p[-1]);
    size_t scheme = !word ? 0
                    : strncmp(p, "postgresql://", 13) == 0 ? 13
                    : strncmp(p, "postgres://", 11) == 0   ? 11
                                                            : 0;
    if (scheme) { /* a URI: mask it as a connection string */
      size_t k = token_len(p);
      char uri[2048], masked[2048];
      if (k >= sizeof uri)
        k = sizeof uri - 1;
      memcpy(uri, p, k);
      uri[k] = '\0';
      struct sink m = {masked, sizeof masked, 0, false, NULL};
      masked[0] = '\0';
      mask_uri(uri, &m);
      put(&o, masked, strlen(masked));
      p += k;
    } else if (word && strncasecmp(p, "password", 8) == 0) {
      /* password=VALUE, password = 'VALUE' */
      const char *q = p + 8;
      while (*q == ' ')
        q++;
      if (*q != '=') {
        put(&o, p++, 1);
        continue;
      }
      q++;
      while (*q == ' ')
        q++;
      put(&o, p, (size_t)(q - p));
      put(&o, "***", 3);
      p = *q == '\'' ? skip_value(q) : q + token_len(q);
    } else {
      put(&o, p++, 1);
    }
  }
  return out;
}

char *mq_log_scrub(const char *text, const char *conninfo, char *out,
                   size_t outlen) {
  if (outlen == 0)
    return out;
  char scratch[64];
  struct secrets found = {0};
  struct sink m = {scratch, sizeof scratch, 0, false, &found};
  scratch[0] = '\0';
  mask(conninfo, &m);
  struct sink o = {out, outlen, 0, false, NULL};
  out[0] = '\0';
  for (const char *p = text ? text : ""; *p && !o.truncated;) {
    int hit = -1;
    for (int i = 0; i < found.n && hit < 0; i++)
      if (strncmp(p, found.at[i], found.len[i]) == 0)
        hit = i;
    if (hit >= 0) {
      put(&o, "***", 3);
      p += found.len[hit];
    } else {
      put(&o, p++, 1);
    }
  }
  return out;
}
