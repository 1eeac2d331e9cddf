/* Symmetrized output: nesf_structure_standardize on exact and perturbed
 * rock salt and zincblende, its failure mode, and the decode options
 * that ask for it (also through a decode of the exact field). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "decode.h"
#include "structure.h"
#include "symmetry.h"

/* Deterministic noise in [-amp, amp] (an LCG; no libc rand state). */
static double noise(unsigned *seed, double amp)
{
    *seed = *seed * 1664525u + 1013904223u;
    return amp * (2.0 * (*seed >> 8) / 16777216.0 - 1.0);
}

/* A two-species fcc crystal (cation at 0, anion at shift) in the primitive
 * rhombohedral cell (2 atoms) or the conventional cubic one (8 atoms),
 * every Cartesian coordinate moved by up to jitter Å. */
static nesf_structure *fcc_pair(double a, int zc, int za, double shift, int conventional,
                                double jitter, unsigned seed)
{
    nesf_structure *s = nesf_structure_new(8);
    nesf_cellpar cub = {a, a, a, 90, 90, 90}, prim = {a / sqrt(2), a / sqrt(2), a / sqrt(2), 60, 60, 60};
    assert_int_equal(nesf_lattice_from_params(conventional ? &cub : &prim, &s->lat, NULL), 0);
    static const double fcc[4][3] = {{0, 0, 0}, {0.5, 0.5, 0}, {0.5, 0, 0.5}, {0, 0.5, 0.5}};
    int nt = conventional ? 4 : 1;
    for (int i = 0; i < nt; i++)
        for (int k = 0; k < 2; k++) {
            double f[3], c[3];
            for (int d = 0; d < 3; d++) f[d] = fcc[i][d] + (k ? shift : 0);
            if (conventional) {
                nesf_lattice_frac_to_cart(&s->lat, f, c);
            } else { /* fractional in the primitive cell: shift along its body diagonal */
                double g[3] = {k ? shift : 0, k ? shift : 0, k ? shift : 0};
                nesf_lattice_frac_to_cart(&s->lat, g, c);
            }
            for (int d = 0; d < 3; d++) c[d] += noise(&seed, jitter);
            assert_int_equal(nesf_structure_add_site_cart(s, k ? za : zc, c, NULL), 0);
        }
    return s;
}

/* s refined at symprec is group `number` with n atoms, a cubic cell of
 * edge a (conventional), and exactly symmetric: a tight tolerance finds
 * the same group. */
static void check_refined(const nesf_structure *s, int primitive, int number, const char *symbol,
                          int n, double a)
{
    nesf_structure *t = NULL;
    nesf_symmetry_info info;
    nesf_error err;
    assert_int_equal(nesf_structure_standardize(s, 0.1, primitive, &t, &info, &err), 0);
    assert_int_equal(info.number, number);
    assert_string_equal(info.symbol, symbol);
    assert_int_equal(t->n, n);
    char sym[16];
    assert_int_equal(nesf_structure_spacegroup(t, 1e-5, sym, sizeof sym), number);
    nesf_cellpar p;
    nesf_lattice_params(&t->lat, &p);
    double edge = primitive ? a / sqrt(2) : a, ang = primitive ? 60 : 90;
    assert_true(fabs(p.a - edge) < 0.05 && fabs(p.b - p.a) < 1e-9 && fabs(p.c - p.a) < 1e-9);
    assert_true(fabs(p.alpha - ang) < 1e-6 && fabs(p.beta - ang) < 1e-6 && fabs(p.gamma - ang) < 1e-6);
    /* the datasets' orientation, wrapped coordinates */
    assert_true(fabs(t->lat.m[0][1]) < 1e-9 && fabs(t->lat.m[0][2]) < 1e-9 && fabs(t->lat.m[1][2]) < 1e-9);
    for (int i = 0; i < 3 * t->n; i++) assert_true(t->frac[i] >= 0 && t->frac[i] < 1);
    nesf_structure_free(t);
}

static void test_rocksalt(void **state)
{
    (void)state;
    for (int conv = 0; conv < 2; conv++)
        for (int j = 0; j < 2; j++) {
            nesf_structure *s = fcc_pair(5.64, 11, 17, 0.5, conv, j ? 0.01 : 0, 7u + (unsigned)conv);
            char sym[16];
            if (j) /* the perturbation breaks the symmetry at a tight tolerance */
                assert_int_not_equal(nesf_structure_spacegroup(s, 1e-4, sym, sizeof sym), 225);
            check_refined(s, 0, 225, "Fm-3m", 8, 5.64);
            check_refined(s, 1, 225, "Fm-3m", 2, 5.64);
            nesf_structure_free(s);
        }
}

static void test_zincblende(void **state)
{
    (void)state;
    for (int conv = 0; conv < 2; conv++)
        for (int j = 0; j < 2; j++) {
            nesf_structure *s = fcc_pair(5.41, 30, 16, 0.25, conv, j ? 0.01 : 0, 11u + (unsigned)conv);
            check_refined(s, 0, 216, "F-43m", 8, 5.41);
            check_refined(s, 1, 216, "F-43m", 2, 5.41);
            nesf_structure_free(s);
        }
}

/* The tolerance promises a distance an atom may move: zincblende with
 * every atom up to 0.06 Å off its site is refined to F-43m at 0.1 Å,
 * although spglib itself needs more (an atom and its image can be 0.12 Å
 * apart); at 0.04 Å it is not, and no answer moves an atom farther than
 * its symprec. */
static void test_tolerance_is_a_shift(void **state)
{
    (void)state;
    int plain_missed = 0;
    for (unsigned seed = 1; seed <= 8; seed++) {
        nesf_structure *s = fcc_pair(5.41, 30, 16, 0.25, 1, 0.06 / sqrt(3), seed), *t = NULL;
        char sym[16];
        plain_missed += nesf_structure_spacegroup(s, 0.1, sym, sizeof sym) != 216;
        nesf_symmetry_info info;
        nesf_error err;
        assert_int_equal(nesf_structure_standardize(s, 0.1, 0, &t, &info, &err), 0);
        assert_int_equal(info.number, 216);
        assert_true(info.max_shift > 0.005 && info.max_shift <= 0.1);
        assert_true(info.tolerance >= 0.1 && info.tolerance <= 0.2);
        nesf_structure_free(t);
        assert_int_equal(nesf_structure_standardize(s, 0.02, 0, &t, &info, &err), 0);
        assert_int_not_equal(info.number, 216);
        assert_true(isnan(info.max_shift) || info.max_shift <= 0.02);
        nesf_structure_free(t);
        nesf_structure_free(s);
    }
    assert_true(plain_missed >= 2); /* the case the ladder is for */
}

static void test_refuses(void **state)
{
    (void)state;
    nesf_structure *s = fcc_pair(5.64, 11, 17, 0.5, 1, 0, 1), *t = (nesf_structure *)1;
    nesf_error err;
    assert_int_equal(nesf_structure_standardize(s, 0, 0, &t, NULL, &err), NESF_ERR_INVALID);
    assert_null(t);
    /* two atoms on one spot: spglib finds no group */
    double c[3] = {s->cart[0] + 0.01, s->cart[1], s->cart[2]};
    assert_int_equal(nesf_structure_add_site_cart(s, 11, c, NULL), 0);
    assert_int_equal(nesf_structure_standardize(s, 0.1, 0, &t, NULL, &err), NESF_ERR_INVALID);
    assert_null(t);
    assert_non_null(strstr(err.msg, "symprec"));
    nesf_structure_free(s);
}

static void test_options(void **state)
{
    (void)state;
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    assert_int_equal(o.symmetrize, 0);
    assert_true(fabs(o.symprec - 0.1) < 1e-7);
    assert_int_equal(o.cell, NESF_CELL_CONVENTIONAL);
    nesf_error err;
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"symmetrize\": true, \"symprec\": 0.05, "
                                                    "\"cell\": \"primitive\"}", &err), 0);
    assert_int_equal(o.symmetrize, 1);
    assert_int_equal(o.cell, NESF_CELL_PRIMITIVE);
    assert_true(fabs(o.symprec - 0.05) < 1e-7);
    char *js = nesf_decode_opts_to_json(&o);
    assert_non_null(strstr(js, "\"symmetrize\":true"));
    assert_non_null(strstr(js, "\"cell\":\"primitive\""));
    nesf_decode_opts back;
    nesf_decode_opts_default(&back);
    assert_int_equal(nesf_decode_opts_from_text(&back, js, &err), 0);
    assert_int_equal(back.symmetrize, 1);
    assert_int_equal(back.cell, NESF_CELL_PRIMITIVE);
    free(js);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"symmetrize\": false}", &err), 0);
    assert_int_equal(o.symmetrize, 0);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"symmetrize\": 1}", &err), 0);
    assert_int_equal(o.symmetrize, 1);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"cell\": \"niggli\"}", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "conventional"));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"symmetrize\": \"yes\"}", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "true or false"));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"symprec\": 0}", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"mode\": \"fast\"}", &err), 0);
    assert_int_equal(o.mode, NESF_DECODE_FAST);
}

/* Decoding the exact field of a rock-salt primitive cell with the option:
 * the answer is the conventional cell, and the stats count it. */
static void test_decode_symmetrized(void **state)
{
    (void)state;
    nesf_backend *be;
    nesf_error err;
    assert_int_equal(nesf_backend_cpu_create(1, &be, &err), 0);
    nesf_structure *s[1] = {fcc_pair(5.64, 11, 17, 0.5, 0, 0, 1)};
    static const int species_z[2] = {11, 17};
    const float lo[3] = {-1, -1, -1}, hi[3] = {6, 6, 6};
    nesf_field f;
    assert_int_equal(nesf_field_truth(be, s, 1, species_z, 2, lo, hi, &f, &err), 0);
    for (int mode = 0; mode < 2; mode++) {
        nesf_decode_opts o;
        nesf_decode_opts_default(&o);
        o.mode = mode;
        nesf_structure *out[1];
        nesf_decode_stats st;
        assert_int_equal(nesf_decode_field(&f, &o, out, NULL, &st, &err), 0);
        assert_int_equal(out[0]->n, 2);
        assert_int_equal(st.symmetrized, 0);
        nesf_structure_free(out[0]);
        o.symmetrize = 1;
        assert_int_equal(nesf_decode_field(&f, &o, out, NULL, &st, &err), 0);
        assert_int_equal(st.symmetrized, 1);
        assert_int_equal(st.symmetrize_failed, 0);
        assert_int_equal(out[0]->n, 8);
        char sym[16];
        assert_int_equal(nesf_structure_spacegroup(out[0], 1e-5, sym, sizeof sym), 225);
        nesf_structure_free(out[0]);
    }
    nesf_field_release(&f);
    nesf_structure_free(s[0]);
    nesf_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rocksalt),
        cmocka_unit_test(test_zincblende),
        cmocka_unit_test(test_tolerance_is_a_shift),
        cmocka_unit_test(test_refuses),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_decode_symmetrized),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
