/* The table-driven JSON config reader (core/jconf.c) and the library's
 * readers built on it: unknown keys are refused with their name and
 * place, values are range and type checked, absent keys keep defaults,
 * and the shipped model/training configs (config/models) all load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>

#include "jconf.h"
#include "model.h"
#include "refine.h"
#include "train.h"

typedef struct demo {
    float f;
    double d;
    int i, b, mode;
    long l;
    uint64_t seed;
    size_t bytes;
    char name[8];
    int inner;
} demo;

static const char *const modes[] = {"paper", "fast", NULL};
static const nesf_jfield inner_rows[] = {
    NESF_JF_INT(demo, "inner", inner, -5, 5),
    NESF_JF_END,
};
static const nesf_jfield rows[] = {
    NESF_JF_FLOAT(demo, "f", f, 0, 1),
    NESF_JF_DOUBLE_OPEN(demo, "d", d, 0, 10),
    NESF_JF_INT(demo, "i", i, 1, 100),
    NESF_JF_BOOL(demo, "b", b),
    NESF_JF_NAMED(demo, "mode", mode, 3, modes),
    NESF_JF_LONG(demo, "l", l, 0, 1e12),
    NESF_JF_U64(demo, "seed", seed, 0, 9.2e18),
    NESF_JF_SIZE(demo, "bytes", bytes, 1, 1e9),
    NESF_JF_STRING(demo, "name", name),
    NESF_JF_OBJECT("sub", inner_rows),
    NESF_JF_END,
};

static int read_text(demo *d, const char *text, nesf_error *err)
{
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    int rc = nesf_jconf_read(rows, d, v, "demo", NULL, err);
    json_decref(v);
    return rc;
}

static void expect_bad(const char *text, const char *needle)
{
    demo d = {0};
    nesf_error err;
    assert_int_equal(read_text(&d, text, &err), NESF_ERR_INVALID);
    if (!strstr(err.msg, needle)) print_message("  %s: %s\n", text, err.msg);
    assert_non_null(strstr(err.msg, needle));
}

static void test_reader(void **state)
{
    (void)state;
    demo d = {.f = 0.5f, .i = 7, .mode = 3};
    nesf_error err;
    assert_int_equal(read_text(&d, "{\"_comment\": \"any\", \"d\": 2.5, \"i\": 9.0, \"b\": true,"
                                   " \"mode\": \"fast\", \"l\": 123456789012, \"seed\": 9007199254740993,"
                                   " \"bytes\": 4096, \"name\": \"abc\", \"sub\": {\"inner\": -2}}",
                               &err),
                     NESF_OK);
    assert_true(d.f == 0.5f); /* absent: kept */
    assert_true(d.d == 2.5);
    assert_int_equal(d.i, 9);
    assert_int_equal(d.b, 1);
    assert_int_equal(d.mode, 4);
    assert_true(d.l == 123456789012L);
    assert_true(d.seed == 9007199254740993ull); /* exact, past a double's 53 bits */
    assert_int_equal(d.bytes, 4096);
    assert_string_equal(d.name, "abc");
    assert_int_equal(d.inner, -2);
    assert_int_equal(nesf_jconf_check(rows, &d, "demo", &err), NESF_OK);
    d.inner = 6;
    assert_int_equal(nesf_jconf_check(rows, &d, "demo", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "demo.sub.inner"));

    d.inner = -2;
    json_t *dumped = nesf_jconf_dump(rows, &d);
    assert_non_null(dumped);
    char *text = json_dumps(dumped, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(dumped);
    demo back = {0};
    assert_int_equal(read_text(&back, text, &err), NESF_OK); /* the dump reads back */
    free(text);
    assert_true(back.d == d.d && back.mode == d.mode && back.seed == d.seed && back.inner == -2);
    assert_string_equal(back.name, "abc");

    expect_bad("{\"fo\": 1}", "demo: unknown key \"fo\"");
    expect_bad("{\"sub\": {\"iner\": 1}}", "demo.sub: unknown key \"iner\"");
    expect_bad("{\"f\": 1.5}", "demo.f");
    expect_bad("{\"f\": \"x\"}", "demo.f: expected a number");
    expect_bad("{\"d\": 0}", "demo.d");   /* open at 0 */
    expect_bad("{\"i\": 2.5}", "demo.i"); /* not whole */
    expect_bad("{\"i\": 0}", "[1, 100]");
    expect_bad("{\"b\": \"yes\"}", "true or false");
    expect_bad("{\"mode\": \"slow\"}", "\"paper\" or \"fast\"");
    expect_bad("{\"name\": \"too long!\"}", "demo.name");
    expect_bad("{\"name\": 3}", "expected a string");
    expect_bad("{\"sub\": 3}", "demo.sub: expected a JSON object");
    expect_bad("[1]", "expected a JSON object");
}

static char tmpdir[64];

static const char *write_tmp(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* The model and training readers of one config file each refuse unknown
 * keys in their section and at the top level, naming them. */
static void test_config_files(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nesf-jconf-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    nesf_model_config mc;
    nesf_train_config tc;
    nesf_error err;
    const char *p = write_tmp("a.json", "{\"model\": {\"latnet\": 8}}");
    assert_int_equal(nesf_model_config_load(p, &mc, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "model: unknown key \"latnet\""));
    p = write_tmp("b.json", "{\"modle\": {}, \"training\": {}}");
    assert_int_not_equal(nesf_model_config_load(p, &mc, &err), NESF_OK);
    assert_non_null(strstr(err.msg, "modle"));
    nesf_train_config_paper(&tc);
    assert_int_not_equal(nesf_train_config_load(p, &tc, &err), NESF_OK);
    assert_non_null(strstr(err.msg, "modle"));
    p = write_tmp("c.json", "{\"training\": {\"sampling\": {\"cell_pionts\": 8}}}");
    assert_int_equal(nesf_train_config_load(p, &tc, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "training.sampling: unknown key \"cell_pionts\""));
    p = write_tmp("d.json", "{\"training\": {\"loss_weights\": {\"postion\": 1}}}");
    assert_int_equal(nesf_train_config_load(p, &tc, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "postion"));
    /* origin_shifts: a word, recorded back only when not "none" */
    p = write_tmp("g.json", "{\"training\": {\"origin_shifts\": \"half-ab\"}}");
    nesf_train_config_paper(&tc);
    assert_int_equal(nesf_train_config_load(p, &tc, &err), NESF_OK);
    assert_int_equal(tc.origin_shifts, NESF_SHIFTS_HALF_AB);
    char *tj = nesf_train_config_to_json(&tc);
    assert_non_null(strstr(tj, "\"origin_shifts\":\"half-ab\""));
    free(tj);
    nesf_train_config_paper(&tc);
    tj = nesf_train_config_to_json(&tc);
    assert_null(strstr(tj, "origin_shifts"));
    free(tj);
    p = write_tmp("h.json", "{\"training\": {\"origin_shifts\": \"half\"}}");
    assert_int_equal(nesf_train_config_load(p, &tc, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "origin_shifts"));
    p = write_tmp("e.json", "{\"latent\": 24, \"pos_hidden\": [8, 8]}"); /* a bare model config */
    assert_int_equal(nesf_model_config_load(p, &mc, &err), NESF_OK);
    assert_int_equal(mc.latent, 24);
    assert_int_equal(mc.n_pos_hidden, 2);
    p = write_tmp("f.json", "{\"pos_hidden\": [8, 0]}");
    assert_int_equal(nesf_model_config_load(p, &mc, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "model.pos_hidden[1]"));
    json_t *v = json_loads("{\"steps\": 3, \"loss_weights\": {\"spec\": 1}}", 0, NULL);
    nesf_refine_opts ro;
    nesf_refine_opts_default(&ro);
    assert_int_equal(nesf_refine_opts_from_json(&ro, v, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "refine.loss_weights: unknown key \"spec\""));
    json_decref(v);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

/* Every shipped model/training config loads with both readers. */
static void test_shipped_configs(void **state)
{
    (void)state;
    const char *root = getenv("NESF_SOURCE_ROOT");
    if (!root) skip();
    char dirp[600];
    snprintf(dirp, sizeof dirp, "%s/config/models", root);
    DIR *d = opendir(dirp);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 5, ".json")) continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dirp, e->d_name);
        nesf_model_config mc;
        nesf_train_config tc;
        nesf_train_config_paper(&tc);
        nesf_error err;
        if (nesf_model_config_load(path, &mc, &err)) fail_msg("%s", err.msg);
        if (nesf_train_config_load(path, &tc, &err)) fail_msg("%s", err.msg);
        n++;
    }
    closedir(d);
    assert_true(n >= 7);
    char tiny[600];
    snprintf(tiny, sizeof tiny, "%s/tests/data/tiny-train.json", root);
    nesf_model_config mc;
    nesf_train_config tc;
    nesf_error err;
    if (nesf_model_config_load(tiny, &mc, &err)) fail_msg("%s", err.msg);
    if (nesf_train_config_load(tiny, &tc, &err)) fail_msg("%s", err.msg);
    assert_int_equal(mc.latent, 16);
    assert_int_equal(tc.batch, 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader),
        cmocka_unit_test(test_config_files),
        cmocka_unit_test(test_shipped_configs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
