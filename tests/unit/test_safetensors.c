/* safetensors reader and writer: round trips, conversions, and every way a
 * file can lie about itself. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include <cmocka.h>

#include "safetensors.h"

/* A file image: 8-byte length, the header text (unpadded: the reader must
 * not require padding), then ndata bytes of 0xAB.  Caller frees. */
static unsigned char *image(const char *header, size_t ndata, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + ndata;
    unsigned char *b = malloc(*len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    memset(b + 8 + h, 0xAB, ndata);
    return b;
}

/* parse must fail with code, leave *out NULL and say something */
static void expect_bad(const char *header, size_t ndata, int code)
{
    size_t len;
    unsigned char *b = image(header, ndata, &len);
    nesf_st *st = (nesf_st *)1;
    nesf_error e = {0};
    int rc = nesf_st_parse(b, len, &st, &e);
    if (rc != code) fail_msg("header %s: got %d (%s), want %d", header, rc, e.msg, code);
    assert_null(st);
    assert_true(e.msg[0] != 0);
    free(b);
}

static nesf_st *expect_good(const char *header, size_t ndata)
{
    size_t len;
    unsigned char *b = image(header, ndata, &len);
    nesf_st *st = NULL;
    nesf_error e = {0};
    if (nesf_st_parse(b, len, &st, &e) != NESF_OK) fail_msg("header %s: %s", header, e.msg);
    free(b);
    return st;
}

static char tmpdir[] = "/tmp/nesf_st_XXXXXX";

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

static void tmp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

static void test_round_trip(void **state)
{
    (void)state;
    float w[2][3] = {{1, -2, 3.5f}, {1e-30f, -0.0f, 65504}};
    double d[3] = {M_PI, -1e300, 0};
    int32_t i32[4] = {-1, 0, 7, INT32_MAX};
    int64_t i64[2] = {INT64_MIN, 42};
    uint8_t u8[5] = {0, 1, 2, 254, 255}, flag[1] = {1};
    uint16_t h[2] = {0x3C00, 0xC000};
    float scalar = 2.5f;
    int64_t s23[] = {2, 3}, s3[] = {3}, s4[] = {4}, s2[] = {2}, s5[] = {5}, s1[] = {1},
            s0[] = {0, 7};

    nesf_st_writer *wr = nesf_st_writer_new();
    nesf_error e = {0};
    /* mixed sizes in an order that would misalign without reordering */
    assert_int_equal(nesf_st_writer_add(wr, "u8", NESF_ST_U8, 1, s5, u8, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "enc.0.weight", NESF_ST_F32, 2, s23, w, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "half", NESF_ST_F16, 1, s2, h, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "d", NESF_ST_F64, 1, s3, d, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "i32", NESF_ST_I32, 1, s4, i32, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "flag", NESF_ST_BOOL, 1, s1, flag, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "i64", NESF_ST_I64, 1, s2, i64, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "scalar", NESF_ST_F32, 0, NULL, &scalar, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "empty", NESF_ST_F32, 2, s0, NULL, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_meta(wr, "species", "H,Li,Be", &e), NESF_OK);
    assert_int_equal(nesf_st_writer_meta(wr, "config", "{\"lr\": 0.001, \"q\": \"\\\"x\\\"\"}", &e),
                     NESF_OK);
    assert_int_equal(nesf_st_writer_meta(wr, "species", "H,Li", &e), NESF_OK); /* replaces */
    char path[256];
    tmp_path(path, sizeof path, "rt.safetensors");
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_OK);
    nesf_st_writer_free(wr);

    /* no temp file left behind */
    DIR *dir = opendir(tmpdir);
    struct dirent *de;
    while ((de = readdir(dir))) assert_null(strstr(de->d_name, ".tmp."));
    closedir(dir);

    /* layout: header padded with spaces to a multiple of 8 */
    FILE *f = fopen(path, "rb");
    unsigned char len8[8];
    assert_int_equal(fread(len8, 1, 8, f), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    assert_int_equal(hlen % 8, 0);
    char *hdr = malloc(hlen + 1);
    assert_int_equal(fread(hdr, 1, hlen, f), hlen);
    hdr[hlen] = 0;
    fclose(f);
    assert_int_equal(hdr[0], '{');
    assert_non_null(strstr(hdr, "\"__metadata__\""));
    free(hdr);

    nesf_st *st = NULL;
    assert_int_equal(nesf_st_read(path, &st, &e), NESF_OK);
    assert_int_equal(nesf_st_count(st), 9);
    assert_string_equal(nesf_st_meta(st, "species"), "H,Li");
    assert_string_equal(nesf_st_meta(st, "config"), "{\"lr\": 0.001, \"q\": \"\\\"x\\\"\"}");
    assert_null(nesf_st_meta(st, "nope"));
    const nesf_st_tensor *t = nesf_st_find(st, "enc.0.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, NESF_ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->nbytes, sizeof w);
    assert_memory_equal(t->data, w, sizeof w);
    /* every tensor is naturally aligned within the file image */
    const unsigned char *base = NULL;
    for (int i = 0; i < nesf_st_count(st); i++) {
        const nesf_st_tensor *ti = nesf_st_at(st, i);
        if (!base || (const unsigned char *)ti->data < base) base = ti->data;
    }
    assert_int_equal(((uintptr_t)base - (uintptr_t)nesf_st_find(st, "d")->data) % 8, 0);
    for (int i = 0; i < nesf_st_count(st); i++) {
        const nesf_st_tensor *ti = nesf_st_at(st, i);
        size_t el = ti->dtype == NESF_ST_F64 || ti->dtype == NESF_ST_I64   ? 8
                    : ti->dtype == NESF_ST_F32 || ti->dtype == NESF_ST_I32 ? 4
                    : ti->dtype == NESF_ST_U8 || ti->dtype == NESF_ST_BOOL ? 1
                                                                           : 2;
        assert_int_equal(((const unsigned char *)ti->data - base) % el, 0);
    }
    assert_null(nesf_st_at(st, 9));
    assert_null(nesf_st_at(st, -1));
    assert_memory_equal(nesf_st_find(st, "d")->data, d, sizeof d);
    assert_memory_equal(nesf_st_find(st, "i32")->data, i32, sizeof i32);
    assert_memory_equal(nesf_st_find(st, "i64")->data, i64, sizeof i64);
    assert_memory_equal(nesf_st_find(st, "u8")->data, u8, sizeof u8);
    assert_int_equal(*(const uint8_t *)nesf_st_find(st, "flag")->data, 1);
    t = nesf_st_find(st, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->nbytes, 4);
    t = nesf_st_find(st, "empty");
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->shape[1], 7);

    float got[6];
    assert_int_equal(nesf_st_get_f32(st, "enc.0.weight", 2, s23, got, &e), NESF_OK);
    assert_memory_equal(got, w, sizeof w);
    float gd[3];
    assert_int_equal(nesf_st_get_f32(st, "d", 1, s3, gd, &e), NESF_OK);
    assert_true(gd[0] == (float)M_PI && isinf(gd[1]) && gd[1] < 0 && gd[2] == 0);
    float gs;
    assert_int_equal(nesf_st_get_f32(st, "scalar", 0, NULL, &gs, &e), NESF_OK);
    assert_true(gs == 2.5f);
    nesf_st_free(st);

    /* overwriting an existing file works (rename over it) */
    wr = nesf_st_writer_new();
    assert_int_equal(nesf_st_writer_add(wr, "x", NESF_ST_F32, 0, NULL, &scalar, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_OK);
    nesf_st_writer_free(wr);
    assert_int_equal(nesf_st_read(path, &st, &e), NESF_OK);
    assert_int_equal(nesf_st_count(st), 1);
    assert_null(nesf_st_meta(st, "species"));
    nesf_st_free(st);
}

static void test_empty_file_round_trip(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "empty.safetensors");
    nesf_st_writer *wr = nesf_st_writer_new();
    nesf_error e = {0};
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_OK);
    nesf_st_writer_free(wr);
    nesf_st *st = NULL;
    assert_int_equal(nesf_st_read(path, &st, &e), NESF_OK);
    assert_int_equal(nesf_st_count(st), 0);
    nesf_st_free(st);
}

static void test_f16_bf16(void **state)
{
    (void)state;
    /* F16: 1, -2, max, smallest subnormal, a larger subnormal, 1/3 rounded,
     * -0, +inf, nan, 0.5 */
    uint16_t h[10] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x0200, 0x3555, 0x8000, 0x7C00, 0x7E00,
                      0x3800};
    /* BF16: 1, -3.140625, 1e-38-ish subnormal, -inf */
    uint16_t b[4] = {0x3F80, 0xC049, 0x0001, 0xFF80};
    int64_t s10[] = {10}, s22[] = {2, 2};
    char hdr[512];
    snprintf(hdr, sizeof hdr,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[10],\"data_offsets\":[0,20]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[20,28]}}");
    size_t len;
    unsigned char *img = image(hdr, 28, &len);
    memcpy(img + len - 28, h, 20);
    memcpy(img + len - 8, b, 8);
    nesf_st *st = NULL;
    nesf_error e = {0};
    assert_int_equal(nesf_st_parse(img, len, &st, &e), NESF_OK);
    free(img);
    float f[10];
    assert_int_equal(nesf_st_get_f32(st, "h", 1, s10, f, &e), NESF_OK);
    assert_true(f[0] == 1.0f);
    assert_true(f[1] == -2.0f);
    assert_true(f[2] == 65504.0f);
    assert_true(f[3] == ldexpf(1, -24));
    assert_true(f[4] == ldexpf(1, -15));
    assert_true(f[5] == 0.333251953125f);
    assert_true(f[6] == 0 && signbit(f[6]));
    assert_true(isinf(f[7]) && f[7] > 0);
    assert_true(isnan(f[8]));
    assert_true(f[9] == 0.5f);
    float g[4];
    assert_int_equal(nesf_st_get_f32(st, "b", 2, s22, g, &e), NESF_OK);
    assert_true(g[0] == 1.0f);
    assert_true(g[1] == -3.140625f);
    assert_true(g[2] == ldexpf(1, -133));
    assert_true(isinf(g[3]) && g[3] < 0);
    nesf_st_free(st);

    /* every F16 bit pattern against the float's own F16 rounding: exact */
    uint16_t all[65536];
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    nesf_st_writer *wr = nesf_st_writer_new();
    int64_t sall[] = {65536};
    assert_int_equal(nesf_st_writer_add(wr, "all", NESF_ST_F16, 1, sall, all, &e), NESF_OK);
    char path[256];
    tmp_path(path, sizeof path, "f16.safetensors");
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_OK);
    nesf_st_writer_free(wr);
    assert_int_equal(nesf_st_read(path, &st, &e), NESF_OK);
    float *v = malloc(65536 * sizeof *v);
    assert_int_equal(nesf_st_get_f32(st, "all", 1, sall, v, &e), NESF_OK);
    for (int i = 0; i < 65536; i++) {
        int ex = (i >> 10) & 0x1f, man = i & 0x3ff;
        double want = ex == 0 ? ldexp(man, -24) : ldexp(1024 + man, ex - 25);
        if (i & 0x8000) want = -want;
        if (ex == 0x1f) {
            if (man) assert_true(isnan(v[i]));
            else assert_true(isinf(v[i]) && (v[i] < 0) == !!(i & 0x8000));
        } else if ((double)v[i] != want) {
            fail_msg("F16 0x%04x -> %g, want %g", i, v[i], want);
        }
    }
    free(v);
    nesf_st_free(st);
}

static void test_get_f32_errors(void **state)
{
    (void)state;
    nesf_st *st = expect_good("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                              "\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[24,32]}}",
                              32);
    float buf[6];
    nesf_error e = {0};
    int64_t ok[] = {2, 3}, wrong[] = {3, 2}, flat[] = {6}, s2[] = {2};
    assert_int_equal(nesf_st_get_f32(st, "a", 2, ok, buf, &e), NESF_OK);
    assert_int_equal(nesf_st_get_f32(st, "a", 2, wrong, buf, &e), NESF_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "'a'"));
    assert_non_null(strstr(e.msg, "[2, 3]"));
    assert_non_null(strstr(e.msg, "[3, 2]"));
    assert_int_equal(nesf_st_get_f32(st, "a", 1, flat, buf, &e), NESF_ERR_FORMAT);
    assert_int_equal(nesf_st_get_f32(st, "missing.weight", 2, ok, buf, &e), NESF_ERR_NOTFOUND);
    assert_non_null(strstr(e.msg, "missing.weight"));
    assert_int_equal(nesf_st_get_f32(st, "i", 1, s2, buf, &e), NESF_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "I32"));
    assert_null(nesf_st_find(st, "missing"));
    nesf_st_free(st);
}

static void test_truncated(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "trunc.safetensors");
    float w[16] = {0};
    int64_t s[] = {4, 4};
    nesf_error e = {0};
    nesf_st_writer *wr = nesf_st_writer_new();
    assert_int_equal(nesf_st_writer_add(wr, "w", NESF_ST_F32, 2, s, w, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_meta(wr, "k", "v", &e), NESF_OK);
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_OK);
    nesf_st_writer_free(wr);
    FILE *f = fopen(path, "rb");
    unsigned char buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    nesf_st *st = NULL;
    assert_int_equal(nesf_st_parse(buf, len, &st, &e), NESF_OK);
    nesf_st_free(st);
    /* every proper prefix is refused */
    for (size_t cut = 0; cut < len; cut++) {
        st = (nesf_st *)1;
        int rc = nesf_st_parse(buf, cut, &st, &e);
        if (rc == NESF_OK) fail_msg("prefix of %zu/%zu bytes accepted", cut, len);
        assert_null(st);
    }
    /* and so is trailing garbage */
    buf[len] = 0;
    assert_int_equal(nesf_st_parse(buf, len + 1, &st, &e), NESF_ERR_FORMAT);
    /* the truncated file on disk names the path */
    f = fopen(path, "wb");
    fwrite(buf, 1, len - 3, f);
    fclose(f);
    assert_int_equal(nesf_st_read(path, &st, &e), NESF_ERR_FORMAT);
    assert_non_null(strstr(e.msg, path));
    assert_null(st);
}

static void test_header_length(void **state)
{
    (void)state;
    nesf_st *st = (nesf_st *)1;
    nesf_error e = {0};
    unsigned char small[4] = {0};
    assert_int_equal(nesf_st_parse(small, 4, &st, &e), NESF_ERR_FORMAT);
    assert_null(st);
    /* header longer than the file */
    size_t len;
    unsigned char *b = image("{}", 0, &len);
    b[0] = 200;
    assert_int_equal(nesf_st_parse(b, len, &st, &e), NESF_ERR_FORMAT);
    /* absurd length (would overflow 8 + hlen) */
    memset(b, 0xff, 8);
    assert_int_equal(nesf_st_parse(b, len, &st, &e), NESF_ERR_FORMAT);
    free(b);
    /* zero-length header */
    unsigned char zero[8] = {0};
    assert_int_equal(nesf_st_parse(zero, 8, &st, &e), NESF_ERR_FORMAT);
    /* the minimal valid file */
    st = expect_good("{}", 0);
    assert_int_equal(nesf_st_count(st), 0);
    nesf_st_free(st);
    /* padding spaces are fine */
    st = expect_good("{}      ", 0);
    nesf_st_free(st);
}

static void test_bad_json(void **state)
{
    (void)state;
    expect_bad("not json", 0, NESF_ERR_PARSE);
    expect_bad("{\"a\":", 0, NESF_ERR_PARSE);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4,
               NESF_ERR_PARSE);
    expect_bad("[1,2]", 0, NESF_ERR_FORMAT);
    expect_bad("\"str\"", 0, NESF_ERR_PARSE);   /* jansson: top level must be object/array */
    expect_bad("[]", 0, NESF_ERR_FORMAT);
    /* invalid UTF-8 in the header */
    expect_bad("{\"\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               NESF_ERR_PARSE);
    /* duplicate tensor names */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, NESF_ERR_PARSE);
}

static void test_bad_entries(void **state)
{
    (void)state;
    /* unknown and wrong-typed dtypes */
    expect_bad("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NESF_ERR_FORMAT);
    /* missing fields, bad shapes */
    expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,4]}}",
               4, NESF_ERR_FORMAT);
    expect_bad("{\"a\":[1,2]}", 0, NESF_ERR_FORMAT);
    /* bad data_offsets */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", 4,
               NESF_ERR_FORMAT);
    /* metadata must map strings to strings */
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, NESF_ERR_FORMAT);
    expect_bad("{\"__metadata__\":{\"k\":null}}", 0, NESF_ERR_FORMAT);
    expect_bad("{\"__metadata__\":\"k\"}", 0, NESF_ERR_FORMAT);
    nesf_st *st = expect_good("{\"__metadata__\":{\"k\":\"1\",\"e\":\"\"}}", 0);
    assert_string_equal(nesf_st_meta(st, "k"), "1");
    assert_string_equal(nesf_st_meta(st, "e"), "");
    nesf_st_free(st);
}

static void test_lying_offsets(void **state)
{
    (void)state;
    /* span differs from shape x dtype size */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               NESF_ERR_FORMAT);
    /* beyond the data area */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}", 8,
               NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],"
               "\"data_offsets\":[9223372036854775807,9223372036854775807]}}",
               0, NESF_ERR_FORMAT);
    /* overlapping tensors */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8, NESF_ERR_FORMAT);
    /* a hole between tensors, or bytes nobody owns at the end */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               12, NESF_ERR_FORMAT);
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
               NESF_ERR_FORMAT);
    /* out of header order is fine when they tile the data exactly */
    nesf_st *st = expect_good("{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                              "\"a\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[0,4]},"
                              "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
                              8);
    assert_int_equal(nesf_st_count(st), 3);
    const nesf_st_tensor *a = nesf_st_find(st, "a"), *b = nesf_st_find(st, "b");
    assert_ptr_equal((const unsigned char *)b->data - 4, a->data);
    nesf_st_free(st);
}

static void test_io_errors(void **state)
{
    (void)state;
    nesf_st *st = (nesf_st *)1;
    nesf_error e = {0};
    assert_int_equal(nesf_st_read("/nonexistent/x.safetensors", &st, &e), NESF_ERR_IO);
    assert_null(st);
    assert_non_null(strstr(e.msg, "/nonexistent/x.safetensors"));
    assert_int_equal(nesf_st_read(tmpdir, &st, &e), NESF_ERR_IO);   /* a directory */

    nesf_st_writer *wr = nesf_st_writer_new();
    float x = 1;
    int64_t s1[] = {1}, neg[] = {-1};
    assert_int_equal(nesf_st_writer_add(wr, "x", NESF_ST_F32, 1, s1, &x, &e), NESF_OK);
    assert_int_equal(nesf_st_writer_add(wr, "x", NESF_ST_F32, 1, s1, &x, &e), NESF_ERR_INVALID);
    assert_int_equal(nesf_st_writer_add(wr, "__metadata__", NESF_ST_F32, 1, s1, &x, &e),
                     NESF_ERR_INVALID);
    assert_int_equal(nesf_st_writer_add(wr, "", NESF_ST_F32, 1, s1, &x, &e), NESF_ERR_INVALID);
    assert_int_equal(nesf_st_writer_add(wr, "n", NESF_ST_F32, 1, neg, &x, &e), NESF_ERR_INVALID);
    assert_int_equal(nesf_st_writer_add(wr, "n", NESF_ST_F32, 1, s1, NULL, &e), NESF_ERR_INVALID);
    assert_int_equal(nesf_st_writer_add(wr, "n", NESF_ST_F32, 9, s1, &x, &e), NESF_ERR_INVALID);
    assert_int_equal(nesf_st_writer_meta(wr, "k", "\xff\xfe", &e), NESF_ERR_INVALID);
    char path[256];
    tmp_path(path, sizeof path, "no/such/dir/x.safetensors");
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_ERR_IO);
    nesf_st_writer_free(wr);
    nesf_st_free(NULL);
    nesf_st_writer_free(NULL);
}

/* Random corruption of a valid file must be refused or parsed, never crash
 * or read out of bounds (the ASan build checks the latter). */
static void test_corruption(void **state)
{
    (void)state;
    float w[6] = {1, 2, 3, 4, 5, 6};
    double d[2] = {1, 2};
    int64_t s23[] = {2, 3}, s2[] = {2};
    nesf_error e = {0};
    char path[256];
    tmp_path(path, sizeof path, "fuzz.safetensors");
    nesf_st_writer *wr = nesf_st_writer_new();
    nesf_st_writer_add(wr, "w", NESF_ST_F32, 2, s23, w, &e);
    nesf_st_writer_add(wr, "d", NESF_ST_F64, 1, s2, d, &e);
    nesf_st_writer_meta(wr, "species", "H,He", &e);
    assert_int_equal(nesf_st_writer_write(wr, path, &e), NESF_OK);
    nesf_st_writer_free(wr);
    FILE *f = fopen(path, "rb");
    unsigned char orig[1024], buf[1024];
    size_t len = fread(orig, 1, sizeof orig, f);
    fclose(f);
    uint64_t rng = 12345;
    const char alphabet[] = "0123456789{}[]\",:-. FIabcdefghijklmnopqrstuvwxyz_\\";
    int accepted = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, orig, len);
        int nflip = 1 + it % 3;
        for (int k = 0; k < nflip; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(rng >> 33) % len;
            /* mostly hit the header, with characters that keep it JSON-ish */
            buf[pos] = (unsigned char)alphabet[(rng >> 20) % (sizeof alphabet - 1)];
        }
        nesf_st *st = NULL;
        if (nesf_st_parse(buf, len, &st, &e) == NESF_OK) {
            accepted++;
            float tmp[64];
            for (int i = 0; i < nesf_st_count(st); i++) {
                const nesf_st_tensor *t = nesf_st_at(st, i);
                const unsigned char *p = t->data;
                unsigned sum = 0;
                for (size_t j = 0; j < t->nbytes; j++) sum += p[j];
                (void)sum;
                if (t->nbytes <= sizeof tmp)
                    nesf_st_get_f32(st, t->name, t->ndim, t->shape, tmp, NULL);
            }
            nesf_st_free(st);
        }
    }
    assert_true(accepted > 0);   /* flips in the data area are legal */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_empty_file_round_trip),
        cmocka_unit_test(test_f16_bf16),
        cmocka_unit_test(test_get_f32_errors),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_lying_offsets),
        cmocka_unit_test(test_io_errors),
        cmocka_unit_test(test_corruption),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
