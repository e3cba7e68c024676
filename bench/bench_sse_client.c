/* bench_sse_client.c -- the readers of bench/bench_sse.sh: CLIENTS
 * connections to GET /api/events/stream?stream=sse:* read on one epoll
 * loop in C, so that the client costs little next to the server it
 * measures (a Python reader used several times the server's CPU at 100
 * clients and its lag was most of the latency measured).
 *
 *   bench_sse_client PORT CLIENTS EVENTS
 *
 * Prints "ready" once every client has its `: subscribed`, then reads
 * until every client has EVENTS events (or 60 s pass) and prints one line:
 * per-client counts, how many got every event exactly once (EVENTS events,
 * ids strictly increasing: the appends are one session's, so ids come in
 * order), how many were cut off (moonq.overflow), and the latency
 * p50/p99/max: the time a client read an event minus the `"t"` in its
 * data (the append's clock_timestamp(), same machine).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct client {
  int fd;
  char *buf;          /* bytes not yet parsed */
  size_t len, cap;
  long long last_id;  /* the last id read */
  long got, bad;      /* events read; out of order or twice */
  int ready, cut, closed;
};

static double now(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double *lat;
static size_t nlat, caplat;

static void add_latency(double v) {
  if (nlat == caplat) {
    caplat = caplat ? caplat * 2 : 1 << 20;
    if (!(lat = realloc(lat, caplat * sizeof *lat))) {
      perror("realloc");
      exit(1);
    }
  }
  lat[nlat++] = v;
}

/* Parses the complete events (blocks ending with a blank line) of c's
 * buffer read at time t. */
static void parse(struct client *c, double t) {
  char *p = c->buf, *end = c->buf + c->len, *stop;
  while ((stop = memmem(p, (size_t)(end - p), "\n\n", 2))) {
    *stop = '\0';
    if (strstr(p, ": subscribed"))
      c->ready = 1;
    if (strstr(p, "moonq.overflow"))
      c->cut = 1;
    if (strncmp(p, "id: ", 4) == 0) {
      long long id = strtoll(p + 4, NULL, 10);
      char *ts = strstr(p, "\"t\": ");
      c->bad += id <= c->last_id;
      c->last_id = id;
      c->got++;
      if (ts)
        add_latency(t - strtod(ts + 5, NULL));
    }
    p = stop + 2;
  }
  c->len = (size_t)(end - p);
  memmove(c->buf, p, c->len);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: bench_sse_client PORT CLIENTS EVENTS\n");
    return 2;
  }
  int port = atoi(argv[1]), n = atoi(argv[2]);
  long events = atol(argv[3]);
  struct client *cs = calloc((size_t)n, sizeof *cs);
  int ep = epoll_create1(0);
  const char req[] = "GET /api/events/stream?stream=sse:* HTTP/1.0\r\n"
                     "Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
  for (int i = 0; i < n; i++) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    cs[i].fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(cs[i].fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        write(cs[i].fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
      perror("connect");
      return 1;
    }
    cs[i].cap = 1 << 20;
    cs[i].buf = malloc(cs[i].cap);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &cs[i]};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &e);
  }
  int said_ready = 0;
  double deadline = now() + 90;
  for (;;) {
    int ready = 0, done = 0;
    for (int i = 0; i < n; i++) {
      ready += cs[i].ready;
      done += cs[i].got >= events || cs[i].closed;
    }
    if (ready == n && !said_ready) {
      printf("ready\n");
      fflush(stdout);
      said_ready = 1;
    }
    if ((said_ready && done == n) || now() > deadline)
      break;
    struct epoll_event evs[64];
    int k = epoll_wait(ep, evs, 64, 100);
    double t = now();
    for (int j = 0; j < k; j++) {
      struct client *c = evs[j].data.ptr;
      if (c->cap - c->len < 65536 &&
          !(c->buf = realloc(c->buf, c->cap *= 2))) {
        perror("realloc");
        return 1;
      }
      ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
      if (r <= 0) {
        c->closed = 1;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        continue;
      }
      c->len += (size_t)r;
      parse(c, t);
    }
  }
  long min = events * 2, max = 0, once = 0, cut = 0;
  for (int i = 0; i < n; i++) {
    min = cs[i].got < min ? cs[i].got : min;
    max = cs[i].got > max ? cs[i].got : max;
    once += cs[i].got == events && cs[i].bad == 0;
    cut += cs[i].cut;
  }
  qsort(lat, nlat, sizeof *lat, cmp);
#define PCT(p) (nlat ? lat[(size_t)((p) * (double)(nlat - 1))] * 1000 : 0)
  printf("each client got min %ld max %ld; %ld of %d got every event exactly "
         "once; %ld cut off; latency p50 %.1f ms p99 %.1f ms max %.1f ms\n",
         min, max, once, n, cut, PCT(0.5), PCT(0.99), PCT(1.0));
  return 0;
}
