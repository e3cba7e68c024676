/* test_command.c -- `moonq test`; see test_command.h.
 *
 * Steps: find the app and moonq's own files, start the private PostgreSQL
 * (unless MOONQ_TEST_DATABASE_URL is set), run busted as a child with the
 * environment set, stop PostgreSQL again if this command started it, and
 * exit with busted's status.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include "test_command.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime.h"

#ifndef MOONQ_INSTALL_LIBDIR
#define MOONQ_INSTALL_LIBDIR "lib"
#endif
#ifndef MOONQ_INSTALL_DATADIR
#define MOONQ_INSTALL_DATADIR "share"
#endif

enum { MAX_ARGS = 64 };

/* Where things are; every path absolute. */
struct paths {
  char exe_dir[PATH_MAX];
  char app[PATH_MAX];      /* the app: busted runs here */
  char config[PATH_MAX];   /* --config made absolute, or "" */
  char lua_dir[PATH_MAX];  /* holds moonq/testing.lua */
  char so_dir[PATH_MAX];   /* holds moonq.so */
  char pg_script[PATH_MAX + 16];
  char pg_dir[PATH_MAX + 16]; /* <app>/.moonq/test-pg */
  char lua[PATH_MAX];      /* the lua5.4 interpreter */
  char busted[PATH_MAX];   /* busted's script */
};

__attribute__((format(printf, 1, 2))) static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("moonq test: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Copies the first of `candidates` (NULL-terminated; absolute, or
 * relative to `base`) under which `probe` exists into out, resolved. */
static bool find_dir(char *out, size_t len, const char *base,
                     const char *const *candidates, const char *probe) {
  for (const char *const *c = candidates; *c; c++) {
    char dir[2 * PATH_MAX], file[3 * PATH_MAX];
    if ((*c)[0] == '/')
      snprintf(dir, sizeof dir, "%s", *c);
    else
      snprintf(dir, sizeof dir, "%s/%s", base, *c);
    snprintf(file, sizeof file, "%s/%s", dir, probe);
    char *real = realpath(dir, NULL);
    if (real && is_file(file)) {
      snprintf(out, len, "%s", real);
      free(real);
      return true;
    }
    free(real);
  }
  return false;
}

/* The first executable `name` on PATH, into out. */
static bool find_on_path(char *out, size_t len, const char *name) {
  const char *path = getenv("PATH");
  if (!path || !*path)
    path = "/usr/local/bin:/usr/bin:/bin";
  for (const char *p = path; *p;) {
    size_t n = strcspn(p, ":");
    snprintf(out, len, "%.*s/%s", (int)n, n ? p : ".", name);
    if (access(out, X_OK) == 0 && is_file(out))
      return true;
    p += n;
    if (*p == ':')
      p++;
  }
  return false;
}

static int find_app(struct paths *p, const char *config) {
  char dir[PATH_MAX];
  if (config) {
    char *real = realpath(config, NULL);
    if (!real) {
      fail("no config file %s", config);
      return -1;
    }
    snprintf(p->config, sizeof p->config, "%s", real);
    free(real);
    snprintf(dir, sizeof dir, "%s", p->config);
    *strrchr(dir, '/') = '\0';
  } else if (!getcwd(dir, sizeof dir)) {
    fail("cannot read the current directory: %s", strerror(errno));
    return -1;
  }
  snprintf(p->app, sizeof p->app, "%s", dir[0] ? dir : "/");
  snprintf(p->pg_dir, sizeof p->pg_dir, "%s/.moonq/test-pg", p->app);
  return 0;
}

/* moonq's Lua modules, moonq.so and pg.sh: beside the executable (a build
 * directory of the source tree, or an installed prefix), else in the
 * source tree it was built from. */
static int find_moonq(struct paths *p) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    fail("cannot find the moonq executable: %s", strerror(errno));
    return -1;
  }
  exe[n] = '\0';
  *strrchr(exe, '/') = '\0';
  snprintf(p->exe_dir, sizeof p->exe_dir, "%s", exe);
  static const char *const lua_dirs[] = {
      "../lua", "../" MOONQ_INSTALL_DATADIR "/lua/5.4", MOONQ_SOURCE_DIR "/lua",
      NULL};
  static const char *const so_dirs[] = {
      ".", "../" MOONQ_INSTALL_LIBDIR "/lua/5.4", "../lib/lua/5.4", NULL};
  static const char *const script_dirs[] = {
      "../scripts", MOONQ_SOURCE_DIR "/scripts", NULL};
  char script_dir[PATH_MAX];
  if (!find_dir(p->lua_dir, sizeof p->lua_dir, exe, lua_dirs,
                "moonq/testing.lua")) {
    fail("cannot find moonq's Lua modules (moonq/testing.lua) near %s", exe);
    return -1;
  }
  if (!find_dir(p->so_dir, sizeof p->so_dir, exe, so_dirs, "moonq.so")) {
    fail("cannot find moonq.so (the Lua module) near %s: build it", exe);
    return -1;
  }
  const char *env = getenv("MOONQ_PG_SCRIPT");
  if (env && *env)
    snprintf(p->pg_script, sizeof p->pg_script, "%s", env);
  else if (find_dir(script_dir, sizeof script_dir, exe, script_dirs, "pg.sh"))
    snprintf(p->pg_script, sizeof p->pg_script, "%s/pg.sh", script_dir);
  return 0;
}

static int find_busted(struct paths *p) {
  if (!find_on_path(p->lua, sizeof p->lua, "lua5.4")) {
    fail("%s is not installed (scripts/deps.sh installs it)", "lua5.4");
    return -1;
  }
  if (!find_on_path(p->busted, sizeof p->busted, "busted")) {
    fail("%s is not installed (Debian: lua-busted; scripts/deps.sh installs "
         "it)", "busted");
    return -1;
  }
  return 0;
}

/* Runs argv in `dir` (NULL: here) and waits; returns its exit status
 * (128 + signal when killed), or -1 when it could not start. SIGINT and
 * SIGQUIT reach the child from the terminal; this process waits them out,
 * as system() does, so that it can clean up afterwards. */
static int run(char *const argv[], const char *dir, bool quiet) {
  struct sigaction ign = {.sa_handler = SIG_IGN}, oint, oquit;
  sigemptyset(&ign.sa_mask);
  sigaction(SIGINT, &ign, &oint);
  sigaction(SIGQUIT, &ign, &oquit);
  pid_t pid = fork();
  if (pid == 0) {
    sigaction(SIGINT, &oint, NULL);
    sigaction(SIGQUIT, &oquit, NULL);
    if (dir && chdir(dir) != 0) {
      fprintf(stderr, "moonq test: cd %s: %s\n", dir, strerror(errno));
      _exit(127);
    }
    if (quiet && !freopen("/dev/null", "w", stdout))
      _exit(127);
    execv(argv[0], argv);
    fprintf(stderr, "moonq test: cannot run %s: %s\n", argv[0],
            strerror(errno));
    _exit(127);
  }
  int status = -1;
  if (pid > 0)
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
      ;
  sigaction(SIGINT, &oint, NULL);
  sigaction(SIGQUIT, &oquit, NULL);
  if (pid < 0)
    return -1;
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

/* pg.sh COMMAND on the test cluster; its exit status. */
static int pg(const struct paths *p, const char *command) {
  char *argv[] = {(char *)"/bin/bash", (char *)p->pg_script, (char *)command,
                  (char *)p->pg_dir, NULL};
  return run(argv, NULL, true);
}

/* Sets name to `first;` followed by its old value (or ";", which Lua reads
 * as the default path). */
static int prepend(const char *name, const char *first) {
  const char *old = getenv(name);
  size_t len = strlen(first) + (old ? strlen(old) : 1) + 2;
  char *value = malloc(len);
  if (!value)
    return -1;
  snprintf(value, len, "%s;%s", first, old && *old ? old : ";");
  int rc = setenv(name, value, 1);
  free(value);
  return rc;
}

static int set_env(const struct paths *p, const char *url) {
  char lpath[4 * PATH_MAX + 64], cpath[PATH_MAX + 16], exe[PATH_MAX + 8];
  snprintf(lpath, sizeof lpath, "%s/?.lua;%s/?/init.lua;%s/lua/?.lua;%s/lua/?/init.lua",
           p->lua_dir, p->lua_dir, p->app, p->app);
  snprintf(cpath, sizeof cpath, "%s/?.so", p->so_dir);
  snprintf(exe, sizeof exe, "%s/moonq", p->exe_dir);
  if (setenv("DATABASE_URL", url, 1) != 0 || setenv("MOONQ_BIN", exe, 1) != 0 ||
      prepend("LUA_PATH", lpath) != 0 || prepend("LUA_PATH_5_4", lpath) != 0 ||
      prepend("LUA_CPATH", cpath) != 0 || prepend("LUA_CPATH_5_4", cpath) != 0 ||
      (p->config[0] && setenv("MOONQ_CONFIG", p->config, 1) != 0)) {
    fail("cannot set the environment: %s", strerror(errno));
    return -1;
  }
  return 0;
}

static int run_busted(const struct paths *p, int argc, char **args) {
  if (argc > MAX_ARGS) {
    fail("too many arguments for busted (at most %d)", MAX_ARGS);
    return 1;
  }
  char *argv[MAX_ARGS + 3];
  int n = 0;
  argv[n++] = (char *)p->lua;
  argv[n++] = (char *)p->busted;
  for (int i = 0; i < argc; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  int rc = run(argv, p->app, false);
  return rc < 0 ? 1 : rc;
}

int mq_test_command_run(const char *config, int argc, char **args) {
  struct paths p = {0};
  if (find_app(&p, config) != 0 || find_moonq(&p) != 0 || find_busted(&p) != 0)
    return 1;
  const char *given = getenv("MOONQ_TEST_DATABASE_URL");
  char *url = NULL;
  bool started = false;
  if (given && *given) {
    url = strdup(given);
  } else {
    if (!p.pg_script[0] || !is_file(p.pg_script)) {
      fail("cannot find scripts/pg.sh to start PostgreSQL (set "
           "MOONQ_TEST_DATABASE_URL to use a database of your own)");
      return 1;
    }
    started = pg(&p, "status") != 0;
    setenv("MOONQ_PG_SCRIPT", p.pg_script, 0);
    char err[2048];
    if (!(url = mq_runtime_local_db(p.pg_dir, err, sizeof err))) {
      fail("%s", err);
      return 1;
    }
  }
  int rc = 1;
  if (url && set_env(&p, url) == 0)
    rc = run_busted(&p, argc, args);
  free(url);
  if (started && pg(&p, "stop") != 0)
    fail("stopping the PostgreSQL in %s failed", p.pg_dir);
  return rc;
}
