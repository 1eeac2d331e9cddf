/* The CUDA backend against the CPU backend (the reference): every op on
 * the same random inputs, outputs poisoned with NaN beforehand so an
 * unwritten element (or one computed from unread memory) shows, compared to
 * 1e-4 of the output's magnitude under NESF_CUDA_MATH=fp32 and to the
 * looser bounds of tf32 / bf16 otherwise (exact for masks and indices).
 * Without a CUDA device each test reports "skipped: no CUDA device" and the
 * driver's reason, unless NESF_REQUIRE_CUDA=1 makes that a failure; creation
 * and selection are checked either way.  The host emulation build
 * (-Demulate_cuda=true) runs every test on the CPU. */
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

#define POISON NAN

/* Relative tolerance of a GEMM-based result in the current math mode:
 * tensor-core inputs are rounded to 10 (TF32) or 7 (BF16) mantissa bits. */
static double tol_math(void)
{
    const char *m = getenv("NESF_CUDA_MATH");
    if (m && !strcmp(m, "tf32")) return 5e-3;
    if (m && !strcmp(m, "bf16")) return 4e-2;
    return 1e-4;
}

/* Sets (or with v NULL unsets) name for one backend creation and puts the
 * caller's value back afterwards, so later tests see the environment the
 * suite was started with. */
static char *env_push(const char *name, const char *v)
{
    const char *old = getenv(name);
    char *save = old ? strdup(old) : NULL;
    if (v) setenv(name, v, 1);
    else unsetenv(name);
    return save;
}

static void env_pop(const char *name, char *save)
{
    if (save) setenv(name, save, 1);
    else unsetenv(name);
    free(save);
}

/* A CUDA backend on device with the parameters the suite's environment
 * sets (NESF_CUDA_MATH, NESF_CUDA_LT, NESF_CUDA_CHUNK): the library reads
 * no environment, the test passes them in. */
static int cuda_create_env(int device, nesf_backend **be, nesf_error *err)
{
    nesf_backend_params p;
    nesf_backend_params_default(&p);
    p.device = device;
    *be = NULL;
    int rc = nesf_backend_params_lookup(&p, getenv, err);
    return rc ? rc : nesf_backend_cuda_create(&p, be, err);
}

static int require_cuda(void)
{
    const char *r = getenv("NESF_REQUIRE_CUDA");
    return r && !strcmp(r, "1");
}

typedef struct pair {
    nesf_backend *cpu, *gpu;
} pair;

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
}

static float *host_rand(size_t n, float lo, float hi)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) h[i] = lo + (hi - lo) * 0.5f * (frand() + 1.0f);
    return h;
}

static float *host_fill(size_t n, float v)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) h[i] = v;
    return h;
}

/* The same data in both backends. */
typedef struct twin {
    void *c, *g;
    size_t bytes;
} twin;

static twin tw_new(pair *P, const void *host, size_t bytes)
{
    twin t = {P->cpu->ops->alloc(P->cpu, bytes), P->gpu->ops->alloc(P->gpu, bytes), bytes};
    assert_non_null(t.c);
    assert_non_null(t.g);
    memcpy(t.c, host, bytes); /* CPU backend memory is host memory */
    assert_int_equal(P->gpu->ops->upload(P->gpu, t.g, host, bytes), NESF_OK);
    return t;
}

static twin tw_floats(pair *P, const float *host, size_t n)
{
    return tw_new(P, host, n * sizeof(float));
}

static twin tw_ints(pair *P, const int *host, size_t n) { return tw_new(P, host, n * sizeof(int)); }

static twin tw_poison(pair *P, size_t n)
{
    float *h = host_fill(n, POISON);
    twin t = tw_floats(P, h, n);
    free(h);
    return t;
}

static void tw_free(pair *P, twin *t)
{
    P->cpu->ops->free(P->cpu, t->c);
    P->gpu->ops->free(P->gpu, t->g);
    t->c = t->g = NULL;
}

static void *tw_download(pair *P, const twin *t)
{
    void *h = malloc(t->bytes ? t->bytes : 1);
    assert_non_null(h);
    assert_int_equal(P->gpu->ops->download(P->gpu, h, t->g, t->bytes), NESF_OK);
    return h;
}

/* max |gpu - cpu| / max |cpu| over the twin's floats; a NaN on one side
 * only fails (both NaN: the poison of an element neither wrote). */
static double tw_err(pair *P, const twin *t)
{
    float *g = tw_download(P, t);
    const float *c = t->c;
    size_t n = t->bytes / sizeof(float);
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(g[i]) && isnan(c[i])) continue;
        if (isnan(g[i]) || isnan(c[i])) { md = INFINITY; break; }
        double d = fabs((double)g[i] - c[i]);
        if (d > md) md = d;
        if (fabs(c[i]) > mr) mr = fabs(c[i]);
    }
    free(g);
    return mr > 0 ? md / mr : md;
}

static void tw_check_(pair *P, const twin *t, double tol, const char *what)
{
    double e = tw_err(P, t);
    if (!(e <= tol)) fail_msg("%s: CUDA vs CPU relative error %.3g > %.3g", what, e, tol);
}
#define tw_check(P, t, what) tw_check_(P, t, 1e-4, what)
/* results that went through a GEMM: the math mode's tolerance */
#define tw_check_mm(P, t, what) tw_check_(P, t, tol_math(), what)

static void tw_check_exact(pair *P, const twin *t, const char *what)
{
    void *g = tw_download(P, t);
    if (memcmp(g, t->c, t->bytes)) {
        free(g);
        fail_msg("%s: CUDA and CPU differ (must be identical)", what);
    }
    free(g);
}

/* ---- fixture ---- */

static int setup(void **state)
{
    pair *P = calloc(1, sizeof *P);
    if (!P) return -1;
    nesf_error err;
    if (nesf_backend_cpu_create(1, &P->cpu, &err)) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        free(P);
        return -1;
    }
    if (cuda_create_env(0, &P->gpu, &err)) {
        /* the driver's reason (no device, driver too old for the toolkit) */
        printf("CUDA backend: none: %s%s\n", err.msg,
               require_cuda() ? " (NESF_REQUIRE_CUDA=1: every device test fails)" : "");
        P->gpu = NULL;
        if (nesf_backend_cuda_available()) { /* a device that cannot be used */
            nesf_backend_free(P->cpu);
            free(P);
            return -1;
        }
    } else {
        printf("CUDA backend: %s\n", P->gpu->device);
    }
    *state = P;
    return 0;
}

static int teardown(void **state)
{
    pair *P = *state;
    nesf_backend_free(P->gpu);
    nesf_backend_free(P->cpu);
    free(P);
    return 0;
}

#define NEED_GPU(P)                                                   \
    do {                                                              \
        if (!(P)->gpu) {                                              \
            if (require_cuda()) fail_msg("NESF_REQUIRE_CUDA=1: no CUDA device"); \
            print_message("skipped: no CUDA device\n");                \
            skip();                                                   \
        }                                                             \
    } while (0)

/* ---- creation and selection: meaningful with or without a device ---- */

static void test_create(void **state)
{
    (void)state;
    nesf_backend *be = NULL;
    nesf_error err = {0};
    int rc = cuda_create_env(0, &be, &err), emulated = 0;
    if (require_cuda() && rc) fail_msg("NESF_REQUIRE_CUDA=1: %s", err.msg);
    if (nesf_backend_cuda_available()) {
        assert_int_equal(rc, NESF_OK);
        assert_string_equal(be->name, "cuda");
        assert_true(strncmp(be->device, "CUDA", 4) == 0);
        emulated = strstr(be->device, "emulation") != NULL;
        nesf_backend_free(be);
        /* out-of-range device and bad math mode are clean errors */
        assert_int_equal(cuda_create_env(999, &be, &err), NESF_ERR_INVALID);
        assert_null(be);
        char *save = env_push("NESF_CUDA_MATH", "fp64");
        rc = cuda_create_env(0, &be, &err);
        env_pop("NESF_CUDA_MATH", save);
        assert_int_equal(rc, NESF_ERR_INVALID);
        assert_non_null(strstr(err.msg, "NESF_CUDA_MATH"));
    } else {
        /* no device (or no CUDA in this build): an error with a message */
        assert_true(rc == NESF_ERR_UNSUPPORTED || rc == NESF_ERR_BACKEND);
        assert_null(be);
        assert_true(err.msg[0] != 0);
    }
    /* auto takes a real device, never the emulation harness */
    assert_int_equal(nesf_backend_create("auto", 1, &be, &err), NESF_OK);
    assert_string_equal(be->name, nesf_backend_cuda_available() && !emulated ? "cuda" : "cpu");
    nesf_backend_free(be);
}

/* ---- dense algebra ---- */

static void gemm_case(pair *P, int tA, int tB, int M, int N, int K, int pad, float alpha,
                      float beta)
{
    int ar = tA ? K : M, ac = tA ? M : K, br = tB ? N : K, bc = tB ? K : N;
    int lda = ac + pad, ldb = bc + pad, ldc = N + pad;
    float *a = host_rand((size_t)ar * lda, -1, 1), *b = host_rand((size_t)br * ldb, -1, 1);
    float *c = host_rand((size_t)M * ldc, -1, 1);
    if (beta == 0) /* C is not read at all then: NaN must not leak through */
        for (int r = 0; r < M; r++)
            for (int k = 0; k < N; k++) c[(size_t)r * ldc + k] = NAN;
    twin A = tw_floats(P, a, (size_t)ar * lda), B = tw_floats(P, b, (size_t)br * ldb);
    twin C = tw_floats(P, c, (size_t)M * ldc);
    P->cpu->ops->gemm(P->cpu, tA, tB, M, N, K, alpha, A.c, lda, B.c, ldb, beta, C.c, ldc);
    P->gpu->ops->gemm(P->gpu, tA, tB, M, N, K, alpha, A.g, lda, B.g, ldb, beta, C.g, ldc);
    char what[96];
    snprintf(what, sizeof what, "gemm tA=%d tB=%d %dx%dx%d pad %d beta %g", tA, tB, M, N, K, pad,
             beta);
    tw_check_mm(P, &C, what);
    tw_free(P, &A);
    tw_free(P, &B);
    tw_free(P, &C);
    free(a);
    free(b);
    free(c);
}

static void test_gemm(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            gemm_case(P, tA, tB, 37, 29, 53, 0, 1.0f, 0.0f);
            gemm_case(P, tA, tB, 37, 29, 53, 3, 0.7f, 1.3f);
            gemm_case(P, tA, tB, 1, 5, 7, 2, 1.0f, 1.0f);
        }
    gemm_case(P, 0, 0, 13, 11, 0, 1, 1.0f, 0.5f); /* K = 0: C = beta C */
    gemm_case(P, 0, 0, 13, 11, 0, 1, 1.0f, 0.0f);
    /* a field layer: Q x [128 features | xyz] times W^T (128 x 131) */
    gemm_case(P, 0, 1, 4096, 128, 131, 0, 1.0f, 0.0f);
    /* and its weight gradient dW = dY^T X */
    gemm_case(P, 1, 0, 128, 131, 4096, 0, 1.0f, 1.0f);
}

static void linear_case(pair *P, nesf_backend *gpu, int rows, int N, int K, int ldx, int xoff,
                        int ldo, int bias, int relu)
{
    const int ldw = K + 3;
    float *hx = host_rand((size_t)rows * ldx + xoff, -1, 1), *hw = host_rand((size_t)N * ldw, -1, 1);
    float *hb = host_rand(N + 1, -1, 1);
    twin X = tw_floats(P, hx, (size_t)rows * ldx + xoff), W = tw_floats(P, hw, (size_t)N * ldw);
    twin B = tw_floats(P, hb, N + 1), O = tw_poison(P, (size_t)rows * ldo);
    /* bias at an odd offset too: any alignment must work */
    P->cpu->ops->linear(P->cpu, rows, N, K, (float *)X.c + xoff, ldx, W.c, ldw,
                        bias ? (float *)B.c + (bias > 1) : NULL, relu, O.c, ldo);
    gpu->ops->linear(gpu, rows, N, K, (float *)X.g + xoff, ldx, W.g, ldw,
                     bias ? (float *)B.g + (bias > 1) : NULL, relu, O.g, ldo);
    char what[128];
    snprintf(what, sizeof what, "linear %dx%dx%d ldx %d+%d ldo %d bias %d relu %d (%s)", rows, N,
             K, ldx, xoff, ldo, bias, relu, gpu == P->gpu ? "default" : "NESF_CUDA_LT=0");
    tw_check_mm(P, &O, what);
    tw_free(P, &X);
    tw_free(P, &W);
    tw_free(P, &B);
    tw_free(P, &O);
    free(hx);
    free(hw);
    free(hb);
}

/* The fused Linear (cuBLASLt epilogue) and its fallback (GEMM + bias_act),
 * on the shapes of the fields and of awkward alignments. */
static void test_linear(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    nesf_backend *plain;
    nesf_error err;
    char *save = env_push("NESF_CUDA_LT", "0");
    int rc = cuda_create_env(0, &plain, &err);
    env_pop("NESF_CUDA_LT", save);
    assert_int_equal(rc, NESF_OK);
    nesf_backend *gpus[2] = {P->gpu, plain};
    for (int g = 0; g < 2; g++) {
        nesf_backend *be = gpus[g];
        linear_case(P, be, 4096, 128, 131, 131, 0, 131, 1, 1);  /* field layer, xyz columns */
        linear_case(P, be, 4096, 128, 259, 259, 0, 131, 1, 1);  /* 256 + xyz -> 128 */
        linear_case(P, be, 4096, 3, 128, 131, 0, 3, 1, 0);      /* last position layer */
        linear_case(P, be, 777, 80, 128, 128, 0, 80, 2, 0);     /* species logits */
        linear_case(P, be, 1000, 64, 3, 3, 1, 67, 2, 1);        /* K = 3, odd pointers */
        linear_case(P, be, 1, 256, 518, 518, 0, 256, 0, 1);     /* one row, no bias */
        linear_case(P, be, 33, 17, 29, 31, 3, 19, 0, 0);
        /* the same shape again: a cached plan with another bias pointer */
        linear_case(P, be, 4096, 128, 131, 131, 0, 131, 2, 1);
    }
    nesf_backend_free(plain);
}

/* GEMM arithmetic modes against a float64 product: FP32 is exact to
 * rounding, TF32 and BF16 tensor-core paths are measured and bounded. */
static void test_gemm_math_modes(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const int M = 2048, N = 128, K = 259;
    float *a = host_rand((size_t)M * K, -1, 1), *b = host_rand((size_t)N * K, -1, 1);
    double *ref = calloc((size_t)M * N, sizeof *ref);
    float *c = malloc((size_t)M * N * sizeof *c);
    assert_non_null(ref);
    assert_non_null(c);
    double rn = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)a[(size_t)i * K + k] * b[(size_t)j * K + k];
            ref[(size_t)i * N + j] = s;
            rn += s * s;
        }
    static const char *modes[] = {"fp32", "tf32", "bf16"};
    static const double bound[] = {1e-5, 3e-3, 3e-2};
    for (int m = 0; m < 3; m++) {
        char *save = env_push("NESF_CUDA_MATH", modes[m]);
        nesf_backend *be;
        nesf_error err;
        int rc = cuda_create_env(0, &be, &err);
        env_pop("NESF_CUDA_MATH", save);
        assert_int_equal(rc, NESF_OK);
        float *dA = be->ops->alloc(be, (size_t)M * K * 4), *dB = be->ops->alloc(be, (size_t)N * K * 4);
        float *dC = be->ops->alloc(be, (size_t)M * N * 4);
        assert_non_null(dA);
        assert_non_null(dB);
        assert_non_null(dC);
        assert_int_equal(be->ops->upload(be, dA, a, (size_t)M * K * 4), NESF_OK);
        assert_int_equal(be->ops->upload(be, dB, b, (size_t)N * K * 4), NESF_OK);
        be->ops->gemm(be, 0, 1, M, N, K, 1.0f, dA, K, dB, K, 0.0f, dC, N);
        assert_int_equal(be->ops->download(be, c, dC, (size_t)M * N * 4), NESF_OK);
        double dn = 0;
        for (size_t i = 0; i < (size_t)M * N; i++) dn += (c[i] - ref[i]) * (c[i] - ref[i]);
        double rel = sqrt(dn / rn);
        printf("gemm %dx%dx%d %s: |C - C64| / |C64| = %.3g\n", M, N, K, modes[m], rel);
        assert_true(rel < bound[m]);
        be->ops->free(be, dA);
        be->ops->free(be, dB);
        be->ops->free(be, dC);
        nesf_backend_free(be);
    }
    free(a);
    free(b);
    free(c);
    free(ref);
}

static void test_elementwise(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const int rows = 301, cols = 45, ld = 50;
    size_t n = (size_t)rows * ld;
    float *hx = host_rand(n, -1, 1), *hy = host_rand(n, -1, 1), *hb = host_rand(cols, -1, 1);
    twin X = tw_floats(P, hx, n), Y = tw_floats(P, hy, n), B = tw_floats(P, hb, cols);

    P->cpu->ops->fill(P->cpu, (float *)Y.c + 7, 1000, 2.5f);
    P->gpu->ops->fill(P->gpu, (float *)Y.g + 7, 1000, 2.5f);
    P->cpu->ops->axpy(P->cpu, n - 3, -0.75f, X.c, (float *)Y.c + 3);
    P->gpu->ops->axpy(P->gpu, n - 3, -0.75f, X.g, (float *)Y.g + 3);
    tw_check(P, &Y, "fill + axpy");

    /* bias + ReLU out of place, in place (out aliases Y) and without bias */
    twin O = tw_poison(P, n);
    P->cpu->ops->bias_act(P->cpu, rows, cols, X.c, ld, B.c, 1, O.c, ld);
    P->gpu->ops->bias_act(P->gpu, rows, cols, X.g, ld, B.g, 1, O.g, ld);
    tw_check(P, &O, "bias_act relu");
    P->cpu->ops->bias_act(P->cpu, rows, cols, Y.c, ld, B.c, 0, Y.c, ld);
    P->gpu->ops->bias_act(P->gpu, rows, cols, Y.g, ld, B.g, 0, Y.g, ld);
    tw_check(P, &Y, "bias_act in place");
    P->cpu->ops->bias_act(P->cpu, rows, 3, X.c, ld, NULL, 1, (float *)O.c + cols, ld);
    P->gpu->ops->bias_act(P->gpu, rows, 3, X.g, ld, NULL, 1, (float *)O.g + cols, ld);
    tw_check(P, &O, "bias_act no bias, 3 columns");

    /* strided copy into the tail columns (the [features | xyz] layout) */
    twin D = tw_poison(P, (size_t)rows * 131);
    P->cpu->ops->copy2d(P->cpu, rows, 3, X.c, ld, (float *)D.c + 128, 131);
    P->gpu->ops->copy2d(P->gpu, rows, 3, X.g, ld, (float *)D.g + 128, 131);
    P->cpu->ops->copy2d(P->cpu, 1, 40, Y.c, ld, D.c, 131);
    P->gpu->ops->copy2d(P->gpu, 1, 40, Y.g, ld, D.g, 131);
    tw_check_exact(P, &D, "copy2d");
    P->cpu->ops->copy(P->cpu, (float *)D.c + 1000, X.c, 999 * sizeof(float));
    P->gpu->ops->copy(P->gpu, (float *)D.g + 1000, X.g, 999 * sizeof(float));
    tw_check_exact(P, &D, "copy");

    /* ReLU backward, in place; mul; row norms */
    P->cpu->ops->relu_backward(P->cpu, rows, cols, X.c, ld, Y.c, ld, Y.c, ld);
    P->gpu->ops->relu_backward(P->gpu, rows, cols, X.g, ld, Y.g, ld, Y.g, ld);
    tw_check(P, &Y, "relu_backward");
    float *hm = host_rand((size_t)rows * cols, 0, 2);
    twin Mk = tw_floats(P, hm, (size_t)rows * cols);
    P->cpu->ops->mul(P->cpu, rows, cols, Mk.c, X.c, ld);
    P->gpu->ops->mul(P->gpu, rows, cols, Mk.g, X.g, ld);
    tw_check(P, &X, "mul");
    twin S = tw_poison(P, rows);
    P->cpu->ops->row_sqnorm(P->cpu, rows, 3, (float *)X.c + 5, ld, S.c);
    P->gpu->ops->row_sqnorm(P->gpu, rows, 3, (float *)X.g + 5, ld, S.g);
    tw_check(P, &S, "row_sqnorm");
    /* Fourier query columns of 3-column rows (queries within a few cells) */
    twin Q = tw_floats(P, hx, (size_t)rows * 3);
    twin Fq = tw_poison(P, (size_t)rows * 27);
    P->cpu->ops->xyz_fourier(P->cpu, rows, Q.c, 4, 7.5f, Fq.c, 27);
    P->gpu->ops->xyz_fourier(P->gpu, rows, Q.g, 4, 7.5f, Fq.g, 27);
    tw_check(P, &Fq, "xyz_fourier");

    twin *all[] = {&X, &Y, &B, &O, &D, &Mk, &S, &Q, &Fq};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(hx);
    free(hy);
    free(hb);
    free(hm);
}

/* ---- grouped ops ---- */

/* groups with empty ones at the start, middle and end */
static const int group_sizes[] = {0, 5, 0, 130, 1, 0, 2000, 17, 0};
#define NG ((int)(sizeof group_sizes / sizeof *group_sizes))

static int *group_offsets(int *rows)
{
    int *off = malloc((NG + 1) * sizeof *off);
    assert_non_null(off);
    off[0] = 0;
    for (int s = 0; s < NG; s++) off[s + 1] = off[s] + group_sizes[s];
    *rows = off[NG];
    return off;
}

static void test_group_linear(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    int rows, *off = group_offsets(&rows);
    const int cols = 200, ldg = 210, lde = 7, ne = 3, ldw = 195, ldo = 203;
    float *hg = host_rand((size_t)NG * ldg, -1, 1), *he = host_rand((size_t)rows * lde, -5, 5);
    float *hw = host_rand((size_t)cols * ldw, -1, 1), *hb = host_rand(cols, -1, 1);
    twin Off = tw_ints(P, off, NG + 1), G = tw_floats(P, hg, (size_t)NG * ldg);
    twin E = tw_floats(P, he, (size_t)rows * lde), W = tw_floats(P, hw, (size_t)cols * ldw);
    twin B = tw_floats(P, hb, cols), O = tw_poison(P, (size_t)rows * ldo);
    for (int relu = 0; relu < 2; relu++) {
        /* xyz in the last columns of E and Wx (Wx + 192: the xyz part of a
         * [latent | xyz] weight) */
        P->cpu->ops->group_linear(P->cpu, NG, Off.c, cols, G.c, ldg, (float *)E.c + 4, lde, ne,
                                  (float *)W.c + 192, ldw, relu ? B.c : NULL, relu, O.c, ldo);
        P->gpu->ops->group_linear(P->gpu, NG, Off.g, cols, G.g, ldg, (float *)E.g + 4, lde, ne,
                                  (float *)W.g + 192, ldw, relu ? B.g : NULL, relu, O.g, ldo);
        tw_check(P, &O, relu ? "group_linear relu" : "group_linear");
    }
    twin *all[] = {&Off, &G, &E, &W, &B, &O};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(off);
    free(hg);
    free(he);
    free(hw);
    free(hb);
}

static void test_group_reduce(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    int rows, *off = group_offsets(&rows);
    const int cols = 77, ldx = 80, ldo = 90;
    float *hx = host_rand((size_t)rows * ldx, -1, 1);
    /* quantised values: many ties, so "first maximum" is really tested */
    float *hq = malloc((size_t)rows * ldx * sizeof *hq);
    assert_non_null(hq);
    for (size_t i = 0; i < (size_t)rows * ldx; i++) hq[i] = floorf(hx[i] * 2.0f) * 0.5f;
    float *ho = host_rand((size_t)NG * ldo, -1, 1);
    twin Off = tw_ints(P, off, NG + 1), X = tw_floats(P, hx, (size_t)rows * ldx);
    twin Q = tw_floats(P, hq, (size_t)rows * ldx);
    twin O = tw_floats(P, ho, (size_t)NG * ldo);

    P->cpu->ops->group_sum(P->cpu, NG, Off.c, cols, X.c, ldx, O.c, ldo, 1);
    P->gpu->ops->group_sum(P->gpu, NG, Off.g, cols, X.g, ldx, O.g, ldo, 1);
    tw_check(P, &O, "group_sum acc");
    P->cpu->ops->group_sum(P->cpu, NG, Off.c, cols, X.c, ldx, O.c, ldo, 0);
    P->gpu->ops->group_sum(P->gpu, NG, Off.g, cols, X.g, ldx, O.g, ldo, 0);
    tw_check(P, &O, "group_sum");

    twin M = tw_poison(P, (size_t)NG * cols);
    int *ha = malloc((size_t)NG * cols * sizeof *ha);
    assert_non_null(ha);
    for (int i = 0; i < NG * cols; i++) ha[i] = 12345;
    twin A = tw_ints(P, ha, (size_t)NG * cols);
    for (int quant = 0; quant < 2; quant++) {
        twin *in = quant ? &Q : &X;
        P->cpu->ops->group_max(P->cpu, NG, Off.c, cols, in->c, ldx, M.c, A.c);
        P->gpu->ops->group_max(P->gpu, NG, Off.g, cols, in->g, ldx, M.g, A.g);
        tw_check_exact(P, &M, "group_max values");
        tw_check_exact(P, &A, "group_max arg (first maximum, -1 when empty)");
    }
    /* backward scatters into a zeroed dX at the argmax rows */
    float *hd = host_rand((size_t)NG * cols, -1, 1);
    float *hz = host_fill((size_t)rows * ldx, 0);
    twin dO = tw_floats(P, hd, (size_t)NG * cols), dX = tw_floats(P, hz, (size_t)rows * ldx);
    P->cpu->ops->group_max_backward(P->cpu, NG, cols, dO.c, A.c, dX.c, ldx);
    P->gpu->ops->group_max_backward(P->gpu, NG, cols, dO.g, A.g, dX.g, ldx);
    tw_check_exact(P, &dX, "group_max_backward");

    twin *all[] = {&Off, &X, &Q, &O, &M, &A, &dO, &dX};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(off);
    free(hx);
    free(hq);
    free(ho);
    free(ha);
    free(hd);
    free(hz);
}

/* ---- BatchNorm, column sums ---- */

static void bn_case(pair *P, int rows, int cols, int ld, float offset)
{
    float *hx = host_rand((size_t)rows * ld, offset - 1, offset + 1);
    float *hg = host_rand(cols, 0.5f, 1.5f), *hb = host_rand(cols, -1, 1);
    float *hrm = host_rand(cols, -1, 1), *hrv = host_rand(cols, 0.5f, 2);
    twin X = tw_floats(P, hx, (size_t)rows * ld), G = tw_floats(P, hg, cols);
    twin B = tw_floats(P, hb, cols), RM = tw_floats(P, hrm, cols), RV = tw_floats(P, hrv, cols);
    twin Mu = tw_poison(P, cols), Is = tw_poison(P, cols), O = tw_poison(P, (size_t)rows * ld);
    P->cpu->ops->bn_train(P->cpu, rows, cols, X.c, ld, G.c, B.c, 1e-5f, 0.1f, RM.c, RV.c, Mu.c,
                          Is.c, O.c, ld);
    P->gpu->ops->bn_train(P->gpu, rows, cols, X.g, ld, G.g, B.g, 1e-5f, 0.1f, RM.g, RV.g, Mu.g,
                          Is.g, O.g, ld);
    tw_check(P, &Mu, "bn_train mean");
    tw_check(P, &Is, "bn_train invstd");
    tw_check(P, &RM, "bn_train running_mean");
    tw_check(P, &RV, "bn_train running_var");
    tw_check(P, &O, "bn_train out");

    /* in place, as the training forward does it */
    P->cpu->ops->bn_train(P->cpu, rows, cols, X.c, ld, G.c, B.c, 1e-5f, 0.1f, NULL, NULL, Mu.c,
                          Is.c, X.c, ld);
    P->gpu->ops->bn_train(P->gpu, rows, cols, X.g, ld, G.g, B.g, 1e-5f, 0.1f, NULL, NULL, Mu.g,
                          Is.g, X.g, ld);
    tw_check(P, &X, "bn_train in place");

    /* column sums onto a non-zero bias gradient */
    float *hs = host_rand(cols, -1, 1);
    twin Sb = tw_floats(P, hs, cols);
    P->cpu->ops->col_sum(P->cpu, rows, cols, O.c, ld, Sb.c);
    P->gpu->ops->col_sum(P->gpu, rows, cols, O.g, ld, Sb.g);
    tw_check(P, &Sb, "col_sum");

    twin *all[] = {&X, &G, &B, &RM, &RV, &Mu, &Is, &O, &Sb};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(hx);
    free(hg);
    free(hb);
    free(hrm);
    free(hrv);
    free(hs);
}

static void test_bn_train(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    bn_case(P, 1000, 70, 75, 0.0f);
    bn_case(P, 777, 33, 33, 50.0f); /* |mean| >> std */
    bn_case(P, 2, 5, 5, 0.0f);
    bn_case(P, 300000, 33, 40, 0.5f); /* more than 1024 row chunks */
}

static void test_relu_bn_backward(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const int rows = 3001, cols = 130, ldr = 131, ldo = 140;
    float *hr = host_rand((size_t)rows * ldr, -1, 1);
    for (size_t i = 0; i < (size_t)rows * ldr; i++) hr[i] = hr[i] > 0 ? hr[i] : 0; /* ReLU out */
    float *hmu = malloc(cols * sizeof *hmu), *his = malloc(cols * sizeof *his);
    assert_non_null(hmu);
    assert_non_null(his);
    for (int k = 0; k < cols; k++) { /* statistics of R, as bn_train saved them */
        double s = 0, q = 0;
        for (int r = 0; r < rows; r++) s += hr[(size_t)r * ldr + k];
        s /= rows;
        for (int r = 0; r < rows; r++) q += pow(hr[(size_t)r * ldr + k] - s, 2);
        hmu[k] = (float)s;
        his[k] = (float)(1 / sqrt(q / rows + 1e-5));
    }
    float *hg = host_rand(cols, 0.5f, 1.5f), *hd = host_rand((size_t)rows * ldo, -1, 1);
    float *hdg = host_rand(cols, -1, 1), *hdb = host_rand(cols, -1, 1);
    twin R = tw_floats(P, hr, (size_t)rows * ldr), Mu = tw_floats(P, hmu, cols);
    twin Is = tw_floats(P, his, cols), G = tw_floats(P, hg, cols);
    twin dO = tw_floats(P, hd, (size_t)rows * ldo), dY = tw_poison(P, (size_t)rows * ldr);
    twin dG = tw_floats(P, hdg, cols), dB = tw_floats(P, hdb, cols);
    P->cpu->ops->relu_bn_backward(P->cpu, rows, cols, R.c, ldr, Mu.c, Is.c, G.c, dO.c, ldo, dY.c,
                                  ldr, dG.c, dB.c);
    P->gpu->ops->relu_bn_backward(P->gpu, rows, cols, R.g, ldr, Mu.g, Is.g, G.g, dO.g, ldo, dY.g,
                                  ldr, dG.g, dB.g);
    tw_check(P, &dY, "relu_bn_backward dY");
    tw_check(P, &dG, "relu_bn_backward dgamma");
    tw_check(P, &dB, "relu_bn_backward dbeta");
    /* in place over the incoming gradient */
    P->cpu->ops->relu_bn_backward(P->cpu, rows, cols, R.c, ldr, Mu.c, Is.c, G.c, dO.c, ldo, dO.c,
                                  ldo, dG.c, dB.c);
    P->gpu->ops->relu_bn_backward(P->gpu, rows, cols, R.g, ldr, Mu.g, Is.g, G.g, dO.g, ldo, dO.g,
                                  ldo, dG.g, dB.g);
    tw_check(P, &dO, "relu_bn_backward in place");
    twin *all[] = {&R, &Mu, &Is, &G, &dO, &dY, &dG, &dB};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(hr);
    free(hmu);
    free(his);
    free(hg);
    free(hd);
    free(hdg);
    free(hdb);
}

/* ---- dropout, losses, Adam ---- */

static void test_dropout(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const int rows = 517, cols = 256, ldx = 260;
    float *hx = host_rand((size_t)rows * ldx, -1, 1);
    twin X = tw_floats(P, hx, (size_t)rows * ldx), Mk = tw_poison(P, (size_t)rows * cols);
    const float ps[] = {0.3f, 0.0f, 1.0f};
    for (int i = 0; i < 3; i++) {
        uint64_t seed = 0x1234567ull + (uint64_t)i * 977;
        P->cpu->ops->dropout(P->cpu, rows, cols, ps[i], seed, X.c, ldx, Mk.c);
        P->gpu->ops->dropout(P->gpu, rows, cols, ps[i], seed, X.g, ldx, Mk.g);
        tw_check_exact(P, &Mk, "dropout mask");
        tw_check_exact(P, &X, "dropout output");
    }
    /* the mask really drops about p of the entries */
    float *m = tw_download(P, &Mk);
    size_t zeros = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++) zeros += m[i] == 0.0f;
    assert_int_equal(zeros, (size_t)rows * cols); /* last p was 1 */
    free(m);
    tw_free(P, &X);
    tw_free(P, &Mk);
    free(hx);
}

static void test_losses(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const size_t n = 100003;
    float *hp = host_rand(n, -2, 2), *ht = host_rand(n, -2, 2);
    twin Pp = tw_floats(P, hp, n), T = tw_floats(P, ht, n), dP = tw_poison(P, n);
    float lc = P->cpu->ops->mse(P->cpu, n, Pp.c, T.c, 10.0f, dP.c);
    float lg = P->gpu->ops->mse(P->gpu, n, Pp.g, T.g, 10.0f, dP.g);
    assert_true(fabsf(lg - lc) <= 1e-5f * fabsf(lc));
    tw_check(P, &dP, "mse gradient");

    const int rows = 4099, ncls = 80;
    float *hl = host_rand((size_t)rows * ncls, -5, 5);
    int *lab = malloc(rows * sizeof *lab);
    assert_non_null(lab);
    for (int r = 0; r < rows; r++) lab[r] = (int)((frand() + 1.0f) * 0.5f * ncls) % ncls;
    twin L = tw_floats(P, hl, (size_t)rows * ncls), Lab = tw_ints(P, lab, rows);
    twin dL = tw_poison(P, (size_t)rows * ncls);
    lc = P->cpu->ops->cross_entropy(P->cpu, rows, ncls, L.c, Lab.c, 0.1f, dL.c);
    lg = P->gpu->ops->cross_entropy(P->gpu, rows, ncls, L.g, Lab.g, 0.1f, dL.g);
    assert_true(fabsf(lg - lc) <= 1e-5f * fabsf(lc));
    tw_check(P, &dL, "cross_entropy gradient");
    /* three classes: fewer classes than a warp's lanes */
    for (int r = 0; r < rows; r++) lab[r] %= 3;
    tw_free(P, &Lab);
    Lab = tw_ints(P, lab, rows);
    lc = P->cpu->ops->cross_entropy(P->cpu, rows / 3, 3, L.c, Lab.c, 1.0f, NULL);
    lg = P->gpu->ops->cross_entropy(P->gpu, rows / 3, 3, L.g, Lab.g, 1.0f, NULL);
    assert_true(fabsf(lg - lc) <= 1e-5f * fabsf(lc));

    twin *all[] = {&Pp, &T, &dP, &L, &Lab, &dL};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(hp);
    free(ht);
    free(hl);
    free(lab);
}

static void test_adam(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const size_t n = 10001;
    float *hp = host_rand(n, -1, 1), *hz = host_fill(n, 0);
    twin Pp = tw_floats(P, hp, n), M = tw_floats(P, hz, n), V = tw_floats(P, hz, n);
    for (int t = 1; t <= 5; t++) {
        float *hg = host_rand(n, -0.1f, 0.1f);
        twin G = tw_floats(P, hg, n);
        P->cpu->ops->adam(P->cpu, n, Pp.c, G.c, M.c, V.c, 1e-3f, 0.9f, 0.999f, 1e-8f, t);
        P->gpu->ops->adam(P->gpu, n, Pp.g, G.g, M.g, V.g, 1e-3f, 0.9f, 0.999f, 1e-8f, t);
        tw_free(P, &G);
        free(hg);
    }
    tw_check(P, &Pp, "adam parameters");
    tw_check(P, &M, "adam first moment");
    tw_check(P, &V, "adam second moment");
    tw_free(P, &Pp);
    tw_free(P, &M);
    tw_free(P, &V);
    free(hp);
    free(hz);
}

static void vote_case(pair *P, int n, int rows, int A)
{
    size_t m = (size_t)n * rows * A;
    float *hl = host_rand(m, -1, 1);
    /* coarse values: ties inside a row and between the vote counts */
    for (size_t i = 0; i < m; i++) hl[i] = floorf(hl[i] * 2.0f);
    for (size_t i = 0; i < m; i += 997) hl[i] = NAN;
    int *hc = malloc((size_t)n * sizeof *hc);
    assert_non_null(hc);
    for (int i = 0; i < n; i++) hc[i] = -5;
    twin L = tw_floats(P, hl, m), C = tw_ints(P, hc, (size_t)n);
    P->cpu->ops->vote(P->cpu, n, rows, A, L.c, C.c);
    P->gpu->ops->vote(P->gpu, n, rows, A, L.g, C.g);
    tw_check_exact(P, &C, "vote");
    tw_free(P, &L);
    tw_free(P, &C);
    free(hl);
    free(hc);
}

static void test_vote(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    vote_case(P, 300, 216, 80); /* the species vote of 300 atoms */
    vote_case(P, 7, 1000, 3);
    vote_case(P, 70000, 2, 3);  /* more groups than one launch's grid */
}

/* Grid-stride loops: more rows than one launch's grid covers. */
static void test_large(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    const int rows = 600000, cols = 33;
    float *hx = host_rand((size_t)rows * cols, -1, 1), *hb = host_rand(cols, -1, 1);
    twin X = tw_floats(P, hx, (size_t)rows * cols), B = tw_floats(P, hb, cols);
    twin O = tw_poison(P, (size_t)rows * cols);
    P->cpu->ops->bias_act(P->cpu, rows, cols, X.c, cols, B.c, 1, O.c, cols);
    P->gpu->ops->bias_act(P->gpu, rows, cols, X.g, cols, B.g, 1, O.g, cols);
    tw_check(P, &O, "bias_act 600000 rows");
    int off[2] = {0, rows};
    twin Off = tw_ints(P, off, 2), S = tw_poison(P, cols);
    P->cpu->ops->group_sum(P->cpu, 1, Off.c, cols, X.c, cols, S.c, cols, 0);
    P->gpu->ops->group_sum(P->gpu, 1, Off.g, cols, X.g, cols, S.g, cols, 0);
    tw_check_(P, &S, 1e-3, "group_sum of 600000 rows"); /* float sums, 6e5 terms */
    twin *all[] = {&X, &B, &O, &Off, &S};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tw_free(P, all[i]);
    free(hx);
    free(hb);
}

/* Uploads may be queued behind kernels, yet the caller may reuse the
 * source as soon as upload returns: many small uploads from one buffer
 * rewritten in between (more than the staging ring holds), then a large
 * one, then device-side copies that depend on the uploads' order. */
static void test_upload_reuse(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    nesf_backend *be = P->gpu;
    const int n = 100, w = 1000, big = 3 << 20;
    float *d = be->ops->alloc(be, (size_t)n * w * sizeof(float));
    float *dbig = be->ops->alloc(be, (size_t)big * sizeof(float));
    float *h = malloc((size_t)big * sizeof *h), *back = malloc((size_t)big * sizeof *back);
    assert_non_null(d);
    assert_non_null(dbig);
    assert_non_null(h);
    assert_non_null(back);
    be->ops->fill(be, dbig, (size_t)big, -1.0f); /* queued work ahead of the uploads */
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < w; k++) h[k] = (float)(i * w + k);
        assert_int_equal(be->ops->upload(be, d + (size_t)i * w, h, (size_t)w * sizeof(float)), NESF_OK);
    }
    for (int k = 0; k < big; k++) h[k] = (float)k * 0.5f;
    assert_int_equal(be->ops->upload(be, dbig, h, (size_t)big * sizeof(float)), NESF_OK);
    memset(h, 0, (size_t)big * sizeof *h);
    be->ops->copy(be, dbig, d, (size_t)n * w * sizeof(float));
    assert_int_equal(be->ops->download(be, back, dbig, (size_t)big * sizeof(float)), NESF_OK);
    for (int k = 0; k < big; k++)
        if (back[k] != (k < n * w ? (float)k : (float)k * 0.5f))
            fail_msg("element %d is %g after the uploads", k, back[k]);
    be->ops->free(be, d);
    be->ops->free(be, dbig);
    free(h);
    free(back);
}

/* A failing op (invalid leading dimension) is reported by the next sync,
 * and only once: the backend stays usable. */
static void test_error_reported(void **state)
{
    pair *P = *state;
    NEED_GPU(P);
    nesf_backend *be = P->gpu;
    float *a = be->ops->alloc(be, 64 * sizeof(float));
    assert_non_null(a);
    assert_int_equal(be->ops->sync(be), NESF_OK);
    be->ops->gemm(be, 0, 0, 4, 4, 4, 1.0f, a, 1, a, 4, 0.0f, a + 32, 4); /* lda < K */
    assert_int_equal(be->ops->sync(be), NESF_ERR_BACKEND);
    assert_int_equal(be->ops->sync(be), NESF_OK);
    be->ops->fill(be, a, 64, 1.0f);
    float h[64];
    assert_int_equal(be->ops->download(be, h, a, sizeof h), NESF_OK);
    assert_true(h[0] == 1.0f && h[63] == 1.0f);
    be->ops->free(be, a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_math_modes),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_group_linear),
        cmocka_unit_test(test_group_reduce),
        cmocka_unit_test(test_bn_train),
        cmocka_unit_test(test_relu_bn_backward),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_losses),
        cmocka_unit_test(test_adam),
        cmocka_unit_test(test_vote),
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_upload_reuse),
        cmocka_unit_test(test_error_reported),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
