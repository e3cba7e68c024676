/* dirwatch.c -- directory change notification; see dirwatch.h.
 *
 * One record per (watch descriptor, kind, name): a directory watched whole
 * (name: the suffix its files' content changes must have, or NULL), or
 * the one entry of a directory that counts. The kernel gives one
 * descriptor per inode, so a directory named several ways has several
 * records with the same wd; IN_MASK_ADD keeps the union of their masks,
 * and the records decide which events count. A descriptor is removed from
 * the kernel when its last record goes.
 */
#include "dirwatch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <ev.h>

/* A file's content or times changed: counts only for names with the
 * directory's suffix (a log written beside the files wakes nobody). */
#define CONTENT_MASK (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB)
/* A directory watched whole: what changes the files in it or it. */
#define DIR_MASK                                                           \
  (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | CONTENT_MASK |    \
   IN_DELETE_SELF | IN_MOVE_SELF)
/* An entry: what makes its name point somewhere else. */
#define ENTRY_MASK (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)

struct record {
  int wd;
  bool entry; /* watches the entry `name`; else the directory whole */
  char *name; /* the entry, or the suffix (NULL: any name) */
  bool seen;  /* named in the current pass */
};

struct mq_dirwatch {
  struct ev_loop *loop;
  ev_io io;
  int fd;
  struct record *records;
  size_t n, cap;
  mq_dirwatch_cb cb;
  void *data;
};

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* True when record r takes ev (of r's descriptor). */
static bool takes(const struct record *r, const struct inotify_event *ev) {
  const char *name = ev->len > 0 ? ev->name : NULL;
  if (r->entry)
    return name && strcmp(name, r->name) == 0;
  if (!(ev->mask & CONTENT_MASK) || !name || !r->name)
    return true;
  return ends_with(name, r->name) && name[0] != '.';
}

/* True when some record of ev's descriptor takes ev. */
static bool counts(const mq_dirwatch *dw, const struct inotify_event *ev) {
  for (size_t i = 0; i < dw->n; i++)
    if (dw->records[i].wd == ev->wd && takes(&dw->records[i], ev))
      return true;
  return false;
}

/* The kernel dropped descriptor wd (its directory is gone, or we removed
 * it). Returns whether a record still used it: then the change counts. */
static bool forget(mq_dirwatch *dw, int wd) {
  bool had = false;
  for (size_t i = 0; i < dw->n;) {
    if (dw->records[i].wd != wd) {
      i++;
      continue;
    }
    had = true;
    free(dw->records[i].name);
    dw->records[i] = dw->records[--dw->n];
  }
  return had;
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents) {
  mq_dirwatch *dw = io->data;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  bool hit = false;
  ssize_t len;
  while ((len = read(dw->fd, buf, sizeof buf)) > 0) {
    for (char *p = buf; p < buf + len;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      if (ev->mask & IN_Q_OVERFLOW)
        hit = true; /* events were lost: anything may have changed */
      else if (ev->mask & IN_IGNORED)
        hit |= forget(dw, ev->wd);
      else
        hit |= counts(dw, ev);
      p += sizeof *ev + ev->len;
    }
  }
  if (hit)
    dw->cb(dw->data);
}

mq_dirwatch *mq_dirwatch_new(struct ev_loop *loop, mq_dirwatch_cb cb,
                             void *data, char *err, size_t errlen) {
  mq_dirwatch *dw = calloc(1, sizeof *dw);
  if (!dw) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  dw->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (dw->fd < 0) {
    snprintf(err, errlen, "inotify_init1: %s", strerror(errno));
    free(dw);
    return NULL;
  }
  dw->loop = loop;
  dw->cb = cb;
  dw->data = data;
  ev_io_init(&dw->io, io_cb, dw->fd, EV_READ);
  dw->io.data = dw;
  ev_io_start(loop, &dw->io);
  ev_unref(loop); /* watching alone keeps no loop running */
  return dw;
}

void mq_dirwatch_begin(mq_dirwatch *dw) {
  for (size_t i = 0; i < dw->n; i++)
    dw->records[i].seen = false;
}

/* Adds (or renews) the watch of `path` and its record. */
static int add(mq_dirwatch *dw, const char *path, bool entry,
               const char *name) {
  uint32_t mask = entry ? ENTRY_MASK : DIR_MASK;
  int wd = inotify_add_watch(dw->fd, path, mask | IN_ONLYDIR | IN_MASK_ADD);
  if (wd < 0)
    return -1;
  for (size_t i = 0; i < dw->n; i++) {
    struct record *r = &dw->records[i];
    if (r->wd == wd && r->entry == entry &&
        (r->name ? name && strcmp(r->name, name) == 0 : !name)) {
      r->seen = true;
      return 0;
    }
  }
  if (dw->n == dw->cap) {
    size_t cap = dw->cap ? dw->cap * 2 : 8;
    struct record *r = realloc(dw->records, sizeof *r * cap);
    if (!r) {
      errno = ENOMEM;
      return -1;
    }
    dw->records = r;
    dw->cap = cap;
  }
  struct record *r = &dw->records[dw->n];
  *r = (struct record){.wd = wd, .entry = entry, .seen = true};
  if (name && !(r->name = strdup(name))) {
    errno = ENOMEM;
    return -1;
  }
  dw->n++;
  return 0;
}

int mq_dirwatch_dir(mq_dirwatch *dw, const char *path, const char *suffix) {
  return add(dw, path, false, suffix);
}

int mq_dirwatch_entry(mq_dirwatch *dw, const char *dir, const char *name) {
  return add(dw, dir, true, name);
}

void mq_dirwatch_end(mq_dirwatch *dw) {
  for (size_t i = 0; i < dw->n;) {
    struct record *r = &dw->records[i];
    if (r->seen) {
      i++;
      continue;
    }
    int wd = r->wd;
    free(r->name);
    *r = dw->records[--dw->n];
    bool used = false;
    for (size_t k = 0; k < dw->n && !used; k++)
      used = dw->records[k].wd == wd;
    if (!used) /* its IN_IGNORED finds no record: no call */
      inotify_rm_watch(dw->fd, wd);
  }
}

void mq_dirwatch_close(mq_dirwatch *dw) {
  if (!dw)
    return;
  ev_ref(dw->loop);
  ev_io_stop(dw->loop, &dw->io);
  close(dw->fd); /* removes every watch */
  for (size_t i = 0; i < dw->n; i++)
    free(dw->records[i].name);
  free(dw->records);
  free(dw);
}
