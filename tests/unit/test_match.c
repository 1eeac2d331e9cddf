/* The structure matcher: assignment, LLL, and verdicts on rock salt in
 * different cells, perturbed, strained, and of another composition. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "match.h"

static void test_assign(void **state)
{
    (void)state;
    const double c[9] = {4, 1, 3, 2, 0, 5, 3, 2, 2};
    int col[3];
    assert_true(fabs(nesf_assign(3, c, col) - 5) < 1e-12); /* 1 + 2 + 2 */
    assert_int_equal(col[0], 1);
    assert_int_equal(col[1], 0);
    assert_int_equal(col[2], 2);
    const double f[4] = {INFINITY, 1, INFINITY, 2}; /* column 0 is reachable from no row */
    assert_true(isinf(nesf_assign(2, f, col)));
}

static void test_lll(void **state)
{
    (void)state;
    nesf_lattice l = {{{1, 0, 0}, {5, 1, 0}, {7, 3, 1}}};
    double v0 = nesf_lattice_volume(&l);
    nesf_lattice_lll(&l);
    assert_true(fabs(nesf_lattice_volume(&l) - v0) < 1e-9);
    for (int i = 0; i < 3; i++)
        assert_true(sqrt(l.m[i][0] * l.m[i][0] + l.m[i][1] * l.m[i][1] + l.m[i][2] * l.m[i][2]) < 1.5);
}

/* Rock salt: conventional (8 atoms) or primitive (2), optionally jittered
 * and with a scaled or stretched cell. */
static nesf_structure *rocksalt(int conventional, double a, double stretch_c, double jitter, int zc)
{
    nesf_structure *s = nesf_structure_new(8);
    nesf_cellpar cub = {a, a, a * stretch_c, 90, 90, 90};
    nesf_cellpar prim = {a / sqrt(2), a / sqrt(2), a / sqrt(2) * stretch_c, 60, 60, 60};
    assert_int_equal(nesf_lattice_from_params(conventional ? &cub : &prim, &s->lat, NULL), 0);
    static const double fcc[4][3] = {{0, 0, 0}, {0.5, 0.5, 0}, {0.5, 0, 0.5}, {0, 0.5, 0.5}};
    unsigned seed = 5;
    for (int i = 0; i < (conventional ? 4 : 1); i++)
        for (int k = 0; k < 2; k++) {
            double f[3];
            for (int d = 0; d < 3; d++) {
                f[d] = conventional ? fcc[i][d] + 0.5 * k : 0.5 * k;
                seed = seed * 1664525u + 1013904223u;
                f[d] += jitter * (2.0 * (seed >> 8) / 16777216.0 - 1);
            }
            assert_int_equal(nesf_structure_add_site(s, k ? zc : 11, f, NULL), 0);
        }
    return s;
}

static void test_verdicts(void **state)
{
    (void)state;
    nesf_match_opts o;
    nesf_match_opts_default(&o);
    nesf_match_result r;
    nesf_error err;
    nesf_structure *conv = rocksalt(1, 5.64, 1, 0, 17), *prim = rocksalt(0, 5.7, 1, 0.01, 17);
    assert_int_equal(nesf_structure_match(conv, prim, &o, &r, &err), 0);
    assert_true(r.match);
    assert_true(r.rms < 0.05 && r.max_dist >= r.rms);
    assert_int_equal(nesf_structure_match(conv, conv, &o, &r, &err), 0);
    assert_true(r.match && r.rms < 1e-9);
    /* a c axis 3x longer is beyond ltol 0.3 even at equal volumes (60 % is not) */
    nesf_structure *strained = rocksalt(1, 5.64, 3.0, 0, 17);
    assert_int_equal(nesf_structure_match(conv, strained, &o, &r, &err), 0);
    assert_false(r.match);
    assert_true(isnan(r.rms));
    /* another element: composition */
    nesf_structure *kcl = rocksalt(1, 5.64, 1, 0, 19);
    assert_int_equal(nesf_structure_match(conv, kcl, &o, &r, &err), 0);
    assert_false(r.match);
    assert_string_equal(r.reason, "composition");
    /* one atom moved by 0.4 of the cell: sites */
    nesf_structure *moved = rocksalt(1, 5.64, 1, 0, 17);
    moved->frac[0] += 0.25;
    moved->frac[1] += 0.15;
    nesf_structure_update_cart(moved);
    assert_int_equal(nesf_structure_match(conv, moved, &o, &r, &err), 0);
    assert_false(r.match);
    o.stol = 0;
    assert_int_equal(nesf_structure_match(conv, prim, &o, &r, &err), NESF_ERR_INVALID);
    nesf_structure_free(conv);
    nesf_structure_free(prim);
    nesf_structure_free(strained);
    nesf_structure_free(kcl);
    nesf_structure_free(moved);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_assign),
        cmocka_unit_test(test_lll),
        cmocka_unit_test(test_verdicts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
