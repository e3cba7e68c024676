/* dirwatch.h -- tells when something in a set of directories changed,
 * through one inotify instance read by an ev_io watcher.
 *
 * What is watched is renewed in passes: between mq_dirwatch_begin() and
 * mq_dirwatch_end() the caller names every directory it reads (each
 * event in it counts) and every entry whose replacement matters (only
 * events on that name in its directory count: the handlers directory
 * renamed into place, a symlink on its path swapped); end() drops the
 * watches the pass did not name again. A pass made just before the
 * caller reads the directories misses nothing: a change made before a
 * watch was added is seen by that read, a change after it by the watch.
 *
 * The callback only says "something may have changed": callers read
 * again (and debounce). Events carry no content, so spurious calls are
 * possible (an editor's swap file made) and harmless.
 *
 * Uses: libev, Linux inotify(7).
 */
#ifndef MQ_DIRWATCH_H
#define MQ_DIRWATCH_H

#include <stddef.h>

#include <ev.h>

typedef struct mq_dirwatch mq_dirwatch;

/* Called from the loop after events that match a watch; data as given to
 * mq_dirwatch_new(). */
typedef void (*mq_dirwatch_cb)(void *data);

/* Opens an inotify instance and starts reading it on loop (the watcher
 * keeps no loop running by itself). Returns NULL with the reason in err
 * when the system gives no instance (max_user_instances reached) or
 * memory runs out; the callback is then never called. */
mq_dirwatch *mq_dirwatch_new(struct ev_loop *loop, mq_dirwatch_cb cb,
                             void *data, char *err, size_t errlen);

/* Starts a pass: every watch is dropped at the next end() unless named
 * again before it. */
void mq_dirwatch_begin(mq_dirwatch *dw);

/* Watches directory `path` (symlinks followed): entries created, deleted
 * or renamed in it, the directory itself deleted or moved, and files
 * written or touched whose names end in `suffix` and do not start with
 * '.' (NULL: any file). Returns 0, or -1 with errno (ENOSPC: the system's
 * watch limit, max_user_watches, is reached; ENOENT, ENOTDIR: no such
 * directory). */
int mq_dirwatch_dir(mq_dirwatch *dw, const char *path, const char *suffix);

/* Watches the entry `name` of directory `dir`: created, deleted or renamed
 * to or from that name. Returns as mq_dirwatch_dir(). */
int mq_dirwatch_entry(mq_dirwatch *dw, const char *dir, const char *name);

/* Ends a pass: removes the watches not named since begin(). */
void mq_dirwatch_end(mq_dirwatch *dw);

/* Stops reading, removes every watch and frees dw. NULL-safe. */
void mq_dirwatch_close(mq_dirwatch *dw);

#endif
