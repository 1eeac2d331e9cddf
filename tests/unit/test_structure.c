/* Lattice geometry and site bookkeeping. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "structure.h"
#include "symmetry.h"

#include <string.h>

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

/* The shortest vector is the lattice's, not the basis': a sheared basis of
 * a 3 Å cubic lattice gives 3; a flat cell has a short vector even when
 * none of its basis vectors is short (Minkowski). */
static void test_shortest(void **state)
{
    (void)state;
    nesf_lattice cube = {{{3, 0, 0}, {0, 3, 0}, {0, 0, 3}}};
    assert_true(fabs(nesf_lattice_shortest(&cube) - 3) < 1e-12);
    nesf_lattice sheared = {{{3, 0, 0}, {0, 3, 0}, {300, -600, 3}}};
    assert_true(fabs(nesf_lattice_shortest(&sheared) - 3) < 1e-9);
    nesf_lattice fcc = {{{0, 2, 2}, {2, 0, 2}, {2, 2, 0}}};
    assert_true(fabs(nesf_lattice_shortest(&fcc) - sqrt(8)) < 1e-12);
    /* 9c - 3b - 2a = (0, 0, 0.09) */
    nesf_lattice flat = {{{3, 0, 0}, {1, 3, 0}, {1, 1, 0.01}}};
    assert_true(fabs(nesf_lattice_shortest(&flat) - 0.09) < 1e-9);
    nesf_lattice singular = {{{1, 0, 0}, {0, 1, 0}, {1, 1, 0}}};
    assert_true(nesf_lattice_shortest(&singular) == 0);
    nesf_lattice nan = {{{NAN, 0, 0}, {0, 1, 0}, {0, 0, 1}}};
    assert_true(nesf_lattice_shortest(&nan) == 0);
}

/* A cell the LCS6 model decodes from an N(0,1) latent (c = 0.0086 Å):
 * spglib dereferenced NULL on it for symprec 0.005..0.3.  Now no space
 * group, a clear error from the symmetry search, and no crash. */
static void test_flat_cell_symmetry(void **state)
{
    (void)state;
    nesf_cellpar p = {1.47415876, 1.79922152, 0.00859964, 69.74577320, 65.33626454, 63.43928878};
    static const int z[8] = {22, 29, 13, 13, 29, 13, 29, 29};
    static const double f[8][3] = {
        {0.00685240, -0.05803989, 0.23566651}, {1.02259636, -0.36524202, 315.08639294},
        {-0.53030417, -0.30625578, 302.90051149}, {1.56364854, -0.00890220, 9.63710441},
        {-1.60140975, 1.26288116, 365.55553587}, {-0.88299428, 1.50783674, 11.89077715},
        {0.65608474, 1.52152897, -21.26921342}, {0.19046124, 1.20971422, 316.03599104}};
    nesf_structure *s = nesf_structure_new(8);
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), NESF_OK);
    for (int i = 0; i < 8; i++) assert_int_equal(nesf_structure_add_site(s, z[i], f[i], NULL), 0);
    assert_int_equal(nesf_structure_validate(s, NULL), NESF_OK);
    static const double symprec[] = {0.001, 0.005, 0.01, 0.1, 0.3, 1.0};
    for (size_t k = 0; k < sizeof symprec / sizeof *symprec; k++) {
        char sym[16] = "x";
        assert_int_equal(nesf_structure_spacegroup(s, symprec[k], sym, sizeof sym), 0);
        assert_string_equal(sym, "");
        nesf_symmetry *y = NULL;
        nesf_error e = {0};
        assert_int_equal(nesf_structure_symmetry(s, symprec[k], &y, &e), NESF_ERR_INVALID);
        assert_null(y);
        assert_non_null(strstr(e.msg, "degenerate"));
    }
    nesf_structure_free(s);

    /* a real cell in a sheared basis still gets its group: rock salt,
     * shortest translation 5.64 Å (this sublattice is simple cubic) */
    nesf_structure *r = nesf_structure_new(8);
    nesf_lattice l = {{{5.64, 0, 0}, {0, 5.64, 0}, {5.64 * 7, 5.64 * 3, 5.64}}};
    r->lat = l;
    static const double na[4][3] = {{0, 0, 0}, {0.5, 0.5, 0}, {0.5, 0, 0.5}, {0, 0.5, 0.5}};
    for (int i = 0; i < 4; i++) {
        double cart[3], cl[3];
        for (int k = 0; k < 3; k++) cart[k] = na[i][k] * 5.64, cl[k] = cart[k];
        cl[0] += 2.82;
        assert_int_equal(nesf_structure_add_site_cart(r, 11, cart, NULL), 0);
        assert_int_equal(nesf_structure_add_site_cart(r, 17, cl, NULL), 0);
    }
    char sym[16];
    assert_int_equal(nesf_structure_spacegroup(r, 0.1, sym, sizeof sym), 225);
    nesf_structure_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_roundtrip),
        cmocka_unit_test(test_dataset_matrix),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_sites_and_wrap),
        cmocka_unit_test(test_shortest),
        cmocka_unit_test(test_flat_cell_symmetry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
