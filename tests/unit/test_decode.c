/* The reconstruction algorithm on the exact (ground-truth) field: it must
 * give back the structures it was given, on hand-made cells and on the
 * LCS6 validation split with the training bounding box. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dataset.h"
#include "decode.h"
#include "metrics.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLOW 1
#endif
#endif
#ifndef SLOW
#define SLOW 0
#endif

static nesf_backend *be;

static int setup(void **state)
{
    (void)state;
    nesf_error err;
    return nesf_backend_cpu_create(1, &be, &err);
}

static int teardown(void **state)
{
    (void)state;
    nesf_backend_free(be);
    return 0;
}

static const char *shared(void)
{
    const char *s = getenv("NESF_SHARED");
    return s ? s : "../shared";
}

/* Rock salt, conventional cell (8 atoms), and a one-atom cell. */
static nesf_structure *rocksalt(double a)
{
    nesf_cellpar p = {a, a, a, 90, 90, 90};
    nesf_structure *s = nesf_structure_new(8);
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), 0);
    static const double na[4][3] = {{0, 0, 0}, {0.5, 0.5, 0}, {0.5, 0, 0.5}, {0, 0.5, 0.5}};
    for (int i = 0; i < 4; i++) {
        double cl[3] = {na[i][0] + 0.5, na[i][1], na[i][2]};
        if (cl[0] >= 1) cl[0] -= 1;
        assert_int_equal(nesf_structure_add_site(s, 11, na[i], NULL), 0);
        assert_int_equal(nesf_structure_add_site(s, 17, cl, NULL), 0);
    }
    snprintf(s->id, sizeof s->id, "NaCl");
    return s;
}

static nesf_structure *single(void)
{
    nesf_cellpar p = {3.1, 3.3, 3.5, 80, 95, 110};
    nesf_structure *s = nesf_structure_new(1);
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), 0);
    const double f[3] = {0.5, 0.5, 0.5};
    assert_int_equal(nesf_structure_add_site(s, 8, f, NULL), 0);
    return s;
}

static const int species_z[3] = {8, 11, 17};

/* Exactly reconstructed: count, species, positions within tol, lattice. */
static void assert_same(const nesf_structure *t, const nesf_structure *d, double tol)
{
    assert_non_null(d);
    assert_int_equal(d->n, t->n);
    nesf_metrics m;
    nesf_metrics_init(&m);
    nesf_metrics_add(&m, t, d);
    assert_int_equal(m.spec_act_wrong, 0);
    assert_int_equal(m.spec_det_wrong, 0);
    for (int i = 0; i < t->n; i++) {
        double best = INFINITY;
        for (int j = 0; j < d->n; j++) {
            double s = 0;
            for (int k = 0; k < 3; k++) s += pow(t->cart[3 * i + k] - d->cart[3 * j + k], 2);
            best = fmin(best, sqrt(s));
        }
        assert_true(best < tol);
    }
    /* the cell parameters (not the matrix: a few dataset cells are stored
     * rotated, while a decoded cell is built with a along x) */
    nesf_cellpar pt, pd;
    nesf_lattice_params(&t->lat, &pt);
    nesf_lattice_params(&d->lat, &pd);
    assert_true(fabs(pt.a - pd.a) < 1e-4 && fabs(pt.b - pd.b) < 1e-4 && fabs(pt.c - pd.c) < 1e-4);
    assert_true(fabs(pt.alpha - pd.alpha) < 1e-3 && fabs(pt.beta - pd.beta) < 1e-3 &&
                fabs(pt.gamma - pd.gamma) < 1e-3);
    /* fractional coordinates agree with the Cartesian ones */
    for (int j = 0; j < d->n; j++) {
        double c[3];
        nesf_lattice_frac_to_cart(&d->lat, d->frac + 3 * j, c);
        for (int k = 0; k < 3; k++) assert_true(fabs(c[k] - d->cart[3 * j + k]) < 1e-9);
    }
}

static void test_truth_small(void **state)
{
    (void)state;
    nesf_structure *s[2] = {rocksalt(5.64), single()};
    const float lo[3] = {0, 0, 0}, hi[3] = {5.64f, 5.64f, 5.64f};
    nesf_field f;
    nesf_error err;
    assert_int_equal(nesf_field_truth(be, s, 2, species_z, 3, lo, hi, &f, &err), 0);
    nesf_structure *out[2];
    nesf_decode_stats st;
    assert_int_equal(nesf_decode_field(&f, NULL, out, NULL, &st, &err), 0);
    assert_same(s[0], out[0], 1e-4);
    assert_same(s[1], out[1], 1e-4);
    /* 14³ particles each, 64 steps, 125 polish and 216 species queries per atom */
    assert_int_equal(st.particles, 2 * 14 * 14 * 14);
    assert_int_equal(st.field_evals, 2L * 14 * 14 * 14 * 64 + 9 * 125 + 9 * 216);
    assert_int_equal(st.atoms, 9);
    for (int i = 0; i < 2; i++) nesf_structure_free(out[i]);

    /* the same in batches of one structure, and with a coarser grid */
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.batch_particles = 100;
    o.grid_step = 0.7f;
    assert_int_equal(nesf_decode_field(&f, &o, out, NULL, &st, &err), 0);
    assert_same(s[0], out[0], 1e-4);
    assert_same(s[1], out[1], 1e-4);
    for (int i = 0; i < 2; i++) nesf_structure_free(out[i]);

    /* min_count above what an atom's basin holds: nothing is detected */
    o.nms_min_count = 100000;
    assert_int_equal(nesf_decode_field(&f, &o, out, NULL, &st, &err), 0);
    assert_int_equal(out[0]->n, 0);
    assert_int_equal(out[1]->n, 0);
    for (int i = 0; i < 2; i++) nesf_structure_free(out[i]);

    /* a grid beyond max_particles is refused */
    nesf_decode_opts_default(&o);
    o.grid_step = 0.05f;
    assert_int_equal(nesf_decode_field(&f, &o, out, NULL, &st, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "max_particles"));
    assert_null(out[0]);
    nesf_field_release(&f);

    /* an element outside the species list */
    const int only_na[1] = {11};
    assert_int_equal(nesf_field_truth(be, s, 1, only_na, 1, lo, hi, &f, &err), NESF_ERR_NOTFOUND);
    assert_non_null(strstr(err.msg, "Z=17"));
    for (int i = 0; i < 2; i++) nesf_structure_free(s[i]);
}

/* The truth field with structure 1's lattice made degenerate. */
static int (*truth_lattice)(nesf_field *, int, int, float *, float *, nesf_error *);
static int bad_lattice(nesf_field *f, int first, int S, float *len, float *ang, nesf_error *err)
{
    int rc = truth_lattice(f, first, S, len, ang, err);
    for (int s = 0; s < S; s++)
        if (first + s == 1) {
            ang[3 * s] = ang[3 * s + 1] = ang[3 * s + 2] = 2.0944f; /* 120° x 3: flat */
            len[3 * s] = NAN;
        }
    return rc;
}

/* The truth field's lattice with a negative a and three 175° angles. */
static int flat_lattice(nesf_field *f, int first, int S, float *len, float *ang, nesf_error *err)
{
    int rc = truth_lattice(f, first, S, len, ang, err);
    for (int s = 0; s < S; s++) {
        len[3 * s] = -2;
        for (int k = 0; k < 3; k++) ang[3 * s + k] = (float)(175 * M_PI / 180);
    }
    return rc;
}

static void test_item_errors(void **state)
{
    (void)state;
    nesf_structure *s[3] = {rocksalt(5.64), single(), rocksalt(5.5)};
    const float lo[3] = {0, 0, 0}, hi[3] = {5.64f, 5.64f, 5.64f};
    nesf_field f;
    nesf_error err, ierr[3];
    assert_int_equal(nesf_field_truth(be, s, 3, species_z, 3, lo, hi, &f, &err), 0);
    truth_lattice = f.lattice;
    f.lattice = bad_lattice;
    nesf_structure *out[3];
    assert_int_equal(nesf_decode_field(&f, NULL, out, ierr, NULL, &err), 0);
    assert_non_null(out[0]);
    assert_null(out[1]);
    assert_non_null(out[2]);
    assert_int_equal(ierr[0].code, 0);
    assert_int_equal(ierr[1].code, NESF_ERR_INVALID);
    assert_non_null(strstr(ierr[1].msg, "degenerate"));
    assert_same(s[2], out[2], 1e-4);
    nesf_structure_free(out[0]);
    nesf_structure_free(out[2]);
    /* without item errors the call fails and leaves nothing behind */
    assert_int_equal(nesf_decode_field(&f, NULL, out, NULL, NULL, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "structure 1"));
    for (int i = 0; i < 3; i++) assert_null(out[i]);
    nesf_field_release(&f);
    for (int i = 0; i < 3; i++) nesf_structure_free(s[i]);
}

/* The truth field with structure 1's cell 5.7e36 Å long (what an extreme
 * latent gives): finite, a cell to nesf_lattice_from_params, no crystal. */
static int huge_lattice(nesf_field *f, int first, int S, float *len, float *ang, nesf_error *err)
{
    int rc = truth_lattice(f, first, S, len, ang, err);
    for (int s = 0; s < S; s++)
        if (first + s == 1) len[3 * s] = len[3 * s + 1] = len[3 * s + 2] = 5.7e36f;
    return rc;
}

/* An absurd predicted cell is that structure's error, with and without
 * repair_lattice, and its neighbours decode as before. */
static void test_absurd_cell(void **state)
{
    (void)state;
    nesf_structure *s[3] = {rocksalt(5.64), single(), rocksalt(5.5)};
    const float lo[3] = {0, 0, 0}, hi[3] = {5.64f, 5.64f, 5.64f};
    nesf_field f;
    nesf_error err, ierr[3];
    assert_int_equal(nesf_field_truth(be, s, 3, species_z, 3, lo, hi, &f, &err), 0);
    truth_lattice = f.lattice;
    f.lattice = huge_lattice;
    for (int repair = 0; repair < 2; repair++) {
        nesf_decode_opts o;
        nesf_decode_opts_default(&o);
        o.repair_lattice = repair;
        nesf_structure *out[3];
        assert_int_equal(nesf_decode_field(&f, &o, out, ierr, NULL, &err), 0);
        assert_null(out[1]);
        assert_int_equal(ierr[1].code, NESF_ERR_INVALID);
        assert_non_null(strstr(ierr[1].msg, "no crystal"));
        assert_non_null(strstr(ierr[1].msg, "at most"));
        assert_same(s[0], out[0], 1e-4);
        assert_same(s[2], out[2], 1e-4);
        nesf_structure_free(out[0]);
        nesf_structure_free(out[2]);
    }
    nesf_field_release(&f);
    for (int i = 0; i < 3; i++) nesf_structure_free(s[i]);
}

/* Counts its calls and stops at call c[1]. */
static int cancel_at(void *arg)
{
    int *c = arg;
    return ++c[0] >= c[1];
}

/* A cancel hook stops both modes within a flow step: NESF_ERR_CANCELLED,
 * no outputs, and no more calls after it said stop. */
static void test_cancel(void **state)
{
    (void)state;
    nesf_structure *s[2] = {rocksalt(5.64), single()};
    const float lo[3] = {0, 0, 0}, hi[3] = {5.64f, 5.64f, 5.64f};
    nesf_field f;
    nesf_error err;
    assert_int_equal(nesf_field_truth(be, s, 2, species_z, 3, lo, hi, &f, &err), 0);
    for (int mode = 0; mode < 2; mode++) {
        nesf_decode_opts o;
        nesf_decode_opts_default(&o);
        o.mode = mode ? NESF_DECODE_FAST : NESF_DECODE_PAPER;
        o.fast_tol = 1e-5f; /* particles keep moving for a few steps */
        /* the exact field converges in two fast steps: stop that at once */
        int calls[2] = {0, mode ? 1 : 3};
        o.cancel = cancel_at;
        o.cancel_arg = calls;
        nesf_structure *out[2] = {NULL, NULL};
        int rc = nesf_decode_field(&f, &o, out, NULL, NULL, &err);
        if (rc != NESF_ERR_CANCELLED) fail_msg("mode %d: %d %s", mode, rc, err.msg);
        assert_int_equal(calls[0], calls[1]);
        assert_non_null(strstr(err.msg, "cancelled"));
        assert_null(out[0]);
        assert_null(out[1]);
        /* a hook that never fires changes nothing */
        calls[0] = 0;
        calls[1] = 1 << 30;
        assert_int_equal(nesf_decode_field(&f, &o, out, NULL, NULL, &err), 0);
        assert_same(s[0], out[0], 1e-4);
        assert_true(calls[0] > 0);
        nesf_structure_free(out[0]);
        nesf_structure_free(out[1]);
    }
    nesf_field_release(&f);
    for (int i = 0; i < 2; i++) nesf_structure_free(s[i]);
}

/* LCS6 val, paper settings, training bounding box: every structure comes
 * back (all 286; every 8th under the sanitizers, which are ~10x slower). */
static void test_truth_lcs6_val(void **state)
{
    (void)state;
    char path[1024];
    nesf_error err;
    nesf_dataset train, val;
    nesf_vocab v;
    snprintf(path, sizeof path, "%s/datasets/lcs6/train.jsonl", shared());
    assert_int_equal(nesf_dataset_load(path, &train, &err), 0);
    snprintf(path, sizeof path, "%s/datasets/lcs6/val.jsonl", shared());
    assert_int_equal(nesf_dataset_load(path, &val, &err), 0);
    snprintf(path, sizeof path, "%s/datasets/lcs6/meta.json", shared());
    assert_int_equal(nesf_vocab_load(path, &v, &err), 0);
    float lo[3], hi[3];
    nesf_structures_bbox(train.s, train.n, lo, hi);
    nesf_dataset_free(&train);
    const int stride = SLOW ? 8 : 1;
    int n = 0;
    nesf_structure **s = malloc((size_t)val.n * sizeof *s);
    for (int i = 0; i < val.n; i += stride) s[n++] = val.s[i];
    nesf_field f;
    assert_int_equal(nesf_field_truth(be, s, n, v.z, v.n, lo, hi, &f, &err), 0);
    nesf_structure **out = calloc((size_t)n, sizeof *out);
    nesf_decode_stats st;
    assert_int_equal(nesf_decode_field(&f, NULL, out, NULL, &st, &err), 0);
    assert_int_equal(st.particles, (long)n * 26 * 20 * 14);
    nesf_metrics m;
    nesf_metrics_init(&m);
    for (int i = 0; i < n; i++) {
        assert_same(s[i], out[i], 0.01);
        nesf_metrics_add(&m, s[i], out[i]);
        nesf_structure_free(out[i]);
    }
    nesf_metrics_summary sum;
    nesf_metrics_summarize(&m, &sum);
    assert_true(sum.count_err_pct == 0 && sum.spec_act_pct == 0 && sum.spec_det_pct == 0);
    assert_true(sum.pos_act < 1e-4 && sum.pos_det < 1e-4);
    print_message("LCS6 val, truth field: %d structures in %.0f ms, pos err %.2e Å\n", n, st.ms,
                  sum.pos_act);
    free(out);
    free(s);
    nesf_field_release(&f);
    nesf_dataset_free(&val);
}

/* The network's fields: a randomly initialised paper model decodes
 * deterministically, the same batched as one latent at a time, with the
 * lattice heads' cell (repaired when it is none), and a non-finite latent
 * fails alone. */
static void test_model_decode(void **state)
{
    (void)state;
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    const int zs[4] = {8, 11, 17, 26};
    const float lo[3] = {0, 0, 0}, hi[3] = {5, 5, 5};
    nesf_model *m;
    nesf_error err;
    assert_int_equal(nesf_model_create(&cfg, zs, 4, lo, hi, be, 7, &m, &err), 0);
    enum { n = 6 };
    const int L = nesf_model_latent_size(m);
    nesf_structure *s[2] = {rocksalt(5.0), single()};
    float *z = malloc((size_t)n * L * sizeof *z);
    assert_int_equal(nesf_model_encode(m, s, 2, z, &err), 0);
    for (int i = 2; i < n; i++)
        for (int k = 0; k < L; k++) z[(size_t)i * L + k] = (float)((i * 31 + k * 17) % 13 - 6) * 0.3f;
    float len[3 * n], ang[3 * n];
    assert_int_equal(nesf_model_lattice(m, n, z, len, ang, &err), 0);
    int valid[n], nvalid = 0;
    for (int i = 0; i < n; i++) {
        nesf_cellpar p = {len[3 * i], len[3 * i + 1], len[3 * i + 2], ang[3 * i] * 180 / M_PI,
                          ang[3 * i + 1] * 180 / M_PI, ang[3 * i + 2] * 180 / M_PI};
        nesf_lattice l;
        valid[i] = nesf_lattice_from_params(&p, &l, NULL) == 0;
        nvalid += valid[i];
    }
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.grid_step = 1.0f;
    o.iterations = 4;
    o.nms_min_count = 1;
    o.score_max = 100;
    nesf_structure *a[n], *b[n], *one[n];
    nesf_error ierr[n];
    nesf_decode_stats st;

    /* strict: the latents whose heads give no cell fail, each on its own */
    assert_int_equal(nesf_decode(m, n, z, &o, a, ierr, &st, &err), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(a[i] != NULL, valid[i]);
        if (!valid[i]) assert_non_null(strstr(ierr[i].msg, "degenerate"));
        nesf_structure_free(a[i]);
    }
    if (nvalid < n) assert_int_equal(nesf_decode(m, n, z, &o, a, NULL, NULL, &err), NESF_ERR_INVALID);

    o.repair_lattice = 1;
    assert_int_equal(nesf_decode(m, n, z, &o, a, ierr, &st, &err), 0);
    assert_int_equal(nesf_decode(m, n, z, &o, b, NULL, NULL, &err), 0);
    assert_int_equal(st.particles, (long)n * 6 * 6 * 6);
    assert_int_equal(st.lattice_repaired, n - nvalid);
    for (int i = 0; i < n; i++) {
        assert_int_equal(ierr[i].code, 0);
        assert_non_null(a[i]);
        assert_true(nesf_lattice_volume(&a[i]->lat) > 0);
        assert_int_equal(a[i]->n, b[i]->n);
        assert_memory_equal(a[i]->cart, b[i]->cart, (size_t)a[i]->n * 3 * sizeof(double));
        assert_memory_equal(a[i]->z, b[i]->z, (size_t)a[i]->n * sizeof(int));
        assert_int_equal(nesf_decode(m, 1, z + (size_t)i * L, &o, &one[i], NULL, NULL, &err), 0);
        assert_int_equal(one[i]->n, a[i]->n);
        for (int k = 0; k < 3 * a[i]->n; k++) assert_true(fabs(one[i]->cart[k] - a[i]->cart[k]) < 1e-3);
        for (int k = 0; k < a[i]->n; k++) {
            int known = 0;
            for (int c = 0; c < 4; c++) known |= a[i]->z[k] == zs[c];
            assert_true(known);
        }
        if (valid[i]) {
            nesf_cellpar p;
            nesf_lattice_params(&a[i]->lat, &p);
            assert_true(fabs(p.a - len[3 * i]) < 1e-4 && fabs(p.c - len[3 * i + 2]) < 1e-4);
            assert_true(fabs(p.gamma - ang[3 * i + 2] * 180 / M_PI) < 1e-3);
        }
        nesf_structure_free(a[i]);
        nesf_structure_free(b[i]);
        nesf_structure_free(one[i]);
    }
    /* a NaN latent: reported for itself, the others still decode */
    z[(size_t)1 * L + 3] = NAN;
    assert_int_equal(nesf_decode(m, n, z, &o, a, ierr, NULL, &err), 0);
    assert_null(a[1]);
    assert_int_equal(ierr[1].code, NESF_ERR_INVALID);
    for (int i = 0; i < n; i++)
        if (i != 1) assert_non_null(a[i]);
    for (int i = 0; i < n; i++) nesf_structure_free(a[i]);
    assert_int_equal(nesf_decode(m, n, z, &o, a, NULL, NULL, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "latent 1"));
    free(z);
    for (int i = 0; i < 2; i++) nesf_structure_free(s[i]);
    nesf_model_free(m);
}

/* Cells that are none get the nearest sane one. */
static void test_repair(void **state)
{
    (void)state;
    nesf_structure *s[1] = {single()};
    const float lo[3] = {0, 0, 0}, hi[3] = {4, 4, 4};
    nesf_field f;
    nesf_error err;
    assert_int_equal(nesf_field_truth(be, s, 1, species_z, 3, lo, hi, &f, &err), 0);
    truth_lattice = f.lattice;
    f.lattice = flat_lattice;
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    nesf_structure *out;
    assert_int_equal(nesf_decode_field(&f, &o, &out, NULL, NULL, &err), NESF_ERR_INVALID);
    o.repair_lattice = 1;
    nesf_decode_stats st;
    assert_int_equal(nesf_decode_field(&f, &o, &out, NULL, &st, &err), 0);
    assert_int_equal(st.lattice_repaired, 1);
    nesf_cellpar p;
    nesf_lattice_params(&out->lat, &p);
    assert_true(fabs(p.a - 0.5) < 1e-6 && fabs(p.b - 3.3) < 1e-4); /* a floored */
    assert_true(p.alpha > 10 && p.alpha < 170 && p.beta < 170 && p.gamma < 170);
    assert_true(nesf_lattice_volume(&out->lat) >= 0.05 * p.a * p.b * p.c - 1e-9);
    assert_int_equal(out->n, 1);
    nesf_structure_free(out);
    nesf_field_release(&f);
    nesf_structure_free(s[0]);
}

/* The exact field plus a bias that depends on the point (up to 0.06 Å a
 * component), standing in for a trained field's local errors. */
static int (*exact_position)(nesf_field *, int, int, const int *, const float *, float *,
                             nesf_error *);
static int biased_position(nesf_field *f, int first, int S, const int *off, const float *xyz,
                           float *out, nesf_error *err)
{
    int rc = exact_position(f, first, S, off, xyz, out, err);
    for (int i = 0; !rc && i < off[S] - off[0]; i++)
        for (int k = 0; k < 3; k++) {
            uint32_t h = 2166136261u ^ (uint32_t)k;
            for (int j = 0; j < 3; j++)
                h = (h ^ (uint32_t)lrintf(xyz[3 * i + j] * 97.0f)) * 16777619u;
            out[3 * i + k] += 0.06f * ((float)(h >> 8 & 0xffff) / 32768.0f - 1.0f);
        }
    return rc;
}

static double mean_error(const nesf_structure *t, const nesf_structure *d)
{
    assert_int_equal(d->n, t->n);
    nesf_metrics m;
    nesf_metrics_init(&m);
    nesf_metrics_add(&m, t, d);
    nesf_metrics_summary sm;
    nesf_metrics_summarize(&m, &sm);
    return sm.pos_act;
}

/* The polish: exact on the exact field, with its own field evaluations
 * counted; on a biased field it brings atoms nearer than the particles'
 * ends, in both modes. */
static void test_polish(void **state)
{
    (void)state;
    nesf_structure *s[1] = {rocksalt(5.64)};
    const float lo[3] = {0, 0, 0}, hi[3] = {5.64f, 5.64f, 5.64f};
    nesf_field f;
    nesf_error err;
    assert_int_equal(nesf_field_truth(be, s, 1, species_z, 3, lo, hi, &f, &err), 0);
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.polish = 0.6f;
    nesf_structure *out;
    nesf_decode_stats st;
    assert_int_equal(nesf_decode_field(&f, &o, &out, NULL, &st, &err), 0);
    assert_same(s[0], out, 1e-4);
    assert_int_equal(st.field_evals, 14L * 14 * 14 * 64 + 8 * 216 + 8 * 125);
    nesf_structure_free(out);

    exact_position = f.position;
    f.position = biased_position;
    for (int mode = 0; mode < 2; mode++) {
        o.mode = mode ? NESF_DECODE_FAST : NESF_DECODE_PAPER;
        double e[2];
        for (int i = 0; i < 2; i++) {
            o.polish = i ? 0.6f : 0.0f;
            assert_int_equal(nesf_decode_field(&f, &o, &out, NULL, NULL, &err), 0);
            e[i] = mean_error(s[0], out);
            nesf_structure_free(out);
        }
        assert_true(e[0] > 0.01);
        assert_true(e[1] < 0.5 * e[0]);
    }
    f.position = exact_position;
    nesf_field_release(&f);
    nesf_structure_free(s[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truth_small),
        cmocka_unit_test(test_item_errors),
        cmocka_unit_test(test_absurd_cell),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_truth_lcs6_val),
        cmocka_unit_test(test_model_decode),
        cmocka_unit_test(test_repair),
        cmocka_unit_test(test_polish),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
