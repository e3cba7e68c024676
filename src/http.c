/* http.c -- the HTTP server on the moonq loop; see http.h.
 *
 * libmicrohttpd runs in its external-loop mode with epoll: the daemon's
 * epoll descriptor is watched by one ev_io, and after every MHD_run the
 * timer is set to what MHD_get_timeout asks for (0 when it has work left
 * over, which its edge-triggered epoll would not signal again).
 *
 * A request's life: MHD calls on_request once with the headers (the
 * request is made and checked: route, token, host, origin, announced
 * size), once per piece of body (kept, up to http.max_body), and once
 * when the body is complete: the route's handler runs. A handler that
 * replies at once has its response queued; one that waits for PostgreSQL
 * leaves the connection suspended (nothing of it is read or timed out)
 * until its reply resumes it, and MHD then calls on_request again to queue
 * it. on_completed frees the request when MHD is done with the connection's
 * request; a suspended request cannot be completed, so a reply always finds
 * its request.
 *
 * An event stream is a response whose content reader copies from the
 * stream's buffer. Its events come from a follower (mq_events_follow): the
 * streams of one pattern share one reader, and a batch is written as text
 * once for all of them (batch_text). While a stream catches up on its own
 * its buffer holds one batch at most (the next is read only after
 * mq_subscription_next, called once the client has taken the buffer); once
 * it shares the reader batches come as they are read, and a client with
 * more than http.stream_buffer bytes unsent when one comes is cut off
 * (stream_overflow). With nothing to send, the reader suspends the
 * connection; a batch or the heartbeat resumes it.
 */
#include "http.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "buf.h"
#include "json.h"
#include "log.h"

#define MAX_PARAMS 4     /* "{}" segments in a route */
#define MAX_SEGMENTS 16  /* segments of a path that can match a route */
#define STREAM_BLOCK 16384 /* bytes MHD asks the stream's reader for */
#define MAX_URL 8192     /* bytes of a request's path and query: 414 past it */
/* Bytes MHD holds of one connection's request line and headers: well above
 * MAX_URL, so that a long URL reaches our own JSON 414. */
#define CONNECTION_MEMORY (256u << 10)
/* Static files (the dashboard) may load scripts, styles and data from this
 * server only, run no inline script and be framed by no page: data that
 * slipped into markup could not run. */
#define STATIC_CSP                                                          \
  "default-src 'none'; script-src 'self'; style-src 'self'; "              \
  "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "            \
  "form-action 'none'; frame-ancestors 'none'"

struct stream {
  mq_subscription *sub;
  char *buf;           /* bytes not yet sent, from off on */
  size_t len, cap, off;
  bool holding;        /* buf holds a batch: ask for the next when sent */
  bool ended;          /* end the response once buf is sent */
  bool waiting;        /* the connection is suspended in the reader */
  bool client_gone;    /* the client closed: end the response with an error
                          (MHD then closes the connection) */
  ev_io gone;          /* while waiting: the client's socket, readable when
                          it closes (MHD watches no suspended connection) */
};

struct mq_http_req {
  mq_http *h;
  struct MHD_Connection *conn;
  const struct mq_http_route *route;
  void *route_data;
  const char *(*unavailable)(void *data); /* the route's table's */
  char method[8];
  char version[12];    /* "HTTP/1.1" */
  char *path;          /* as sent, percent-encoded */
  char *params[MAX_PARAMS];
  int nparams;
  char *body;          /* NULL until a byte comes */
  size_t len, cap;
  bool too_large;      /* the body went over max_body */
  bool started;        /* the handler ran */
  bool suspended;      /* waiting for the handler's reply */
  bool counted;        /* in h->pending until MHD is done with it */
  struct MHD_Response *response; /* the reply, until queued */
  int status;
  ev_tstamp t0;
  struct arg *args;    /* decoded query arguments, freed with the request */
  struct stream *stream;
  LIST_ENTRY(mq_http_req) link;        /* every live request */
  LIST_ENTRY(mq_http_req) stream_link; /* every event stream */
};

struct arg {
  struct arg *next;
  char *name, *value;
};

struct mq_http {
  struct ev_loop *loop;
  const struct mq_config *cfg;
  mq_events *events;
  struct mq_http_routes *tables;
  int ntables;
  struct MHD_Daemon *d;
  ev_io io;            /* MHD's epoll descriptor */
  ev_timer timer;      /* MHD_get_timeout, or 0 to run MHD soon */
  ev_timer heartbeat;  /* comments on idle event streams */
  bool stopping;
  bool running;        /* inside MHD_run */
  size_t pending;      /* requests being answered: handled, their reply
                          not yet sent (event streams not counted) */
  char last_error[256]; /* libmicrohttpd's latest message */
  LIST_HEAD(, mq_http_req) reqs;
  LIST_HEAD(, mq_http_req) streams;
  /* The last batch written as event-stream text, kept under its batch id
   * for the other streams that share it (mq_subscription_batch_id). */
  struct mq_buf_text {
    char *s;
    size_t len, cap;
    unsigned long long batch_id;
  } text;
};

/* How many connections the server takes at once: what the process may
 * open (its soft limit of descriptors raised to the hard one) less a
 * reserve for the pool, the event store and files. Past it, new
 * connections wait in the listen queue: running out of descriptors in
 * accept() left the server taking none ever again. */
static unsigned connection_limit(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0)
    return 900;
  if (r.rlim_cur < r.rlim_max) {
    rlim_t want = r.rlim_max == RLIM_INFINITY || r.rlim_max > 65536
                      ? 65536
                      : r.rlim_max;
    struct rlimit raised = {want > r.rlim_cur ? want : r.rlim_cur, r.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
      r.rlim_cur = raised.rlim_cur;
  }
  rlim_t reserve = 128;
  return r.rlim_cur > reserve + 16 ? (unsigned)(r.rlim_cur - reserve) : 16;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls);
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe);
static size_t keep_escaped(void *cls, struct MHD_Connection *c, char *s);
static void mhd_log(void *cls, const char *fmt, va_list ap);
static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void heartbeat_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void run_soon(mq_http *h);
static void stream_end(mq_http_req *req);

mq_http *mq_http_new(struct ev_loop *loop, const struct mq_config *cfg,
                     mq_events *events, const struct mq_http_routes *tables,
                     int ntables, char *err, size_t errlen) {
  struct sockaddr_in6 addr;
  unsigned addrlen;
  bool loopback;
  if (mq_config_parse_listen(cfg->http.listen, (struct sockaddr *)&addr,
                             &addrlen, &loopback, err, errlen) != 0)
    return NULL;
  mq_http *h = calloc(1, sizeof *h);
  if (!h || !(h->tables = calloc((size_t)ntables, sizeof *tables))) {
    free(h);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  memcpy(h->tables, tables, (size_t)ntables * sizeof *tables);
  h->ntables = ntables;
  h->loop = loop;
  h->cfg = cfg;
  h->events = events;
  LIST_INIT(&h->reqs);
  LIST_INIT(&h->streams);
  unsigned timeout = (unsigned)(cfg->http.timeout + 0.999);
  unsigned limit = connection_limit();
  unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                   MHD_USE_ERROR_LOG |
                   (addr.sin6_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  errno = 0;
  h->d = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, h,
      MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, /* first: it logs the others */
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
      MHD_OPTION_CONNECTION_TIMEOUT, timeout,
      MHD_OPTION_CONNECTION_LIMIT, limit,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
      MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped, h,
      MHD_OPTION_END);
  if (!h->d) {
    snprintf(err, errlen, "http.listen: cannot listen on %s: %s",
             cfg->http.listen,
             h->last_error[0] ? h->last_error
             : errno          ? strerror(errno)
                              : "failed");
    free(h->tables);
    free(h);
    return NULL;
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
  ev_io_init(&h->io, io_cb, info->epoll_fd, EV_READ);
  h->io.data = h;
  ev_io_start(loop, &h->io);
  ev_init(&h->timer, timer_cb);
  h->timer.data = h;
  ev_timer_init(&h->heartbeat, heartbeat_cb, cfg->http.heartbeat,
                cfg->http.heartbeat);
  h->heartbeat.data = h;
  mq_log_info("http", "listening address=%s token=%s", cfg->http.listen,
              cfg->http.token ? "required" : "none");
  return h;
}

void mq_http_stop(mq_http *h) {
  if (!h || h->stopping)
    return;
  h->stopping = true;
  int fd = MHD_quiesce_daemon(h->d);
  if (fd >= 0)
    close(fd);
  ev_timer_stop(h->loop, &h->heartbeat);
  mq_http_req *req, *next;
  for (req = LIST_FIRST(&h->streams); req; req = next) {
    next = LIST_NEXT(req, stream_link);
    stream_end(req);
  }
  run_soon(h);
}

size_t mq_http_pending(const mq_http *h) { return h ? h->pending : 0; }

void mq_http_close(mq_http *h) {
  if (!h)
    return;
  mq_http_stop(h);
  /* MHD must not stop with suspended connections: every reply has come
   * (the pool is closed), and every stream has ended; let MHD send what
   * it can, then close the rest. */
  mq_http_req *req;
  LIST_FOREACH(req, &h->reqs, link) {
    if (req->suspended)
      mq_http_reply_error(req, 503, "the server is stopping");
    if (req->stream && req->stream->waiting) {
      req->stream->waiting = false;
      ev_io_stop(h->loop, &req->stream->gone);
      MHD_resume_connection(req->conn);
    }
  }
  MHD_run(h->d);
  ev_io_stop(h->loop, &h->io);
  ev_timer_stop(h->loop, &h->timer);
  MHD_stop_daemon(h->d);
  free(h->text.s);
  free(h->tables);
  free(h);
}

/* ---- the loop ---------------------------------------------------------- */

/* Runs MHD and sets the timer to when it wants to run next. */
static void run_mhd(mq_http *h) {
  h->running = true;
  MHD_run(h->d);
  h->running = false;
  MHD_UNSIGNED_LONG_LONG ms;
  ev_timer_stop(h->loop, &h->timer);
  if (MHD_get_timeout(h->d, &ms) == MHD_YES) {
    ev_timer_set(&h->timer, (double)ms / 1000.0, 0.);
    ev_timer_start(h->loop, &h->timer);
  }
}

/* After a resume from outside MHD: run it on the next loop turn. */
static void run_soon(mq_http *h) {
  if (h->running)
    return; /* MHD_run is on its way out and sets the timer */
  ev_timer_stop(h->loop, &h->timer);
  ev_timer_set(&h->timer, 0., 0.);
  ev_timer_start(h->loop, &h->timer);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  run_mhd(w->data);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  run_mhd(w->data);
}

/* libmicrohttpd's messages (a client that went away, a bind that failed)
 * are kept for mq_http_new's error and logged at debug level. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
  mq_http *h = cls;
  vsnprintf(h->last_error, sizeof h->last_error, fmt, ap);
  size_t n = strlen(h->last_error);
  while (n > 0 && h->last_error[n - 1] == '\n')
    h->last_error[--n] = '\0';
  mq_log_debug("http", "libmicrohttpd: %s", h->last_error);
}

/* Paths and query arguments stay percent-encoded in MHD: a path is split
 * into segments first and each is decoded on its own, so that "%2F" in a
 * queue name is part of the name. */
static size_t keep_escaped(void *cls, struct MHD_Connection *c, char *s) {
  return strlen(s);
}

/* ---- requests ---------------------------------------------------------- */

static void req_free(mq_http_req *req) {
  if (req->counted)
    req->h->pending--;
  if (req->stream) {
    mq_subscription_close(req->stream->sub);
    LIST_REMOVE(req, stream_link);
    ev_io_stop(req->h->loop, &req->stream->gone);
    free(req->stream->buf);
    free(req->stream);
  }
  if (req->response)
    MHD_destroy_response(req->response);
  for (int i = 0; i < req->nparams; i++)
    free(req->params[i]);
  for (struct arg *a = req->args, *next; a; a = next) {
    next = a->next;
    free(a->name);
    free(a->value);
    free(a);
  }
  LIST_REMOVE(req, link);
  free(req->path);
  free(req->body);
  free(req);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  mq_http_req *req = *con_cls;
  if (!req)
    return;
  mq_log_debug("http", "%s %s status=%d ms=%.1f%s", req->method, req->path,
               req->status,
               (ev_now(req->h->loop) - req->t0) * 1000.0,
               toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? ""
                                                          : " closed=early");
  *con_cls = NULL;
  req_free(req);
}

/* Decodes a percent-encoded copy of s[0..n); NULL when out of memory. */
static char *decoded(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d)
    return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  MHD_http_unescape(d);
  return d;
}

/* Matches req->path against `pattern`; fills req->params on a match. */
static bool match(mq_http_req *req, const char *pattern) {
  const char *p = req->path, *q = pattern;
  int n = 0;
  char *params[MAX_PARAMS];
  while (*p && *q) {
    if (*p++ != '/' || *q++ != '/')
      return false;
    size_t pn = strcspn(p, "/"), qn = strcspn(q, "/");
    if (qn == 2 && strncmp(q, "{}", 2) == 0) {
      if (pn == 0 || n == MAX_PARAMS)
        goto no;
      if (!(params[n++] = decoded(p, pn)))
        goto no;
    } else if (pn != qn || strncmp(p, q, pn) != 0) {
      goto no;
    }
    p += pn;
    q += qn;
  }
  if (*p || *q)
    goto no;
  for (int i = 0; i < req->nparams; i++)
    free(req->params[i]);
  memcpy(req->params, params, (size_t)n * sizeof *params);
  req->nparams = n;
  return true;
no:
  while (n > 0)
    free(params[--n]);
  return false;
}

/* Finds req's route. Returns 0, 404 (no route has the path) or 405 (one
 * has, for another method: allow, allowlen gets the methods it has, as an
 * Allow header lists them). */
static int route(mq_http_req *req, char *allow, size_t allowlen) {
  mq_http *h = req->h;
  const char *method = strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
  size_t n = 0;
  allow[0] = '\0';
  for (int t = 0; t < h->ntables; t++)
    for (const struct mq_http_route *r = h->tables[t].routes; r->path; r++) {
      if (!match(req, r->path))
        continue;
      if (strcmp(r->method, method) == 0) {
        req->route = r;
        req->route_data = h->tables[t].data;
        req->unavailable = h->tables[t].unavailable;
        return 0;
      }
      if (n < allowlen)
        n += (size_t)snprintf(allow + n, allowlen - n, "%s%s%s",
                              n ? ", " : "", r->method,
                              strcmp(r->method, "GET") == 0 ? ", HEAD" : "");
    }
  return allow[0] ? 405 : 404;
}

/* Compares a presented secret with the expected one in time that depends
 * on the expected one's length only. */
static bool same_secret(const char *given, const char *want) {
  size_t gn = strlen(given), wn = strlen(want);
  volatile unsigned char diff = gn != wn;
  for (size_t i = 0; i < wn; i++)
    diff |= (unsigned char)(i < gn ? given[i] : 0) ^ (unsigned char)want[i];
  return diff == 0;
}

/* A Host header that names the loopback: localhost, 127.x.x.x or [::1],
 * with or without a port (digits only). */
static bool loopback_host(const char *host) {
  size_t n = strlen(host);
  const char *colon = strrchr(host, ':');
  if (colon && !strchr(colon, ']')) {
    n = (size_t)(colon - host);
    if (!colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1))
      return false;
  }
  if (n == 9 && strncasecmp(host, "localhost", 9) == 0)
    return true;
  if (n == 5 && strncmp(host, "[::1]", 5) == 0)
    return true;
  if (n < 4 || n > 15 || strncmp(host, "127.", 4) != 0)
    return false;
  for (size_t i = 4; i < n; i++)
    if (!(host[i] == '.' || (host[i] >= '0' && host[i] <= '9')))
      return false;
  return true;
}

/* "http://host:port" of an Origin header names the same host:port as the
 * Host header. */
static bool same_origin(const char *origin, const char *host) {
  const char *p = strstr(origin, "://");
  return p && host && strcasecmp(p + 3, host) == 0;
}

/* The checks made on the headers, before any body is read. Returns 0, or
 * an HTTP status after replying. */
/* True when s, still percent-encoded, holds an encoded NUL ("%00"),
 * which C strings would cut the name at. */
static bool encoded_nul(const char *s) {
  for (const char *p = s; (p = strchr(p, '%')); p++)
    if (p[1] == '0' && p[2] == '0')
      return true;
  return false;
}

static enum MHD_Result find_nul_arg(void *cls, enum MHD_ValueKind kind,
                                    const char *key, const char *value) {
  if (encoded_nul(key) || (value && encoded_nul(value))) {
    *(bool *)cls = true;
    return MHD_NO;
  }
  return MHD_YES;
}

/* Adds the length of a query argument (name=value&) to *cls. */
static enum MHD_Result add_arg_len(void *cls, enum MHD_ValueKind kind,
                                   const char *key, const char *value) {
  *(size_t *)cls += strlen(key) + (value ? strlen(value) + 1 : 0) + 1;
  return MHD_YES;
}


/* True when the request carries http.token as its bearer token; else
 * replies 401 saying whether it was missing or wrong. */
static bool token_ok(mq_http_req *req, const struct mq_config *cfg) {
  const char *auth = mq_http_header(req, "Authorization");
  if (auth && strncasecmp(auth, "Bearer ", 7) == 0 &&
      same_secret(auth + 7, cfg->http.token))
    return true;
  mq_http_reply_error(req, 401, "%s",
                      auth && strncasecmp(auth, "Bearer ", 7) == 0
                          ? "the bearer token is wrong"
                          : "an Authorization: Bearer token is required");
  return false;
}

static int check_headers(mq_http_req *req) {
  mq_http *h = req->h;
  const struct mq_config *cfg = h->cfg;
  if (h->stopping) {
    mq_http_reply_error(req, 503, "the server is stopping");
    return 503;
  }
  /* "ok%00evil" would name queue "ok": refused before any route runs */
  bool nul = encoded_nul(req->path);
  if (!nul)
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, find_nul_arg,
                              &nul);
  if (nul) {
    mq_http_reply_error(req, 400, "the URL holds an encoded NUL (%%00)");
    return 400;
  }
  size_t url_len = strlen(req->path);
  MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, add_arg_len,
                            &url_len);
  if (url_len > MAX_URL) {
    mq_http_reply_error(req, 414, "the URL is about %zu bytes, the limit is "
                        "%d", url_len, MAX_URL);
    return 414;
  }
  const char *host = mq_http_header(req, "Host");
  if (!host && strcmp(req->version, MHD_HTTP_VERSION_1_1) == 0) {
    mq_http_reply_error(req, 400, "an HTTP/1.1 request needs a Host header");
    return 400;
  }
  char allow[128];
  int rc = route(req, allow, sizeof allow);
  /* Without the token, an unknown API path or method says no more than a
   * known one: 401, not which routes and methods exist. */
  if ((rc == 404 || rc == 405) && cfg->http.token &&
      strncmp(req->path, "/api/", 5) == 0 && !token_ok(req, cfg))
    return 401;
  if (rc == 404) {
    mq_http_reply_error(req, 404, "no route for %s %.200s", req->method,
                        req->path);
    return rc;
  }
  if (rc == 405) {
    mq_http_reply_error(req, 405, "method %s is not allowed here (allowed: "
                        "%s)", req->method, allow);
    if (req->response)
      MHD_add_response_header(req->response, "Allow", allow);
    return rc;
  }
  if (!cfg->http.token && host && !loopback_host(host)) {
    mq_http_reply_error(req, 403,
                        "the Host header must name the loopback address "
                        "(set http.token to serve other names)");
    return 403;
  }
  if (cfg->http.token && !(req->route->flags & MQ_HTTP_PUBLIC) &&
      !token_ok(req, cfg))
    return 401;
  const char *origin = mq_http_header(req, "Origin");
  bool reads = strcmp(req->method, "GET") == 0 ||
               strcmp(req->method, "HEAD") == 0;
  if (!reads && origin && !same_origin(origin, host)) {
    mq_http_reply_error(req, 403, "cross-origin %s refused", req->method);
    return 403;
  }
  const char *length = mq_http_header(req, "Content-Length");
  if (length && strtoull(length, NULL, 10) > (unsigned long long)cfg->http.max_body) {
    mq_http_reply_error(req, 413,
                        "the request body is %s bytes, more than http.max_body "
                        "(%d)", length, cfg->http.max_body);
    return 413;
  }
  return 0;
}

static mq_http_req *req_new(mq_http *h, struct MHD_Connection *c,
                            const char *url, const char *method,
                            const char *version) {
  mq_http_req *req = calloc(1, sizeof *req);
  if (!req || !(req->path = strdup(url))) {
    free(req);
    return NULL;
  }
  req->h = h;
  req->conn = c;
  req->t0 = ev_now(h->loop);
  snprintf(req->method, sizeof req->method, "%s", method);
  snprintf(req->version, sizeof req->version, "%s", version);
  LIST_INSERT_HEAD(&h->reqs, req, link);
  return req;
}

/* Queues the reply the request has. */
static enum MHD_Result queue_reply(mq_http_req *req) {
  struct MHD_Response *r = req->response;
  req->response = NULL;
  enum MHD_Result ok = MHD_queue_response(req->conn, (unsigned)req->status, r);
  MHD_destroy_response(r);
  return ok;
}

/* Runs the route's handler on the complete request. */
static enum MHD_Result handle(mq_http_req *req) {
  req->started = true;
  if (req->too_large) {
    mq_http_reply_error(req, 413,
                        "the request body is more than http.max_body (%d "
                        "bytes)", req->h->cfg->http.max_body);
    return queue_reply(req);
  }
  const char *why = req->unavailable ? req->unavailable(req->route_data) : NULL;
  if (why) {
    mq_http_reply_error(req, 503, "%s", why);
    return queue_reply(req);
  }
  req->route->handler(req, req->route_data);
  if (req->stream)
    return MHD_YES; /* queued by mq_http_reply_stream */
  /* Counted until its reply is sent, so that a stop waits for it. */
  req->counted = true;
  req->h->pending++;
  if (req->response)
    return queue_reply(req);
  req->suspended = true;
  MHD_suspend_connection(req->conn);
  return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
  mq_http *h = cls;
  mq_http_req *req = *con_cls;
  if (!req) {
    if (!(req = req_new(h, c, url, method, version)))
      return MHD_NO;
    *con_cls = req;
    if (check_headers(req) != 0)
      return queue_reply(req); /* the body, if any, is not read */
    return MHD_YES;
  }
  if (*upload_size > 0) {
    size_t n = *upload_size;
    *upload_size = 0;
    if (req->too_large || req->len + n > (size_t)h->cfg->http.max_body) {
      req->too_large = true;
      return MHD_YES;
    }
    if (mq_buf_add(&req->body, &req->len, &req->cap, upload, n) != 0)
      return MHD_NO;
    return MHD_YES;
  }
  if (req->response)
    return queue_reply(req); /* the handler replied while suspended */
  if (!req->started)
    return handle(req);
  return MHD_YES;
}

/* ---- for route handlers ------------------------------------------------ */

const char *mq_http_param(const mq_http_req *req, int i) {
  return i < req->nparams ? req->params[i] : "";
}

void *mq_http_route_data(const mq_http_req *req) { return req->route_data; }

void mq_http_reply_header(mq_http_req *req, const char *name,
                          const char *value) {
  if (req->response)
    MHD_add_response_header(req->response, name, value);
}

const char *mq_http_body(const mq_http_req *req, size_t *len) {
  if (len)
    *len = req->len;
  return req->body ? req->body : "";
}

const char *mq_http_header(mq_http_req *req, const char *name) {
  return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *mq_http_arg(mq_http_req *req, const char *name) {
  for (struct arg *a = req->args; a; a = a->next)
    if (strcmp(a->name, name) == 0)
      return a->value;
  const char *raw =
      MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
  if (!raw)
    return NULL;
  struct arg *a = calloc(1, sizeof *a);
  if (!a || !(a->name = strdup(name)) ||
      !(a->value = decoded(raw, strlen(raw)))) {
    if (a)
      free(a->name);
    free(a);
    return NULL;
  }
  a->next = req->args;
  req->args = a;
  return a->value;
}

struct unknown {
  const char *const *known;
  void (*fn)(void *data, const char *name);
  void *data;
  int n;
};

static enum MHD_Result check_arg(void *cls, enum MHD_ValueKind kind,
                                 const char *key, const char *value) {
  struct unknown *u = cls;
  for (const char *const *k = u->known; *k; k++)
    if (strcmp(*k, key) == 0)
      return MHD_YES;
  if (u->n++ == 0 && u->fn)
    u->fn(u->data, key);
  return MHD_YES;
}

int mq_http_unknown_args(mq_http_req *req, const char *const *known,
                         void (*fn)(void *data, const char *name),
                         void *data) {
  struct unknown u = {known, fn, data, 0};
  MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, check_arg, &u);
  return u.n;
}

/* Sets r as req's reply and, for a request waiting for it, resumes its
 * connection. r NULL: out of memory, the connection is closed. */
static void set_reply(mq_http_req *req, int status, struct MHD_Response *r) {
  if (req->response) /* a second reply: a handler's bug */
    MHD_destroy_response(req->response);
  req->status = status;
  req->response = r;
  if (r) {
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (req->h->stopping)
      MHD_add_response_header(r, "Connection", "close");
  }
  if (!req->suspended)
    return;
  req->suspended = false;
  if (!r) {
    mq_log_error("http", "out of memory replying to %s %s", req->method,
                 req->path);
    req->status = 500;
    req->response = MHD_create_response_from_buffer(
        0, (void *)"", MHD_RESPMEM_PERSISTENT);
  }
  MHD_resume_connection(req->conn);
  run_soon(req->h);
}

void mq_http_reply(mq_http_req *req, int status, const char *content_type,
                   const char *body, size_t len) {
  struct MHD_Response *r = MHD_create_response_from_buffer(
      len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (r)
    MHD_add_response_header(r, "Content-Type", content_type);
  set_reply(req, status, r);
}

void mq_http_reply_json(mq_http_req *req, int status, const char *json) {
  mq_http_reply(req, status, "application/json", json, strlen(json));
}

void mq_http_reply_error(mq_http_req *req, int status, const char *fmt, ...) {
  char msg[1024], jerr[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mq_json_object *o = mq_json_object_new();
  mq_json_object_string(o, "error", msg);
  char *json = mq_json_object_finish(o, jerr, sizeof jerr);
  if (!json) /* a message that is not UTF-8 (a name echoed back) */
    json = strdup("{\"error\":\"the request is invalid\"}");
  mq_http_reply_json(req, status, json ? json : "{}");
  if (status == 401 && req->response)
    MHD_add_response_header(req->response, "WWW-Authenticate", "Bearer");
  free(json);
}

void mq_http_reply_static(mq_http_req *req, int status,
                          const char *content_type, const void *bytes,
                          size_t len, int cache) {
  struct MHD_Response *r = MHD_create_response_from_buffer(
      len, (void *)bytes, MHD_RESPMEM_PERSISTENT);
  set_reply(req, status, r);
  if (r) {
    char value[64];
    MHD_add_response_header(r, "Content-Type", content_type);
    MHD_add_response_header(r, "Content-Security-Policy", STATIC_CSP);
    if (cache > 0) {
      snprintf(value, sizeof value, "max-age=%d", cache);
      MHD_del_response_header(r, "Cache-Control", "no-store");
      MHD_add_response_header(r, "Cache-Control", value);
    }
  }
}

/* ---- event streams ------------------------------------------------------ */

/* Appends s[0..n) to the stream's buffer; -1 when out of memory. */
static int stream_add(struct stream *st, const char *s, size_t n) {
  return mq_buf_add(&st->buf, &st->len, &st->cap, s, n);
}

/* Lets a reader waiting for bytes go on. */
static void stream_wake(mq_http_req *req) {
  struct stream *st = req->stream;
  if (!st->waiting)
    return;
  st->waiting = false;
  ev_io_stop(req->h->loop, &st->gone);
  MHD_resume_connection(req->conn);
  run_soon(req->h);
}

/* The socket of a waiting stream is readable: a client of an event stream
 * sends nothing more, so it closed (or failed). MHD, sending the response,
 * would not read to find that until the next heartbeat's write fails: the
 * stream ends with an error now, and MHD closes the connection, giving its
 * place back at once. A client that did send bytes is left to the
 * heartbeat. */
static void stream_gone_cb(struct ev_loop *loop, ev_io *w, int revents) {
  mq_http_req *req = w->data;
  char c;
  ssize_t n = recv(w->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  ev_io_stop(loop, w);
  if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
    req->stream->client_gone = true;
    stream_wake(req);
  }
}

/* Watches the socket of a stream that starts waiting. */
static void stream_watch(mq_http_req *req) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!info)
    return;
  ev_io_set(&req->stream->gone, info->connect_fd, EV_READ);
  ev_io_start(req->h->loop, &req->stream->gone);
}

/* Ends the stream once what it holds is sent. */
static void stream_end(mq_http_req *req) {
  struct stream *st = req->stream;
  st->ended = true;
  mq_subscription_close(st->sub);
  st->sub = NULL;
  st->holding = false;
  stream_wake(req);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
  mq_http_req *req = cls;
  struct stream *st = req->stream;
  if (st->off < st->len) {
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(out, st->buf + st->off, n);
    st->off += n;
    if (st->off == st->len) {
      st->off = st->len = 0;
      if (st->holding) {
        st->holding = false;
        mq_subscription_next(st->sub);
      }
    }
    return (ssize_t)n;
  }
  if (st->client_gone)
    return MHD_CONTENT_READER_END_WITH_ERROR;
  if (st->ended)
    return MHD_CONTENT_READER_END_OF_STREAM;
  st->waiting = true;
  MHD_suspend_connection(req->conn);
  stream_watch(req);
  return 0;
}

static int text_add(struct mq_buf_text *t, const char *s, size_t n) {
  return mq_buf_add(&t->s, &t->len, &t->cap, s, n);
}

/* Writes `id: <token>` for event e of the batch subscription s holds. */
static int add_id(struct mq_buf_text *t, mq_subscription *s,
                  const struct mq_event *e) {
  struct mq_event_position pos;
  char head[64];
  snprintf(head, sizeof head, "id: %lld", e->id);
  if (text_add(t, head, strlen(head)) != 0)
    return -1;
  if (mq_subscription_position(s, e->id, &pos) &&
      (text_add(t, "/", 1) != 0 ||
       text_add(t, pos.base, strlen(pos.base)) != 0 ||
       text_add(t, "/", 1) != 0 ||
       text_add(t, pos.target, strlen(pos.target)) != 0))
    return -1;
  return text_add(t, "\n", 1);
}

/* Writes event e as the API shows it (mq_event_json). */
static int add_event(struct mq_buf_text *t, mq_subscription *s,
                     const struct mq_event *e) {
  char jerr[128];
  char *json = mq_event_json(e, jerr, sizeof jerr);
  if (!json)
    return -1;
  int rc = add_id(t, s, e);
  /* An `event:` field is one line, and the store accepts types with line
   * breaks: the name is the type up to the first (data has it whole; JSON
   * escapes line breaks, so data is one line too). */
  size_t tn = strcspn(e->type, "\r\n");
  rc = rc != 0 ? rc
       : text_add(t, "event: ", 7) != 0 ? -1
       : text_add(t, e->type, tn) != 0 ? -1
       : text_add(t, "\ndata: ", 7) != 0 ? -1
       : text_add(t, json, strlen(json)) != 0 ? -1
       : text_add(t, "\n\n", 2);
  free(json);
  return rc;
}

/* The batch s holds as event-stream text: written once, and kept for the
 * other streams that get the same batch. NULL when out of memory. */
static const struct mq_buf_text *batch_text(mq_http *h, mq_subscription *s,
                                            const struct mq_event *events,
                                            int n) {
  struct mq_buf_text *t = &h->text;
  unsigned long long id = mq_subscription_batch_id(s);
  if (t->batch_id == id && t->s)
    return t;
  t->len = 0;
  t->batch_id = 0;
  for (int i = 0; i < n; i++)
    if (add_event(t, s, &events[i]) != 0)
      return NULL;
  t->batch_id = id;
  return t;
}

/* Ends a stream whose client fell behind, after what it has unsent and a
 * last event that says so. */
static void stream_overflow(mq_http_req *req, size_t unsent) {
  mq_http *h = req->h;
  char msg[512], jerr[128];
  snprintf(msg, sizeof msg,
           "this client fell behind: %zu bytes of events were waiting to be "
           "sent, more than http.stream_buffer (%d); reconnect with the "
           "Last-Event-ID of the last event received to go on from there",
           unsent, h->cfg->http.stream_buffer);
  mq_json_object *o = mq_json_object_new();
  mq_json_object_string(o, "error", msg);
  mq_json_object_int(o, "stream_buffer", h->cfg->http.stream_buffer);
  char *json = mq_json_object_finish(o, jerr, sizeof jerr);
  struct stream *st = req->stream;
  mq_log_info("http", "event stream cut off: the client fell behind "
              "unsent=%zu limit=%d", unsent, h->cfg->http.stream_buffer);
  if (json && (stream_add(st, "event: moonq.overflow\ndata: ", 28) != 0 ||
               stream_add(st, json, strlen(json)) != 0 ||
               stream_add(st, "\n\n", 2) != 0))
    mq_log_error("http", "out of memory ending an event stream");
  free(json);
  stream_end(req);
}

static void stream_batch(int status, const char *error,
                         const struct mq_event *events, int n, void *data) {
  mq_http_req *req = data;
  struct stream *st = req->stream;
  if (status == MQ_EVENTS_ECLOSED) {
    st->sub = NULL;
    stream_end(req);
    return;
  }
  if (status != MQ_EVENTS_OK) {
    mq_log_warn("http", "event stream read failed (it reads again) "
                "error=\"%s\"", error);
    return;
  }
  /* A stream that reads on its own gets a batch once the last is sent; one
   * that shares its pattern's reader gets every batch as it comes, and the
   * client that cannot keep up is cut off. */
  size_t unsent = st->len - st->off;
  if (unsent > (size_t)req->h->cfg->http.stream_buffer) {
    stream_overflow(req, unsent);
    return;
  }
  if (st->off > 0) { /* what was sent goes, so the buffer stays small */
    memmove(st->buf, st->buf + st->off, unsent);
    st->len = unsent;
    st->off = 0;
  }
  const struct mq_buf_text *t = batch_text(req->h, st->sub, events, n);
  if (!t || stream_add(st, t->s, t->len) != 0) {
    mq_log_error("http", "out of memory in an event stream: ending it");
    stream_end(req);
    return;
  }
  st->holding = true;
  stream_wake(req);
}

/* The subscription's position is fixed: tell the client. */
static void stream_started(void *arg, const char *error) {
  mq_http_req *req = arg;
  if (error)
    return;
  stream_add(req->stream, ": subscribed\n\n", 14);
  stream_wake(req);
}

static void heartbeat_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  mq_http *h = w->data;
  mq_http_req *req;
  LIST_FOREACH(req, &h->streams, stream_link) {
    if (req->stream->len == 0 && stream_add(req->stream, ":\n\n", 3) == 0)
      stream_wake(req);
  }
}

void mq_http_reply_stream(mq_http_req *req, const char *pattern,
                          enum mq_events_from from, long long from_id,
                          const struct mq_event_position *pos) {
  mq_http *h = req->h;
  if (!h->events) {
    mq_http_reply_error(req, 503, "the event store is disabled "
                        "(config events.enabled)");
    return;
  }
  struct stream *st = calloc(1, sizeof *st);
  if (!st) {
    mq_http_reply_error(req, 500, "out of memory");
    return;
  }
  ev_init(&st->gone, stream_gone_cb);
  st->gone.data = req;
  char err[256];
  req->stream = st;
  LIST_INSERT_HEAD(&h->streams, req, stream_link);
  st->sub = mq_events_follow(h->events, pattern, from, from_id, pos,
                             stream_batch, req, err, sizeof err);
  struct MHD_Response *r =
      st->sub ? MHD_create_response_from_callback(
                    MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, req, NULL)
              : NULL;
  if (!r) {
    bool subscribed = st->sub != NULL;
    mq_subscription_close(st->sub);
    LIST_REMOVE(req, stream_link);
    free(st);
    req->stream = NULL;
    if (subscribed)
      mq_http_reply_error(req, 500, "out of memory");
    else
      mq_http_reply_error(req, 400, "%s", err);
    return;
  }
  /* From the end, the client hears when its position is fixed; from an id
   * or a position at once (history follows). */
  if (mq_subscription_on_start(st->sub, stream_started, req) == 0 &&
      stream_add(st, ": subscribed\n\n", 14) != 0)
    mq_log_error("http", "out of memory starting an event stream");
  MHD_add_response_header(r, "Content-Type", "text/event-stream");
  MHD_add_response_header(r, "Cache-Control", "no-store");
  MHD_add_response_header(r, "X-Accel-Buffering", "no");
  /* The stream's own heartbeat keeps it alive, not the idle timeout. */
  MHD_set_connection_option(req->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
  req->status = 200;
  MHD_queue_response(req->conn, 200, r);
  MHD_destroy_response(r);
  if (!ev_is_active(&h->heartbeat))
    ev_timer_start(h->loop, &h->heartbeat);
}

const char *mq_http_db_unreachable(const mq_pg *pg, const mq_events *events) {
  if (mq_pg_is_up(pg) && (!events || mq_pg_is_up(mq_events_pg(events))))
    return NULL;
  return "the database is unreachable (no connection to PostgreSQL; the "
         "server reconnects by itself): try again later";
}

/* s[0..n) is pg_snapshot text as PostgreSQL takes it: "xmin:xmax:xip,..."
 * with 1 <= xmin <= xmax, each xip in [xmin, xmax), ascending. */
static bool is_snapshot(const char *s, size_t n) {
  if (n == 0 || n != strspn(s, "0123456789:,"))
    return false;
  unsigned long long xmin, xmax, last;
  char *end;
  errno = 0;
  xmin = strtoull(s, &end, 10);
  if (end == s || *end != ':' || xmin < 1)
    return false;
  const char *p = end + 1;
  xmax = strtoull(p, &end, 10);
  if (end == p || *end != ':' || xmax < xmin)
    return false;
  last = xmin;
  for (p = end + 1; p < s + n; p = end + 1) {
    unsigned long long x = strtoull(p, &end, 10);
    if (end == p || x < last || x >= xmax || (*end != ',' && end != s + n) ||
        (*end == ',' && end + 1 == s + n))
      return false;
    last = x;
    if (end == s + n)
      break;
  }
  return errno == 0;
}

int mq_http_parse_position(const char *text, char *buf, size_t buflen,
                           struct mq_event_position *pos, char *err,
                           size_t errlen) {
  size_t n = strlen(text);
  if (n == 0 || n >= buflen) {
    snprintf(err, errlen, "is %zu bytes, it must be 1 to %zu", n, buflen - 1);
    return -1;
  }
  memcpy(buf, text, n + 1);
  char *end;
  errno = 0;
  long long id = strtoll(buf, &end, 10);
  if (end == buf || buf[0] == '-' || buf[0] == '+' || errno != 0 ||
      (*end != '\0' && *end != '/')) {
    snprintf(err, errlen, "must be an event id (0 to %lld) or a position this "
             "server sent (<id>/<snapshot>/<snapshot>)", LLONG_MAX);
    return -1;
  }
  pos->after_id = id;
  pos->base = pos->target = NULL;
  if (*end == '\0')
    return 0;
  char *base = end + 1, *slash = strchr(base, '/');
  if (slash)
    *slash = '\0';
  char *target = slash ? slash + 1 : NULL;
  if (!target || !is_snapshot(base, strlen(base)) ||
      !is_snapshot(target, strlen(target))) {
    snprintf(err, errlen, "is not a position this server sent: after the "
             "event id come two snapshots xmin:xmax:xip,... (1 <= xmin <= "
             "xip < xmax, ascending) separated by /");
    return -1;
  }
  if (!mq_snapshot_covers(base, target)) {
    snprintf(err, errlen, "is not a position this server sent: its first "
             "snapshot is not before its second");
    return -1;
  }
  pos->base = base;
  pos->target = target;
  return 0;
}
