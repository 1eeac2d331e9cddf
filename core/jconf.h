/* jconf.h - the table-driven reader of JSON configuration objects used by
 * every configuration of the library and the daemon (model and training
 * configs, decode and refine options, nesfd.json).
 *
 * A reader is a table of nesf_jfield rows, ended by a row whose key is NULL,
 * each naming a JSON key and where its value goes in the caller's struct.
 * nesf_jconf_read walks the JSON object, not the table: every key must have
 * a row (the key "_comment" excepted, anywhere), so a typo or a misplaced
 * key is an error naming the key and its place ("training.sampling: unknown
 * key 'cell_pionts'"), never a silently ignored setting.  Absent keys keep
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
} nesf_jfield;

/* Row builders; T is the struct type, m the member (a.b for nested members). */
#define NESF_JF_FLOAT(T, k, m, l, h) {k, NESF_JK_FLOAT, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_FLOAT_OPEN(T, k, m, l, h) {k, NESF_JK_FLOAT, offsetof(T, m), l, h, 1, NULL, 0, NULL, NULL}
#define NESF_JF_DOUBLE(T, k, m, l, h) {k, NESF_JK_DOUBLE, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_DOUBLE_OPEN(T, k, m, l, h) {k, NESF_JK_DOUBLE, offsetof(T, m), l, h, 1, NULL, 0, NULL, NULL}
#define NESF_JF_INT(T, k, m, l, h) {k, NESF_JK_INT, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_LONG(T, k, m, l, h) {k, NESF_JK_LONG, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_I64(T, k, m, l, h) {k, NESF_JK_I64, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_U64(T, k, m, l, h) {k, NESF_JK_U64, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_SIZE(T, k, m, l, h) {k, NESF_JK_SIZE, offsetof(T, m), l, h, 0, NULL, 0, NULL, NULL}
#define NESF_JF_BOOL(T, k, m) {k, NESF_JK_BOOL, offsetof(T, m), 0, 1, 0, NULL, 0, NULL, NULL}
#define NESF_JF_NAMED(T, k, m, first, names) \
    {k, NESF_JK_NAMED, offsetof(T, m), first, 0, 0, names, 0, NULL, NULL}
#define NESF_JF_STRING(T, k, m) \
    {k, NESF_JK_STRING, offsetof(T, m), 0, 0, 0, NULL, sizeof(((T *)0)->m), NULL, NULL}
#define NESF_JF_OBJECT(k, rows) {k, NESF_JK_OBJECT, 0, 0, 0, 0, NULL, 0, rows, NULL}
#define NESF_JF_CUSTOM(k, f) {k, NESF_JK_CUSTOM, 0, 0, 0, 0, NULL, 0, NULL, f}
#define NESF_JF_END {NULL, NESF_JK_INT, 0, 0, 0, 0, NULL, 0, NULL, NULL}

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

/* The numeric value of a numeric, boolean or named row in src. */
double nesf_jconf_get(const nesf_jfield *f, const void *src);

#endif
