/* The CPU backend: OpenBLAS sgemm plus plain C loops.  It is the reference
 * every other backend is tested against, so clarity beats cleverness here;
 * the loops are written so that the compiler vectorises the inner one.
 *
 * Threading: the backend owns a pool of threads (its thread count, the
 * caller included) and OpenBLAS runs single-threaded inside them.  Every
 * op that is worth it is cut into jobs of a FIXED size (rows, or GEMM
 * columns) that do not depend on the thread count; a reduction writes one
 * partial per job and the partials are combined in job order.  So results
 * are bit-identical for any thread count and across runs (a resumed run on
 * another machine reproduces the same numbers), and no thread ever spins
 * or yields waiting for work. */
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Rows summed in float before a double accumulation (reductions). */
#define RUN 256
/* Rows per job of the row-parallel element-wise ops and reductions: a
 * job's rows of a 259-wide activation (2 MB) stay in L2. */
#define JOB_ROWS 2048
/* GEMM jobs: row blocks of C when M is large, else column blocks. */
#define GEMM_ROWS 2048
#define GEMM_COLS 64
/* Weight-gradient GEMMs (K = all rows of a batch, C small) are cut along
 * K into jobs of GEMM_KROWS with a private C each, added in job order:
 * every operand is packed once, whatever the width of C. */
#define GEMM_KROWS 8192
#define MAX_THREADS 64

/* The hot loops are compiled for AVX-512 and AVX2 too and picked at load
 * time.  C11 mode keeps -ffp-contract=off, so no clone fuses a multiply
 * and an add: every clone gives the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif

typedef void (*job_fn)(void *ctx, int job);

typedef struct cpu_impl {
    int nthreads;                 /* workers + the calling thread */
    pthread_t tid[MAX_THREADS];
    int started;                  /* workers created */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    job_fn fn;                    /* the batch being run */
    void *ctx;
    int njobs;
    atomic_int next;              /* next job index to take */
    int active;                   /* workers still in the batch */
    unsigned gen;                 /* batch number, bumped per batch */
    int quit;
    double *part;                 /* per-job partial sums, grown on demand */
    size_t npart;
    float *fpart;                 /* per-job partial GEMM results, likewise */
    size_t nfpart;
    atomic_int failed;            /* the first failure since the last sync (sticky) */
    char msg[256];                /* its message, kept after sync reports it */
} cpu_impl;

static cpu_impl *impl_of(nesf_backend *be) { return be->impl; }

/* Keeps the first failure of an op that returns void, so that the next
 * download() and sync() report it instead of letting stale outputs read as
 * results; safe from the worker threads (the first caller wins). */
static void cpu_fail(nesf_backend *be, const char *what)
{
    cpu_impl *p = impl_of(be);
    int none = 0;
    if (atomic_compare_exchange_strong(&p->failed, &none, -1)) {
        snprintf(p->msg, sizeof p->msg, "CPU backend %s: out of memory", what);
        atomic_store(&p->failed, NESF_ERR_NOMEM);
    }
}

/* The message outlives the sync that cleared the code, for the caller's
 * error report. */
static const char *cpu_error(const nesf_backend *be)
{
    const cpu_impl *p = be->impl;
    return p->msg;
}

/* Takes jobs until none is left. */
static void take_jobs(cpu_impl *p)
{
    int j;
    while ((j = atomic_fetch_add(&p->next, 1)) < p->njobs) p->fn(p->ctx, j);
}

/* A pool thread: sleeps until a batch is posted, takes jobs, reports done. */
static void *worker(void *arg)
{
    cpu_impl *p = arg;
    unsigned seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        take_jobs(p);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Runs fn(ctx, j) for j < njobs on the pool and returns when all are done.
 * Jobs must write disjoint outputs, so which thread ran a job is
 * invisible in the result. */
static void run_jobs(nesf_backend *be, int njobs, job_fn fn, void *ctx)
{
    cpu_impl *p = impl_of(be);
    if (njobs <= 0) return;
    if (p->started == 0 || njobs == 1) {
        for (int j = 0; j < njobs; j++) fn(ctx, j);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->njobs = njobs;
    atomic_store(&p->next, 0);
    p->active = p->started;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    take_jobs(p);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static int row_jobs(int rows) { return (rows + JOB_ROWS - 1) / JOB_ROWS; }

/* Job j's rows [*r0, *r1) of a row-parallel op. */
static void job_range(int j, int rows, int *r0, int *r1)
{
    *r0 = j * JOB_ROWS;
    *r1 = *r0 + JOB_ROWS < rows ? *r0 + JOB_ROWS : rows;
}

/* n doubles of per-job partials (backend scratch, valid until the next
 * op); NULL only if memory runs out. */
static double *partials(nesf_backend *be, size_t n)
{
    cpu_impl *p = impl_of(be);
    if (n > p->npart) {
        double *q = realloc(p->part, n * sizeof *q);
        if (!q) {
            cpu_fail(be, "partial sums");
            return NULL;
        }
        p->part = q;
        p->npart = n;
    }
    return p->part;
}

/* ---- column reductions ---- */

enum { SUM_X, SUM_SQ, SUM_BNB };

typedef struct {
    int rows, cols, mode;
    const float *X, *Y, *mu;
    int ldx, ldy;
    double *part;                 /* njobs x (2 cols) */
    nesf_backend *be;             /* for failures in the jobs */
} colred_ctx;

/* acc[c] and acc[cols + c] += sums over rows [r0, r1), in float over
 * runs of RUN rows and in double across runs:
 *   SUM_X:   X into acc[c];
 *   SUM_SQ:  (X - mu)^2 into acc[cols + c];
 *   SUM_BNB: X and X (Y - mu) (ReLU-BN backward: X = dOut, Y = R). */
HOT static void colred_rows(const colred_ctx *k, int r0, int r1, double *acc, float *part)
{
    const int cols = k->cols;
    for (int a = r0; a < r1; a += RUN) {
        const int b = a + RUN < r1 ? a + RUN : r1;
        memset(part, 0, (size_t)2 * cols * sizeof *part);
        for (int r = a; r < b; r++) {
            const float *x = k->X + (size_t)r * k->ldx;
            if (k->mode == SUM_X) {
                for (int c = 0; c < cols; c++) part[c] += x[c];
            } else if (k->mode == SUM_SQ) {
                for (int c = 0; c < cols; c++) part[cols + c] += (x[c] - k->mu[c]) * (x[c] - k->mu[c]);
            } else {
                const float *y = k->Y + (size_t)r * k->ldy;
                for (int c = 0; c < cols; c++) {
                    part[c] += x[c];
                    part[cols + c] += x[c] * (y[c] - k->mu[c]);
                }
            }
        }
        for (int c = 0; c < 2 * cols; c++) acc[c] += part[c];
    }
}

/* One job of col_reduce: its rows' sums into its own partial. */
static void colred_job(void *ctx, int j)
{
    const colred_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->rows, &r0, &r1);
    double *acc = k->part + (size_t)j * 2 * k->cols;
    float stack[2 * 512], *part = 2 * k->cols <= 1024 ? stack : malloc((size_t)2 * k->cols * sizeof *part);
    memset(acc, 0, (size_t)2 * k->cols * sizeof *acc);
    if (!part) return;  /* cannot happen for the widths of a model (< 65536) */
    colred_rows(k, r0, r1, acc, part);
    if (part != stack) free(part);
}

/* BN statistics of one job's rows: sum X, then sum (X - a)^2 about the
 * job's own float mean a while its rows are still in cache (one pass over
 * memory instead of two); cpu_bn_train combines the jobs. */
static void moments_job(void *ctx, int j)
{
    const colred_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->rows, &r0, &r1);
    const int cols = k->cols;
    double *acc = k->part + (size_t)j * 2 * cols;
    float stack[3 * 512], *buf = 3 * cols <= 3 * 512 ? stack : malloc((size_t)3 * cols * sizeof *buf);
    memset(acc, 0, (size_t)2 * cols * sizeof *acc);
    if (!buf) { /* only for widths beyond 512 columns */
        cpu_fail(k->be, "bn_train");
        return;
    }
    colred_ctx q = *k;
    q.mode = SUM_X;
    colred_rows(&q, r0, r1, acc, buf);
    float *a = buf + 2 * cols;
    for (int c = 0; c < cols; c++) a[c] = (float)(acc[c] / (r1 - r0));
    q.mode = SUM_SQ;
    q.mu = a;
    colred_rows(&q, r0, r1, acc, buf);
    if (buf != stack) free(buf);
}

/* out[c] (and out[cols + c] for SUM_BNB) = the column sums of the mode
 * over all rows, job partials added in job order.  out: 2 cols doubles. */
static int col_reduce(nesf_backend *be, colred_ctx *k, double *out)
{
    const int nj = row_jobs(k->rows);
    k->part = partials(be, (size_t)(nj > 0 ? nj : 1) * 2 * k->cols);
    if (!k->part) return NESF_ERR_NOMEM;
    memset(out, 0, (size_t)2 * k->cols * sizeof *out);
    run_jobs(be, nj, colred_job, k);
    for (int j = 0; j < nj; j++)
        for (int c = 0; c < 2 * k->cols; c++) out[c] += k->part[(size_t)j * 2 * k->cols + c];
    return NESF_OK;
}

static void cpu_destroy(nesf_backend *be)
{
    cpu_impl *p = impl_of(be);
    if (p) {
        pthread_mutex_lock(&p->mu);
        p->quit = 1;
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->started; i++) pthread_join(p->tid[i], NULL);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->go);
        pthread_cond_destroy(&p->done);
        free(p->part);
        free(p->fpart);
        free(p);
    }
    free(be);
}

static void *cpu_alloc(nesf_backend *be, size_t bytes)
{
    (void)be;
    /* calloc: large blocks come from mmap already zeroed, so no page is
     * touched before it is used.  (Transparent huge pages measured worse:
     * zeroing fresh 2 MB pages cost more system time than 4 KB faults.) */
    return calloc(1, bytes ? bytes : 64);
}

static void cpu_free(nesf_backend *be, void *p) { (void)be; free(p); }

static int cpu_copy(nesf_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return NESF_OK;
}

/* Reports the sticky failure and clears it (the message stays). */
static int cpu_sync(nesf_backend *be)
{
    return atomic_exchange(&impl_of(be)->failed, 0);
}

/* Copies and reports any failure since the last sync() without clearing
 * it, as the CUDA download does. */
static int cpu_download(nesf_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes) memmove(dst, src, bytes);
    return atomic_load(&impl_of(be)->failed);
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


/* ---- GEMM ---- */

enum { BY_ROWS, BY_COLS, BY_K };

typedef struct {
    int tA, tB, M, N, K, by;
    float alpha, beta;
    const float *A, *B;
    int lda, ldb, ldc;
    float *C;
    /* the bias and ReLU of a Linear, applied to a row block while it is
     * still in cache (by_rows only); relu < 0: none */
    const float *bias;
    int relu;
    float *part;                  /* BY_K: njobs x M x N */
} gemm_ctx;

/* out = act(Y + b) over rows [r0, r1); out may alias Y (same ld). */
HOT static void bias_act_rows(int r0, int r1, int cols, const float *Y, int ldy, const float *b,
                              int relu, float *out, int ldo)
{
    for (int r = r0; r < r1; r++) {
        const float *y = Y + (size_t)r * ldy;
        float *o = out + (size_t)r * ldo;
        if (b && relu)
            for (int c = 0; c < cols; c++) { float v = y[c] + b[c]; o[c] = v > 0 ? v : 0; }
        else if (b)
            for (int c = 0; c < cols; c++) o[c] = y[c] + b[c];
        else if (relu)
            for (int c = 0; c < cols; c++) o[c] = y[c] > 0 ? y[c] : 0;
        else if (o != y)
            for (int c = 0; c < cols; c++) o[c] = y[c];
    }
}

/* One block of a GEMM: rows or columns of C, or K rows into a partial. */
static void gemm_job(void *ctx, int j)
{
    const gemm_ctx *g = ctx;
    const CBLAS_TRANSPOSE ta = g->tA ? CblasTrans : CblasNoTrans, tb = g->tB ? CblasTrans : CblasNoTrans;
    if (g->by == BY_ROWS) {
        const int m0 = j * GEMM_ROWS, m = g->M - m0 < GEMM_ROWS ? g->M - m0 : GEMM_ROWS;
        const float *A = g->tA ? g->A + m0 : g->A + (size_t)m0 * g->lda;
        float *C = g->C + (size_t)m0 * g->ldc;
        cblas_sgemm(CblasRowMajor, ta, tb, m, g->N, g->K, g->alpha, A, g->lda, g->B, g->ldb, g->beta, C, g->ldc);
        if (g->relu >= 0) bias_act_rows(0, m, g->N, C, g->ldc, g->bias, g->relu, C, g->ldc);
    } else if (g->by == BY_COLS) {
        const int n0 = j * GEMM_COLS, n = g->N - n0 < GEMM_COLS ? g->N - n0 : GEMM_COLS;
        const float *B = g->tB ? g->B + (size_t)n0 * g->ldb : g->B + n0;
        cblas_sgemm(CblasRowMajor, ta, tb, g->M, n, g->K, g->alpha, g->A, g->lda, B, g->ldb, g->beta,
                    g->C + n0, g->ldc);
    } else {
        const int k0 = j * GEMM_KROWS, k = g->K - k0 < GEMM_KROWS ? g->K - k0 : GEMM_KROWS;
        const float *A = g->tA ? g->A + (size_t)k0 * g->lda : g->A + k0;
        const float *B = g->tB ? g->B + k0 : g->B + (size_t)k0 * g->ldb;
        cblas_sgemm(CblasRowMajor, ta, tb, g->M, g->N, k, g->alpha, A, g->lda, B, g->ldb, 0.0f,
                    g->part + (size_t)j * g->M * g->N, g->N);
    }
}

/* C = beta C + the K jobs' partials, added in job order. */
static void gemm_k_combine(const gemm_ctx *g, int nj)
{
    const size_t mn = (size_t)g->M * g->N;
    for (int i = 0; i < g->M; i++) {
        float *c = g->C + (size_t)i * g->ldc;
        for (int n = 0; n < g->N; n++) {
            const float *p = g->part + (size_t)i * g->N + n;
            float s = p[0];
            for (int j = 1; j < nj; j++) s += p[j * mn];
            c[n] = g->beta == 0 ? s : g->beta * c[n] + s;
        }
    }
}

/* Cuts C into row blocks (tall GEMMs: the activations), or K into blocks
 * (the weight gradients: M and N a layer's widths, K all rows of the
 * batch), or C into column blocks.  The cut depends on the shape alone. */
static void gemm_run(nesf_backend *be, gemm_ctx *g)
{
    if (g->M <= 0 || g->N <= 0) return;
    if (g->K <= 0) {
        for (int i = 0; i < g->M; i++)
            for (int j = 0; j < g->N; j++) {
                float *c = g->C + (size_t)i * g->ldc + j;
                *c = g->beta == 0 ? 0 : g->beta * *c;
            }
        if (g->relu >= 0) bias_act_rows(0, g->M, g->N, g->C, g->ldc, g->bias, g->relu, g->C, g->ldc);
        return;
    }
    int nj;
    if (g->M >= 2 * GEMM_ROWS || g->relu >= 0) {
        g->by = BY_ROWS;
        nj = (g->M + GEMM_ROWS - 1) / GEMM_ROWS;
    } else if (g->K >= 2 * GEMM_KROWS) {
        cpu_impl *p = impl_of(be);
        nj = (g->K + GEMM_KROWS - 1) / GEMM_KROWS;
        const size_t need = (size_t)nj * g->M * g->N;
        if (need > p->nfpart) {
            float *q = realloc(p->fpart, need * sizeof *q);
            if (!q) goto by_cols;  /* same product, fewer bytes */
            p->fpart = q;
            p->nfpart = need;
        }
        g->by = BY_K;
        g->part = p->fpart;
        run_jobs(be, nj, gemm_job, g);
        gemm_k_combine(g, nj);
        return;
    } else {
by_cols:
        g->by = BY_COLS;
        nj = (g->N + GEMM_COLS - 1) / GEMM_COLS;
    }
    run_jobs(be, nj, gemm_job, g);
}

static void cpu_gemm(nesf_backend *be, int tA, int tB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc)
{
    gemm_ctx g = {.tA = tA, .tB = tB, .M = M, .N = N, .K = K, .alpha = alpha, .beta = beta,
                  .A = A, .B = B, .lda = lda, .ldb = ldb, .ldc = ldc, .C = C, .relu = -1};
    gemm_run(be, &g);
}

static void cpu_linear(nesf_backend *be, int rows, int N, int K, const float *X, int ldx,
                       const float *W, int ldw, const float *b, int relu, float *out, int ldo)
{
    gemm_ctx g = {.tA = 0, .tB = 1, .M = rows, .N = N, .K = K, .alpha = 1, .beta = 0, .A = X,
                  .B = W, .lda = ldx, .ldb = ldw, .ldc = ldo, .C = out, .bias = b, .relu = relu != 0};
    gemm_run(be, &g);
}

/* ---- element-wise ops (row jobs) ---- */

typedef struct {
    int rows, cols, relu;
    const float *Y, *b;
    int ldy, ldo;
    float *out;
} bias_ctx;

/* The row jobs of the element-wise ops: job j's rows of the op. */
static void bias_job(void *ctx, int j)
{
    const bias_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->rows, &r0, &r1);
    bias_act_rows(r0, r1, k->cols, k->Y, k->ldy, k->b, k->relu, k->out, k->ldo);
}

static void cpu_bias_act(nesf_backend *be, int rows, int cols, const float *Y, int ldy,
                         const float *b, int relu, float *out, int ldo)
{
    bias_ctx k = {rows, cols, relu, Y, b, ldy, ldo, out};
    run_jobs(be, row_jobs(rows), bias_job, &k);
}

typedef struct {
    int S, cols, ne, relu;
    const int *off;
    const float *G, *E, *wt, *b;
    int ldg, lde, ldo;
    float *out;
} glin_ctx;

/* Rows [r0, r1) of group_linear: (G[s] + b) + sum_k E[r, k] wt[k]. */
HOT static void glin_rows(const glin_ctx *k, int r0, int r1)
{
    int lo = 0, hi = k->S;  /* the group of r0: last s with off[s] <= r0 */
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (k->off[mid] <= r0) lo = mid; else hi = mid;
    }
    const int cols = k->cols;
    for (int s = lo; s < k->S && k->off[s] < r1; s++) {
        const float *g = k->G + (size_t)s * k->ldg;
        const int a = k->off[s] > r0 ? k->off[s] : r0, e = k->off[s + 1] < r1 ? k->off[s + 1] : r1;
        for (int r = a; r < e; r++) {
            float *o = k->out + (size_t)r * k->ldo;
            const float *x = k->E + (size_t)r * k->lde;
            if (k->b)
                for (int c = 0; c < cols; c++) o[c] = g[c] + k->b[c];
            else
                for (int c = 0; c < cols; c++) o[c] = g[c];
            for (int q = 0; q < k->ne; q++) {
                const float xq = x[q], *w = k->wt + (size_t)q * cols;
                for (int c = 0; c < cols; c++) o[c] += xq * w[c];
            }
            if (k->relu)
                for (int c = 0; c < cols; c++) o[c] = o[c] > 0 ? o[c] : 0;
        }
    }
}

/* group_linear's row job (a job may span several groups). */
static void glin_job(void *ctx, int j)
{
    const glin_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->off[k->S], &r0, &r1);
    if (k->S > 0) glin_rows(k, r0, r1);
}

static void cpu_group_linear(nesf_backend *be, int S, const int *off, int cols, const float *G,
                             int ldg, const float *E, int lde, int ne, const float *Wx, int ldw,
                             const float *b, int relu, float *out, int ldo)
{
    /* Wx columns are strided by ldw: gather them once so the row loop
     * runs over contiguous vectors */
    float *wt = malloc((size_t)(ne > 0 ? ne : 1) * cols * sizeof *wt);
    if (!wt) return;  /* cannot happen for realistic widths; leaves out unset */
    for (int q = 0; q < ne; q++)
        for (int c = 0; c < cols; c++) wt[(size_t)q * cols + c] = Wx[(size_t)c * ldw + q];
    glin_ctx k = {S, cols, ne, relu, off, G, E, wt, b, ldg, lde, ldo, out};
    run_jobs(be, S > 0 ? row_jobs(off[S]) : 0, glin_job, &k);
    free(wt);
}

typedef struct {
    const int *off;
    int cols, ldx, ldo, acc;
    const float *X;
    float *out;
} gsum_ctx;

/* group_sum: one job per group, rows summed in order. */
HOT static void gsum_job(void *ctx, int s)
{
    const gsum_ctx *k = ctx;
    float *o = k->out + (size_t)s * k->ldo;
    if (!k->acc) memset(o, 0, (size_t)k->cols * sizeof *o);
    for (int r = k->off[s]; r < k->off[s + 1]; r++) {
        const float *x = k->X + (size_t)r * k->ldx;
        for (int c = 0; c < k->cols; c++) o[c] += x[c];
    }
}

static void cpu_group_sum(nesf_backend *be, int S, const int *off, int cols, const float *X, int ldx,
                          float *out, int ldo, int acc)
{
    gsum_ctx k = {off, cols, ldx, ldo, acc, X, out};
    run_jobs(be, S, gsum_job, &k);
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


/* ---- reductions and BatchNorm ---- */

static void cpu_col_sum(nesf_backend *be, int rows, int cols, const float *X, int ldx, float *b)
{
    double *sum = malloc((size_t)2 * (cols > 0 ? cols : 1) * sizeof *sum);
    colred_ctx k = {.rows = rows, .cols = cols, .mode = SUM_X, .X = X, .ldx = ldx};
    if (sum && col_reduce(be, &k, sum) == NESF_OK)
        for (int c = 0; c < cols; c++) b[c] += (float)sum[c];
    else cpu_fail(be, "col_sum");
    free(sum);
}

typedef struct {
    int rows, cols;
    const float *X, *g, *bt;
    int ldx, ldo;
    float *out;
} affine_ctx;

HOT static void affine_job(void *ctx, int j)
{
    const affine_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->rows, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const float *x = k->X + (size_t)r * k->ldx;
        float *o = k->out + (size_t)r * k->ldo;
        for (int c = 0; c < k->cols; c++) o[c] = x[c] * k->g[c] + k->bt[c];
    }
}

/* mean[c] and M2[c] = sum (X - mean)^2 of all rows from the jobs' sums
 * and squares about their own means a_j (Chan et al.'s combination, in
 * double and job order): M2 = sum_j q_j - n_j (m_j - a_j)^2 + n_j (m_j - m)^2. */
static void moments_combine(const double *part, int nj, int rows, int cols, double *mean, double *m2)
{
    for (int c = 0; c < cols; c++) {
        double s = 0, q = 0;
        for (int j = 0; j < nj; j++) s += part[(size_t)j * 2 * cols + c];
        const double m = s / rows;
        for (int j = 0; j < nj; j++) {
            const int n = (j + 1) * JOB_ROWS < rows ? JOB_ROWS : rows - j * JOB_ROWS;
            const double mj = part[(size_t)j * 2 * cols + c] / n, aj = (float)mj;
            q += part[(size_t)j * 2 * cols + cols + c] - n * (mj - aj) * (mj - aj) + n * (mj - m) * (mj - m);
        }
        mean[c] = m;
        m2[c] = q;
    }
}

/* Batch statistics in one pass over memory (moments_job), then out = X g
 * + bt in a second. */
static void cpu_bn_train(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                         const float *gamma, const float *beta, float eps, float momentum,
                         float *running_mean, float *running_var, float *mean, float *invstd,
                         float *out, int ldo)
{
    const int nj = row_jobs(rows);
    double *mu = malloc((size_t)2 * (cols > 0 ? cols : 1) * sizeof *mu), *m2 = mu + cols;
    float *g = malloc((size_t)2 * (cols > 0 ? cols : 1) * sizeof *g), *bt = g + cols;
    colred_ctx k = {.rows = rows, .cols = cols, .X = X, .ldx = ldx,
                    .part = partials(be, (size_t)(nj > 0 ? nj : 1) * 2 * cols), .be = be};
    if (!mu || !g || !k.part) cpu_fail(be, "bn_train");
    if (!mu || !g || !k.part || rows < 1) goto out;
    run_jobs(be, nj, moments_job, &k);
    moments_combine(k.part, nj, rows, cols, mu, m2);
    for (int c = 0; c < cols; c++) {
        const double var = m2[c] / rows;
        mean[c] = (float)mu[c];
        invstd[c] = (float)(1.0 / sqrt(var + eps));
        g[c] = gamma[c] * invstd[c];
        bt[c] = beta[c] - mean[c] * g[c];
        if (running_mean) {
            const double unbiased = rows > 1 ? m2[c] / (rows - 1) : var;
            running_mean[c] = (float)((1 - momentum) * running_mean[c] + momentum * mu[c]);
            running_var[c] = (float)((1 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
    affine_ctx a = {rows, cols, X, g, bt, ldx, ldo, out};
    run_jobs(be, nj, affine_job, &a);
out:
    free(mu);
    free(g);
}

typedef struct {
    int rows, cols;
    const float *R, *dO, *mu, *k1, *k2, *k3;
    int ldr, ldo, ldd;
    float *dY;
} bnb_ctx;

HOT static void bnb_job(void *ctx, int j)
{
    const bnb_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->rows, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const float *x = k->R + (size_t)r * k->ldr, *g = k->dO + (size_t)r * k->ldo;
        float *d = k->dY + (size_t)r * k->ldd;
        for (int c = 0; c < k->cols; c++) {
            const float v = k->k1[c] * (g[c] - k->k2[c] - (x[c] - k->mu[c]) * k->k3[c]);
            d[c] = x[c] > 0 ? v : 0;
        }
    }
}

/* One reduction pass (sum g and sum g (x - mean) together), then dx =
 * gamma invstd (g - sum g / N - xhat sum(g xhat) / N) through the ReLU. */
static void cpu_relu_bn_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                                 const float *mean, const float *invstd, const float *gamma,
                                 const float *dOut, int ldo, float *dY, int ldd, float *dgamma,
                                 float *dbeta)
{
    double *s = malloc((size_t)2 * (cols > 0 ? cols : 1) * sizeof *s);
    float *k1 = malloc((size_t)3 * (cols > 0 ? cols : 1) * sizeof *k1), *k2 = k1 + cols, *k3 = k2 + cols;
    colred_ctx k = {.rows = rows, .cols = cols, .mode = SUM_BNB, .X = dOut, .ldx = ldo, .Y = R,
                    .ldy = ldr, .mu = mean};
    if (!s || !k1 || col_reduce(be, &k, s)) {
        cpu_fail(be, "relu_bn_backward");
        goto out;
    }
    const double *sdy = s, *sdyx = s + cols;
    for (int c = 0; c < cols; c++) {
        const float is = invstd[c];
        dbeta[c] += (float)sdy[c];
        dgamma[c] += (float)(sdyx[c] * is);
        k1[c] = gamma[c] * is;
        k2[c] = (float)(sdy[c] / rows);
        k3[c] = (float)(sdyx[c] / rows) * is * is;
    }
    bnb_ctx b = {rows, cols, R, dOut, mean, k1, k2, k3, ldr, ldo, ldd, dY};
    run_jobs(be, row_jobs(rows), bnb_job, &b);
out:
    free(s);
    free(k1);
}

typedef struct {
    int rows, cols;
    const float *R, *dO;
    int ldr, ldo, ldd;
    float *dY;
} relub_ctx;

HOT static void relub_job(void *ctx, int j)
{
    const relub_ctx *k = ctx;
    int r0, r1;
    job_range(j, k->rows, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const float *x = k->R + (size_t)r * k->ldr, *g = k->dO + (size_t)r * k->ldo;
        float *d = k->dY + (size_t)r * k->ldd;
        for (int c = 0; c < k->cols; c++) d[c] = x[c] > 0 ? g[c] : 0;
    }
}

static void cpu_relu_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                              const float *dOut, int ldo, float *dY, int ldd)
{
    relub_ctx k = {rows, cols, R, dOut, ldr, ldo, ldd, dY};
    run_jobs(be, row_jobs(rows), relub_job, &k);
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

typedef struct {
    int rows, ncls;
    const float *L;
    const int *label;
    float k;
    float *dL;
    double *part;
} ce_ctx;

/* Cross-entropy of job j's rows: its gradient rows and its loss partial. */
static void ce_job(void *ctx, int j)
{
    const ce_ctx *q = ctx;
    int r0, r1;
    job_range(j, q->rows, &r0, &r1);
    double acc = 0;
    for (int r = r0; r < r1; r++) {
        const float *l = q->L + (size_t)r * q->ncls;
        float mx = l[0];
        for (int c = 1; c < q->ncls; c++) mx = l[c] > mx ? l[c] : mx;
        /* float exponentials (each within 1 ulp), summed in double */
        double se = 0;
        for (int c = 0; c < q->ncls; c++) se += expf(l[c] - mx);
        const double lse = mx + log(se);
        acc += lse - l[q->label[r]];
        if (q->dL) {
            float *d = q->dL + (size_t)r * q->ncls;
            const float ls = (float)(lse - mx);
            for (int c = 0; c < q->ncls; c++) d[c] = q->k * expf((l[c] - mx) - ls);
            d[q->label[r]] -= q->k;
        }
    }
    q->part[j] = acc;
}

static float cpu_cross_entropy(nesf_backend *be, int rows, int ncls, const float *L,
                               const int *label, float scale, float *dL)
{
    if (rows == 0) return 0;
    const int nj = row_jobs(rows);
    ce_ctx q = {rows, ncls, L, label, scale / (float)rows, dL, partials(be, (size_t)nj)};
    if (!q.part) return NAN;
    run_jobs(be, nj, ce_job, &q);
    double acc = 0;
    for (int j = 0; j < nj; j++) acc += q.part[j];
    return (float)(acc / rows);
}

/* Adam over jobs of ADAM_N parameters (element-wise, so any split gives
 * the same bits). */
#define ADAM_N 65536

typedef struct {
    size_t n;
    float *p, *m, *v;
    const float *g;
    float beta1, beta2, eps, step, rbc2;
} adam_ctx;

HOT static void adam_job(void *ctx, int j)
{
    const adam_ctx *a = ctx;
    const size_t i0 = (size_t)j * ADAM_N, i1 = i0 + ADAM_N < a->n ? i0 + ADAM_N : a->n;
    for (size_t i = i0; i < i1; i++) {
        a->m[i] = a->beta1 * a->m[i] + (1 - a->beta1) * a->g[i];
        a->v[i] = a->beta2 * a->v[i] + (1 - a->beta2) * a->g[i] * a->g[i];
        a->p[i] -= a->step * a->m[i] / (sqrtf(a->v[i]) * a->rbc2 + a->eps);
    }
}

static void cpu_adam(nesf_backend *be, size_t n, float *p, const float *g, float *m, float *v,
                     float lr, float beta1, float beta2, float eps, int t)
{
    const float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    adam_ctx a = {n, p, m, v, g, beta1, beta2, eps, lr / bc1, 1.0f / sqrtf(bc2)};
    run_jobs(be, (int)((n + ADAM_N - 1) / ADAM_N), adam_job, &a);
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

static void cpu_xyz_fourier(nesf_backend *be, int rows, const float *xyz, int nf, float period,
                            float *out, int ldo)
{
    (void)be;
    for (int r = 0; r < rows; r++) nesf_fourier_row(xyz + (size_t)3 * r, nf, period, out + (size_t)r * ldo);
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
    .download = cpu_download,
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
    .xyz_fourier = cpu_xyz_fourier,
    .linear = cpu_linear,
    .vote = cpu_vote,
    .error = cpu_error,
};

/* Starts threads - 1 workers; the calling thread is the last one. */
static int start_pool(cpu_impl *p, int threads)
{
    p->nthreads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; i < threads - 1; i++) {
        if (pthread_create(&p->tid[i], NULL, worker, p)) return NESF_ERR_NOMEM;
        p->started++;
    }
    return NESF_OK;
}

int nesf_backend_cpu_create(int threads, nesf_backend **out, nesf_error *err)
{
    *out = NULL;
    nesf_backend *be = calloc(1, sizeof *be);
    cpu_impl *p = calloc(1, sizeof *p);
    if (!be || !p) {
        free(be);
        free(p);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    if (threads > MAX_THREADS) threads = MAX_THREADS;
#ifdef NESF_HAVE_OPENBLAS_THREADS
    /* our jobs are the parallelism: OpenBLAS's own threads would only
     * compete with them (and spin in sched_yield between calls) */
    openblas_set_num_threads(1);
#endif
    be->name = "cpu";
    be->threads = threads;
    be->chunk_rows = 4096; /* a chunk's activations stay in the last-level cache */
    be->ops = &cpu_ops;
    be->impl = p;
    snprintf(be->device, sizeof be->device, "CPU, OpenBLAS, %d thread%s", threads,
             threads == 1 ? "" : "s");
    if (start_pool(p, threads)) {
        cpu_destroy(be);
        return nesf_fail(err, NESF_ERR_NOMEM, "cannot start %d compute threads", threads);
    }
    *out = be;
    return NESF_OK;
}
