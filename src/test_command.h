/* test_command.h -- `moonq test [busted args]`: an app's specs with busted
 * on a private PostgreSQL.
 *
 * The app is the directory of --config (default: the current directory).
 * The command starts the private cluster under <app>/.moonq/test-pg
 * (scripts/pg.sh; MOONQ_TEST_DATABASE_URL names a database to use
 * instead), runs `lua5.4 busted ARGS` in the app's directory with
 * DATABASE_URL set to it and LUA_PATH / LUA_CPATH (and their _5_4 forms)
 * reaching moonq's Lua modules, moonq.so and the app's lua/ directory, then
 * stops the cluster if it started it. moonq's files are found beside the
 * executable (a build tree in the source tree, or an installed prefix),
 * then in the source tree it was built from.
 *
 * Uses: runtime (the private PostgreSQL), log.
 */
#ifndef MQ_TEST_COMMAND_H
#define MQ_TEST_COMMAND_H

/* Runs the command; `config` is --config or NULL, args are busted's
 * (argc of them). Returns the exit code: busted's, 1 when something it
 * needs is missing or PostgreSQL does not start (a message on stderr). */
int mq_test_command_run(const char *config, int argc, char **args);

#endif
