/* http_web.c -- the dashboard's files; see http_web.h. */
#include "http_web.h"

#include <string.h>

#define CACHE_SECONDS 0 /* the files change with the binary: always fresh */

/* The file called `name`, or NULL. */
static const struct mq_web_file *find(const char *name) {
  for (const struct mq_web_file *f = mq_web_files; f->name; f++)
    if (strcmp(f->name, name) == 0)
      return f;
  return NULL;
}

/* The Content-Type of a file name by its extension. */
static const char *type_of(const char *name) {
  static const char *const types[][2] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".svg", "image/svg+xml"}};
  size_t n = strlen(name);
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    size_t e = strlen(types[i][0]);
    if (n > e && strcmp(name + n - e, types[i][0]) == 0)
      return types[i][1];
  }
  return "application/octet-stream";
}

static void serve(mq_http_req *req, const char *name) {
  const struct mq_web_file *f = find(name);
  if (!f)
    mq_http_reply_error(req, 404, "no such file: /ui/%.100s", name);
  else
    mq_http_reply_static(req, 200, type_of(name), f->bytes, f->len,
                         CACHE_SECONDS);
}

/* GET / */
static void h_index(mq_http_req *req, void *data) {
  (void)data;
  serve(req, "index.html");
}

/* GET /ui/{file} */
static void h_file(mq_http_req *req, void *data) {
  (void)data;
  serve(req, mq_http_param(req, 0));
}

static const struct mq_http_route routes[] = {
    {"GET", "/", h_index, MQ_HTTP_PUBLIC},
    {"GET", "/ui/{}", h_file, MQ_HTTP_PUBLIC},
    {NULL, NULL, NULL, 0}};

struct mq_http_routes mq_http_web_routes(void) {
  return (struct mq_http_routes){routes, NULL, NULL};
}
