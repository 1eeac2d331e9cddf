/* jconf.h - the table-driven reader of JSON configuration objects used by
 * every configuration of the library and the daemon (model and training
 * configs, decode and refine options, nesfd.json).
 *
 * A reader is a table of nesf_jfield rows, ended by a row whose key is NULL,
 * each naming a JSON key and where its value goes in the caller's struct.
 * nesf_jconf_read walks the JSON object, not the table: every key must have
 * a row (the key "_comment" excepted, anywhere), so a typo or a misplaced
 * key is an error naming the key and its place ("training.sampling: unknown
 * key \"cell_pionts\""), never a silently ignored setting.  Absent keys keep
 * the struct's values, so callers fill defaults first.  Numbers are range
 * checked; integers accept JSON integers and whole-valued reals. */
#ifndef NESF_JCONF_H
#define NESF_JCONF_H

#include <stddef.h>

#include "error.h"

struct json_t;

typedef enum nesf_jkind {
    NESF_JK_FLOAT,  /* float in [lo, hi] (open at lo when open_lo) */
    NESF_JK_DOUBLE, /* double in [lo, hi] (open at lo when open_lo) */
    NESF_JK_INT,    /* int in [lo, hi] */
    NESF_JK_LONG,   /* long in [lo, hi] */
    NESF_JK_I64,    /* int64_t in [lo, hi] */
    NESF_JK_U64,    /* uint64_t in [lo, hi] */
    NESF_JK_SIZE,   /* size_t in [lo, hi] */
    NESF_JK_BOOL,   /* int 0/1 from true/false (or the integers 0 and 1) */
    NESF_JK_NAMED,  /* int lo + i from the string names[i] */
    NESF_JK_STRING, /* char[size], NUL-terminated, must fit */
    NESF_JK_OBJECT, /* a nested object read with `fields` into the same struct */
    NESF_JK_CUSTOM, /* fn(dst, key path, value, ctx, err) does the work */
} nesf_jkind;

/* A custom field's reader; `path` is the key's place for messages
 * ("timeouts.request_s"); returns NESF_OK or an error code with err set. */
typedef int (*nesf_jconf_fn)(void *dst, const char *path, const struct json_t *v, void *ctx,
                             nesf_error *err);

typedef struct nesf_jfield {
    const char *key;
    nesf_jkind kind;
    size_t off;                       /* offset of the value in the struct */
    double lo, hi;                    /* numeric range (NAMED: lo is the first name's value) */
    int open_lo;                      /* FLOAT/DOUBLE: lo itself is excluded */
    const char *const *names;         /* NAMED: NULL-terminated JSON words */
    size_t size;                      /* STRING: the buffer's size */
    const struct nesf_jfield *fields; /* OBJECT: the nested object's rows */
    nesf_jconf_fn fn;                 /* CUSTOM */
    const char *noun;                 /* the END row: what a key is called in the
                                         unknown-key message ("decode option");
                                         NULL: "key" after the place */
} nesf_jfield;

/* Row builders; T is the struct type, m the member (a.b for nested members). */
#define NESF__JF(k, kind_, T, m, l, h) \
    {.key = k, .kind = kind_, .off = offsetof(T, m), .lo = l, .hi = h}
#define NESF_JF_FLOAT(T, k, m, l, h) NESF__JF(k, NESF_JK_FLOAT, T, m, l, h)
#define NESF_JF_FLOAT_OPEN(T, k, m, l, h) \
    {.key = k, .kind = NESF_JK_FLOAT, .off = offsetof(T, m), .lo = l, .hi = h, .open_lo = 1}
#define NESF_JF_DOUBLE(T, k, m, l, h) NESF__JF(k, NESF_JK_DOUBLE, T, m, l, h)
#define NESF_JF_DOUBLE_OPEN(T, k, m, l, h) \
    {.key = k, .kind = NESF_JK_DOUBLE, .off = offsetof(T, m), .lo = l, .hi = h, .open_lo = 1}
#define NESF_JF_INT(T, k, m, l, h) NESF__JF(k, NESF_JK_INT, T, m, l, h)
#define NESF_JF_LONG(T, k, m, l, h) NESF__JF(k, NESF_JK_LONG, T, m, l, h)
#define NESF_JF_I64(T, k, m, l, h) NESF__JF(k, NESF_JK_I64, T, m, l, h)
#define NESF_JF_U64(T, k, m, l, h) NESF__JF(k, NESF_JK_U64, T, m, l, h)
#define NESF_JF_SIZE(T, k, m, l, h) NESF__JF(k, NESF_JK_SIZE, T, m, l, h)
#define NESF_JF_BOOL(T, k, m) NESF__JF(k, NESF_JK_BOOL, T, m, 0, 1)
#define NESF_JF_NAMED(T, k, m, first, words) \
    {.key = k, .kind = NESF_JK_NAMED, .off = offsetof(T, m), .lo = first, .names = words}
#define NESF_JF_STRING(T, k, m) \
    {.key = k, .kind = NESF_JK_STRING, .off = offsetof(T, m), .size = sizeof(((T *)0)->m)}
#define NESF_JF_OBJECT(k, rows) {.key = k, .kind = NESF_JK_OBJECT, .fields = rows}
#define NESF_JF_CUSTOM(k, f) {.key = k, .kind = NESF_JK_CUSTOM, .fn = f}
#define NESF_JF_END {.key = NULL}
#define NESF_JF_END_NOUN(n) {.key = NULL, .noun = n}

/* Reads the JSON object obj into dst by the rows of `fields`.  `where`
 * names obj's place in messages ("refine", "training"; "" at a file's top
 * level); ctx is handed to custom rows.  On an error dst may hold some of
 * the keys read before it: callers that must stay unchanged read into a
 * copy.  NESF_ERR_INVALID for a non-object, an unknown key, a value of the
 * wrong type or out of range. */
int nesf_jconf_read(const nesf_jfield *fields, void *dst, const struct json_t *obj,
                    const char *where, void *ctx, nesf_error *err);

/* Checks that every numeric, boolean and named value of src lies in its
 * row's range (nested objects included): for structs filled by code rather
 * than JSON.  NESF_ERR_INVALID names the first one outside. */
int nesf_jconf_check(const nesf_jfield *fields, const void *src, const char *where,
                     nesf_error *err);

/* A custom row's reader for a key another reader owns (a config file's
 * "model" section seen by the training reader): accepts any value. */
int nesf_jconf_skip(void *dst, const char *path, const struct json_t *v, void *ctx,
                    nesf_error *err);

/* The values of src's numeric, boolean, named and string rows as a JSON
 * object in table order (nested objects as objects; custom rows left
 * out); NULL when out of memory.  The caller owns the result. */
struct json_t *nesf_jconf_dump(const nesf_jfield *fields, const void *src);

/* The numeric value of a numeric, boolean or named row in src. */
double nesf_jconf_get(const nesf_jfield *f, const void *src);

#endif
