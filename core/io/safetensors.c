#include "safetensors.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* The reference implementation refuses headers above 100 MB; so do we, so a
 * lying length cannot make us allocate or parse gigabytes. */
#define ST_MAX_HEADER (100u << 20)

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [NESF_ST_F32] = {"F32", 4}, [NESF_ST_F16] = {"F16", 2}, [NESF_ST_BF16] = {"BF16", 2},
    [NESF_ST_F64] = {"F64", 8}, [NESF_ST_I32] = {"I32", 4}, [NESF_ST_I64] = {"I64", 8},
    [NESF_ST_U8] = {"U8", 1},   [NESF_ST_BOOL] = {"BOOL", 1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

struct nesf_st {
    unsigned char *buf;     /* the whole file image */
    size_t len;
    int n;
    nesf_st_tensor *t;      /* names owned here */
    int nmeta;
    char **meta_key, **meta_val;
};

/* ---- reading ---- */

static int dtype_parse(const char *s)
{
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) return i;
    return -1;
}

/* count * size, failing on overflow */
static int mul_size(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b && a > UINT64_MAX / b) return -1;
    *out = a * b;
    return 0;
}

void nesf_st_free(nesf_st *st)
{
    if (!st) return;
    for (int i = 0; i < st->n; i++) free((char *)st->t[i].name);
    for (int i = 0; i < st->nmeta; i++) {
        free(st->meta_key[i]);
        free(st->meta_val[i]);
    }
    free(st->t);
    free(st->meta_key);
    free(st->meta_val);
    free(st->buf);
    free(st);
}

static int parse_meta(nesf_st *st, json_t *meta, nesf_error *err)
{
    if (!json_is_object(meta))
        return nesf_fail(err, NESF_ERR_FORMAT, "safetensors: __metadata__ is not an object");
    size_t n = json_object_size(meta);
    st->meta_key = calloc(n ? n : 1, sizeof *st->meta_key);
    st->meta_val = calloc(n ? n : 1, sizeof *st->meta_val);
    if (!st->meta_key || !st->meta_val) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return nesf_fail(err, NESF_ERR_FORMAT,
                             "safetensors: __metadata__ value of '%s' is not a string", k);
        st->meta_key[st->nmeta] = strdup(k);
        st->meta_val[st->nmeta] = strdup(json_string_value(v));
        if (!st->meta_key[st->nmeta] || !st->meta_val[st->nmeta]) {
            st->nmeta++;
            return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
        }
        st->nmeta++;
    }
    return NESF_OK;
}

/* Parses one tensor entry; begin/end are relative to the data area. */
static int parse_tensor(const char *name, json_t *e, size_t data_len, nesf_st_tensor *t,
                        uint64_t *begin, uint64_t *end, nesf_error *err)
{
    if (!json_is_object(e))
        return nesf_fail(err, NESF_ERR_FORMAT, "safetensors: entry '%s' is not an object", name);
    json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape");
    json_t *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
        return nesf_fail(err, NESF_ERR_FORMAT,
                         "safetensors: tensor '%s' lacks dtype, shape or data_offsets", name);
    int dt = dtype_parse(json_string_value(jd));
    if (dt < 0)
        return nesf_fail(err, NESF_ERR_FORMAT, "safetensors: tensor '%s' has unknown dtype '%s'",
                         name, json_string_value(jd));
    t->dtype = (nesf_st_dtype)dt;
    size_t nd = json_array_size(js);
    if (nd > NESF_ST_MAX_DIMS)
        return nesf_fail(err, NESF_ERR_FORMAT, "safetensors: tensor '%s' has %zu dimensions (max %d)",
                         name, nd, NESF_ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t count = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return nesf_fail(err, NESF_ERR_FORMAT,
                             "safetensors: tensor '%s' has a bad shape entry", name);
        t->shape[i] = json_integer_value(d);
        if (mul_size(count, (uint64_t)t->shape[i], &count))
            return nesf_fail(err, NESF_ERR_FORMAT, "safetensors: tensor '%s' shape overflows", name);
    }
    json_t *b = json_array_get(jo, 0), *en = json_array_get(jo, 1);
    if (json_array_size(jo) != 2 || !json_is_integer(b) || !json_is_integer(en) ||
        json_integer_value(b) < 0 || json_integer_value(en) < json_integer_value(b))
        return nesf_fail(err, NESF_ERR_FORMAT, "safetensors: tensor '%s' has bad data_offsets",
                         name);
    *begin = (uint64_t)json_integer_value(b);
    *end = (uint64_t)json_integer_value(en);
    if (*end > data_len)
        return nesf_fail(err, NESF_ERR_FORMAT,
                         "safetensors: tensor '%s' ends at byte %llu of a %zu-byte data area",
                         name, (unsigned long long)*end, data_len);
    uint64_t nbytes = 0;
    if (mul_size(count, dtypes[dt].size, &nbytes) || nbytes != *end - *begin)
        return nesf_fail(err, NESF_ERR_FORMAT,
                         "safetensors: tensor '%s' spans %llu bytes but its shape needs %llu",
                         name, (unsigned long long)(*end - *begin), (unsigned long long)nbytes);
    t->nbytes = (size_t)nbytes;
    return NESF_OK;
}

typedef struct {
    uint64_t begin, end;
    int idx;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Takes ownership of buf (freed on failure too). */
static int parse_owned(unsigned char *buf, size_t len, nesf_st **out, nesf_error *err)
{
    *out = NULL;
    nesf_st *st = calloc(1, sizeof *st);
    if (!st) {
        free(buf);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    st->buf = buf;
    st->len = len;
    json_t *root = NULL;
    span *spans = NULL;
    int rc;
    if (len < 8) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "safetensors: file of %zu bytes has no header", len);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > len - 8 || hlen > ST_MAX_HEADER) {
        rc = nesf_fail(err, NESF_ERR_FORMAT,
                       "safetensors: header claims %llu bytes but the file has %zu after the length",
                       (unsigned long long)hlen, len - 8);
        goto fail;
    }
    if (hlen < 2) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "safetensors: header of %llu bytes is too short",
                       (unsigned long long)hlen);
        goto fail;
    }
    json_error_t je;
    /* duplicate keys are refused by the JSON parser: names are unique */
    root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        rc = nesf_fail(err, NESF_ERR_PARSE, "safetensors: header is not valid JSON: %s (column %d)",
                       je.text, je.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto fail;
    }
    const unsigned char *data = buf + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;
    size_t nt = json_object_size(root);
    st->t = calloc(nt ? nt : 1, sizeof *st->t);
    spans = calloc(nt ? nt : 1, sizeof *spans);
    if (!st->t || !spans) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = parse_meta(st, val, err))) goto fail;
            continue;
        }
        nesf_st_tensor *t = &st->t[st->n];
        uint64_t b = 0, e = 0;
        if ((rc = parse_tensor(key, val, data_len, t, &b, &e, err))) goto fail;
        if (!(t->name = strdup(key))) {
            rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
            goto fail;
        }
        t->data = data + b;
        spans[st->n] = (span){b, e, st->n};
        st->n++;
    }
    /* Tensors must tile the data area exactly, in some order: no overlap, no
     * hole, nothing after the last one (the reference implementation's rule;
     * a header that lies about where its bytes are is refused). */
    qsort(spans, (size_t)st->n, sizeof *spans, span_cmp);
    uint64_t pos = 0;
    for (int i = 0; i < st->n; i++) {
        if (spans[i].begin != pos) {
            const char *name = st->t[spans[i].idx].name;
            rc = spans[i].begin < pos
                     ? nesf_fail(err, NESF_ERR_FORMAT,
                                 "safetensors: tensor '%s' overlaps another tensor", name)
                     : nesf_fail(err, NESF_ERR_FORMAT,
                                 "safetensors: %llu unaccounted bytes before tensor '%s'",
                                 (unsigned long long)(spans[i].begin - pos), name);
            goto fail;
        }
        pos = spans[i].end;
    }
    if (pos != data_len) {
        rc = nesf_fail(err, NESF_ERR_FORMAT,
                       "safetensors: tensors cover %llu bytes of a %zu-byte data area",
                       (unsigned long long)pos, data_len);
        goto fail;
    }
    free(spans);
    json_decref(root);
    *out = st;
    return NESF_OK;
fail:
    free(spans);
    json_decref(root);
    nesf_st_free(st);
    return rc;
}

int nesf_st_parse(const void *buf, size_t len, nesf_st **out, nesf_error *err)
{
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    if (len) memcpy(copy, buf, len);
    return parse_owned(copy, len, out, err);
}

int nesf_st_read(const char *path, nesf_st **out, nesf_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return nesf_fail(err, NESF_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return nesf_fail(err, NESF_ERR_IO, "%s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return nesf_fail(err, NESF_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != len) {
        free(buf);
        return nesf_fail(err, NESF_ERR_IO, "%s: short read", path);
    }
    int rc = parse_owned(buf, len, out, err);
    if (rc) nesf_error_prefix(err, "%s: ", path);
    return rc;
}

int nesf_st_count(const nesf_st *st) { return st->n; }

const nesf_st_tensor *nesf_st_at(const nesf_st *st, int i)
{
    return i >= 0 && i < st->n ? &st->t[i] : NULL;
}

const nesf_st_tensor *nesf_st_find(const nesf_st *st, const char *name)
{
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->t[i].name, name) == 0) return &st->t[i];
    return NULL;
}

const char *nesf_st_meta(const nesf_st *st, const char *key)
{
    for (int i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta_key[i], key) == 0) return st->meta_val[i];
    return NULL;
}

static float half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13;          /* inf, nan */
    } else if (exp) {
        bits = sign | (exp + 112) << 23 | man << 13;    /* normal: rebias 15 -> 127 */
    } else if (man) {                                    /* subnormal: normalise */
        int e = 113;
        while (!(man & 0x400)) { man <<= 1; e--; }
        bits = sign | (uint32_t)e << 23 | (man & 0x3ff) << 13;
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, size - n, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
}

int nesf_st_get_f32(const nesf_st *st, const char *name, int ndim, const int64_t *shape,
                    float *dst, nesf_error *err)
{
    const nesf_st_tensor *t = nesf_st_find(st, name);
    if (!t) return nesf_fail(err, NESF_ERR_NOTFOUND, "tensor '%s' not found", name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[160], got[160];
        shape_str(ndim, shape, want, sizeof want);
        shape_str(t->ndim, t->shape, got, sizeof got);
        return nesf_fail(err, NESF_ERR_FORMAT, "tensor '%s' has shape %s, expected %s", name, got,
                         want);
    }
    const unsigned char *p = t->data;
    size_t n = t->nbytes / dtypes[t->dtype].size;
    switch (t->dtype) {
    case NESF_ST_F32:
        memcpy(dst, p, t->nbytes);
        break;
    case NESF_ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case NESF_ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = half_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case NESF_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    default:
        return nesf_fail(err, NESF_ERR_FORMAT, "tensor '%s' has dtype %s, expected a float type",
                         name, dtypes[t->dtype].name);
    }
    return NESF_OK;
}

/* ---- writing ---- */

typedef struct {
    char *name;
    nesf_st_dtype dtype;
    int ndim;
    int64_t shape[NESF_ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
} wtensor;

struct nesf_st_writer {
    wtensor *t;
    int n, cap;
    json_t *meta;
};

nesf_st_writer *nesf_st_writer_new(void)
{
    nesf_st_writer *w = calloc(1, sizeof *w);
    if (w && !(w->meta = json_object())) {
        free(w);
        return NULL;
    }
    return w;
}

void nesf_st_writer_free(nesf_st_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    json_decref(w->meta);
    free(w);
}

int nesf_st_writer_add(nesf_st_writer *w, const char *name, nesf_st_dtype dtype, int ndim,
                       const int64_t *shape, const void *data, nesf_error *err)
{
    if (!name || !*name || strcmp(name, "__metadata__") == 0)
        return nesf_fail(err, NESF_ERR_INVALID, "safetensors: invalid tensor name");
    if ((int)dtype < 0 || (int)dtype >= N_DTYPES)
        return nesf_fail(err, NESF_ERR_INVALID, "safetensors: tensor '%s': invalid dtype", name);
    if (ndim < 0 || ndim > NESF_ST_MAX_DIMS)
        return nesf_fail(err, NESF_ERR_INVALID, "safetensors: tensor '%s': %d dimensions", name,
                         ndim);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return nesf_fail(err, NESF_ERR_INVALID, "safetensors: duplicate tensor '%s'", name);
    uint64_t nbytes = dtypes[dtype].size;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || mul_size(nbytes, (uint64_t)shape[i], &nbytes) || nbytes > SIZE_MAX)
            return nesf_fail(err, NESF_ERR_INVALID, "safetensors: tensor '%s': bad shape", name);
    if (nbytes && !data)
        return nesf_fail(err, NESF_ERR_INVALID, "safetensors: tensor '%s' has no data", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 32;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = (size_t)nbytes;
    w->n++;
    return NESF_OK;
}

int nesf_st_writer_meta(nesf_st_writer *w, const char *key, const char *value, nesf_error *err)
{
    if (!key || !value) return nesf_fail(err, NESF_ERR_INVALID, "safetensors: NULL metadata");
    json_t *v = json_string(value);   /* NULL for invalid UTF-8 */
    if (!v || json_object_set_new(w->meta, key, v))
        return nesf_fail(err, NESF_ERR_INVALID,
                         "safetensors: metadata '%s' is not valid UTF-8", key);
    return NESF_OK;
}

/* Larger elements first keeps every tensor naturally aligned with no gap
 * between tensors (gaps are not allowed by the format). */
static int wt_cmp(const void *a, const void *b)
{
    const wtensor *const *x = a, *const *y = b;
    size_t sx = dtypes[(*x)->dtype].size, sy = dtypes[(*y)->dtype].size;
    if (sx != sy) return sx > sy ? -1 : 1;
    return *x < *y ? -1 : *x > *y;   /* stable: insertion order */
}

static char *build_header(nesf_st_writer *w, wtensor **order, size_t *hlen)
{
    json_t *h = json_object();
    if (!h) return NULL;
    if (json_object_size(w->meta)) json_object_set(h, "__metadata__", w->meta);
    uint64_t pos = 0;
    for (int i = 0; i < w->n; i++) {
        wtensor *t = order[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtypes[t->dtype].name, "shape", shape,
                              "data_offsets", (json_int_t)pos, (json_int_t)(pos + t->nbytes));
        if (!e || json_object_set_new(h, t->name, e)) {
            json_decref(h);
            return NULL;
        }
        pos += t->nbytes;
    }
    char *s = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!s) return NULL;
    size_t n = strlen(s), padded = (n + 7) & ~(size_t)7;
    char *p = realloc(s, padded + 1);
    if (!p) {
        free(s);
        return NULL;
    }
    memset(p + n, ' ', padded - n);
    p[padded] = 0;
    *hlen = padded;
    return p;
}

int nesf_st_writer_write(nesf_st_writer *w, const char *path, nesf_error *err)
{
    wtensor **order = malloc((size_t)(w->n ? w->n : 1) * sizeof *order);
    if (!order) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < w->n; i++) order[i] = &w->t[i];
    qsort(order, (size_t)w->n, sizeof *order, wt_cmp);
    size_t hlen = 0;
    char *header = build_header(w, order, &hlen);
    if (!header) {
        free(order);
        return nesf_fail(err, NESF_ERR_NOMEM, "safetensors: cannot build the header");
    }
    nesf_outfile f;
    int rc = nesf_outfile_open(&f, path, err);
    if (rc) goto out;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    rc = nesf_outfile_write(&f, len8, 8, err);
    if (!rc) rc = nesf_outfile_write(&f, header, hlen, err);
    for (int i = 0; !rc && i < w->n; i++)
        rc = nesf_outfile_write(&f, order[i]->data, order[i]->nbytes, err);
    if (rc) nesf_outfile_abort(&f);
    else rc = nesf_outfile_commit(&f, err);
out:
    free(header);
    free(order);
    return rc;
}

int nesf_st_rewrite_meta(const char *in, const char *out, const char *key, const char *value,
                         nesf_error *err)
{
    nesf_st *st;
    int rc = nesf_st_read(in, &st, err);
    if (rc) return rc;
    nesf_st_writer *w = nesf_st_writer_new();
    if (!w) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < st->n; i++) {
        const nesf_st_tensor *t = &st->t[i];
        rc = nesf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
    }
    for (int i = 0; !rc && i < st->nmeta; i++)
        if (strcmp(st->meta_key[i], key)) rc = nesf_st_writer_meta(w, st->meta_key[i], st->meta_val[i], err);
    if (!rc) rc = nesf_st_writer_meta(w, key, value, err);
    if (!rc) rc = nesf_st_writer_write(w, out, err);
    nesf_st_writer_free(w);
    nesf_st_free(st);
    return rc;
}
