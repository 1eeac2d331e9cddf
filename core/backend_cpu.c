/* The CPU backend: OpenBLAS sgemm plus plain C loops.  It is the reference
 * every other backend is tested against, so clarity beats cleverness here;
 * the loops are written so that the compiler vectorises the inner one. */
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void cpu_destroy(nesf_backend *be) { free(be); }

static void *cpu_alloc(nesf_backend *be, size_t bytes)
{
    (void)be;
    /* calloc: large blocks come from mmap already zeroed, so no page is
     * touched before it is used */
    return calloc(1, bytes ? bytes : 64);
}

static void cpu_free(nesf_backend *be, void *p) { (void)be; free(p); }

static int cpu_copy(nesf_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return NESF_OK;
}

static int cpu_sync(nesf_backend *be) { (void)be; return NESF_OK; }

static void cpu_gemm(nesf_backend *be, int tA, int tB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc)
{
    (void)be;
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_fill(nesf_backend *be, float *y, size_t n, float v)
{
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] = v;
}

static void cpu_axpy(nesf_backend *be, size_t n, float a, const float *x, float *y)
{
    (void)be;
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void cpu_copy2d(nesf_backend *be, int rows, int cols, const float *src, int lds, float *dst,
                       int ldd)
{
    (void)be;
    for (int r = 0; r < rows; r++)
        memmove(dst + (size_t)r * ldd, src + (size_t)r * lds, (size_t)cols * sizeof(float));
}

static void cpu_bias_act(nesf_backend *be, int rows, int cols, const float *Y, int ldy,
                         const float *b, int relu, float *out, int ldo)
{
    (void)be;
    for (int r = 0; r < rows; r++) {
        const float *y = Y + (size_t)r * ldy;
        float *o = out + (size_t)r * ldo;
        for (int c = 0; c < cols; c++) {
            float v = y[c] + (b ? b[c] : 0.0f);
            o[c] = relu ? (v > 0 ? v : 0) : v;
        }
    }
}

static void cpu_group_linear(nesf_backend *be, int S, const int *off, int cols, const float *G,
                             int ldg, const float *E, int lde, int ne, const float *Wx, int ldw,
                             const float *b, int relu, float *out, int ldo)
{
    (void)be;
    /* Wx columns are strided by ldw: gather them once so the row loop
     * runs over contiguous vectors */
    float *wt = malloc((size_t)(ne > 0 ? ne : 1) * cols * sizeof *wt);
    float *base = malloc((size_t)cols * sizeof *base);
    if (!wt || !base) {
        free(wt); free(base);
        return;  /* cannot happen for realistic widths; leaves out unset */
    }
    for (int k = 0; k < ne; k++)
        for (int c = 0; c < cols; c++) wt[(size_t)k * cols + c] = Wx[(size_t)c * ldw + k];
    for (int s = 0; s < S; s++) {
        for (int c = 0; c < cols; c++) base[c] = G[(size_t)s * ldg + c] + (b ? b[c] : 0.0f);
        for (int r = off[s]; r < off[s + 1]; r++) {
            float *o = out + (size_t)r * ldo;
            const float *e = E + (size_t)r * lde;
            for (int c = 0; c < cols; c++) o[c] = base[c];
            for (int k = 0; k < ne; k++) {
                const float ek = e[k], *w = wt + (size_t)k * cols;
                for (int c = 0; c < cols; c++) o[c] += ek * w[c];
            }
            if (relu)
                for (int c = 0; c < cols; c++) o[c] = o[c] > 0 ? o[c] : 0;
        }
    }
    free(wt);
    free(base);
}

static void cpu_group_sum(nesf_backend *be, int S, const int *off, int cols, const float *X, int ldx,
                          float *out, int ldo, int acc)
{
    (void)be;
    for (int s = 0; s < S; s++) {
        float *o = out + (size_t)s * ldo;
        if (!acc) memset(o, 0, (size_t)cols * sizeof *o);
        for (int r = off[s]; r < off[s + 1]; r++) {
            const float *x = X + (size_t)r * ldx;
            for (int c = 0; c < cols; c++) o[c] += x[c];
        }
    }
}

static void cpu_group_max(nesf_backend *be, int S, const int *off, int cols, const float *X, int ldx,
                          float *out, int *arg)
{
    (void)be;
    for (int s = 0; s < S; s++) {
        float *o = out + (size_t)s * cols;
        int *a = arg + (size_t)s * cols;
        for (int c = 0; c < cols; c++) { o[c] = 0; a[c] = -1; }
        if (off[s + 1] <= off[s]) continue;
        const float *x0 = X + (size_t)off[s] * ldx;
        for (int c = 0; c < cols; c++) { o[c] = x0[c]; a[c] = off[s]; }
        for (int r = off[s] + 1; r < off[s + 1]; r++) {
            const float *x = X + (size_t)r * ldx;
            for (int c = 0; c < cols; c++)
                if (x[c] > o[c]) { o[c] = x[c]; a[c] = r; }
        }
    }
}

static void cpu_group_max_backward(nesf_backend *be, int S, int cols, const float *dOut,
                                   const int *arg, float *dX, int ldx)
{
    (void)be;
    for (size_t i = 0; i < (size_t)S * cols; i++)
        if (arg[i] >= 0) dX[(size_t)arg[i] * ldx + i % cols] += dOut[i];
}

static void cpu_col_sum(nesf_backend *be, int rows, int cols, const float *X, int ldx, float *b)
{
    (void)be;
    double *acc = calloc((size_t)cols, sizeof *acc);
    if (!acc) return;
    for (int r = 0; r < rows; r++) {
        const float *x = X + (size_t)r * ldx;
        for (int c = 0; c < cols; c++) acc[c] += x[c];
    }
    for (int c = 0; c < cols; c++) b[c] += (float)acc[c];
    free(acc);
}

static void cpu_bn_train(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                         const float *gamma, const float *beta, float eps, float momentum,
                         float *running_mean, float *running_var, float *mean, float *invstd,
                         float *out, int ldo)
{
    (void)be;
    double *sum = calloc((size_t)2 * cols, sizeof *sum), *sq = sum + cols;
    if (!sum) return;
    for (int r = 0; r < rows; r++) {
        const float *x = X + (size_t)r * ldx;
        for (int c = 0; c < cols; c++) sum[c] += x[c];
    }
    for (int c = 0; c < cols; c++) sum[c] /= rows;
    for (int r = 0; r < rows; r++) {
        const float *x = X + (size_t)r * ldx;
        for (int c = 0; c < cols; c++) {
            double d = x[c] - sum[c];
            sq[c] += d * d;
        }
    }
    for (int c = 0; c < cols; c++) {
        double var = sq[c] / rows;
        mean[c] = (float)sum[c];
        invstd[c] = (float)(1.0 / sqrt(var + eps));
        if (running_mean) {
            double unbiased = rows > 1 ? sq[c] / (rows - 1) : var;
            running_mean[c] = (float)((1 - momentum) * running_mean[c] + momentum * sum[c]);
            running_var[c] = (float)((1 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
    free(sum);
    for (int r = 0; r < rows; r++) {
        const float *x = X + (size_t)r * ldx;
        float *o = out + (size_t)r * ldo;
        for (int c = 0; c < cols; c++) o[c] = gamma[c] * (x[c] - mean[c]) * invstd[c] + beta[c];
    }
}

static void cpu_relu_bn_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                                 const float *mean, const float *invstd, const float *gamma,
                                 const float *dOut, int ldo, float *dY, int ldd, float *dgamma,
                                 float *dbeta)
{
    (void)be;
    double *sdy = calloc((size_t)2 * cols, sizeof *sdy), *sdyx = sdy + cols;
    float *k1 = malloc((size_t)3 * cols * sizeof *k1), *k2 = k1 + cols, *k3 = k2 + cols;
    if (!sdy || !k1) { free(sdy); free(k1); return; }
    for (int r = 0; r < rows; r++) {
        const float *x = R + (size_t)r * ldr, *g = dOut + (size_t)r * ldo;
        for (int c = 0; c < cols; c++) {
            sdy[c] += g[c];
            sdyx[c] += g[c] * (x[c] - mean[c]) * invstd[c];
        }
    }
    /* dx = gamma invstd (g - sum g / N - xhat sum(g xhat) / N) */
    for (int c = 0; c < cols; c++) {
        dbeta[c] += (float)sdy[c];
        dgamma[c] += (float)sdyx[c];
        k1[c] = gamma[c] * invstd[c];
        k2[c] = (float)(sdy[c] / rows);
        k3[c] = (float)(sdyx[c] / rows) * invstd[c];
    }
    for (int r = 0; r < rows; r++) {
        const float *x = R + (size_t)r * ldr, *g = dOut + (size_t)r * ldo;
        float *d = dY + (size_t)r * ldd;
        for (int c = 0; c < cols; c++) {
            float v = k1[c] * (g[c] - k2[c] - (x[c] - mean[c]) * k3[c]);
            d[c] = x[c] > 0 ? v : 0;
        }
    }
    free(sdy);
    free(k1);
}

static void cpu_relu_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                              const float *dOut, int ldo, float *dY, int ldd)
{
    (void)be;
    for (int r = 0; r < rows; r++) {
        const float *x = R + (size_t)r * ldr, *g = dOut + (size_t)r * ldo;
        float *d = dY + (size_t)r * ldd;
        for (int c = 0; c < cols; c++) d[c] = x[c] > 0 ? g[c] : 0;
    }
}

static void cpu_dropout(nesf_backend *be, int rows, int cols, float p, uint64_t seed, float *X,
                        int ldx, float *mask)
{
    (void)be;
    const float keep = p < 1 ? 1.0f / (1.0f - p) : 0.0f;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            float m = nesf_hash_uniform(seed, i) < p ? 0.0f : keep;
            mask[i] = m;
            X[(size_t)r * ldx + c] *= m;
        }
}

static void cpu_mul(nesf_backend *be, int rows, int cols, const float *M, float *X, int ldx)
{
    (void)be;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) X[(size_t)r * ldx + c] *= M[(size_t)r * cols + c];
}

static float cpu_mse(nesf_backend *be, size_t n, const float *P, const float *T, float scale,
                     float *dP)
{
    (void)be;
    if (n == 0) return 0;
    double acc = 0;
    const float k = 2.0f * scale / (float)n;
    for (size_t i = 0; i < n; i++) {
        float d = P[i] - T[i];
        acc += (double)d * d;
        if (dP) dP[i] = k * d;
    }
    return (float)(acc / n);
}

static float cpu_cross_entropy(nesf_backend *be, int rows, int ncls, const float *L,
                               const int *label, float scale, float *dL)
{
    (void)be;
    if (rows == 0) return 0;
    double acc = 0;
    const float k = scale / (float)rows;
    for (int r = 0; r < rows; r++) {
        const float *l = L + (size_t)r * ncls;
        float mx = l[0];
        for (int c = 1; c < ncls; c++) mx = l[c] > mx ? l[c] : mx;
        double se = 0;
        for (int c = 0; c < ncls; c++) se += exp((double)l[c] - mx);
        double lse = mx + log(se);
        acc += lse - l[label[r]];
        if (dL) {
            float *d = dL + (size_t)r * ncls;
            for (int c = 0; c < ncls; c++) d[c] = k * (float)exp((double)l[c] - lse);
            d[label[r]] -= k;
        }
    }
    return (float)(acc / rows);
}

static void cpu_adam(nesf_backend *be, size_t n, float *p, const float *g, float *m, float *v,
                     float lr, float beta1, float beta2, float eps, int t)
{
    (void)be;
    const float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    const float step = lr / bc1, rbc2 = 1.0f / sqrtf(bc2);
    for (size_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1 - beta1) * g[i];
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
        p[i] -= step * m[i] / (sqrtf(v[i]) * rbc2 + eps);
    }
}

static void cpu_row_sqnorm(nesf_backend *be, int rows, int cols, const float *X, int ldx, float *out)
{
    (void)be;
    for (int r = 0; r < rows; r++) {
        const float *x = X + (size_t)r * ldx;
        float s = 0;
        for (int c = 0; c < cols; c++) s += x[c] * x[c];
        out[r] = s;
    }
}

static const nesf_backend_ops cpu_ops = {
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .fill = cpu_fill,
    .axpy = cpu_axpy,
    .copy2d = cpu_copy2d,
    .bias_act = cpu_bias_act,
    .group_linear = cpu_group_linear,
    .group_sum = cpu_group_sum,
    .group_max = cpu_group_max,
    .group_max_backward = cpu_group_max_backward,
    .col_sum = cpu_col_sum,
    .bn_train = cpu_bn_train,
    .relu_bn_backward = cpu_relu_bn_backward,
    .relu_backward = cpu_relu_backward,
    .dropout = cpu_dropout,
    .mul = cpu_mul,
    .mse = cpu_mse,
    .cross_entropy = cpu_cross_entropy,
    .adam = cpu_adam,
    .row_sqnorm = cpu_row_sqnorm,
};

int nesf_backend_cpu_create(int threads, nesf_backend **out, nesf_error *err)
{
    nesf_backend *be = calloc(1, sizeof *be);
    if (!be) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
#ifdef NESF_HAVE_OPENBLAS_THREADS
    openblas_set_num_threads(threads);
#endif
    be->name = "cpu";
    be->threads = threads;
    be->ops = &cpu_ops;
    snprintf(be->device, sizeof be->device, "CPU, OpenBLAS, %d thread%s", threads,
             threads == 1 ? "" : "s");
    *out = be;
    return NESF_OK;
}
