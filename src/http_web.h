/* http_web.h -- the dashboard: the files of web/ compiled into the binary
 * (cmake/EmbedWeb.cmake) and served at / and /ui/<file> (docs/http.md).
 *
 * The files are public (served without the token): they hold no data.
 * The page asks for the token once, keeps it in sessionStorage and sends
 * it as a Bearer header on every API call, so nothing rides on cookies.
 *
 * Uses: http.
 */
#ifndef MQ_HTTP_WEB_H
#define MQ_HTTP_WEB_H

#include <stddef.h>

#include "http.h"

/* A compiled-in file: its name in web/ and its bytes. */
struct mq_web_file {
  const char *name;
  const unsigned char *bytes;
  size_t len;
};

/* Every file of web/, ended by a zeroed entry (web_gen.c). */
extern const struct mq_web_file mq_web_files[];

/* The dashboard's routes, for mq_http_new: GET / (index.html) and
 * GET /ui/{file}. */
struct mq_http_routes mq_http_web_routes(void);

#endif
