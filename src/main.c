/* main.c -- the `moonq` command line.
 *
 *   moonq [--config FILE] COMMAND [ARGS]
 *
 * Exit codes: 0 success, 1 runtime error (bad config, database failure),
 * 2 wrong usage. Errors go to stderr as one line starting with "moonq: ".
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "config.h"
#include "log.h"
#include "lua_host.h"
#include "migrate.h"
#include "runtime.h"
#include "test_command.h"

enum { EXIT_USAGE = 2 };

struct cli {
  const char *config;   /* --config; NULL: ./config.lua when present */
  const char *command;
  int argc;             /* the command's own arguments */
  char **argv;
};

static const char usage_text[] =
    "usage: moonq [--config FILE] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  run [--http ADDR]\n"
    "             apply migrations, then run the handlers in config.lua's\n"
    "             handlers directory until SIGINT/SIGTERM; --http ADDR\n"
    "             (host:port) serves the HTTP API there (config http.listen)\n"
    "  web [--http ADDR]\n"
    "             serve only the HTTP API (docs/http.md), on ADDR, config\n"
    "             http.listen or 127.0.0.1:8080\n"
    "  migrate    apply database migrations and exit\n"
    "  enqueue NAME JSON [--delay S] [--priority N] [--queue Q]\n"
    "             [--start-after TIME] [--retry-limit N] [--retry-delay S]\n"
    "             [--retry-backoff true|false] [--retry-delay-max S]\n"
    "             [--expire-in S] [--retention S] [--singleton-key K]\n"
    "             [--dead-letter Q] [--run-id R]   send a job, print its id\n"
    "  jobs QUEUE [--state S] [--limit N] [--after ID] [--oldest]\n"
    "             list a queue's jobs, newest first\n"
    "  job ID     print one job as JSON\n"
    "  counts QUEUE       jobs of a queue in each state\n"
    "  pause QUEUE | resume QUEUE   stop or restart fetching, everywhere\n"
    "  events query STREAM [--type T]... [--run R] [--after ID] [--limit N]\n"
    "             print events as JSON lines, oldest first\n"
    "  events tail STREAM|PATTERN [--from start|end|ID]\n"
    "             follow events as JSON lines until SIGINT\n"
    "  events tail PATTERN --group G --consumer C\n"
    "             the same as member C of consumer group G\n"
    "  events groups [GROUP] | events parked GROUP | events replay GROUP [ID]...\n"
    "             consumer groups: members and lag; parked events; replay\n"
    "  flow start NAME [JSON] [--run-id R]   start a run, print its id\n"
    "  flow runs NAME [--status S] [--limit N]   a flow's runs, newest first\n"
    "  flow show RUN_ID       a run with its steps, and its history\n"
    "  flow cancel RUN_ID     cancel a run's pending steps\n"
    "  test [BUSTED ARGS]\n"
    "             run the app's spec/ with busted on a private PostgreSQL\n"
    "             (under .moonq/test-pg), moonq.testing on the Lua path\n"
    "  schedules  list the cron schedules: name, cron, tz, next and last fire\n"
    "  schedule NAME CRON [JSON] [--tz Z] [--job J] [--backfill B]\n"
    "             [--priority N] [--queue Q] ... (enqueue's options)\n"
    "             create or replace a schedule; each fire enqueues job J\n"
    "  unschedule NAME    delete a schedule and its history\n"
    "  version    print the version\n"
    "  help       print this help\n"
    "\n"
    "options:\n"
    "  -c, --config FILE   configuration file (default ./config.lua)\n"
    "\n"
    "DATABASE_URL overrides config.lua's `database`. With neither, moonq\n"
    "starts a private PostgreSQL under .moonq/ beside the config file.\n";

/* Prints "moonq: <what><arg>" and the usage; returns the usage exit code. */
static int usage_error(const char *what, const char *arg) {
  fprintf(stderr, "moonq: %s%s\n\n%s", what, arg, usage_text);
  return EXIT_USAGE;
}

/* Splits argv into global options, the command and its arguments. Options
 * may stand before or after the command, except after `test`, whose
 * arguments are all busted's. Returns 0 or an exit code. */
static int parse_args(int argc, char **argv, struct cli *cli) {
  static char *rest[64];
  int nrest = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (cli->command && strcmp(cli->command, "test") == 0) {
      if (nrest >= 63)
        return usage_error("too many arguments", "");
      rest[nrest++] = argv[i];
    } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
      if (i + 1 >= argc)
        return usage_error("missing file name after ", a);
      cli->config = argv[++i];
    } else if (strncmp(a, "--config=", 9) == 0) {
      cli->config = a + 9;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      cli->command = "help";
    } else if (strcmp(a, "--version") == 0) {
      cli->command = "version";
    } else if (!cli->command) {
      cli->command = a;
    } else if (nrest < 63) {
      rest[nrest++] = argv[i];
    } else {
      return usage_error("too many arguments", "");
    }
  }
  rest[nrest] = NULL;
  cli->argc = nrest;
  cli->argv = rest;
  if (!cli->command)
    return usage_error("missing command", "");
  return 0;
}

/* Loads the config the command names, with http.listen replaced by
 * `listen` when not NULL; NULL after printing the error. */
static struct mq_config *load_config(lua_State *L, const char *path,
                                     const char *listen) {
  char err[8192];
  struct mq_config *cfg;
  if (path) {
    cfg = mq_config_load_listen(L, path, listen, err, sizeof err);
  } else if (access("config.lua", F_OK) == 0) {
    cfg = mq_config_load_listen(L, "config.lua", listen, err, sizeof err);
  } else {
    cfg = mq_config_defaults();
    if (!cfg)
      snprintf(err, sizeof err, "out of memory");
  }
  if (!cfg) {
    fprintf(stderr, "moonq: %s\n", err);
    return NULL;
  }
  mq_log_set_level(cfg->log.level);
  return cfg;
}

static int cmd_migrate(mq_runtime *rt) {
  char err[4096];
  if (mq_runtime_prepare_db(rt, false, err, sizeof err) != 0) {
    fprintf(stderr, "moonq: %s\n", err);
    return 1;
  }
  printf("schema %s is at version %d\n", mq_runtime_config(rt)->schema,
         mq_migrate_latest());
  return 0;
}

/* open() for lua/moonq/cli.lua: migrates and opens the runtime (upvalue 1)
 * -> true | nil, message. */
static int open_db(lua_State *L) {
  mq_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  char err[4096];
  if (mq_runtime_prepare_db(rt, false, err, sizeof err) != 0 ||
      mq_runtime_open(rt, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* The queue commands live in lua/moonq/cli.lua: they run in the
 * runtime's Lua state, whose moonq calls drive the loop until done. A
 * command checks its arguments before it opens the database (open_db), so
 * wrong usage exits 2 without one. */
static int cmd_lua(mq_runtime *rt, const struct cli *cli) {
  lua_State *L = mq_runtime_lua(rt);
  if (!L) {
    fprintf(stderr, "moonq: out of memory\n");
    return 1;
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonq.cli");
  if (mq_lua_pcall(L, 1, 1) != LUA_OK) {
    fprintf(stderr, "moonq: %s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_getfield(L, -1, "main"); /* [cli, main] */
  lua_pushstring(L, cli->command);
  lua_createtable(L, cli->argc, 0);
  for (int i = 0; i < cli->argc; i++) {
    lua_pushstring(L, cli->argv[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, open_db, 1); /* [cli, main, command, args, open] */
  if (mq_lua_pcall(L, 3, 1) != LUA_OK) {
    fprintf(stderr, "moonq: %s\n", lua_tostring(L, -1));
    return 1;
  }
  return (int)lua_tointeger(L, -1);
}

static bool is_lua_command(const char *c) {
  static const char *const names[] = {"enqueue",   "jobs",     "job",
                                      "counts",    "pause",    "resume",
                                      "events",    "flow",     "schedules",
                                      "schedule",  "unschedule"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(c, names[i]) == 0)
      return true;
  return false;
}

/* `run` and `web`: --http ADDR (or --http=ADDR) in *listen. Returns 0 or
 * the usage exit code. */
static int parse_http(const struct cli *cli, const char **listen) {
  for (int i = 0; i < cli->argc; i++) {
    const char *a = cli->argv[i];
    if (strcmp(a, "--http") == 0) {
      if (i + 1 >= cli->argc)
        return usage_error("missing address after ", a);
      *listen = cli->argv[++i];
    } else if (strncmp(a, "--http=", 7) == 0) {
      *listen = a + 7;
    } else {
      return usage_error("unexpected argument ", a);
    }
  }
  return 0;
}

/* Puts `listen` (or, for `web` without an address anywhere, the default)
 * into cfg->http.listen and checks the http table again. Returns 0, or 1
 * after printing the error. */
static int set_listen(struct mq_config *cfg, const char *listen, bool web) {
  if (!listen && web && !cfg->http.listen)
    listen = "127.0.0.1:8080";
  if (listen) {
    free(cfg->http.listen);
    if (!(cfg->http.listen = strdup(listen))) {
      fprintf(stderr, "moonq: out of memory\n");
      return 1;
    }
  }
  char err[512];
  if (mq_config_check_http(cfg, err, sizeof err) != 0) {
    fprintf(stderr, "moonq: %s\n", err);
    return 1;
  }
  return 0;
}

/* Commands that need a config and a runtime. */
static int with_runtime(const struct cli *cli) {
  bool run = strcmp(cli->command, "run") == 0;
  bool web = strcmp(cli->command, "web") == 0;
  bool lua_cmd = is_lua_command(cli->command);
  const char *listen = NULL;
  if (run || web) {
    int rc = parse_http(cli, &listen);
    if (rc != 0)
      return rc;
  } else if (cli->argc > 0 && !lua_cmd) {
    return usage_error("unexpected argument ", cli->argv[0]);
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "moonq: out of memory\n");
    return 1;
  }
  luaL_openlibs(L);
  struct mq_config *cfg = load_config(L, cli->config, listen);
  if (!cfg) {
    lua_close(L);
    return 1;
  }
  /* The runtime makes its own Lua state to serve handlers and the CLI;
   * the one that read the config is done. */
  lua_close(L);
  if ((run || web) && set_listen(cfg, listen, web) != 0) {
    mq_config_free(cfg);
    return 1;
  }
  mq_runtime *rt = mq_runtime_new(ev_default_loop(0), cfg, NULL);
  if (!rt) {
    fprintf(stderr, "moonq: out of memory\n");
    return 1;
  }
  int code;
  if (run)
    code = mq_runtime_serve(rt);
  else if (web)
    code = mq_runtime_serve_http(rt);
  else if (lua_cmd)
    code = cmd_lua(rt, cli);
  else
    code = cmd_migrate(rt);
  mq_runtime_close(rt);
  return code;
}

int main(int argc, char **argv) {
  struct cli cli = {0};
  int rc = parse_args(argc, argv, &cli);
  if (rc != 0)
    return rc;
  bool plain = strcmp(cli.command, "help") == 0 ||
               strcmp(cli.command, "version") == 0;
  if (plain && cli.argc > 0)
    return usage_error("unexpected argument ", cli.argv[0]);
  if (strcmp(cli.command, "help") == 0) {
    fputs(usage_text, stdout);
    return 0;
  }
  if (strcmp(cli.command, "version") == 0) {
    printf("moonq %s (%s, libpq %d)\n", MOONQ_VERSION, LUA_RELEASE,
           PQlibVersion());
    return 0;
  }
  if (strcmp(cli.command, "test") == 0)
    return mq_test_command_run(cli.config, cli.argc, cli.argv);
  if (strcmp(cli.command, "run") == 0 || strcmp(cli.command, "web") == 0 ||
      strcmp(cli.command, "migrate") == 0 ||
      is_lua_command(cli.command))
    return with_runtime(&cli);
  return usage_error("unknown command ", cli.command);
}
