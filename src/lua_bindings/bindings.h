/* bindings.h -- the Lua modules moonq registers.
 *
 * Each file in src/lua_bindings/ defines one luaopen_moonq_<module>. They
 * convert arguments and results and call the C subsystems; logic stays in
 * the subsystem. mq_bindings_preload() puts them all in package.preload, so
 * `require "moonq.json"` works in the executable and in the module alike.
 */
#ifndef MQ_BINDINGS_H
#define MQ_BINDINGS_H

#include <lua.h>

/* The `moonq` module itself; the shared object exports it as luaopen_moonq. */
int mq_luaopen_moonq(lua_State *L);
int luaopen_moonq_json(lua_State *L);
int luaopen_moonq_log(lua_State *L);
int luaopen_moonq_db(lua_State *L);
int luaopen_moonq_queue(lua_State *L);
int luaopen_moonq_events(lua_State *L);
int luaopen_moonq_worker(lua_State *L);
/* moonq.schedule, moonq.unschedule and moonq.schedules (moonq.c copies
 * them onto `moonq`). */
int luaopen_moonq_schedule(lua_State *L);

/* Shared by moonq.events and its consumer groups (moonq_event_groups.c):
 * the event store of L's runtime (raises when moonq is not open or events
 * are disabled), an event as a Lua table {id, stream, type, ts, data,
 * run_id, flow_name, step_name, step_id, attempt} (raises on out of
 * memory; data Lua cannot represent leaves data nil and sets data_error
 * to what is wrong), and the group functions added to the module table on
 * top. */
struct mq_events;
struct mq_event;
struct mq_runtime;
struct mq_events *mq_lua_events(lua_State *L, struct mq_runtime **rt);
void mq_lua_push_event(lua_State *L, const struct mq_event *e);
void mq_lua_event_groups_register(lua_State *L);

/* Encodes the value at idx (nil: `dflt`) as JSON and pushes it as a
 * string; returns it, or NULL with the message pushed instead. Shared by
 * moonq.queue and moonq.schedule (moonq_queue.c). */
const char *mq_lua_json_arg(lua_State *L, int idx, const char *root,
                            const char *dflt);

/* The string argument at idx; raises as luaL_checkstring does, and names
 * the argument when it holds a NUL byte (C would read it cut there, and
 * "a\0b" would name "a"). Shared by moonq.queue (moonq_queue.c). */
const char *mq_lua_check_text(lua_State *L, int idx);
const char *mq_lua_opt_text(lua_State *L, int idx, const char *dflt);

/* Registers every luaopen_moonq_* above in package.preload. */
void mq_bindings_preload(lua_State *L);

#endif
