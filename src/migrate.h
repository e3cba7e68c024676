/* migrate.h -- applies sql/NNN_name.sql migrations in order.
 *
 * The migrations are compiled into the binary (cmake/EmbedSql.cmake). Each
 * runs in its own transaction under an advisory lock keyed on the schema, and
 * is recorded in <schema>.migrations, so running twice, or from two
 * processes at once, applies each exactly once. "@schema@" in the SQL is
 * replaced by the quoted schema identifier.
 *
 * This runs before the loop starts (at `moonq migrate`, `moonq run` and
 * moonq.open()), on a blocking connection of its own.
 *
 * Uses: log.
 */
#ifndef MQ_MIGRATE_H
#define MQ_MIGRATE_H

#include <stddef.h>

struct mq_migration {
  int version;
  const char *name;
  const char *sql;
};

extern const struct mq_migration mq_migrations[];
extern const int mq_migrations_count;

/* Connects with `conninfo`, applies what is missing in `schema`. Returns the
 * number of migrations applied (0 when up to date), or -1 with a message in
 * err. */
int mq_migrate(const char *conninfo, const char *schema, char *err,
               size_t errlen);

/* mq_migrate, but applies only the migrations up to `version`: a database
 * as an older moonq left it, for testing an upgrade. */
int mq_migrate_to(const char *conninfo, const char *schema, int version,
                  char *err, size_t errlen);

/* The highest version compiled in. */
int mq_migrate_latest(void);

#endif
