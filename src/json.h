/* json.h -- lossless JSON <-> Lua values, and JSON objects written from C.
 *
 * Job data, outputs and event payloads cross SQL (jsonb), C and Lua through
 * this unit, never through lua-cjson (Debian's 2.1.0 turns every number into
 * a float and prints 14 digits). Rules:
 *
 *  - A JSON number without fraction or exponent that fits int64 decodes to a
 *    Lua integer; any other number to a float. Lua integers encode exactly;
 *    floats encode with up to 17 significant digits (shortest that round-
 *    trips) and always look like floats ("1.0", not "1"), so the integer /
 *    float distinction survives a round trip. NaN and infinities are errors.
 *  - JSON null is mq_json_null: a light userdata NULL, the same value as
 *    cjson.null, exposed to Lua as moonq.null.
 *  - A Lua table with keys 1..n (n >= 1) encodes as an array, one with only
 *    string keys as an object. An empty table encodes as {} unless its
 *    metatable is moonq.array_mt (then []); decoded empty arrays carry that
 *    metatable, so [] and {} both round-trip.
 *  - Strings are UTF-8 and escaped per RFC 8259; \uXXXX escapes, surrogate
 *    pairs included, decode to UTF-8.
 *  - Other Lua types (functions, userdata, mixed or sparse tables, cycles,
 *    nesting deeper than 128) are errors naming the path ("data.items[3]").
 *
 * C code that sends JSON of its own (settings, small results) writes it with
 * an mq_json_object, under the same rules for numbers and strings, instead
 * of formatting a document by hand.
 *
 * Uses nothing else from moonq.
 */
#ifndef MQ_JSON_H
#define MQ_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

/* Registry key (light userdata address) of the array metatable. */
extern const char mq_json_array_mt_key;

/* Pushes the array metatable (creating it on first use). */
void mq_json_push_array_mt(lua_State *L);

/* Encodes the value at idx. Returns a malloc'd NUL-terminated string the
 * caller frees (length in *len when len is not NULL), or NULL with a message
 * in err naming the path from `root` ("data", "options"...). */
char *mq_json_encode(lua_State *L, int idx, const char *root, size_t *len,
                     char *err, size_t errlen);

/* mq_json_encode for a document PostgreSQL stores as jsonb: a string or
 * key holding a NUL character is also an error naming its path. */
char *mq_json_encode_stored(lua_State *L, int idx, const char *root,
                            size_t *len, char *err, size_t errlen);

/* Decodes text[0..len) and pushes the value. Returns 0, or -1 with nothing
 * pushed and a message with the byte offset in err. */
int mq_json_decode(lua_State *L, const char *text, size_t len, char *err,
                   size_t errlen);

/* mq_json_decode, except that an object holding a key twice is an error
 * naming the key and its byte offset (mq_json_decode keeps the last, as
 * PostgreSQL's jsonb does): for documents a client sends, where a key
 * twice is a mistake that would be lost silently. */
int mq_json_decode_unique(lua_State *L, const char *text, size_t len,
                          char *err, size_t errlen);

/* mq_json_decode for a document that wraps values of the 128-level limit
 * `levels` deep (a job inside a list: 2), so that they decode whole. */
int mq_json_decode_wrapped(lua_State *L, const char *text, size_t len,
                           int levels, char *err, size_t errlen);

/* True when JSON text (as this unit encodes it) holds a NUL character
 * (\u0000) in a string, which PostgreSQL's jsonb refuses. */
bool mq_json_has_nul(const char *json);

/* A copy of json (caller frees; NULL when out of memory) whose NUL
 * characters (\u0000, which PostgreSQL's jsonb refuses) are the six
 * characters "\u0000" instead: for documents that must be stored whatever
 * they hold, such as a handler's error. */
char *mq_json_nul_visible(const char *json);

/* Replaces, in place, every byte of s that is not part of valid UTF-8 with
 * '?' (the length stays): for text that must be stored whatever it holds
 * (an error message, a traceback). */
void mq_json_utf8_repair(char *s);

/* Offset of the first byte of s[0..n) that does not start a valid UTF-8
 * sequence (the rule JSON strings follow here), or n when all are valid. */
size_t mq_json_utf8_check(const char *s, size_t n);

/* A JSON object being written from C, member by member, in the order of the
 * calls. Keys are the caller's; each value is encoded as mq_json_encode
 * would encode it in Lua. Errors (out of memory, a string that is not UTF-8,
 * a number that is not finite) are sticky: later calls do nothing and
 * mq_json_object_finish reports the first. Every function also accepts the
 * NULL that mq_json_object_new returns when out of memory, so a caller
 * checks once, at finish. */
typedef struct mq_json_object mq_json_object;

/* Starts an empty object; NULL when out of memory. The caller ends it with
 * mq_json_object_finish, which frees it. */
mq_json_object *mq_json_object_new(void);

/* Each adds member `key` and returns 0, or -1 once a write has failed. */
int mq_json_object_int(mq_json_object *o, const char *key, long long v);
int mq_json_object_number(mq_json_object *o, const char *key, double v);
int mq_json_object_bool(mq_json_object *o, const char *key, bool v);
/* s NULL adds a null member. */
int mq_json_object_string(mq_json_object *o, const char *key, const char *s);
int mq_json_object_null(mq_json_object *o, const char *key);
/* Adds JSON text as it is (NULL: null): for documents this unit encoded,
 * such as a job's or an event's data. */
int mq_json_object_raw(mq_json_object *o, const char *key, const char *json);

/* Closes the object and frees o. Returns the JSON text (the caller frees),
 * or NULL with a message in err naming the member that failed. */
char *mq_json_object_finish(mq_json_object *o, char *err, size_t errlen);

#endif
