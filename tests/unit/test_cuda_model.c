/* The whole network on the CUDA backend against the CPU backend, from one
 * weight file: encoder, lattice heads, both fields (1e-4 of the output's
 * magnitude), decoded structures (same atoms and species, positions within
 * 1e-3 Å) and one training step (losses, gradients, Adam update).
 *
 * The weights are a paper-configuration model after two CPU training steps,
 * so BatchNorm statistics are not the identity and folding is exercised;
 * $NESF_TEST_MODEL names a trained model to use instead.  Without a CUDA
 * device every test reports "skipped: no CUDA device". */
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

#include "backend.h"
#include "dataset.h"
#include "decode.h"
#include "model.h"
#include "train.h"

#define NS 12 /* structures of the validation split used */

typedef struct fixture {
    nesf_backend *cpu, *gpu;
    nesf_model *mc, *mg;      /* same weights on each backend */
    nesf_dataset val;
    nesf_structure *s[NS];
    float *z;                 /* NS latents from the CPU encoder */
    char path[256];           /* temporary weight file, "" if none */
} fixture;

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static double urand(void) /* [0, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}

/* max |a - b| / max |b| (b the CPU reference); NaN fails */
static double rel_max(const float *a, const float *b, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) return INFINITY;
        md = fmax(md, fabs((double)a[i] - b[i]));
        mr = fmax(mr, fabs((double)b[i]));
    }
    return mr > 0 ? md / mr : md;
}

/* |a - b| / |b| over the whole vector */
static double rel_norm(const float *a, const float *b, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static const char *shared_dir(void)
{
    const char *s = getenv("NESF_SHARED");
    return s ? s : "../shared";
}

/* A model with non-trivial BN statistics, saved to f->path. */
static int make_weights(fixture *f, const nesf_vocab *v, nesf_error *err)
{
    float bbmin[3] = {1e9f, 1e9f, 1e9f}, bbmax[3] = {-1e9f, -1e9f, -1e9f};
    for (int i = 0; i < f->val.n; i++)
        for (int a = 0; a < f->val.s[i]->n; a++)
            for (int k = 0; k < 3; k++) {
                float x = (float)f->val.s[i]->cart[3 * a + k];
                bbmin[k] = fminf(bbmin[k], x);
                bbmax[k] = fmaxf(bbmax[k], x);
            }
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    nesf_model *m;
    int rc = nesf_model_create(&cfg, v->z, v->n, bbmin, bbmax, f->cpu, 7, &m, err);
    if (rc) return rc;
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_trainer *t;
    rc = nesf_trainer_create(m, &tc, &t, err);
    for (int step = 0; !rc && step < 2; step++) {
        nesf_queries q;
        rc = nesf_trainer_sample(t, f->val.s + 20 + 8 * step, 8, 100 + step, &q, err);
        if (rc) break;
        rc = nesf_trainer_forward_backward(t, f->val.s + 20 + 8 * step, 8, &q, 5 + step, NULL, err);
        if (!rc) rc = nesf_trainer_step(t, 1e-3f, err);
        nesf_queries_free(&q);
    }
    nesf_trainer_free(t);
    snprintf(f->path, sizeof f->path, "/tmp/nesf-test-cuda-%d.safetensors", (int)getpid());
    if (!rc) rc = nesf_model_save(m, f->path, NULL, err);
    nesf_model_free(m);
    return rc;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    if (!nesf_backend_cuda_available()) return 0;
    nesf_error err = {0};
    char p[512];
    nesf_vocab v;
    int rc = nesf_backend_cpu_create(0, &f->cpu, &err);
    /* field chunks unlike the CPU's (4096), several per test, so that
     * structures split across chunks at other places */
    setenv("NESF_CUDA_CHUNK", "5000", 1);
    if (!rc) rc = nesf_backend_cuda_create(0, &f->gpu, &err);
    unsetenv("NESF_CUDA_CHUNK");
    if (!rc) assert_int_equal(f->gpu->chunk_rows, 5000);
    snprintf(p, sizeof p, "%s/datasets/lcs6/meta.json", shared_dir());
    if (!rc) rc = nesf_vocab_load(p, &v, &err);
    snprintf(p, sizeof p, "%s/datasets/lcs6/val.jsonl", shared_dir());
    if (!rc) rc = nesf_dataset_load(p, &f->val, &err);
    if (!rc && f->val.n < 40) rc = nesf_fail(&err, NESF_ERR_INVALID, "validation split too small");
    const char *model = getenv("NESF_TEST_MODEL");
    if (!rc && !model) {
        rc = make_weights(f, &v, &err);
        model = f->path;
    }
    if (!rc) rc = nesf_model_load(model, f->cpu, &f->mc, &err);
    if (!rc) rc = nesf_model_load(model, f->gpu, &f->mg, &err);
    if (rc) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    printf("CPU: %s\nGPU: %s\nweights: %s\n", f->cpu->device, f->gpu->device, model);
    for (int i = 0; i < NS; i++) f->s[i] = f->val.s[i];
    f->z = malloc((size_t)NS * nesf_model_latent_size(f->mc) * sizeof *f->z);
    if (!f->z || nesf_model_encode(f->mc, f->s, NS, f->z, &err)) {
        fprintf(stderr, "setup: encode: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    nesf_model_free(f->mc);
    nesf_model_free(f->mg);
    nesf_backend_free(f->gpu);
    nesf_backend_free(f->cpu);
    nesf_dataset_free(&f->val);
    if (f->path[0]) unlink(f->path);
    free(f->z);
    free(f);
    return 0;
}

#define NEED_GPU(f)                                    \
    do {                                               \
        if (!(f)->gpu) {                               \
            print_message("skipped: no CUDA device\n"); \
            skip();                                    \
        }                                              \
    } while (0)

static void test_encode_lattice(void **state)
{
    fixture *f = *state;
    NEED_GPU(f);
    const int L = nesf_model_latent_size(f->mc);
    float *zg = malloc((size_t)NS * L * sizeof *zg);
    assert_non_null(zg);
    nesf_error err;
    assert_int_equal(nesf_model_encode(f->mg, f->s, NS, zg, &err), NESF_OK);
    double e = rel_max(zg, f->z, (size_t)NS * L);
    print_message("encoder: rel err %.2e\n", e);
    assert_true(e < 1e-4);
    float lc[NS * 3], ac[NS * 3], lg[NS * 3], ag[NS * 3];
    assert_int_equal(nesf_model_lattice(f->mc, NS, f->z, lc, ac, &err), NESF_OK);
    assert_int_equal(nesf_model_lattice(f->mg, NS, f->z, lg, ag, &err), NESF_OK);
    assert_true(rel_max(lg, lc, NS * 3) < 1e-4);
    assert_true(rel_max(ag, ac, NS * 3) < 1e-4);
    free(zg);
}

static void test_fields(void **state)
{
    fixture *f = *state;
    NEED_GPU(f);
    /* uneven groups, empty ones included, more rows than one chunk */
    const int S = 6, sizes[6] = {3000, 0, 20000, 1, 77, 9000};
    int off[7] = {0};
    for (int s = 0; s < S; s++) off[s + 1] = off[s] + sizes[s];
    const int Q = off[S], A = nesf_model_num_species(f->mc);
    float bmin[3], bmax[3];
    nesf_model_bbox(f->mc, bmin, bmax);
    float *xyz = malloc((size_t)Q * 3 * sizeof *xyz);
    float *pc = malloc((size_t)Q * 3 * sizeof *pc), *pg = malloc((size_t)Q * 3 * sizeof *pg);
    float *sc = malloc((size_t)Q * A * sizeof *sc), *sg = malloc((size_t)Q * A * sizeof *sg);
    assert_true(xyz && pc && pg && sc && sg);
    for (int i = 0; i < Q; i++)
        for (int k = 0; k < 3; k++)
            xyz[3 * i + k] = bmin[k] - 1 + (float)urand() * (bmax[k] - bmin[k] + 2);
    for (int i = 0; i < Q * 3; i++) pg[i] = NAN;
    for (int i = 0; i < Q * A; i++) sg[i] = NAN;
    nesf_error err;
    assert_int_equal(nesf_model_position_field_host(f->mc, S, f->z, off, xyz, pc, &err), NESF_OK);
    assert_int_equal(nesf_model_position_field_host(f->mg, S, f->z, off, xyz, pg, &err), NESF_OK);
    assert_int_equal(nesf_model_species_field_host(f->mc, S, f->z, off, xyz, sc, &err), NESF_OK);
    assert_int_equal(nesf_model_species_field_host(f->mg, S, f->z, off, xyz, sg, &err), NESF_OK);
    double ep = rel_max(pg, pc, (size_t)Q * 3), es = rel_max(sg, sc, (size_t)Q * A);
    print_message("position field: rel err %.2e; species field: rel err %.2e (%d queries)\n", ep,
                  es, Q);
    assert_true(ep < 1e-4);
    assert_true(es < 1e-4);
    free(xyz);
    free(pc);
    free(pg);
    free(sc);
    free(sg);
}

/* Same atoms (count, order, species), positions within tol Å, lattice. */
static void same_structures(nesf_structure **a, nesf_structure **b, int n, double tol,
                            const char *what)
{
    int atoms = 0;
    for (int i = 0; i < n; i++) {
        assert_non_null(a[i]);
        assert_non_null(b[i]);
        if (a[i]->n != b[i]->n) fail_msg("%s %d: %d atoms on CUDA, %d on CPU", what, i, a[i]->n, b[i]->n);
        for (int j = 0; j < a[i]->n; j++) {
            assert_int_equal(a[i]->z[j], b[i]->z[j]);
            for (int k = 0; k < 3; k++)
                if (fabs(a[i]->cart[3 * j + k] - b[i]->cart[3 * j + k]) > tol)
                    fail_msg("%s %d atom %d: %.6f vs %.6f", what, i, j, a[i]->cart[3 * j + k],
                             b[i]->cart[3 * j + k]);
        }
        for (int r = 0; r < 3; r++)
            for (int k = 0; k < 3; k++)
                assert_true(fabs(a[i]->lat.m[r][k] - b[i]->lat.m[r][k]) <=
                            1e-4 * (1 + fabs(b[i]->lat.m[r][k])));
        atoms += a[i]->n;
    }
    print_message("%s: %d structures, %d atoms, identical\n", what, n, atoms);
}

static void test_decode(void **state)
{
    fixture *f = *state;
    NEED_GPU(f);
    enum { n = 4 };
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.iterations = 24; /* the CPU side must stay quick */
    nesf_structure *dc[n], *dg[n];
    nesf_error ec[n], eg[n], err;
    nesf_decode_stats stc, stg;
    int rc = nesf_decode(f->mc, n, f->z, &o, dc, ec, &stc, &err);
    if (rc) fail_msg("CPU decode: %s", err.msg);
    rc = nesf_decode(f->mg, n, f->z, &o, dg, eg, &stg, &err);
    if (rc) fail_msg("CUDA decode: %s", err.msg);
    print_message("decode %d latents: CPU %.0f ms, GPU %.0f ms; %ld particles, %ld kept, %ld atoms\n",
                  n, stc.ms, stg.ms, stc.particles, stc.kept, stc.atoms);
    assert_int_equal(stg.kept, stc.kept);
    assert_int_equal(stg.atoms, stc.atoms);
    /* an untrained model may predict a degenerate lattice: then both fail
     * that item alike (the next test compares its atoms all the same) */
    nesf_structure *a[n], *b[n];
    int m = 0;
    for (int i = 0; i < n; i++) {
        assert_int_equal(!dg[i], !dc[i]);
        if (!dc[i]) {
            print_message("  latent %d: %s\n", i, ec[i].msg);
            assert_int_equal(eg[i].code, ec[i].code);
            continue;
        }
        a[m] = dg[i];
        b[m++] = dc[i];
    }
    same_structures(a, b, m, 1e-3, "model decode");
    for (int i = 0; i < n; i++) {
        nesf_structure_free(dc[i]);
        nesf_structure_free(dg[i]);
    }
}

/* The model's fields with the true lattices of the structures, so that
 * the atoms are compared even when the lattice heads of an untrained
 * model predict degenerate cells. */
static nesf_structure *const *lattice_src;

static int true_lattice(nesf_field *fl, int first, int S, float *lengths, float *angles,
                        nesf_error *err)
{
    (void)fl;
    (void)err;
    for (int i = 0; i < S; i++) {
        nesf_cellpar p;
        nesf_lattice_params(&lattice_src[first + i]->lat, &p);
        const double r = M_PI / 180;
        float l[3] = {(float)p.a, (float)p.b, (float)p.c};
        float a[3] = {(float)(p.alpha * r), (float)(p.beta * r), (float)(p.gamma * r)};
        memcpy(lengths + 3 * i, l, sizeof l);
        memcpy(angles + 3 * i, a, sizeof a);
    }
    return NESF_OK;
}

static void test_decode_atoms(void **state)
{
    fixture *f = *state;
    NEED_GPU(f);
    enum { n = 4 };
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.iterations = 24;
    nesf_structure *out[2][n];
    nesf_model *m[2] = {f->mc, f->mg};
    nesf_error err;
    lattice_src = f->s;
    for (int b = 0; b < 2; b++) {
        nesf_field fl;
        assert_int_equal(nesf_field_model(m[b], n, f->z, &fl, &err), NESF_OK);
        fl.lattice = true_lattice;
        int rc = nesf_decode_field(&fl, &o, out[b], NULL, NULL, &err);
        nesf_field_release(&fl);
        if (rc) fail_msg("decode on %s: %s", b ? "CUDA" : "CPU", err.msg);
    }
    same_structures(out[1], out[0], n, 1e-3, "model-field decode");
    for (int i = 0; i < n; i++) {
        nesf_structure_free(out[0][i]);
        nesf_structure_free(out[1][i]);
    }
}

/* The exact field of known structures, decoded with the particle flow on
 * each backend: the flow's arithmetic is element-wise, so the results agree
 * to rounding (the field itself is evaluated on the host). */
static void test_decode_truth(void **state)
{
    fixture *f = *state;
    NEED_GPU(f);
    enum { n = 3 };
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    const int A = nesf_model_num_species(f->mc);
    int zs[NESF_MAX_SPECIES];
    for (int c = 0; c < A; c++) zs[c] = nesf_model_species_z(f->mc, c);
    float bmin[3], bmax[3];
    nesf_model_bbox(f->mc, bmin, bmax);
    nesf_structure *out[2][n];
    nesf_backend *be[2] = {f->cpu, f->gpu};
    nesf_error err;
    for (int b = 0; b < 2; b++) {
        nesf_field fl;
        assert_int_equal(nesf_field_truth(be[b], f->s, n, zs, A, bmin, bmax, &fl, &err), NESF_OK);
        assert_int_equal(nesf_decode_field(&fl, &o, out[b], NULL, NULL, &err), NESF_OK);
        nesf_field_release(&fl);
    }
    same_structures(out[1], out[0], n, 1e-5, "truth-field decode");
    for (int i = 0; i < n; i++) {
        nesf_structure_free(out[0][i]);
        nesf_structure_free(out[1][i]);
    }
}

static void test_train_step(void **state)
{
    fixture *f = *state;
    NEED_GPU(f);
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_trainer *tcpu, *tgpu;
    nesf_error err;
    assert_int_equal(nesf_trainer_create(f->mc, &tc, &tcpu, &err), NESF_OK);
    assert_int_equal(nesf_trainer_create(f->mg, &tc, &tgpu, &err), NESF_OK);
    nesf_structure **batch = f->val.s + 2;
    const int n = 16;
    nesf_queries q;
    assert_int_equal(nesf_trainer_sample(tcpu, batch, n, 4242, &q, &err), NESF_OK);
    nesf_losses lc, lg;
    assert_int_equal(nesf_trainer_forward_backward(tcpu, batch, n, &q, 17, &lc, &err), NESF_OK);
    assert_int_equal(nesf_trainer_forward_backward(tgpu, batch, n, &q, 17, &lg, &err), NESF_OK);
    print_message("losses CPU / GPU: total %.6f / %.6f, pos %.6f / %.6f, spec %.6f / %.6f\n",
                  lc.total, lg.total, lc.pos, lg.pos, lc.spec, lg.spec);
    double lcv[] = {lc.total, lc.pos, lc.spec, lc.len, lc.ang};
    double lgv[] = {lg.total, lg.pos, lg.spec, lg.len, lg.ang};
    for (int i = 0; i < 5; i++) assert_true(fabs(lgv[i] - lcv[i]) <= 1e-4 * fabs(lcv[i]) + 1e-7);

    /* gradients through every kind of layer; weights only after Adam: the
     * gradient of a bias that feeds BatchNorm is zero up to rounding, and
     * Adam's first step turns rounding noise into a full-size step */
    static const char *names[] = {
        "encoder.pos.0.weight", "encoder.species.0.weight", "encoder.mix.0.weight",
        "encoder.head.0.weight", "encoder.head.0.bn.weight", "encoder.head.2.weight",
        "decoder.length.0.weight", "decoder.angle.1.bias", "decoder.position.0.weight",
        "decoder.position.4.weight", "decoder.position.4.bn.bias", "decoder.position.8.weight",
        "decoder.position.8.bias", "decoder.species.0.weight", "decoder.species.2.weight",
    };
    const size_t maxn = 256 * 520;
    float *a = malloc(maxn * sizeof *a), *b = malloc(maxn * sizeof *b);
    assert_true(a && b);
    size_t sizes[sizeof names / sizeof *names];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        for (size_t k = 0; k < maxn; k++) a[k] = b[k] = NAN;
        assert_int_equal(nesf_trainer_grad(tcpu, names[i], a, &err), NESF_OK);
        assert_int_equal(nesf_trainer_grad(tgpu, names[i], b, &err), NESF_OK);
        size_t m = 0;
        while (m < maxn && !isnan(a[m])) m++;
        sizes[i] = m;
        double e = rel_norm(b, a, m);
        print_message("  grad %-28s %7zu values, rel err %.2e\n", names[i], m, e);
        assert_true(e < 1e-3);
    }
    assert_int_equal(nesf_trainer_step(tcpu, 1e-3f, &err), NESF_OK);
    assert_int_equal(nesf_trainer_step(tgpu, 1e-3f, &err), NESF_OK);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (!strstr(names[i], ".weight") || strstr(names[i], ".bn.")) continue;
        assert_int_equal(nesf_trainer_param(tcpu, names[i], a, &err), NESF_OK);
        assert_int_equal(nesf_trainer_param(tgpu, names[i], b, &err), NESF_OK);
        double e = rel_norm(b, a, sizes[i]);
        assert_true(e < 1e-3);
    }
    free(a);
    free(b);
    nesf_queries_free(&q);
    nesf_trainer_free(tcpu);
    nesf_trainer_free(tgpu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_lattice),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_decode_atoms),
        cmocka_unit_test(test_decode_truth),
        cmocka_unit_test(test_train_step),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
