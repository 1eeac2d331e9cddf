/* The fast decoding mode (decode.h "mode": "fast", core/decode/decode_fast.c):
 * on the exact fields of LCS6 validation structures it must give back
 * every atom (count, species, position); retirement must stop a
 * converging flow early and leave a non-converging one to the step cap;
 * merging must not change the answer; a wrong predicted cell must not
 * lose atoms; weighted NMS reduces to the paper's NMS; the options parse. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "dataset.h"
#include "decode.h"

static const float BMIN[3] = {-0.01f, -0.01f, 0.0f}, BMAX[3] = {11.65f, 8.5f, 5.97f};

typedef struct fixture {
    nesf_vocab v;
    nesf_dataset d;
    nesf_backend *be;
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    const char *sh = getenv("NESF_SHARED");
    char p[512];
    nesf_error err;
    snprintf(p, sizeof p, "%s/datasets/lcs6/meta.json", sh ? sh : "../shared");
    if (nesf_vocab_load(p, &fx->v, &err)) return -1;
    snprintf(p, sizeof p, "%s/datasets/lcs6/val.jsonl", sh ? sh : "../shared");
    if (nesf_dataset_load(p, &fx->d, &err)) return -1;
    if (nesf_backend_cpu_create(1, &fx->be, &err)) return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    nesf_backend_free(fx->be);
    nesf_dataset_free(&fx->d);
    free(fx);
    return 0;
}

/* Every true atom has a decoded atom within tol Å with its element, and
 * the counts agree. */
static void assert_same_atoms(const nesf_structure *t, const nesf_structure *r, double tol)
{
    assert_non_null(r);
    if (r->n != t->n) fail_msg("%s: %d atoms decoded, %d true", t->id, r->n, t->n);
    for (int a = 0; a < t->n; a++) {
        int best = -1;
        double bd = INFINITY;
        for (int b = 0; b < r->n; b++) {
            double d = 0;
            for (int k = 0; k < 3; k++) d += pow(t->cart[3 * a + k] - r->cart[3 * b + k], 2);
            if (d < bd) {
                bd = d;
                best = b;
            }
        }
        if (sqrt(bd) > tol || r->z[best] != t->z[a])
            fail_msg("%s atom %d: nearest decoded atom %.2e Å away, Z %d vs %d", t->id, a,
                     sqrt(bd), r->z[best], t->z[a]);
    }
}

static void decode_truth(fixture *fx, nesf_structure *const *s, int n, const nesf_decode_opts *o,
                         nesf_structure **out, nesf_decode_stats *st)
{
    nesf_field f;
    nesf_error err;
    assert_int_equal(nesf_field_truth(fx->be, s, n, fx->v.z, fx->v.n, BMIN, BMAX, &f, &err),
                     NESF_OK);
    int rc = nesf_decode_field(&f, o, out, NULL, st, &err);
    nesf_field_release(&f);
    if (rc) fail_msg("decode: %s", err.msg);
}

static void fast_opts(nesf_decode_opts *o)
{
    nesf_decode_opts_default(o);
    o->mode = NESF_DECODE_FAST;
}

/* The exact field puts every particle on its atom in one step, so the
 * fast mode needs two steps and far fewer evaluations than the paper. */
static void test_truth_atoms(void **state)
{
    fixture *fx = *state;
    enum { N = 48 };
    nesf_decode_opts o;
    fast_opts(&o);
    nesf_structure *out[N];
    nesf_decode_stats st;
    decode_truth(fx, fx->d.s, N, &o, out, &st);
    long atoms = 0;
    for (int i = 0; i < N; i++) {
        assert_same_atoms(fx->d.s[i], out[i], 1e-4);
        atoms += out[i]->n;
        nesf_structure_free(out[i]);
    }
    assert_int_equal(st.structures, N);
    assert_int_equal(st.atoms, atoms);
    assert_int_equal(st.steps, 2 * N);
    /* after the first step only the merged particles of each atom are
     * left: one per merge cell that rounding puts it in (at most 8) */
    assert_true(st.field_evals <= st.particles + 8 * atoms + (125 + 216) * atoms);
    assert_true(st.merged >= st.particles - 8 * atoms);

    nesf_decode_opts p;
    nesf_decode_opts_default(&p);
    nesf_decode_stats sp;
    decode_truth(fx, fx->d.s, 4, &p, out, &sp);
    for (int i = 0; i < 4; i++) nesf_structure_free(out[i]);
    print_message("%d structures, %ld atoms: %ld field evaluations/structure (paper: %ld)\n", N,
                  atoms, st.field_evals / N, sp.field_evals / 4);
    assert_true(st.field_evals / N * 10 < sp.field_evals / 4);
}

/* A field that moves each particle a fraction c of the way to the nearest
 * atom of the exact field (f = c (a - p)); c = 2 throws it across the
 * atom for ever (p -> 2a - p, a 2-cycle).  Its lattice can be made wrong.
 * f is what the decoder sees; the callbacks cast it back. */
typedef struct scaled_field {
    nesf_field f; /* first */
    nesf_field base; /* the exact field */
    float c, len_scale, ang_deg;
} scaled_field;

static int sf_position(nesf_field *f, int first, int S, const int *off, const float *xyz,
                       float *out, nesf_error *err)
{
    scaled_field *sf = (scaled_field *)f;
    int rc = sf->base.position(&sf->base, first, S, off, xyz, out, err);
    for (int r = 0; r < 3 * off[S]; r++) out[r] *= sf->c; /* CPU backend: host memory */
    return rc;
}

static int sf_species(nesf_field *f, int first, int S, const int *off, const float *xyz,
                      float *out, nesf_error *err)
{
    scaled_field *sf = (scaled_field *)f;
    return sf->base.species(&sf->base, first, S, off, xyz, out, err);
}

static int sf_lattice(nesf_field *f, int first, int S, float *len, float *ang, nesf_error *err)
{
    scaled_field *sf = (scaled_field *)f;
    int rc = sf->base.lattice(&sf->base, first, S, len, ang, err);
    for (int i = 0; i < 3 * S; i++) {
        len[i] *= sf->len_scale;
        ang[i] += sf->ang_deg * (float)(M_PI / 180.0);
    }
    return rc;
}

/* Release with nesf_field_release(&sf->base). */
static void scaled_init(fixture *fx, scaled_field *sf, nesf_structure *const *s, int n, float c)
{
    nesf_error err;
    memset(sf, 0, sizeof *sf);
    assert_int_equal(nesf_field_truth(fx->be, s, n, fx->v.z, fx->v.n, BMIN, BMAX, &sf->base, &err),
                     NESF_OK);
    sf->f = sf->base;
    sf->f.position = sf_position;
    sf->f.species = sf_species;
    sf->f.lattice = sf_lattice;
    sf->f.release = NULL;
    sf->f.impl = NULL;
    sf->c = c;
    sf->len_scale = 1;
}

static int decode_scaled(scaled_field *sf, const nesf_decode_opts *o, nesf_structure **out,
                         nesf_error *ie, nesf_decode_stats *st)
{
    nesf_error err;
    int rc = nesf_decode_field(&sf->f, o, out, ie, st, &err);
    if (rc) print_message("decode: %s\n", err.msg);
    return rc;
}

/* Retirement: with a contraction of 1/2 per step a particle 2 Å away
 * needs about log2(2 / tol) steps; it must stop there, not at the cap,
 * and still land within tol of its atom.  Merging changes the number of
 * evaluations, not the atoms. */
static void test_retirement(void **state)
{
    fixture *fx = *state;
    enum { N = 8 };
    scaled_field sf;
    scaled_init(fx, &sf, fx->d.s, N, 0.5f);
    nesf_decode_opts o;
    fast_opts(&o);
    o.iterations = 200;
    o.fast_tol = 1e-3f;
    nesf_structure *out[N], *nomerge[N];
    nesf_decode_stats st, st2;
    assert_int_equal(decode_scaled(&sf, &o, out, NULL, &st), NESF_OK);
    /* start within ~4 Å of an atom: |f| halves each step from <= 2 Å */
    const double max_steps = ceil(log2(2.0 / 1e-3)) + 2;
    print_message("contraction 1/2: %.1f steps per structure (cap %d)\n", (double)st.steps / N,
                  o.iterations);
    assert_true(st.steps <= N * max_steps);
    assert_true(st.steps >= N * 5);
    o.fast_merge = 0;
    assert_int_equal(decode_scaled(&sf, &o, nomerge, NULL, &st2), NESF_OK);
    assert_int_equal(st2.merged, 0);
    assert_true(st.merged > 0);
    assert_true(st.field_evals < st2.field_evals);
    for (int i = 0; i < N; i++) {
        assert_same_atoms(fx->d.s[i], out[i], 2e-3);
        assert_same_atoms(fx->d.s[i], nomerge[i], 2e-3);
        nesf_structure_free(out[i]);
        nesf_structure_free(nomerge[i]);
    }
    nesf_field_release(&sf.base);
}

/* A flow that never converges runs to the step cap, and its particles,
 * whose last step is long, fail the score filter: no atoms. */
static void test_no_convergence(void **state)
{
    fixture *fx = *state;
    enum { N = 3 };
    scaled_field sf;
    scaled_init(fx, &sf, fx->d.s, N, 2.0f);
    nesf_decode_opts o;
    fast_opts(&o);
    o.iterations = 12;
    o.fast_merge = 0;
    nesf_structure *out[N];
    nesf_decode_stats st;
    assert_int_equal(decode_scaled(&sf, &o, out, NULL, &st), NESF_OK);
    assert_int_equal(st.steps, N * o.iterations);
    assert_int_equal(st.field_evals, st.particles * o.iterations + (125 + 216) * st.atoms);
    /* only particles that started next to an atom (step < score_max) stay */
    for (int i = 0; i < N; i++) {
        assert_true(out[i]->n <= fx->d.s[i]->n);
        nesf_structure_free(out[i]);
    }
    nesf_field_release(&sf.base);
}

/* A predicted cell 15% too small or with angles 8 degrees off still puts
 * enough particles in every atom's basin (the margin, and the flow from
 * outside the cell); an absurdly large one, or none at all (negative
 * lengths, decoded with repair_lattice), flows the paper's whole grid. */
static void test_wrong_lattice(void **state)
{
    fixture *fx = *state;
    enum { N = 24 };
    const float scale[4] = {0.85f, 1.2f, 300.0f, -1.0f}, dang[4] = {0.0f, 8.0f, 0.0f, 0.0f};
    for (int c = 0; c < 4; c++) {
        scaled_field sf;
        scaled_init(fx, &sf, fx->d.s, N, 1.0f);
        sf.len_scale = scale[c];
        sf.ang_deg = dang[c];
        nesf_decode_opts o;
        fast_opts(&o);
        o.repair_lattice = scale[c] < 0;
        nesf_structure *out[N];
        nesf_error ie[N];
        nesf_decode_stats st;
        assert_int_equal(decode_scaled(&sf, &o, out, ie, &st), NESF_OK);
        int wrong = 0;
        for (int i = 0; i < N; i++) {
            if (!out[i]) {
                wrong++;
                continue;
            }
            /* the lattice is the (wrong) predicted one; the atoms are Cartesian */
            nesf_structure *t = fx->d.s[i];
            wrong += out[i]->n != t->n;
            if (out[i]->n == t->n) assert_same_atoms(t, out[i], 1e-4);
            nesf_structure_free(out[i]);
        }
        print_message("cell x%.2f, angles %+.0f°: %ld particles/structure, %d of %d structures "
                      "with another atom count\n", scale[c], dang[c], st.particles / N, wrong, N);
        assert_int_equal(wrong, 0);
        if (scale[c] > 100 || scale[c] < 0) assert_int_equal(st.particles, (long)N * 26 * 20 * 14);
        if (scale[c] < 0) assert_int_equal(st.lattice_repaired, N);
        nesf_field_release(&sf.base);
    }
}

static void test_nms_weighted(void **state)
{
    (void)state;
    enum { N = 40 };
    float pos[3 * N], s[N], w[N], a1[3 * N], a2[3 * N];
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 3; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            pos[3 * i + k] = (float)((x >> 40) % 1000) / 1000.0f * 1.5f;
        }
        s[i] = (float)(i % 7) * 0.1f;
        w[i] = 1.0f;
    }
    /* weights of 1 are the paper's NMS, bit for bit */
    int n1 = nesf_nms(N, pos, s, 0.5f, 3, N, a1, NULL);
    int n2 = nesf_nms_weighted(N, pos, s, w, 0.5f, 3, N, a2, NULL);
    assert_int_equal(n1, n2);
    assert_true(n1 > 0);
    assert_memory_equal(a1, a2, (size_t)n1 * 3 * sizeof(float));
    /* one particle of weight 10 counts as ten */
    float p2[6] = {0, 0, 0, 0.2f, 0, 0}, s2[2] = {0, 0}, w2[2] = {9.5f, 0.5f}, out[6];
    assert_int_equal(nesf_nms_weighted(2, p2, s2, w2, 0.5f, 10, 2, out, NULL), 1);
    assert_true(fabsf(out[0] - 0.01f) < 1e-6f); /* mean weighted by w */
    w2[0] = 9.4f;
    assert_int_equal(nesf_nms_weighted(2, p2, s2, w2, 0.5f, 10, 2, out, NULL), 0);
}

static void test_options(void **state)
{
    (void)state;
    nesf_decode_opts o;
    nesf_error err;
    nesf_decode_opts_default(&o);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"mode\": \"fast\", \"fast_tol\": 0.01}",
                                                &err), NESF_OK);
    assert_int_equal(o.mode, NESF_DECODE_FAST);
    assert_true(fabsf(o.fast_tol - 0.01f) < 1e-7f);
    char *js = nesf_decode_opts_to_json(&o);
    assert_non_null(strstr(js, "\"mode\":\"fast\""));
    nesf_decode_opts back;
    nesf_decode_opts_default(&back);
    assert_int_equal(nesf_decode_opts_from_text(&back, js, &err), NESF_OK);
    assert_int_equal(back.mode, NESF_DECODE_FAST);
    assert_true(fabsf(back.fast_tol - o.fast_tol) < 1e-7f);
    assert_true(fabsf(back.fast_margin - o.fast_margin) < 1e-6f);
    free(js);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"mode\": \"quick\"}", &err),
                     NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "mode"));
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"mode\": 1}", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"mode\": \"paper\"}", &err), NESF_OK);
    assert_int_equal(o.mode, NESF_DECODE_PAPER);
    assert_int_equal(nesf_decode_opts_from_text(&o, "{\"fast_margin\": -1}", &err), NESF_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truth_atoms),      cmocka_unit_test(test_retirement),
        cmocka_unit_test(test_no_convergence),   cmocka_unit_test(test_wrong_lattice),
        cmocka_unit_test(test_nms_weighted),     cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
