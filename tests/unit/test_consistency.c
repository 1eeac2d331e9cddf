/* The decode∘encode fixed-point check (core/consistency.c): its verdicts
 * are those of an encode and a decode done by hand, empty and missing
 * structures are left unchecked, the symmetrize option does not change the
 * verdicts, batched checks equal single ones, and the composition test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "consistency.h"
#include "shipped.h"

static nesf_backend *be;
static nesf_model *m;

static nesf_structure *cubic(double a, int n, const int *z, const double (*f)[3])
{
    nesf_structure *s = shipped_cubic(a, n, z, f);
    assert_non_null(s);
    return s;
}

static int setup(void **state)
{
    (void)state;
    return shipped_load(&be, &m);
}

static int teardown(void **state)
{
    (void)state;
    nesf_model_free(m);
    nesf_backend_free(be);
    return 0;
}

static void opts(nesf_decode_opts *o)
{
    nesf_decode_opts_default(o);
    o->mode = NESF_DECODE_FAST;
}

static void test_composition(void **state)
{
    (void)state;
    const double f[3][3] = {{0, 0, 0}, {0.5, 0.5, 0.5}, {0.25, 0.5, 0}};
    nesf_structure *a = cubic(4, 3, (int[]){8, 26, 8}, f);
    nesf_structure *b = cubic(5, 3, (int[]){26, 8, 8}, f); /* other cell and order */
    nesf_structure *c = cubic(4, 3, (int[]){26, 26, 8}, f);
    nesf_structure *d = cubic(4, 2, (int[]){8, 26}, f);
    assert_true(nesf_same_composition(a, b));
    assert_false(nesf_same_composition(a, c));
    assert_false(nesf_same_composition(a, d));
    nesf_structure_free(a), nesf_structure_free(b), nesf_structure_free(c), nesf_structure_free(d);
}

/* verdicts = a hand-made encode and decode; NULL and empty unchecked;
 * symmetrize ignored; one at a time = all at once */
static void test_verdicts(void **state)
{
    (void)state;
    const double fcc[8][3] = {{0, 0, 0}, {0, 0.5, 0.5}, {0.5, 0, 0.5}, {0.5, 0.5, 0},
                              {0.5, 0, 0}, {0.5, 0.5, 0.5}, {0, 0, 0.5}, {0, 0.5, 0}};
    const double zb[8][3] = {{0, 0, 0}, {0, 0.5, 0.5}, {0.5, 0, 0.5}, {0.5, 0.5, 0},
                             {0.25, 0.25, 0.25}, {0.25, 0.75, 0.75}, {0.75, 0.25, 0.75}, {0.75, 0.75, 0.25}};
    const int nacl[8] = {11, 11, 11, 11, 17, 17, 17, 17}, cds[8] = {48, 48, 48, 48, 16, 16, 16, 16};
    const int mgo[8] = {12, 12, 12, 12, 8, 8, 8, 8};
    nesf_structure *s[5] = {cubic(5.64, 8, nacl, fcc), NULL, cubic(5.83, 8, cds, zb), nesf_structure_new(1),
                            cubic(4.21, 8, mgo, fcc)};
    nesf_decode_opts o;
    opts(&o);
    nesf_structure *dec[5] = {0};
    nesf_error item[5], err;
    float z[5 * 192];
    nesf_structure *in[3] = {s[0], s[2], s[4]};
    assert_int_equal(nesf_model_encode(m, in, 3, z, &err), NESF_OK);
    nesf_structure *d3[3];
    assert_int_equal(nesf_decode(m, 3, z, &o, d3, item, NULL, &err), NESF_OK);
    dec[0] = d3[0], dec[2] = d3[1], dec[3] = s[3], dec[4] = d3[2];
    assert_true(nesf_model_latent_size(m) <= 192);
    nesf_fixed_point v[5], w;
    assert_int_equal(nesf_fixed_point_check(m, dec, 5, &o, v, &err), NESF_OK);
    assert_false(v[1].checked);
    assert_false(v[3].checked);
    int seen = 0;
    for (int i = 0; i < 5; i++) {
        if (!dec[i] || dec[i]->n == 0) continue;
        float zi[192];
        nesf_structure *re = NULL;
        assert_int_equal(nesf_model_encode(m, &dec[i], 1, zi, &err), NESF_OK);
        assert_int_equal(nesf_decode(m, 1, zi, &o, &re, item, NULL, &err), NESF_OK);
        assert_true(v[i].checked);
        assert_int_equal(v[i].atoms, re ? re->n : -1);
        assert_int_equal(v[i].consistent, re && nesf_same_composition(dec[i], re));
        nesf_structure_free(re);
        assert_int_equal(nesf_fixed_point_check(m, &dec[i], 1, &o, &w, &err), NESF_OK);
        assert_memory_equal(&w, &v[i], sizeof w);
        seen++;
    }
    assert_true(seen >= 1);
    nesf_decode_opts sym = o;
    sym.symmetrize = 1;
    nesf_fixed_point vs[5];
    assert_int_equal(nesf_fixed_point_check(m, dec, 5, &sym, vs, &err), NESF_OK);
    assert_memory_equal(vs, v, sizeof v);
    for (int i = 0; i < 3; i++) nesf_structure_free(d3[i]);
    for (int i = 0; i < 5; i++) nesf_structure_free(s[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_composition),
        cmocka_unit_test(test_verdicts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
