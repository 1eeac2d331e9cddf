/* Reconstruction metrics on hand-computed cases, NMS and decode options. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "decode.h"
#include "metrics.h"

static nesf_structure *make(double a, int n, const int *z, const double (*cart)[3])
{
    nesf_cellpar p = {a, a, a, 90, 90, 90};
    nesf_structure *s = nesf_structure_new(n);
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), 0);
    for (int i = 0; i < n; i++) assert_int_equal(nesf_structure_add_site_cart(s, z[i], cart[i], NULL), 0);
    return s;
}

#define near(a, b) assert_true(fabs((a) - (b)) < 1e-9)

static void test_perfect(void **state)
{
    (void)state;
    const int z[2] = {1, 8};
    const double c[2][3] = {{0, 0, 0}, {1, 0, 0}};
    nesf_structure *t = make(4, 2, z, c), *d = nesf_structure_copy(t);
    nesf_metrics m;
    nesf_metrics_init(&m);
    nesf_metrics_add(&m, t, d);
    nesf_metrics_summary s;
    nesf_metrics_summarize(&m, &s);
    near(s.count_err_pct, 0);
    near(s.pos_act, 0);
    near(s.pos_det, 0);
    near(s.spec_act_pct, 0);
    near(s.spec_det_pct, 0);
    near(s.len_mae, 0);
    near(s.ang_mae, 0);
    nesf_structure_free(t);
    nesf_structure_free(d);
}

static void test_extra_and_zero_detections(void **state)
{
    (void)state;
    const int zt[2] = {1, 8}, zd[3] = {1, 8, 1};
    const double ct[2][3] = {{0, 0, 0}, {2, 0, 0}};
    const double cd[3][3] = {{0.1, 0, 0}, {2, 0, 0}, {5, 0, 0}};
    nesf_structure *t = make(6, 2, zt, ct), *d = make(6, 3, zd, cd);
    nesf_metrics m;
    nesf_metrics_init(&m);
    nesf_metrics_add(&m, t, d);
    nesf_metrics_summary s;
    nesf_metrics_summarize(&m, &s);
    near(s.count_err_pct, 100);
    near(s.pos_act, 0.1 / 2);           /* 0.1 and 0 */
    near(s.pos_det, (0.1 + 0 + 3) / 3); /* the extra atom is 3 Å from O */
    near(s.spec_act_pct, 0);
    near(s.spec_det_pct, 100.0 / 3);    /* the extra H's nearest true atom is O */

    /* a second structure with no detections at all: counted in the
     * atom-count error, left out of the position and species means */
    nesf_structure *e = nesf_structure_new(1);
    e->lat = t->lat;
    nesf_metrics_add(&m, t, e);
    nesf_metrics_add(&m, t, NULL);      /* failed reconstruction: no lattice either */
    nesf_metrics_summarize(&m, &s);
    assert_int_equal(m.structures, 3);
    assert_int_equal(m.count_wrong, 3);
    assert_int_equal(m.undetected_atoms, 4);
    assert_int_equal(m.true_atoms, 6);
    assert_int_equal(m.act_atoms, 2);
    assert_int_equal(m.lattices, 2);
    near(s.count_err_pct, 100);
    near(s.pos_act, 0.05);
    near(s.pos_det, 3.1 / 3);

    /* zero detections alone: nothing to average over */
    nesf_metrics z0;
    nesf_metrics_init(&z0);
    nesf_metrics_add(&z0, t, e);
    nesf_metrics_summarize(&z0, &s);
    near(s.count_err_pct, 100);
    assert_true(isnan(s.pos_act) && isnan(s.pos_det) && isnan(s.spec_act_pct));
    near(s.len_mae, 0);
    nesf_structure_free(t);
    nesf_structure_free(d);
    nesf_structure_free(e);
}

static void test_species_and_lattice(void **state)
{
    (void)state;
    const int zt[2] = {11, 17}, zd[2] = {17, 17};
    const double ct[2][3] = {{0, 0, 0}, {2.8, 0, 0}};
    const double cd[2][3] = {{0, 0, 0.2}, {2.8, 0, 0}};
    nesf_structure *t = make(5.6, 2, zt, ct), *d = make(5.6, 2, zd, cd);
    nesf_cellpar p = {5.7, 5.5, 5.6, 90, 90, 93};
    assert_int_equal(nesf_lattice_from_params(&p, &d->lat, NULL), 0);
    nesf_metrics m;
    nesf_metrics_init(&m);
    nesf_metrics_add(&m, t, d);
    nesf_metrics_summary s;
    nesf_metrics_summarize(&m, &s);
    near(s.count_err_pct, 0);
    near(s.pos_act, 0.1);
    near(s.pos_det, 0.1);
    near(s.spec_act_pct, 50);   /* Na's nearest detected atom is Cl */
    near(s.spec_det_pct, 50);   /* the first Cl's nearest true atom is Na */
    assert_true(fabs(s.len_mae - 0.2 / 3) < 1e-9);
    assert_true(fabs(s.ang_mae - 1.0) < 1e-9);

    /* raw predicted parameters (as the lattice heads give them, even when
     * they form no cell), without touching the atom figures */
    nesf_metrics l;
    nesf_metrics_init(&l);
    nesf_cellpar raw = {-1, 5.6, 5.6, 90, 90, 30};
    nesf_metrics_add_lattice(&l, t, &raw);
    nesf_metrics_summarize(&l, &s);
    assert_int_equal(l.structures, 0);
    near(s.len_mae, 6.6 / 3);
    near(s.ang_mae, 20);

    /* merge pools, it does not average means */
    nesf_metrics a, b;
    nesf_metrics_init(&a);
    nesf_metrics_init(&b);
    nesf_metrics_add(&a, t, d);
    nesf_metrics_add(&b, t, t);
    nesf_metrics_add(&b, t, t);
    nesf_metrics_merge(&a, &b);
    nesf_metrics_summarize(&a, &s);
    near(s.spec_act_pct, 100.0 / 6);
    near(s.pos_act, 0.2 / 6);
    nesf_structure_free(t);
    nesf_structure_free(d);
}

/* ---- NMS ---- */

static void test_nms_weights(void **state)
{
    (void)state;
    /* two particles, scores 0 and 1: softmax(-s) weights e^0 and e^-1 */
    const float pos[6] = {0, 0, 0, 0.2f, 0, 0}, s[2] = {0, 1};
    float atoms[6];
    int more = 5;
    assert_int_equal(nesf_nms(2, pos, s, 0.5f, 2, 10, atoms, &more), 1);
    double w = exp(-1.0) / (1 + exp(-1.0));
    assert_true(fabs(atoms[0] - 0.2 * w) < 1e-6);
    assert_true(fabs(atoms[1]) < 1e-9 && fabs(atoms[2]) < 1e-9);
    assert_int_equal(more, 0);
    /* the same with min_count 3: rejected */
    assert_int_equal(nesf_nms(2, pos, s, 0.5f, 3, 10, atoms, NULL), 0);
}

static void test_nms_greedy(void **state)
{
    (void)state;
    /* lowest score first: {0, 0.4} form one group, 0.8 is left alone */
    const float pos[9] = {0.8f, 0, 0, 0.4f, 0, 0, 0, 0, 0}, s[3] = {0.2f, 0.1f, 0};
    float atoms[9];
    assert_int_equal(nesf_nms(3, pos, s, 0.5f, 1, 10, atoms, NULL), 2);
    double w = exp(-0.1) / (1 + exp(-0.1));
    assert_true(fabs(atoms[0] - 0.4 * w) < 1e-6);
    assert_true(fabs(atoms[3] - 0.8) < 1e-6);
    /* max_out 1 keeps the first and flags the rest */
    int more = 0;
    assert_int_equal(nesf_nms(3, pos, s, 0.5f, 1, 1, atoms, &more), 1);
    assert_int_equal(more, 1);
}

static void test_nms_clusters(void **state)
{
    (void)state;
    /* a cluster of 12 at the origin, one of 9 (too few) at x=2, a NaN
     * particle and a lone one; radius 0.5, >= 10 particles */
    enum { N = 12 + 9 + 2 };
    float pos[3 * N], s[N], atoms[3 * N];
    int k = 0;
    for (int i = 0; i < 12; i++, k++) {
        pos[3 * k] = (i % 2 ? 0.05f : -0.05f);
        pos[3 * k + 1] = (i % 3 - 1) * 0.05f;
        pos[3 * k + 2] = 0;
        s[k] = 0.01f;
    }
    for (int i = 0; i < 9; i++, k++) {
        pos[3 * k] = 2 + 0.01f * i;
        pos[3 * k + 1] = pos[3 * k + 2] = 0;
        s[k] = 0.001f;
    }
    pos[3 * k] = NAN; pos[3 * k + 1] = pos[3 * k + 2] = 0; s[k++] = 0;
    pos[3 * k] = -3; pos[3 * k + 1] = pos[3 * k + 2] = 0; s[k++] = 0;
    assert_int_equal(nesf_nms(N, pos, s, 0.5f, 10, N, atoms, NULL), 1);
    double mx = 0, my = 0;
    for (int i = 0; i < 12; i++) {
        mx += pos[3 * i] / 12.0;
        my += pos[3 * i + 1] / 12.0;
    }
    assert_true(fabs(atoms[0] - mx) < 1e-6 && fabs(atoms[1] - my) < 1e-6);
    /* with min_count 1 the small cluster and the lone particle count too */
    assert_int_equal(nesf_nms(N, pos, s, 0.5f, 1, N, atoms, NULL), 3);
}

static void test_nms_scattered(void **state)
{
    (void)state;
    /* 200 000 particles 1 Å apart (a field that does not converge): every
     * one is its own group; the hash grid keeps this fast */
    const int n = 200000;
    float *pos = malloc((size_t)n * 3 * sizeof *pos), *s = malloc((size_t)n * sizeof *s);
    float *atoms = malloc((size_t)n * 3 * sizeof *atoms);
    for (int i = 0; i < n; i++) {
        pos[3 * i] = (float)(i % 100);
        pos[3 * i + 1] = (float)((i / 100) % 100);
        pos[3 * i + 2] = (float)(i / 10000) + 1e5f;
        s[i] = (float)((i * 7919) % 1000) * 1e-3f;
    }
    assert_int_equal(nesf_nms(n, pos, s, 0.5f, 1, n, atoms, NULL), n);
    assert_int_equal(nesf_nms(n, pos, s, 0.5f, 2, n, atoms, NULL), 0);
    free(pos);
    free(s);
    free(atoms);
}

/* ---- options ---- */

static int opts_equal(const nesf_decode_opts *a, const nesf_decode_opts *b)
{
    return a->grid_step == b->grid_step && a->grid_pad == b->grid_pad &&
           a->iterations == b->iterations && a->score_max == b->score_max &&
           a->nms_radius == b->nms_radius && a->nms_min_count == b->nms_min_count &&
           a->species_lo == b->species_lo && a->species_hi == b->species_hi &&
           a->species_step == b->species_step && a->max_atoms == b->max_atoms &&
           a->max_particles == b->max_particles && a->batch_particles == b->batch_particles;
}

static void test_opts(void **state)
{
    (void)state;
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    assert_int_equal(o.iterations, 64);
    assert_true(o.grid_step == 0.5f && o.score_max == 0.9f && o.nms_radius == 0.5f);
    assert_int_equal(o.nms_min_count, 10);
    assert_int_equal(nesf_arange_count(o.species_lo, o.species_hi, o.species_step), 6);
    assert_int_equal(nesf_arange_count(-0.00766566 - 0.5, 11.64967439 + 0.5, 0.5), 26);
    assert_int_equal(nesf_arange_count(0, 1, 0.5), 2); /* end point excluded */
    assert_int_equal(nesf_arange_count(1, 1, 0.5), 0);
    nesf_error err;
    assert_int_equal(nesf_decode_opts_check(&o, &err), 0);

    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"iterations\": 32, \"score_max\": 1}", &err), 0);
    assert_int_equal(o.iterations, 32);
    assert_true(o.score_max == 1.0f);
    nesf_decode_opts keep = o;
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"iteration\": 3}", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "unknown decode option \"iteration\""));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"iterations\": 1.5}", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "iterations must be an integer"));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"grid_step\": \"fine\"}", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"grid_step\": 0.001}", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "grid_step"));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"iterations\": 0}", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"species_lo\": 0.5}", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "species_lo"));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"species_step\": 0.01, \"species_lo\": -1, "
                                                    "\"species_hi\": 1}", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_decode_opts_from_text(&o, "[1]", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{", &err), NESF_ERR_PARSE);
    assert_true(opts_equal(&o, &keep)); /* failures change nothing */

    char *js = nesf_decode_opts_to_json(&o);
    assert_non_null(js);
    nesf_decode_opts back;
    nesf_decode_opts_default(&back);
    assert_int_equal(nesf_decode_opts_from_text(&back, js, &err), 0);
    assert_true(opts_equal(&o, &back));
    free(js);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_perfect),
        cmocka_unit_test(test_extra_and_zero_detections),
        cmocka_unit_test(test_species_and_lattice),
        cmocka_unit_test(test_nms_weights),
        cmocka_unit_test(test_nms_greedy),
        cmocka_unit_test(test_nms_clusters),
        cmocka_unit_test(test_nms_scattered),
        cmocka_unit_test(test_opts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
