/* Lattice geometry and site bookkeeping. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "structure.h"

static void test_params_roundtrip(void **state)
{
    (void)state;
    nesf_cellpar p = {3.5056, 5.4172, 5.9351, 66.31, 78.22, 79.87}, q;
    nesf_lattice l;
    assert_int_equal(nesf_lattice_from_params(&p, &l, NULL), NESF_OK);
    /* dataset convention: a along x, b in the xy-plane */
    assert_true(fabs(l.m[0][1]) < 1e-12 && fabs(l.m[0][2]) < 1e-12 && fabs(l.m[1][2]) < 1e-12);
    nesf_lattice_params(&l, &q);
    assert_true(fabs(q.a - p.a) < 1e-9 && fabs(q.b - p.b) < 1e-9 && fabs(q.c - p.c) < 1e-9);
    assert_true(fabs(q.alpha - p.alpha) < 1e-9 && fabs(q.beta - p.beta) < 1e-9);
    assert_true(fabs(q.gamma - p.gamma) < 1e-9);
}

static void test_dataset_matrix(void **state)
{
    (void)state;
    /* a triclinic cell from lcs6/train.jsonl, rebuilt from its parameters */
    nesf_cellpar p = {3.505637774355759, 5.417242223810033, 5.935113561640755,
                      66.31010254185543, 78.2226172320896, 79.86747043370588};
    double want[3][3] = {{3.50563777, 0, 0}, {0.95303185, 5.33275197, 0},
                         {1.21141385, 2.2059336, 5.3751192}};
    nesf_lattice l;
    assert_int_equal(nesf_lattice_from_params(&p, &l, NULL), NESF_OK);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            assert_true(fabs(l.m[i][j] - want[i][j]) < 1e-6);
}

static void test_bad_params(void **state)
{
    (void)state;
    nesf_error e = {0};
    nesf_cellpar p = {1, 1, 1, 10, 10, 170};
    nesf_lattice l;
    assert_int_equal(nesf_lattice_from_params(&p, &l, &e), NESF_ERR_INVALID);
    assert_true(e.msg[0] != 0);
    nesf_cellpar z = {0, 1, 1, 90, 90, 90};
    assert_int_equal(nesf_lattice_from_params(&z, &l, NULL), NESF_ERR_INVALID);
}

static void test_sites_and_wrap(void **state)
{
    (void)state;
    nesf_structure *s = nesf_structure_new(1);
    nesf_cellpar p = {4, 5, 6, 90, 90, 90};
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), NESF_OK);
    for (int i = 0; i < 10; i++) {
        double f[3] = {0.1 * i - 0.5, 1.25, -1e-17};
        assert_int_equal(nesf_structure_add_site(s, 8, f, NULL), NESF_OK);
    }
    assert_int_equal(s->n, 10);
    double c[3] = {2.0, 2.5, 3.0};
    assert_int_equal(nesf_structure_add_site_cart(s, 26, c, NULL), NESF_OK);
    assert_true(fabs(s->frac[30] - 0.5) < 1e-12 && fabs(s->frac[32] - 0.5) < 1e-12);
    nesf_structure_wrap(s);
    for (int i = 0; i < 3 * s->n; i++)
        assert_true(s->frac[i] >= 0.0 && s->frac[i] < 1.0);
    assert_true(fabs(s->frac[1] - 0.25) < 1e-12);
    assert_true(fabs(nesf_lattice_volume(&s->lat) - 120.0) < 1e-9);
    assert_int_equal(nesf_structure_validate(s, NULL), NESF_OK);
    s->z[0] = 0;
    assert_int_equal(nesf_structure_validate(s, NULL), NESF_ERR_INVALID);
    s->z[0] = 8;
    s->cart[4] = NAN;
    assert_int_equal(nesf_structure_validate(s, NULL), NESF_ERR_INVALID);
    nesf_structure *cp = nesf_structure_copy(s);
    assert_int_equal(cp->n, s->n);
    nesf_structure_free(cp);
    nesf_structure_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_roundtrip),
        cmocka_unit_test(test_dataset_matrix),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_sites_and_wrap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
