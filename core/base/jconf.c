/* jconf.c - see jconf.h. */
#include "jconf.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* "where.key", or "key" at the top level, for messages and nested reads. */
static void join_path(char *out, size_t n, const char *where, const char *key)
{
    snprintf(out, n, "%s%s%.64s", where && *where ? where : "", where && *where ? "." : "", key);
}

/* The keys a table accepts, for the unknown-key message. */
static void key_list(const nesf_jfield *f, char *out, size_t n)
{
    size_t len = 0;
    out[0] = 0;
    for (; f->key && len + 1 < n; f++) {
        int w = snprintf(out + len, n - len, "%s%s", len ? ", " : "", f->key);
        if (w < 0) break;
        len += (size_t)w;
    }
}

double nesf_jconf_get(const nesf_jfield *f, const void *src)
{
    const char *p = (const char *)src + f->off;
    switch (f->kind) {
    case NESF_JK_FLOAT: return *(const float *)p;
    case NESF_JK_DOUBLE: return *(const double *)p;
    case NESF_JK_INT: case NESF_JK_BOOL: case NESF_JK_NAMED: return *(const int *)p;
    case NESF_JK_LONG: return (double)*(const long *)p;
    case NESF_JK_I64: return (double)*(const int64_t *)p;
    case NESF_JK_U64: return (double)*(const uint64_t *)p;
    case NESF_JK_SIZE: return (double)*(const size_t *)p;
    default: return 0;
    }
}

/* Stores an already range-checked number in the row's C type. */
static void set_number(const nesf_jfield *f, void *dst, double v)
{
    char *p = (char *)dst + f->off;
    switch (f->kind) {
    case NESF_JK_FLOAT: *(float *)p = (float)v; break;
    case NESF_JK_DOUBLE: *(double *)p = v; break;
    case NESF_JK_INT: case NESF_JK_BOOL: case NESF_JK_NAMED: *(int *)p = (int)v; break;
    case NESF_JK_LONG: *(long *)p = (long)v; break;
    case NESF_JK_I64: *(int64_t *)p = (int64_t)v; break;
    case NESF_JK_U64: *(uint64_t *)p = (uint64_t)v; break;
    case NESF_JK_SIZE: *(size_t *)p = (size_t)v; break;
    default: break;
    }
}

/* Reals take any number; the other numeric kinds whole ones only. */
static int is_real_kind(nesf_jkind k) { return k == NESF_JK_FLOAT || k == NESF_JK_DOUBLE; }

/* One range rule for reading and checking: closed, or open at lo. */
static int in_range(const nesf_jfield *f, double v)
{
    if (f->kind == NESF_JK_NAMED) {
        int n = 0;
        while (f->names[n]) n++;
        return v >= f->lo && v < f->lo + n;
    }
    if (f->open_lo) return v > f->lo && v <= f->hi;
    return v >= f->lo && v <= f->hi;
}

/* The message names the place, the value and the range it missed. */
static int range_error(const nesf_jfield *f, const char *path, double v, nesf_error *err)
{
    if (is_real_kind(f->kind))
        return nesf_fail(err, NESF_ERR_INVALID, "%s = %g: expected a number in %c%g, %g]", path, v,
                         f->open_lo ? '(' : '[', f->lo, f->hi);
    return nesf_fail(err, NESF_ERR_INVALID, "%s = %g: expected an integer in [%.0f, %.0f]", path, v,
                     f->lo, f->hi);
}

/* A named row's word, as the value lo + its index. */
static int read_named(const nesf_jfield *f, const char *path, const json_t *v, double *out,
                      nesf_error *err)
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    char words[256];
    size_t len = 0;
    words[0] = 0;
    for (int i = 0; f->names[i]; i++) {
        if (s && !strcmp(s, f->names[i])) {
            *out = f->lo + i;
            return NESF_OK;
        }
        int w = snprintf(words + len, sizeof words - len, "%s\"%s\"", i ? " or " : "", f->names[i]);
        if (w > 0 && len + (size_t)w < sizeof words) len += (size_t)w;
    }
    return nesf_fail(err, NESF_ERR_INVALID, "%s: expected %s", path, words);
}

/* The JSON value of a numeric, boolean or named row as a double. */
static int read_number(const nesf_jfield *f, const char *path, const json_t *v, double *out,
                       nesf_error *err)
{
    if (f->kind == NESF_JK_NAMED) return read_named(f, path, v, out, err);
    if (f->kind == NESF_JK_BOOL && json_is_boolean(v)) {
        *out = json_is_true(v);
        return NESF_OK;
    }
    if (!json_is_number(v))
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected %s", path,
                         f->kind == NESF_JK_BOOL ? "true or false"
                         : is_real_kind(f->kind) ? "a number" : "an integer");
    double d = json_number_value(v);
    if (!is_real_kind(f->kind) && d != floor(d))
        return nesf_fail(err, NESF_ERR_INVALID, "%s must be an integer (got %g)", path, d);
    *out = d;
    return NESF_OK;
}

/* Strings must fit their buffer: a truncated path or name is refused, not
 * used. */
static int read_string(const nesf_jfield *f, void *dst, const char *path, const json_t *v,
                       nesf_error *err)
{
    if (!json_is_string(v)) return nesf_fail(err, NESF_ERR_INVALID, "%s: expected a string", path);
    const char *s = json_string_value(v);
    if (strlen(s) >= f->size)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: longer than %zu bytes", path, f->size - 1);
    memcpy((char *)dst + f->off, s, strlen(s) + 1);
    return NESF_OK;
}

/* One key's value by its row. */
static int read_field(const nesf_jfield *f, void *dst, const char *path, const json_t *v, void *ctx,
                      nesf_error *err)
{
    switch (f->kind) {
    case NESF_JK_OBJECT: return nesf_jconf_read(f->fields, dst, v, path, ctx, err);
    case NESF_JK_CUSTOM: return f->fn(dst, path, v, ctx, err);
    case NESF_JK_STRING: return read_string(f, dst, path, v, err);
    default: break;
    }
    double d = 0;
    int rc = read_number(f, path, v, &d, err);
    if (rc) return rc;
    if (!in_range(f, d)) return range_error(f, path, d, err);
    set_number(f, dst, d);
    /* wide integers exactly, not through a double's 53 bits */
    char *p = (char *)dst + f->off;
    if (json_is_integer(v) && f->kind == NESF_JK_U64) *(uint64_t *)p = (uint64_t)json_integer_value(v);
    if (json_is_integer(v) && f->kind == NESF_JK_LONG) *(long *)p = (long)json_integer_value(v);
    if (json_is_integer(v) && f->kind == NESF_JK_I64) *(int64_t *)p = (int64_t)json_integer_value(v);
    if (json_is_integer(v) && f->kind == NESF_JK_SIZE) *(size_t *)p = (size_t)json_integer_value(v);
    return NESF_OK;
}

int nesf_jconf_read(const nesf_jfield *fields, void *dst, const json_t *obj, const char *where,
                    void *ctx, nesf_error *err)
{
    if (!json_is_object(obj))
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected a JSON object",
                         where && *where ? where : "configuration");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        if (!strcmp(key, "_comment")) continue;
        const nesf_jfield *f = fields;
        while (f->key && strcmp(f->key, key)) f++;
        if (!f->key) {
            char keys[400];
            key_list(fields, keys, sizeof keys);
            int place = !f->noun && where && *where;
            return nesf_fail(err, NESF_ERR_INVALID, "%s%sunknown %s \"%.64s\" (expected: %s)",
                             place ? where : "", place ? ": " : "", f->noun ? f->noun : "key", key,
                             keys);
        }
        char path[160];
        join_path(path, sizeof path, where, key);
        int rc = read_field(f, dst, path, v, ctx, err);
        if (rc) return rc;
    }
    return NESF_OK;
}

int nesf_jconf_check(const nesf_jfield *fields, const void *src, const char *where, nesf_error *err)
{
    for (const nesf_jfield *f = fields; f->key; f++) {
        char path[160];
        join_path(path, sizeof path, where, f->key);
        if (f->kind == NESF_JK_OBJECT) {
            int rc = nesf_jconf_check(f->fields, src, path, err);
            if (rc) return rc;
            continue;
        }
        if (f->kind == NESF_JK_CUSTOM || f->kind == NESF_JK_STRING) continue;
        double v = nesf_jconf_get(f, src);
        if (!in_range(f, v)) return range_error(f, path, v, err);
    }
    return NESF_OK;
}

int nesf_jconf_skip(void *dst, const char *path, const json_t *v, void *ctx, nesf_error *err)
{
    (void)dst, (void)path, (void)v, (void)ctx, (void)err;
    return NESF_OK;
}

/* One value of a dumpable row; NULL for custom rows. */
static json_t *dump_field(const nesf_jfield *f, const void *src)
{
    switch (f->kind) {
    case NESF_JK_OBJECT: return nesf_jconf_dump(f->fields, src);
    case NESF_JK_CUSTOM: return NULL;
    case NESF_JK_STRING: return json_string((const char *)src + f->off);
    case NESF_JK_FLOAT: case NESF_JK_DOUBLE: return json_real(nesf_jconf_get(f, src));
    case NESF_JK_BOOL: return json_boolean(nesf_jconf_get(f, src) != 0);
    case NESF_JK_NAMED: {
        int n = 0, i = (int)(nesf_jconf_get(f, src) - f->lo);
        while (f->names[n]) n++;
        return i >= 0 && i < n ? json_string(f->names[i]) : json_integer((json_int_t)(i + f->lo));
    }
    case NESF_JK_U64: return json_integer((json_int_t) * (const uint64_t *)((const char *)src + f->off));
    default: return json_integer((json_int_t)nesf_jconf_get(f, src));
    }
}

json_t *nesf_jconf_dump(const nesf_jfield *fields, const void *src)
{
    json_t *o = json_object();
    for (const nesf_jfield *f = fields; o && f->key; f++) {
        if (f->kind == NESF_JK_CUSTOM) continue;
        json_t *v = dump_field(f, src);
        if (!v || json_object_set_new(o, f->key, v)) {
            json_decref(o);
            o = NULL;
        }
    }
    return o;
}
