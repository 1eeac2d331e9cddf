/* The CPU backend's job splitting: GEMMs cut by rows, by K and by
 * columns agree with a double-precision reference, and every op that is
 * cut into jobs gives bit-identical results on 1 and 3 threads (the
 * guarantee that makes training reproducible on any machine). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sys/resource.h>

#include "backend.h"

static nesf_backend *be1, *be3;

static int setup(void **state)
{
    (void)state;
    if (nesf_backend_cpu_create(1, &be1, NULL)) return -1;
    return nesf_backend_cpu_create(3, &be3, NULL);
}

static int teardown(void **state)
{
    (void)state;
    nesf_backend_free(be1);
    nesf_backend_free(be3);
    return 0;
}

static uint64_t rs = 777;
static float *randv(size_t n, float lo, float hi)
{
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        rs = rs * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = lo + (hi - lo) * (float)((rs >> 40) * (1.0 / 16777216.0));
    }
    return v;
}

static float *copyv(const float *x, size_t n)
{
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    memcpy(v, x, n * sizeof *v);
    return v;
}

static void assert_same(const float *a, const float *b, size_t n, const char *what)
{
    if (memcmp(a, b, n * sizeof *a)) {
        size_t i = 0;
        while (a[i] == b[i]) i++;
        fail_msg("%s: 1 and 3 threads differ at %zu (%.9g vs %.9g)", what, i, a[i], b[i]);
    }
}

/* C = alpha op(A) op(B) + beta C on both backends, against double. */
static void check_gemm(int tA, int tB, int M, int N, int K)
{
    const int lda = (tA ? M : K) + 1, ldb = (tB ? K : N) + 2, ldc = N + 3;
    const size_t na = (size_t)(tA ? K : M) * lda, nb = (size_t)(tB ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = randv(na, -1, 1), *B = randv(nb, -1, 1), *C1 = randv(nc, -1, 1), *C3 = copyv(C1, nc);
    double *ref = malloc(nc * sizeof *ref), err = 0, scale = 0;
    assert_non_null(ref);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)(tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                     (tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            ref[(size_t)i * ldc + j] = 0.5 * s + 0.25 * C1[(size_t)i * ldc + j];
        }
    be1->ops->gemm(be1, tA, tB, M, N, K, 0.5f, A, lda, B, ldb, 0.25f, C1, ldc);
    be3->ops->gemm(be3, tA, tB, M, N, K, 0.5f, A, lda, B, ldb, 0.25f, C3, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const size_t x = (size_t)i * ldc + j;
            err = fmax(err, fabs(C1[x] - ref[x]));
            scale = fmax(scale, fabs(ref[x]));
        }
    char what[64];
    snprintf(what, sizeof what, "gemm %d%d %dx%dx%d", tA, tB, M, N, K);
    assert_same(C1, C3, nc, what);
    if (err > 1e-5 * fmax(scale, 1) * sqrt((double)K)) fail_msg("%s: error %g (scale %g)", what, err, scale);
    free(A); free(B); free(C1); free(C3); free(ref);
}

static void test_gemm_cuts(void **state)
{
    (void)state;
    check_gemm(0, 1, 5000, 37, 29);   /* by rows */
    check_gemm(1, 0, 24, 37, 20000);  /* by K: a weight gradient */
    check_gemm(0, 0, 40, 200, 50);    /* by columns */
    check_gemm(1, 1, 4500, 9, 13);
    check_gemm(0, 0, 7, 5, 17000);
}

static void test_linear_and_elementwise(void **state)
{
    (void)state;
    const int R = 5000, K = 19, N = 33;
    float *X = randv((size_t)R * K, -1, 1), *W = randv((size_t)N * K, -1, 1), *b = randv(N, -1, 1);
    float *o1 = calloc((size_t)R * N, sizeof *o1), *o3 = calloc((size_t)R * N, sizeof *o3);
    be1->ops->linear(be1, R, N, K, X, K, W, K, b, 1, o1, N);
    be3->ops->linear(be3, R, N, K, X, K, W, K, b, 1, o3, N);
    assert_same(o1, o3, (size_t)R * N, "linear");
    float *g = randv((size_t)R * N, -1, 1), *d1 = calloc((size_t)R * N, sizeof *d1), *d3 = calloc((size_t)R * N, sizeof *d3);
    be1->ops->relu_backward(be1, R, N, o1, N, g, N, d1, N);
    be3->ops->relu_backward(be3, R, N, o1, N, g, N, d3, N);
    assert_same(d1, d3, (size_t)R * N, "relu_backward");
    float *s1 = calloc(N, sizeof *s1), *s3 = calloc(N, sizeof *s3);
    be1->ops->col_sum(be1, R, N, g, N, s1);
    be3->ops->col_sum(be3, R, N, g, N, s3);
    assert_same(s1, s3, N, "col_sum");
    for (int c = 0; c < N; c++) {
        double ref = 0;
        for (int r = 0; r < R; r++) ref += g[(size_t)r * N + c];
        assert_true(fabs(s1[c] - ref) < 1e-4 * (1 + fabs(ref)));
    }
    free(X); free(W); free(b); free(o1); free(o3); free(g); free(d1); free(d3); free(s1); free(s3);
}

/* bn_train then relu_bn_backward over 5000 rows (3 jobs): identical on
 * both thread counts; mean and invstd match double statistics. */
static void test_batchnorm(void **state)
{
    (void)state;
    const int R = 5000, C = 21;
    float *X = randv((size_t)R * C, -0.5f, 2), *gam = randv(C, 0.5f, 1.5f), *bet = randv(C, -1, 1);
    float st[2][4 * 21], *out[2], *dY[2], *dO = randv((size_t)R * C, -1, 1);
    nesf_backend *bs[2] = {be1, be3};
    for (size_t i = 0; i < (size_t)R * C; i++) X[i] = X[i] > 0 ? X[i] : 0;  /* a ReLU output */
    for (int k = 0; k < 2; k++) {
        float *m = st[k], *is = m + C, *rm = is + C, *rv = rm + C;
        for (int c = 0; c < C; c++) { rm[c] = 0; rv[c] = 1; }
        out[k] = calloc((size_t)R * C, sizeof(float));
        dY[k] = calloc((size_t)R * C, sizeof(float));
        float dg[21] = {0}, db[21] = {0};
        bs[k]->ops->bn_train(bs[k], R, C, X, C, gam, bet, 1e-5f, 0.1f, rm, rv, m, is, out[k], C);
        bs[k]->ops->relu_bn_backward(bs[k], R, C, X, C, m, is, gam, dO, C, dY[k], C, dg, db);
    }
    assert_same(st[0], st[1], 4 * 21, "bn_train statistics");
    assert_same(out[0], out[1], (size_t)R * C, "bn_train output");
    assert_same(dY[0], dY[1], (size_t)R * C, "relu_bn_backward");
    for (int c = 0; c < C; c++) {
        double s = 0, q = 0;
        for (int r = 0; r < R; r++) s += X[(size_t)r * C + c];
        s /= R;
        for (int r = 0; r < R; r++) q += (X[(size_t)r * C + c] - s) * (X[(size_t)r * C + c] - s);
        assert_true(fabs(st[0][c] - s) < 1e-5 * (1 + fabs(s)));
        assert_true(fabs(st[0][C + c] - 1 / sqrt(q / R + 1e-5)) < 1e-4 * st[0][C + c]);
    }
    for (int k = 0; k < 2; k++) { free(out[k]); free(dY[k]); }
    free(X); free(gam); free(bet); free(dO);
}

static void test_groups_loss_adam(void **state)
{
    (void)state;
    const int S = 5, R = 6000, C = 17, A = 7, n = 200000;
    int off[6] = {0, 100, 2500, 2500, 5000, 6000}, lbl[6000];
    for (int r = 0; r < R; r++) lbl[r] = (r * 7) % A;
    float *G = randv((size_t)S * C, -1, 1), *E = randv((size_t)R * 3, -1, 1), *W = randv((size_t)C * 4, -1, 1);
    float *b = randv(C, -1, 1);
    float *o[2], *gs[2], *dl[2], loss[2], *p[2], *m[2], *v[2];
    float *L = randv((size_t)R * A, -3, 3), *g = randv(n, -1, 1), *p0 = randv(n, -1, 1);
    nesf_backend *bs[2] = {be1, be3};
    for (int k = 0; k < 2; k++) {
        o[k] = calloc((size_t)R * C, sizeof(float));
        gs[k] = calloc((size_t)S * C, sizeof(float));
        dl[k] = calloc((size_t)R * A, sizeof(float));
        p[k] = copyv(p0, n);
        m[k] = calloc(n, sizeof(float));
        v[k] = calloc(n, sizeof(float));
        bs[k]->ops->group_linear(bs[k], S, off, C, G, C, E, 3, 3, W, 4, b, 1, o[k], C);
        bs[k]->ops->group_sum(bs[k], S, off, C, o[k], C, gs[k], C, 0);
        loss[k] = bs[k]->ops->cross_entropy(bs[k], R, A, L, lbl, 0.5f, dl[k]);
        for (int t = 1; t <= 2; t++) bs[k]->ops->adam(bs[k], n, p[k], g, m[k], v[k], 1e-3f, 0.9f, 0.999f, 1e-8f, t);
    }
    assert_same(o[0], o[1], (size_t)R * C, "group_linear");
    assert_same(gs[0], gs[1], (size_t)S * C, "group_sum");
    assert_same(dl[0], dl[1], (size_t)R * A, "cross_entropy gradient");
    assert_same(loss, loss + 1, 1, "cross_entropy loss");
    assert_same(p[0], p[1], n, "adam");
    /* group 2 is empty; row 3000 is in group 3 */
    for (int c = 0; c < C; c++) {
        float x = G[3 * C + c] + b[c];
        for (int q = 0; q < 3; q++) x += E[3000 * 3 + q] * W[4 * c + q];
        assert_true(fabsf(o[0][3000 * C + c] - (x > 0 ? x : 0)) < 1e-5f);
    }
    for (int k = 0; k < 2; k++) { free(o[k]); free(gs[k]); free(dl[k]); free(p[k]); free(m[k]); free(v[k]); }
    free(G); free(E); free(W); free(b); free(L); free(g); free(p0);
}

/* A failure inside an op that returns void is kept (sticky): download()
 * reports it without clearing it, sync() reports it and clears it, and
 * nesf_backend_error keeps the first failure's message.  The failure is an
 * allocation refused under a lowered address-space limit (not under ASan,
 * whose allocator aborts instead of returning NULL). */
static void test_sticky_error(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip();
#else
    nesf_backend *be;
    assert_int_equal(nesf_backend_cpu_create(1, &be, NULL), NESF_OK);
    assert_int_equal(be->ops->sync(be), NESF_OK);
    assert_string_equal(nesf_backend_error(be), "");
    float b[4] = {1, 2, 3, 4}, x[4] = {0}, y[4] = {0};
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_AS, &old), 0);
    struct rlimit low = old;
    low.rlim_cur = (rlim_t)1 << 33; /* 8 GiB: below the 16 GiB col_sum asks for */
    if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < low.rlim_cur) low.rlim_cur = old.rlim_cur;
    assert_int_equal(setrlimit(RLIMIT_AS, &low), 0);
    be->ops->col_sum(be, 1, 1 << 30, x, 1 << 30, b); /* 2^30 columns of double sums */
    assert_int_equal(setrlimit(RLIMIT_AS, &old), 0);
    assert_true(b[0] == 1 && b[3] == 4); /* untouched */
    assert_int_equal(be->ops->download(be, y, x, sizeof x), NESF_ERR_NOMEM);
    assert_int_equal(be->ops->download(be, y, x, sizeof x), NESF_ERR_NOMEM); /* not cleared */
    assert_non_null(strstr(nesf_backend_error(be), "col_sum"));
    assert_int_equal(be->ops->sync(be), NESF_ERR_NOMEM);
    assert_int_equal(be->ops->sync(be), NESF_OK); /* reported once */
    assert_int_equal(be->ops->download(be, y, x, sizeof x), NESF_OK);
    assert_non_null(strstr(nesf_backend_error(be), "col_sum")); /* the message stays */
    nesf_backend_free(be);
#endif
}

/* Backend parameters come from the caller: the documented variable names
 * parse into nesf_backend_params (bad values are errors naming them), a
 * lookup of the caller's choice fills them, and nesf_backend_open takes
 * them (the library reads no environment). */
static char *fake_env(const char *name)
{
    static char math[] = "tf32", chunk[] = "8192", lt[] = "0";
    if (!strcmp(name, "NESF_CUDA_MATH")) return math;
    if (!strcmp(name, "NESF_CUDA_CHUNK")) return chunk;
    if (!strcmp(name, "NESF_CUDA_LT")) return lt;
    return NULL;
}

static void test_params(void **state)
{
    (void)state;
    nesf_backend_params p;
    nesf_error err;
    nesf_backend_params_default(&p);
    assert_int_equal(p.cuda_math, NESF_CUDA_MATH_FP32);
    assert_int_equal(p.cuda_lt, 1);
    assert_int_equal(nesf_backend_params_lookup(&p, fake_env, &err), NESF_OK);
    assert_int_equal(p.cuda_math, NESF_CUDA_MATH_TF32);
    assert_int_equal(p.cuda_chunk, 8192);
    assert_int_equal(p.cuda_lt, 0);
    assert_int_equal(p.allow_emulation, 0);
    assert_int_equal(nesf_backend_params_set(&p, "NESF_CUDA_MATH", "fp64", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "NESF_CUDA_MATH=fp64"));
    assert_int_equal(nesf_backend_params_set(&p, "NESF_CUDA_CHUNK", "12x", &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "NESF_CUDA_CHUNK"));
    assert_int_equal(nesf_backend_params_set(&p, "NESF_CUDA_CHUNK", "100", &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_backend_params_set(&p, "NESF_CUDA_EMULATION", "1", &err), NESF_OK);
    assert_int_equal(p.allow_emulation, 1);
    assert_int_equal(nesf_backend_params_set(&p, "NESF_CUDA_MATH", "", &err), NESF_OK); /* unset */
    assert_int_equal(p.cuda_math, NESF_CUDA_MATH_TF32);
    p.threads = 2;
    nesf_backend *be;
    assert_int_equal(nesf_backend_open("cpu", &p, &be, &err), NESF_OK);
    assert_int_equal(be->threads, 2);
    nesf_backend_free(be);
    assert_int_equal(nesf_backend_open("tpu", &p, &be, &err), NESF_ERR_INVALID);
    assert_null(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_cuts),
        cmocka_unit_test(test_linear_and_elementwise),
        cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_groups_loss_adam),
        cmocka_unit_test(test_sticky_error),
        cmocka_unit_test(test_params),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
