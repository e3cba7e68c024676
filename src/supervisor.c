/* supervisor.c -- forks and watches the worker processes; see
 * supervisor.h. */
#include "supervisor.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "runtime.h"

struct child {
  struct sup *sup;
  int index;
  pid_t pid;
  ev_tstamp started;
  double backoff;
  ev_child watcher;
  ev_timer restart;
};

struct sup {
  struct ev_loop *loop;
  double shutdown_grace;
  int (*child_main)(void *arg, int index, struct ev_loop *loop);
  void *arg;
  struct child *children;
  int n;
  bool stopping;
  int alive;
  ev_signal sigint, sigterm, sighup;
  ev_timer kill_timer;
};

static void spawn(struct child *c);

static void restart_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  spawn(t->data);
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents) {
  struct child *c = w->data;
  struct sup *s = c->sup;
  ev_child_stop(loop, w);
  s->alive--;
  int st = w->rstatus;
  c->pid = 0;
  if (s->stopping) {
    mq_log_info("supervisor", "worker stopped index=%d status=%d", c->index,
                WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
    if (s->alive == 0)
      ev_break(loop, EVBREAK_ALL);
    return;
  }
  double lived = ev_now(loop) - c->started;
  c->backoff = lived > 60 ? 1 : c->backoff < 1 ? 1 : c->backoff * 2;
  if (c->backoff > 30)
    c->backoff = 30;
  if (WIFSIGNALED(st))
    mq_log_error("supervisor", "worker died index=%d signal=%d restart_in_s=%g",
                 c->index, WTERMSIG(st), c->backoff);
  else
    mq_log_error("supervisor", "worker exited index=%d status=%d restart_in_s=%g",
                 c->index, WEXITSTATUS(st), c->backoff);
  ev_timer_set(&c->restart, c->backoff, 0.);
  ev_timer_start(loop, &c->restart);
}

static void spawn(struct child *c) {
  struct sup *s = c->sup;
  struct ev_loop *loop = s->loop;
  fflush(NULL);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    mq_log_error("supervisor", "fork failed index=%d", c->index);
    ev_timer_set(&c->restart, 1., 0.);
    ev_timer_start(loop, &c->restart);
    return;
  }
  if (pid == 0) {
    /* A worker stops (gracefully: its running jobs go back to the queue)
     * when the supervisor dies, even by SIGKILL; one whose supervisor died
     * before this line does not start. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
      _exit(1);
    /* The child drops the supervisor's watchers and loop and builds its
     * own (signal watchers are global in libev: stop them first). */
    ev_signal_stop(loop, &s->sigint);
    ev_signal_stop(loop, &s->sigterm);
    ev_signal_stop(loop, &s->sighup);
    for (int i = 0; i < s->n; i++) {
      ev_child_stop(loop, &s->children[i].watcher);
      ev_timer_stop(loop, &s->children[i].restart);
    }
    ev_loop_destroy(EV_DEFAULT);
    char tag[16];
    snprintf(tag, sizeof tag, "w%d", c->index + 1);
    mq_log_set_tag(tag);
    exit(s->child_main(s->arg, c->index, ev_default_loop(0)));
  }
  c->pid = pid;
  c->started = ev_now(loop);
  s->alive++;
  ev_child_set(&c->watcher, pid, 0);
  ev_child_start(loop, &c->watcher);
  mq_log_info("supervisor", "worker started index=%d pid=%d", c->index,
              (int)pid);
}

static void forward(struct sup *s, int sig) {
  for (int i = 0; i < s->n; i++)
    if (s->children[i].pid > 0)
      kill(s->children[i].pid, sig);
}

static void kill_cb(struct ev_loop *loop, ev_timer *t, int revents) {
  struct sup *s = t->data;
  mq_log_warn("supervisor", "workers still running after the grace period: "
              "killing them");
  forward(s, SIGKILL);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents) {
  struct sup *s = w->data;
  if (w->signum == SIGHUP) {
    mq_log_info("supervisor", "SIGHUP: forwarding to workers");
    forward(s, SIGHUP);
    return;
  }
  if (!s->stopping) {
    s->stopping = true;
    mq_log_info("supervisor", "stopping workers=%d", s->alive);
    for (int i = 0; i < s->n; i++)
      ev_timer_stop(loop, &s->children[i].restart);
    ev_timer_init(&s->kill_timer, kill_cb, s->shutdown_grace + 10, 0.);
    s->kill_timer.data = s;
    ev_timer_start(loop, &s->kill_timer);
  }
  forward(s, SIGTERM);
  if (s->alive == 0)
    ev_break(loop, EVBREAK_ALL);
}

int mq_supervisor_run(struct ev_loop *loop, int workers, double shutdown_grace,
                      int (*child_main)(void *arg, int index,
                                        struct ev_loop *loop),
                      void *arg) {
  struct sup s = {.loop = loop, .shutdown_grace = shutdown_grace,
                  .child_main = child_main, .arg = arg, .n = workers};
  s.children = calloc((size_t)s.n, sizeof *s.children);
  if (!s.children)
    return 1;
  ev_signal *sigs[] = {&s.sigint, &s.sigterm, &s.sighup};
  int nums[] = {SIGINT, SIGTERM, SIGHUP};
  for (int i = 0; i < 3; i++) {
    ev_signal_init(sigs[i], signal_cb, nums[i]);
    sigs[i]->data = &s;
    ev_signal_start(loop, sigs[i]);
  }
  for (int i = 0; i < s.n; i++) {
    struct child *c = &s.children[i];
    c->sup = &s;
    c->index = i;
    ev_init(&c->watcher, child_cb);
    c->watcher.data = c;
    ev_init(&c->restart, restart_cb);
    c->restart.data = c;
    spawn(c);
  }
  ev_run(loop, 0);
  ev_timer_stop(loop, &s.kill_timer);
  for (int i = 0; i < 3; i++)
    ev_signal_stop(loop, sigs[i]);
  free(s.children);
  mq_log_info("supervisor", "stopped");
  return 0;
}
