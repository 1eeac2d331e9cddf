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

/* Column blocks: the per-column reductions run over CB adjacent columns at
 * a time, one block per thread, so results do not depend on the thread
 * count (a resumed run on another machine reproduces the same numbers). */
#define CB 16

/* acc[c] += sum over rows of f(X[r, c]) for c < w, in float over runs of
 * 256 rows and in double across runs:
 *   mode 0: X;  mode 1: (X - mu)^2;  mode 2: X (Y - mu) with Y[r, c] at ldy. */
static void col_sums(int rows, int w, const float *X, int ldx, double *acc, const float *mu,
                     const float *Y, int ldy, int mode)
{
    for (int r0 = 0; r0 < rows; r0 += 256) {
        const int r1 = r0 + 256 < rows ? r0 + 256 : rows;
        float part[CB] = {0};
        for (int r = r0; r < r1; r++) {
            const float *x = X + (size_t)r * ldx;
            if (mode == 0)
                for (int c = 0; c < w; c++) part[c] += x[c];
            else if (mode == 1)
                for (int c = 0; c < w; c++) part[c] += (x[c] - mu[c]) * (x[c] - mu[c]);
            else {
                const float *y = Y + (size_t)r * ldy;
                for (int c = 0; c < w; c++) part[c] += x[c] * (y[c] - mu[c]);
            }
        }
        for (int c = 0; c < w; c++) acc[c] += part[c];
    }
}

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
#pragma omp parallel for schedule(static) if (rows > 256)
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
    const int nblk = (cols + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < nblk; k++) {
        const int c0 = k * CB, w = cols - c0 < CB ? cols - c0 : CB;
        double acc[CB] = {0};
        col_sums(rows, w, X + c0, ldx, acc, NULL, NULL, 0, 0);
        for (int c = 0; c < w; c++) b[c0 + c] += (float)acc[c];
    }
}

static void cpu_bn_train(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                         const float *gamma, const float *beta, float eps, float momentum,
                         float *running_mean, float *running_var, float *mean, float *invstd,
                         float *out, int ldo)
{
    (void)be;
    const int nblk = (cols + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < nblk; k++) {
        const int c0 = k * CB, w = cols - c0 < CB ? cols - c0 : CB;
        double sum[CB] = {0}, sq[CB] = {0};
        col_sums(rows, w, X + c0, ldx, sum, NULL, NULL, 0, 0);
        float mu[CB], is[CB], g[CB], bt[CB];
        for (int c = 0; c < w; c++) mu[c] = (float)(sum[c] / rows);
        col_sums(rows, w, X + c0, ldx, sq, mu, NULL, 0, 1);
        for (int c = 0; c < w; c++) {
            double var = sq[c] / rows;
            mean[c0 + c] = mu[c];
            invstd[c0 + c] = is[c] = (float)(1.0 / sqrt(var + eps));
            g[c] = gamma[c0 + c] * is[c];
            bt[c] = beta[c0 + c] - mu[c] * g[c];
            if (running_mean) {
                double unbiased = rows > 1 ? sq[c] / (rows - 1) : var;
                running_mean[c0 + c] = (float)((1 - momentum) * running_mean[c0 + c] + momentum * (sum[c] / rows));
                running_var[c0 + c] = (float)((1 - momentum) * running_var[c0 + c] + momentum * unbiased);
            }
        }
        for (int r = 0; r < rows; r++) {
            const float *x = X + (size_t)r * ldx + c0;
            float *o = out + (size_t)r * ldo + c0;
            for (int c = 0; c < w; c++) o[c] = x[c] * g[c] + bt[c];
        }
    }
}

static void cpu_relu_bn_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                                 const float *mean, const float *invstd, const float *gamma,
                                 const float *dOut, int ldo, float *dY, int ldd, float *dgamma,
                                 float *dbeta)
{
    (void)be;
    const int nblk = (cols + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < nblk; k++) {
        const int c0 = k * CB, w = cols - c0 < CB ? cols - c0 : CB;
        double sdy[CB] = {0}, sdyx[CB] = {0};
        float mu[CB], k1[CB], k2[CB], k3[CB];
        for (int c = 0; c < w; c++) mu[c] = mean[c0 + c];
        /* sum g and sum g (x - mean) */
        col_sums(rows, w, dOut + c0, ldo, sdy, NULL, NULL, 0, 0);
        col_sums(rows, w, dOut + c0, ldo, sdyx, mu, R + c0, ldr, 2);
        /* dx = gamma invstd (g - sum g / N - xhat sum(g xhat) / N) */
        for (int c = 0; c < w; c++) {
            const float is = invstd[c0 + c];
            dbeta[c0 + c] += (float)sdy[c];
            dgamma[c0 + c] += (float)(sdyx[c] * is);
            k1[c] = gamma[c0 + c] * is;
            k2[c] = (float)(sdy[c] / rows);
            k3[c] = (float)(sdyx[c] / rows) * is * is;
        }
        for (int r = 0; r < rows; r++) {
            const float *x = R + (size_t)r * ldr + c0, *g = dOut + (size_t)r * ldo + c0;
            float *d = dY + (size_t)r * ldd + c0;
            for (int c = 0; c < w; c++) {
                float v = k1[c] * (g[c] - k2[c] - (x[c] - mu[c]) * k3[c]);
                d[c] = x[c] > 0 ? v : 0;
            }
        }
    }
}

static void cpu_relu_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                              const float *dOut, int ldo, float *dY, int ldd)
{
    (void)be;
#pragma omp parallel for schedule(static) if (rows > 256)
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

static void cpu_linear(nesf_backend *be, int rows, int N, int K, const float *X, int ldx,
                       const float *W, int ldw, const float *b, int relu, float *out, int ldo)
{
    cpu_gemm(be, 0, 1, rows, N, K, 1.0f, X, ldx, W, ldw, 0.0f, out, ldo);
    cpu_bias_act(be, rows, N, out, ldo, b, relu, out, ldo);
}

static void cpu_vote(nesf_backend *be, int n, int P, int A, const float *L, int *cls)
{
    (void)be;
    int *votes = malloc((size_t)(A > 0 ? A : 1) * sizeof *votes);
    if (!votes) return;
    for (int i = 0; i < n; i++) {
        memset(votes, 0, (size_t)A * sizeof *votes);
        for (int p = 0; p < P; p++) {
            const float *x = L + ((size_t)i * P + p) * A;
            int b = 0;
            for (int c = 1; c < A; c++)
                if (x[c] > x[b] || (isnan(x[b]) && !isnan(x[c]))) b = c;
            votes[b]++;
        }
        int best = 0;
        for (int c = 1; c < A; c++)
            if (votes[c] > votes[best]) best = c;
        cls[i] = best;
    }
    free(votes);
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
    .linear = cpu_linear,
    .vote = cpu_vote,
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
    be->chunk_rows = 4096; /* a chunk's activations stay in the last-level cache */
    be->ops = &cpu_ops;
    snprintf(be->device, sizeof be->device, "CPU, OpenBLAS, %d thread%s", threads,
             threads == 1 ? "" : "s");
    *out = be;
    return NESF_OK;
}
