/* http.h -- the HTTP server on the moonq loop: routes, requests, replies
 * and event streams.
 *
 * libmicrohttpd does the HTTP (parsing, keep-alive, chunked bodies,
 * timeouts) in its "external event loop" mode: its epoll descriptor is one
 * ev_io of the loop, MHD_get_timeout an ev_timer, so the server runs in the
 * same thread as the queue, the event store and the handlers, and a
 * request that waits for PostgreSQL suspends its connection instead of
 * blocking anything.
 *
 * What the server serves is a list of route tables: the JSON API
 * (http_api.c) is one; a table of static files compiled into the binary
 * (mq_http_reply_static) or of text documents plugs in the same way. A
 * route handler gets a request, reads its path parameters, query
 * arguments and body, and replies once, at once or later from a
 * completion callback (the request stays valid until it has replied).
 *
 * Rules every route gets from the server, before its handler runs:
 *  - with http.token set, `Authorization: Bearer <token>` on every call
 *    to a route not marked public (compared in constant time; 401);
 *  - without a token (a loopback address only, config checks that), a
 *    Host header that names the loopback (403), so that a web page cannot
 *    reach the server through a name it rebinds to 127.0.0.1;
 *  - POST and DELETE only for state-changing routes (405 otherwise), and
 *    refused (403) when a browser sends them from another origin;
 *  - a body larger than http.max_body is 413, read no further;
 *  - errors are JSON {"error": "message"} with the status that fits.
 * Requests are logged at debug level with method, path, status and time;
 * headers (the token) and bodies never are.
 *
 * Stopping (mq_http_stop): the listening socket closes at once, requests
 * that are being answered complete, event streams end, and requests that
 * arrive on kept-alive connections get 503. mq_http_close frees what is
 * left; the runtime calls it after closing the pool, so no callback of a
 * request can come later.
 *
 * Uses: config, events (event streams), log.
 */
#ifndef MQ_HTTP_H
#define MQ_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "config.h"
#include "events.h"

typedef struct mq_http mq_http;
typedef struct mq_http_req mq_http_req;

/* Route flags. */
enum {
  MQ_HTTP_PUBLIC = 1 << 0, /* served without the token (static files) */
  MQ_HTTP_WRITE = 1 << 1   /* changes state: POST or DELETE only */
};

/* A route: `method` ("GET", "POST", "DELETE") and a path whose segments
 * are literal or "{}" (one segment, percent-decoded, read with
 * mq_http_param). `data` is passed on to the handler. */
struct mq_http_route {
  const char *method;
  const char *path;
  void (*handler)(mq_http_req *req, void *data);
  int flags;
};

/* A table of routes ending with a zeroed entry, and the data its handlers
 * get. `unavailable` (NULL: none) is asked before each of its handlers
 * runs: a message (static) means the routes cannot be served now (the
 * database cannot be reached) and the request is answered 503 with it at
 * once instead of waiting; NULL lets the handler run. */
struct mq_http_routes {
  const struct mq_http_route *routes;
  void *data;
  const char *(*unavailable)(void *data);
};

/* Binds cfg->http.listen and starts serving `tables` (ntables of them,
 * copied; matched in order) on loop. cfg must outlive the server; events
 * (NULL when disabled) serves the event streams. Returns the server, or
 * NULL with a message in err (the address is in use, out of memory). */
mq_http *mq_http_new(struct ev_loop *loop, const struct mq_config *cfg,
                     mq_events *events, const struct mq_http_routes *tables,
                     int ntables, char *err, size_t errlen);

/* Stops accepting (see above). Idempotent. */
void mq_http_stop(mq_http *h);

/* Requests being answered: their handler ran and their reply is not sent
 * yet (event streams not counted). The runtime's stop waits for 0. */
size_t mq_http_pending(const mq_http *h);

/* Stops (if not yet), closes every connection and frees the server.
 * Requests still waiting for a reply must have had it. NULL-safe. */
void mq_http_close(mq_http *h);

/* ---- for route handlers ------------------------------------------------ */

/* Path parameter i (0: the first "{}"), percent-decoded; "" when absent.
 * Valid until the request has replied. */
const char *mq_http_param(const mq_http_req *req, int i);

/* Query argument `name`, percent-decoded, or NULL when absent. Valid until
 * the request has replied. */
const char *mq_http_arg(mq_http_req *req, const char *name);

/* Calls fn(data, name) for each query argument whose name is not among
 * known (NULL-terminated) and returns how many there were: handlers refuse
 * arguments they do not know. */
int mq_http_unknown_args(mq_http_req *req, const char *const *known,
                         void (*fn)(void *data, const char *name),
                         void *data);

/* The data of the table of the request's route (struct mq_http_routes),
 * for a completion callback that has only the request. */
void *mq_http_route_data(const mq_http_req *req);

/* Adds a header to the reply the request has just been given (after
 * mq_http_reply*; nothing without one). */
void mq_http_reply_header(mq_http_req *req, const char *name,
                          const char *value);

/* The request body (NUL-terminated; "" without a body) and its length. */
const char *mq_http_body(const mq_http_req *req, size_t *len);

/* A request header, or NULL. */
const char *mq_http_header(mq_http_req *req, const char *name);

/* Replies with body[0..len) (copied) of type content_type. Every request
 * replies once, with this or one of the calls below. */
void mq_http_reply(mq_http_req *req, int status, const char *content_type,
                   const char *body, size_t len);

/* Replies with JSON text `json` (copied). */
void mq_http_reply_json(mq_http_req *req, int status, const char *json);

/* Replies with {"error": message} (message formatted as printf). */
void mq_http_reply_error(mq_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Replies with bytes[0..len) that live as long as the program (a file
 * compiled in), of type content_type, with `cache` seconds of caching
 * (0: no-store), under a Content-Security-Policy that lets a page load
 * scripts, styles and API calls from this server only (no inline script,
 * no framing). */
void mq_http_reply_static(mq_http_req *req, int status,
                          const char *content_type, const void *bytes,
                          size_t len, int cache);

/* Turns the request into an event stream (text/event-stream) of
 * subscription `pattern` (NULL: every stream) from `from` / from_id, or
 * from pos when pos is not NULL (a position token's, see
 * mq_http_parse_position). Each event is sent as
 *   id: <position token>\nevent: <type>\ndata: <event JSON>\n\n
 * with a comment line every http.heartbeat seconds. The streams of one
 * pattern share one reader (mq_events_follow); a live client with more
 * than http.stream_buffer bytes unsent when events come is cut off with an
 * `event: moonq.overflow` whose data names the limit. Replies 503 with the
 * event store disabled and 400 for a bad pattern. */
void mq_http_reply_stream(mq_http_req *req, const char *pattern,
                          enum mq_events_from from, long long from_id,
                          const struct mq_event_position *pos);

/* For a table's `unavailable`: a message when pg, or events' pool (events
 * may be NULL), has no connection to PostgreSQL (down, or refusing it),
 * else NULL. A call would wait for a connection for the pool's
 * queue_timeout (30 s); this answers it at once. The pool's reason is not
 * in the message (it can name hosts and users). */
const char *mq_http_db_unreachable(const mq_pg *pg, const mq_events *events);

/* Reads a position token (the `id:` of a streamed event: "<event id>" or
 * "<event id>/<base snapshot>/<target snapshot>") into pos, whose strings
 * point into `text`, copied to buf (buflen bytes). A plain id fills only
 * after_id (pos->base NULL). Returns 0, or -1 when it is not one: longer
 * than buflen - 1 bytes, an id outside 0 to 2^63 - 1, snapshots that
 * PostgreSQL would refuse or that are out of order; err then says which
 * (a sentence to follow the value's name). */
int mq_http_parse_position(const char *text, char *buf, size_t buflen,
                           struct mq_event_position *pos, char *err,
                           size_t errlen);

#endif
