/* Training query sampling (core/train/sample.c, spec §4) and the sampling part of
 * the training configuration: point counts per kind, where the points lie,
 * their targets, determinism, and the cell_points extension. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "sample.h"
#include "train.h"

/* a triclinic cell with three atoms, species classes 0..2 */
static nesf_structure *triclinic(void)
{
    nesf_structure *s = nesf_structure_new(3);
    nesf_cellpar p = {3.2, 4.1, 4.7, 81, 97, 104};
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), NESF_OK);
    const double f[3][3] = {{0.1, 0.2, 0.3}, {0.6, 0.5, 0.4}, {0.8, 0.9, 0.1}};
    const int z[3] = {8, 26, 29};
    for (int i = 0; i < 3; i++) assert_int_equal(nesf_structure_add_site(s, z[i], f[i], NULL), NESF_OK);
    return s;
}

static const int classes[3] = {0, 1, 2};

static void check_targets(const nesf_structure *s, const float *x, const float *t, int n)
{
    for (int j = 0; j < n; j++) {
        float v[3];
        nesf_nearest_atom(s, x + 3 * j, v);
        for (int k = 0; k < 3; k++) assert_float_equal(t[3 * j + k], v[k], 1e-6);
    }
}

static void test_paper_counts(void **state)
{
    (void)state;
    nesf_structure *s = triclinic();
    const int *cls = classes;
    nesf_sampling sp;
    nesf_sampling_paper(&sp);
    assert_int_equal(sp.cell_points, 0);
    float lo[3] = {0, 0, 0}, hi[3] = {5, 6, 7};
    nesf_queries q;
    nesf_error err;
    assert_int_equal(nesf_queries_sample(&sp, lo, hi, &s, &cls, 1, 42, &q, &err), NESF_OK);
    /* global arange(-1, 6|7|8, 1): 7 x 8 x 9; local 4³ and species 6³ per atom */
    assert_int_equal(q.pos_off[1], 7 * 8 * 9 + 3 * 64);
    assert_int_equal(q.spec_off[1], 3 * 216);
    check_targets(s, q.pos_xyz, q.pos_tgt, q.pos_off[1]);
    for (int j = 0; j < q.spec_off[1]; j++) {
        float v[3];
        assert_int_equal(q.spec_lbl[j], classes[nesf_nearest_atom(s, q.spec_xyz + 3 * j, v)]);
    }
    /* same seed, same points; another seed, other points */
    nesf_queries q2;
    assert_int_equal(nesf_queries_sample(&sp, lo, hi, &s, &cls, 1, 42, &q2, &err), NESF_OK);
    assert_memory_equal(q.pos_xyz, q2.pos_xyz, (size_t)q.pos_off[1] * 3 * sizeof(float));
    nesf_queries_free(&q2);
    assert_int_equal(nesf_queries_sample(&sp, lo, hi, &s, &cls, 1, 43, &q2, &err), NESF_OK);
    assert_true(memcmp(q.pos_xyz, q2.pos_xyz, (size_t)q.pos_off[1] * 3 * sizeof(float)) != 0);
    nesf_queries_free(&q2);
    nesf_queries_free(&q);
    nesf_structure_free(s);
}

static void test_cell_points(void **state)
{
    (void)state;
    nesf_structure *s[2] = {triclinic(), triclinic()};
    const int *cls[2] = {classes, classes};
    nesf_sampling sp;
    nesf_sampling_paper(&sp);
    sp.global_fraction = 0.1f;
    sp.cell_points = 500;
    float lo[3] = {0, 0, 0}, hi[3] = {5, 6, 7};
    const int G = (int)ceil(7 * 8 * 9 * 0.1);
    nesf_queries q;
    nesf_error err;
    assert_int_equal(nesf_queries_sample(&sp, lo, hi, s, cls, 2, 7, &q, &err), NESF_OK);
    assert_int_equal(q.pos_off[1], G + 500 + 3 * 64);
    assert_int_equal(q.pos_off[2], 2 * (G + 500 + 3 * 64));
    double inv[3][3];
    assert_int_equal(nesf_lattice_inverse(&s[0]->lat, inv, &err), NESF_OK);
    /* the cell points follow the global ones: all inside the cell, spread
     * over it (each octant of fractional space gets its share) */
    for (int i = 0; i < 2; i++) {
        const float *x = q.pos_xyz + 3 * ((size_t)q.pos_off[i] + G);
        int oct[8] = {0};
        for (int j = 0; j < 500; j++) {
            double f[3];
            for (int k = 0; k < 3; k++)
                f[k] = x[3 * j] * inv[0][k] + x[3 * j + 1] * inv[1][k] + x[3 * j + 2] * inv[2][k];
            for (int k = 0; k < 3; k++) assert_true(f[k] >= -1e-6 && f[k] < 1 + 1e-6);
            oct[(f[0] >= 0.5) * 4 + (f[1] >= 0.5) * 2 + (f[2] >= 0.5)]++;
        }
        for (int o = 0; o < 8; o++) assert_true(oct[o] > 30 && oct[o] < 95);
        check_targets(s[i], x, q.pos_tgt + 3 * ((size_t)q.pos_off[i] + G), 500);
    }
    nesf_queries_free(&q);
    nesf_structure_free(s[0]);
    nesf_structure_free(s[1]);
}

/* second-nearest minus nearest atom distance, the quantity boundary points bound */
static double gap(const nesf_structure *s, const float x[3])
{
    double d[3];
    for (int i = 0; i < 3; i++) {
        const double *c = s->cart + 3 * i;
        d[i] = sqrt((c[0] - x[0]) * (c[0] - x[0]) + (c[1] - x[1]) * (c[1] - x[1]) + (c[2] - x[2]) * (c[2] - x[2]));
    }
    double lo = fmin(d[0], fmin(d[1], d[2])), hi = fmax(d[0], fmax(d[1], d[2]));
    return d[0] + d[1] + d[2] - lo - hi - lo;
}

static void test_boundary_points(void **state)
{
    (void)state;
    nesf_structure *s = triclinic();
    const int *cls = classes;
    nesf_sampling sp;
    nesf_sampling_paper(&sp);
    assert_int_equal(sp.boundary_points, 0);
    sp.global_fraction = 0.1f;
    sp.cell_points = 100;
    sp.boundary_points = 400;
    sp.boundary_width = 0.3f;
    float lo[3] = {0, 0, 0}, hi[3] = {5, 6, 7};
    const int G = (int)ceil(7 * 8 * 9 * 0.1);
    nesf_queries q;
    nesf_error err;
    assert_int_equal(nesf_queries_sample(&sp, lo, hi, &s, &cls, 1, 5, &q, &err), NESF_OK);
    assert_int_equal(q.pos_off[1], G + 100 + 400 + 3 * 64);
    /* the cell points are uniform: most lie away from the faces; the
     * boundary points lie on them (32 tries each cannot all miss here) */
    int near_faces = 0;
    for (int j = 0; j < 100; j++) near_faces += gap(s, q.pos_xyz + 3 * (G + j)) < 0.3;
    assert_true(near_faces < 60);
    const float *x = q.pos_xyz + 3 * (G + 100);
    for (int j = 0; j < 400; j++) assert_true(gap(s, x + 3 * j) < 0.3 + 1e-5);
    check_targets(s, x, q.pos_tgt + 3 * (G + 100), 400);
    nesf_queries_free(&q);
    nesf_structure_free(s);
}

static char *write_tmp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/nesf-test-sample-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_config(void **state)
{
    (void)state;
    nesf_train_config c;
    nesf_error err;
    nesf_train_config_paper(&c);
    char *p = write_tmp("{\"training\": {\"sampling\": {\"global_fraction\": 0.25, \"cell_points\": 256, "
                        "\"boundary_points\": 128, \"boundary_width\": 0.25}}}");
    assert_int_equal(nesf_train_config_load(p, &c, &err), NESF_OK);
    unlink(p);
    assert_int_equal(c.sampling.cell_points, 256);
    assert_int_equal(c.sampling.boundary_points, 128);
    assert_float_equal(c.sampling.boundary_width, 0.25, 1e-7);
    assert_float_equal(c.sampling.global_fraction, 0.25, 1e-7);
    char *js = nesf_train_config_to_json(&c);
    assert_non_null(strstr(js, "\"cell_points\":256"));
    assert_non_null(strstr(js, "\"boundary_points\":128"));
    free(js);
    const char *bad[] = {"{\"training\": {\"sampling\": {\"cell_points\": -1}}}",
                         "{\"training\": {\"sampling\": {\"cell_points\": 2.5}}}",
                         "{\"training\": {\"sampling\": {\"cell_points\": 100000}}}"};
    for (int i = 0; i < 3; i++) {
        nesf_train_config_paper(&c);
        p = write_tmp(bad[i]);
        assert_int_not_equal(nesf_train_config_load(p, &c, &err), NESF_OK);
        unlink(p);
        assert_non_null(strstr(err.msg, "training.sampling.cell_points"));
    }
}

/* training.dropout: absent keeps the model's rate (-1, not serialised), a
 * value overrides it and travels with the saved training config */
static void test_config_dropout(void **state)
{
    (void)state;
    nesf_train_config c;
    nesf_error err;
    nesf_train_config_paper(&c);
    assert_true(c.dropout < 0);
    char *js = nesf_train_config_to_json(&c);
    assert_null(strstr(js, "dropout"));
    free(js);
    char *p = write_tmp("{\"training\": {\"dropout\": 0.0}}");
    assert_int_equal(nesf_train_config_load(p, &c, &err), NESF_OK);
    unlink(p);
    assert_float_equal(c.dropout, 0.0, 0);
    js = nesf_train_config_to_json(&c);
    assert_non_null(strstr(js, "\"dropout\":0"));
    free(js);
    p = write_tmp("{\"training\": {\"dropout\": 1.5}}");
    assert_int_not_equal(nesf_train_config_load(p, &c, &err), NESF_OK);
    unlink(p);
    assert_non_null(strstr(err.msg, "training.dropout"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paper_counts),
        cmocka_unit_test(test_cell_points),
        cmocka_unit_test(test_boundary_points),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_dropout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
