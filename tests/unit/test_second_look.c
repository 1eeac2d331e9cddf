/* The second look (core/decode/second_look.c) with the shipped model:
 * nothing without a calibration or with no tries; with a calibration that
 * makes every answer doubtful, cycle distances only go down, a replaced
 * answer comes with its latent, and a batch gives what each structure
 * gets alone.  Also nms_radius 0, the radius from the training set's
 * shortest interatomic distance, which needs a network that decodes atoms. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "domain.h"
#include "second_look.h"
#include "shipped.h"

enum { N = 3, L_MAX = 512 };

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
    return shipped_load(&be, &m) || nesf_model_latent_size(m) > L_MAX;
}

static int teardown(void **state)
{
    (void)state;
    nesf_model_free(m);
    nesf_backend_free(be);
    return 0;
}

static void look_opts(nesf_refine_opts *o)
{
    nesf_refine_opts_default(o);
    o->steps = 10; /* short, for the test's time: the first answers stay doubtful */
    o->look_steps = 30;
}

/* Each structure on its own: encoder latent, refined latent, its decode
 * and cycle distance. */
static void first_answers(nesf_structure *const *s, int n, float *z0, float *z, nesf_structure **rec,
                          double *cyc, const nesf_decode_opts *d)
{
    const int L = nesf_model_latent_size(m);
    nesf_refine_opts o;
    look_opts(&o);
    nesf_error err;
    for (int i = 0; i < n; i++) {
        assert_int_equal(nesf_model_encode(m, s + i, 1, z0 + L * i, &err), NESF_OK);
        memcpy(z + L * i, z0 + L * i, (size_t)L * sizeof *z);
        assert_int_equal(nesf_refine_latents(m, s + i, 1, z + L * i, &o, NULL, &err), NESF_OK);
        assert_int_equal(nesf_decode(m, 1, z + L * i, d, rec + i, NULL, NULL, &err), NESF_OK);
        assert_int_equal(nesf_cycle_distances(m, 1, z0 + L * i, rec + i, cyc + i, &err), NESF_OK);
    }
}

static void set_calibration(int on, nesf_structure *const *s)
{
    nesf_domain dom;
    nesf_domain_from_structures(s, N, &dom);
    double zeros[4] = {0, 0, 0, 0}; /* every distance above every percentile */
    if (on) nesf_domain_set_cycle(&dom, zeros, 4, "fast");
    nesf_model_set_domain(m, &dom);
}

static void test_second_look(void **state)
{
    (void)state;
    const int L = nesf_model_latent_size(m);
    const double fcc[8][3] = {{0, 0, 0}, {0, 0.5, 0.5}, {0.5, 0, 0.5}, {0.5, 0.5, 0},
                              {0.5, 0, 0}, {0.5, 0.5, 0.5}, {0, 0, 0.5}, {0, 0.5, 0}};
    const double zb[8][3] = {{0, 0, 0}, {0, 0.5, 0.5}, {0.5, 0, 0.5}, {0.5, 0.5, 0},
                             {0.25, 0.25, 0.25}, {0.25, 0.75, 0.75}, {0.75, 0.25, 0.75}, {0.75, 0.75, 0.25}};
    const int nacl[8] = {11, 11, 11, 11, 17, 17, 17, 17}, cds[8] = {48, 48, 48, 48, 16, 16, 16, 16};
    const int mgo[8] = {12, 12, 12, 12, 8, 8, 8, 8};
    nesf_structure *s[N] = {cubic(5.64, 8, nacl, fcc), cubic(5.83, 8, cds, zb), cubic(4.21, 8, mgo, fcc)};
    nesf_structure *rec[N], *one[N];
    static float z0[N * L_MAX], z[N * L_MAX], zf[N * L_MAX], za[N * L_MAX];
    double cyc[N], cf[N], ca[N];
    nesf_decode_opts d;
    nesf_decode_opts_default(&d);
    d.mode = NESF_DECODE_FAST;
    d.batch_particles = 1; /* invariant batches (nesfd's engine.h) */
    first_answers(s, N, z0, z, rec, cyc, &d);
    memcpy(zf, z, sizeof z);
    memcpy(cf, cyc, sizeof cyc);
    nesf_refine_opts o;
    look_opts(&o);
    nesf_second_look_stats st = {0};
    nesf_error err;
    set_calibration(0, s);
    assert_true(isinf(nesf_second_look_threshold(m, &o)));
    assert_int_equal(nesf_second_look(m, s, N, z0, z, rec, cyc, &o, &d, &st, &err), NESF_OK);
    assert_memory_equal(z, zf, sizeof z);
    assert_int_equal(st.doubtful, 0);
    set_calibration(1, s);
    assert_true(nesf_second_look_threshold(m, &o) == 0.0);
    o.look_tries = 0;
    assert_true(isinf(nesf_second_look_threshold(m, &o)));
    o.look_tries = 2;
    assert_int_equal(nesf_second_look(m, s, N, z0, z, rec, cyc, &o, &d, &st, &err), NESF_OK);
    print_message("  %d doubtful, %d replaced, %d tries; distances %.3f %.3f %.3f -> %.3f %.3f %.3f\n",
                  st.doubtful, st.replaced, st.tries, cf[0], cf[1], cf[2], cyc[0], cyc[1], cyc[2]);
    assert_int_equal(st.doubtful, N);
    assert_int_equal(st.tries, 2 * N);
    assert_true(st.replaced > 0);
    for (int i = 0; i < N; i++) {
        assert_true(cyc[i] <= cf[i]);
        int moved = memcmp(z + L * i, zf + L * i, (size_t)L * sizeof *z) != 0;
        assert_int_equal(moved, cyc[i] < cf[i]);
    }
    for (int i = 0; i < N; i++) { /* alone, the same */
        first_answers(s + i, 1, z0 + L * i, za + L * i, one + i, ca + i, &d);
        assert_int_equal(nesf_second_look(m, s + i, 1, z0 + L * i, za + L * i, one + i, ca + i, &o, &d, NULL, &err),
                         NESF_OK);
        assert_memory_equal(za + L * i, z + L * i, (size_t)L * sizeof *z);
        assert_true(ca[i] == cyc[i] && one[i]->n == rec[i]->n);
    }
    for (int i = 0; i < N; i++) {
        nesf_structure_free(s[i]);
        nesf_structure_free(rec[i]);
        nesf_structure_free(one[i]);
    }
}

static int same_structures(nesf_structure *const *a, nesf_structure *const *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i]->n != b[i]->n || memcmp(a[i]->cart, b[i]->cart, (size_t)a[i]->n * 3 * sizeof(double)) ||
            memcmp(a[i]->z, b[i]->z, (size_t)a[i]->n * sizeof *a[i]->z))
            return 0;
    return 1;
}

/* nms_radius 0: 0.5 Å without a record, 0.9 x the recorded distance when
 * that is larger; a decode with 0 is the decode with the radius it means. */
static void test_nms_from_domain(void **state)
{
    (void)state;
    const double zb[8][3] = {{0, 0, 0}, {0, 0.5, 0.5}, {0.5, 0, 0.5}, {0.5, 0.5, 0},
                             {0.25, 0.25, 0.25}, {0.25, 0.75, 0.75}, {0.75, 0.25, 0.75}, {0.75, 0.75, 0.25}};
    const int cds[8] = {48, 48, 48, 48, 16, 16, 16, 16};
    nesf_structure *s = cubic(5.83, 8, cds, zb), *a[4];
    static float z[L_MAX];
    nesf_error err;
    assert_int_equal(nesf_model_encode(m, &s, 1, z, &err), NESF_OK);
    nesf_decode_opts d;
    nesf_decode_opts_default(&d);
    d.mode = NESF_DECODE_FAST;
    nesf_domain dom;
    nesf_domain_from_structures(&s, 1, &dom);
    const double md[2] = {0, 3.0}; /* not recorded; recorded: radius 2.7 Å */
    const float want[2] = {0.5f, 0.9f * 3.0f};
    for (int k = 0; k < 2; k++) {
        dom.min_distance = md[k];
        nesf_model_set_domain(m, &dom);
        d.nms_radius = 0;
        assert_int_equal(nesf_decode(m, 1, z, &d, &a[2 * k], NULL, NULL, &err), NESF_OK);
        d.nms_radius = want[k];
        assert_int_equal(nesf_decode(m, 1, z, &d, &a[2 * k + 1], NULL, NULL, &err), NESF_OK);
        assert_true(same_structures(&a[2 * k], &a[2 * k + 1], 1));
    }
    print_message("  CdS: %d atoms at 0.5 Å, %d at 2.7 Å\n", a[0]->n, a[2]->n);
    assert_true(a[2]->n < a[0]->n); /* the large radius merges neighbours (2.52 Å apart) */
    dom.min_distance = 0;
    nesf_model_set_domain(m, &dom);
    for (int i = 0; i < 4; i++) nesf_structure_free(a[i]);
    nesf_structure_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_second_look),
        cmocka_unit_test(test_nms_from_domain),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
