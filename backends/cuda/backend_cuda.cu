/* backend_cuda.cu - the compute backend (include/backend.h) on CUDA + cuBLAS.
 *
 * Everything is queued on one non-blocking stream; GEMMs go to cuBLAS, the
 * rest are small kernels.  Reductions (column sums, BatchNorm statistics,
 * losses) use a fixed two-stage order that depends on the shapes only, in
 * double precision, so results are reproducible run to run and close to the
 * CPU backend's.  Failures inside void ops are recorded (first one wins)
 * and reported by sync(), download() and the losses. */
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"

/* ---- error bookkeeping ---- */

int nesf_cuda_fail(nesf_cuda *c, const char *what, const char *why)
{
    if (!c->failed) {
        c->failed = NESF_ERR_BACKEND;
        snprintf(c->msg, sizeof c->msg, "CUDA %s: %s", what, why);
    }
    return NESF_ERR_BACKEND;
}

int nesf_cuda_check(nesf_cuda *c, const char *what, cudaError_t e)
{
    if (e == cudaSuccess) return NESF_OK;
    (void)cudaGetLastError(); /* clear it so later launches are not blamed */
    return nesf_cuda_fail(c, what, cudaGetErrorString(e));
}

int nesf_cuda_launched(nesf_cuda *c, const char *what)
{
    return nesf_cuda_check(c, what, cudaGetLastError());
}

static int cublas_check(nesf_cuda *c, const char *what, cublasStatus_t st)
{
    if (st == CUBLAS_STATUS_SUCCESS) return NESF_OK;
    return nesf_cuda_fail(c, what, cublasGetStatusString(st));
}

void nesf_cuda_bind(nesf_cuda *c)
{
    static thread_local int bound = -1;
    if (bound != c->device && cudaSetDevice(c->device) == cudaSuccess) bound = c->device;
}

void *nesf_cuda_scratch(nesf_cuda *c, size_t bytes)
{
    if (bytes <= c->scratch_bytes) return c->scratch;
    size_t want = bytes + bytes / 2;
    if (c->scratch) {
        /* queued kernels may still read the old block */
        if (nesf_cuda_check(c, "scratch", cudaStreamSynchronize(c->stream))) return NULL;
        cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
    }
    if (nesf_cuda_check(c, "scratch allocation", cudaMalloc(&c->scratch, want))) {
        c->scratch = NULL;
        return NULL;
    }
    c->scratch_bytes = want;
    return c->scratch;
}

/* ---- memory ---- */

static void cu_destroy(nesf_backend *be)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (c) {
        nesf_cuda_bind(c);
        cudaStreamSynchronize(c->stream);
        if (c->scratch) cudaFree(c->scratch);
        if (c->host_scalar) cudaFreeHost(c->host_scalar);
        for (int i = 0; i < NESF_CUDA_STAGE_SLOTS; i++)
            if (c->stage[i].done) cudaEventDestroy(c->stage[i].done);
        if (c->stage_mem) cudaFreeHost(c->stage_mem);
        nesf_cuda_lt_free(c);
        if (c->blas) cublasDestroy(c->blas);
        if (c->stream) cudaStreamDestroy(c->stream);
        (void)cudaGetLastError();
        free(c);
    }
    free(be);
}

static void *cu_alloc(nesf_backend *be, size_t bytes)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    void *p = NULL;
    size_t n = bytes ? bytes : 1; /* a distinct pointer even for 0 bytes */
    if (cudaMalloc(&p, n) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is reported by NULL */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, n, c->stream) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_free(nesf_backend *be, void *p)
{
    if (!p) return;
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    /* work queued on the stream may still use p */
    nesf_cuda_check(c, "free", cudaStreamSynchronize(c->stream));
    nesf_cuda_check(c, "free", cudaFree(p));
}

/* Pinned (page-locked or registered) host memory is read by the copy
 * engine after cudaMemcpyAsync returns, pageable memory is staged before
 * it returns; the interface lets the caller reuse src at once, so wait in
 * the pinned case. */
static int host_is_pinned(const void *p)
{
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeHost;
}

static int cu_upload(nesf_backend *be, void *dst, const void *src, size_t bytes)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (bytes == 0) return NESF_OK;
    nesf_cuda_bind(c);
    if (bytes <= NESF_CUDA_STAGE_BYTES) {
        nesf_cuda_stage *st = &c->stage[c->stage_next];
        c->stage_next = (c->stage_next + 1) % NESF_CUDA_STAGE_SLOTS;
        if (st->pending && nesf_cuda_check(c, "upload", cudaEventSynchronize(st->done)))
            return NESF_ERR_BACKEND;
        st->pending = 0;
        memcpy(st->host, src, bytes);
        if (nesf_cuda_check(c, "upload", cudaMemcpyAsync(dst, st->host, bytes,
                                                         cudaMemcpyHostToDevice, c->stream)) ||
            nesf_cuda_check(c, "upload", cudaEventRecord(st->done, c->stream)))
            return NESF_ERR_BACKEND;
        st->pending = 1;
        return NESF_OK;
    }
    if (nesf_cuda_check(c, "upload",
                        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream)))
        return NESF_ERR_BACKEND;
    if (host_is_pinned(src))
        return nesf_cuda_check(c, "upload", cudaStreamSynchronize(c->stream));
    return NESF_OK;
}

static int cu_sync(nesf_backend *be)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    nesf_cuda_check(c, "stream", cudaStreamSynchronize(c->stream));
    int rc = c->failed;
    c->failed = 0; /* reported once; the message stays until the next failure */
    return rc;
}

/* Waits for the copy and reports any failure since the last sync() without
 * clearing it: a caller that ignores download's result still gets the
 * error from its next sync(), so a failed kernel never reads as OK. */
static int cu_download(nesf_backend *be, void *dst, const void *src, size_t bytes)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    if (bytes)
        nesf_cuda_check(c, "download",
                        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    nesf_cuda_check(c, "download", cudaStreamSynchronize(c->stream));
    return c->failed;
}

static int cu_copy(nesf_backend *be, void *dst, const void *src, size_t bytes)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (bytes == 0 || dst == src) return NESF_OK;
    nesf_cuda_bind(c);
    return nesf_cuda_check(c, "copy",
                           cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
}

/* ---- dense algebra ---- */

struct ScaleOp {
    float *C; int ldc; float beta;
    __device__ void operator()(int r, int c) const
    {
        float *p = C + (size_t)r * ldc + c;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
};

static void cu_gemm(nesf_backend *be, int tA, int tB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (M <= 0 || N <= 0) return;
    nesf_cuda_bind(c);
    if (K <= 0) { /* C = beta C, as BLAS defines it (beta 0 ignores C) */
        nesf_each2d(c, "gemm", M, N, ScaleOp{C, ldc, beta});
        return;
    }
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T:
     * hand cuBLAS B first, with the same transpose flags. */
    cublasOperation_t oa = tA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t ob = tB ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublas_check(c, "gemm",
                 cublasGemmEx(c->blas, ob, oa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A,
                              CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc, c->compute,
                              CUBLAS_GEMM_DEFAULT));
}

static void cu_fill(nesf_backend *be, float *y, size_t n, float v)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    nesf_each1d(c, "fill", n, [=] __device__(size_t i) { y[i] = v; });
}

static void cu_axpy(nesf_backend *be, size_t n, float a, const float *x, float *y)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    nesf_each1d(c, "axpy", n, [=] __device__(size_t i) { y[i] += a * x[i]; });
}

static void cu_copy2d(nesf_backend *be, int rows, int cols, const float *src, int lds,
                      float *dst, int ldd)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (rows <= 0 || cols <= 0) return;
    nesf_cuda_bind(c);
    size_t w = (size_t)cols * sizeof(float);
    if (rows == 1) {
        nesf_cuda_check(c, "copy2d",
                        cudaMemcpyAsync(dst, src, w, cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    nesf_cuda_check(c, "copy2d",
                    cudaMemcpy2DAsync(dst, (size_t)ldd * sizeof(float), src,
                                      (size_t)lds * sizeof(float), w, rows,
                                      cudaMemcpyDeviceToDevice, c->stream));
}

static void cu_bias_act(nesf_backend *be, int rows, int cols, const float *Y, int ldy,
                        const float *b, int relu, float *out, int ldo)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    nesf_each2d(c, "bias_act", rows, cols, [=] __device__(int r, int k) {
        float v = Y[(size_t)r * ldy + k] + (b ? b[k] : 0.0f);
        if (relu) v = v > 0.0f ? v : 0.0f;
        out[(size_t)r * ldo + k] = v;
    });
}

/* ---- grouped ops: a block row of the grid per group ---- */

/* Blocks per group along the rows: enough blocks overall to fill the
 * device whatever the number of groups (groups' sizes live on the device). */
static unsigned group_blocks(const nesf_cuda *c, int S)
{
    long x = ((long)c->sm_count * 8 + S - 1) / S;
    if (x < 1) x = 1;
    if (x > 1024) x = 1024;
    return (unsigned)x;
}

static unsigned group_grid_y(int S) { return (unsigned)(S < 65535 ? S : 65535); }

__global__ void k_group_linear(int S, const int *off, int cols, const float *G, int ldg,
                               const float *E, int lde, int ne, const float *Wx, int ldw,
                               const float *b, int relu, float *out, int ldo)
{
    for (int s = blockIdx.y; s < S; s += gridDim.y) {
        int r1 = off[s + 1];
        for (int r = off[s] + blockIdx.x * blockDim.y + threadIdx.y; r < r1;
             r += gridDim.x * blockDim.y) {
            const float *e = E + (size_t)r * lde;
            for (int k = threadIdx.x; k < cols; k += blockDim.x) {
                float v = G[(size_t)s * ldg + k] + (b ? b[k] : 0.0f);
                const float *w = Wx + (size_t)k * ldw;
                for (int j = 0; j < ne; j++) v += e[j] * w[j];
                if (relu) v = v > 0.0f ? v : 0.0f;
                out[(size_t)r * ldo + k] = v;
            }
        }
    }
}

static void cu_group_linear(nesf_backend *be, int S, const int *off, int cols, const float *G,
                            int ldg, const float *E, int lde, int ne, const float *Wx, int ldw,
                            const float *b, int relu, float *out, int ldo)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (S <= 0 || cols <= 0) return;
    nesf_cuda_bind(c);
    dim3 grid(group_blocks(c, S), group_grid_y(S));
    NESF_LAUNCH(k_group_linear, grid, dim3(32, 8), 0, c->stream, S, off, cols, G, ldg, E, lde, ne, Wx,
                                                        ldw, b, relu, out, ldo);
    nesf_cuda_launched(c, "group_linear");
}

/* One block per (32 columns, group): 8 row lanes, then a fixed-order sum. */
__global__ void k_group_sum(int S, const int *off, int cols, const float *X, int ldx,
                            float *out, int ldo, int acc)
{
    __shared__ float sh[8][33];
    int k = blockIdx.x * 32 + threadIdx.x;
    for (int s = blockIdx.y; s < S; s += gridDim.y) {
        float a = 0.0f;
        if (k < cols)
            for (int r = off[s] + threadIdx.y; r < off[s + 1]; r += 8)
                a += X[(size_t)r * ldx + k];
        sh[threadIdx.y][threadIdx.x] = a;
        __syncthreads();
        if (threadIdx.y == 0 && k < cols) {
            float t = 0.0f;
            for (int y = 0; y < 8; y++) t += sh[y][threadIdx.x];
            float *o = out + (size_t)s * ldo + k;
            *o = acc ? *o + t : t;
        }
        __syncthreads();
    }
}

static void cu_group_sum(nesf_backend *be, int S, const int *off, int cols, const float *X,
                         int ldx, float *out, int ldo, int acc)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (S <= 0 || cols <= 0) return;
    nesf_cuda_bind(c);
    dim3 grid((cols + 31) / 32, group_grid_y(S));
    NESF_LAUNCH(k_group_sum, grid, dim3(32, 8), 0, c->stream, S, off, cols, X, ldx, out, ldo, acc);
    nesf_cuda_launched(c, "group_sum");
}

__global__ void k_group_max(int S, const int *off, int cols, const float *X, int ldx,
                            float *out, int *arg)
{
    __shared__ float shv[8][33];
    __shared__ int sha[8][33];
    int k = blockIdx.x * 32 + threadIdx.x;
    for (int s = blockIdx.y; s < S; s += gridDim.y) {
        float best = 0.0f;
        int at = -1;
        if (k < cols)
            for (int r = off[s] + threadIdx.y; r < off[s + 1]; r += 8) {
                float v = X[(size_t)r * ldx + k];
                if (at < 0 || v > best) { best = v; at = r; }
            }
        shv[threadIdx.y][threadIdx.x] = best;
        sha[threadIdx.y][threadIdx.x] = at;
        __syncthreads();
        if (threadIdx.y == 0 && k < cols) {
            for (int y = 1; y < 8; y++) {
                float v = shv[y][threadIdx.x];
                int a = sha[y][threadIdx.x];
                if (a >= 0 && (at < 0 || v > best || (v == best && a < at))) { best = v; at = a; }
            }
            out[(size_t)s * cols + k] = best;
            arg[(size_t)s * cols + k] = at;
        }
        __syncthreads();
    }
}

static void cu_group_max(nesf_backend *be, int S, const int *off, int cols, const float *X,
                         int ldx, float *out, int *arg)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (S <= 0 || cols <= 0) return;
    nesf_cuda_bind(c);
    dim3 grid((cols + 31) / 32, group_grid_y(S));
    NESF_LAUNCH(k_group_max, grid, dim3(32, 8), 0, c->stream, S, off, cols, X, ldx, out, arg);
    nesf_cuda_launched(c, "group_max");
}

static void cu_group_max_backward(nesf_backend *be, int S, int cols, const float *dOut,
                                  const int *arg, float *dX, int ldx)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    /* rows of different groups are distinct, so no two (s, c) collide */
    nesf_each2d(c, "group_max_backward", S, cols, [=] __device__(int s, int k) {
        int a = arg[(size_t)s * cols + k];
        if (a >= 0) dX[(size_t)a * ldx + k] += dOut[(size_t)s * cols + k];
    });
}

/* ---- column reductions: partial sums per chunk of rows, in double ---- */

struct ColPlan {
    int rows, cols, rpc, nchunk;
};

static ColPlan col_plan(int rows, int cols)
{
    ColPlan p;
    p.rows = rows;
    p.cols = cols;
    p.rpc = 256;
    if ((rows + p.rpc - 1) / p.rpc > 1024) p.rpc = ((rows + 1023) / 1024 + 7) / 8 * 8;
    p.nchunk = (rows + p.rpc - 1) / p.rpc;
    return p;
}

/* part[v][chunk][c] = sum over the chunk's rows of the NV values f adds. */
template <int NV, class F>
__global__ void k_col_partial(ColPlan p, F f, double *part)
{
    __shared__ double sh[NV][8][33];
    int k = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * p.rpc;
    int r1 = min(p.rows, r0 + p.rpc);
    double acc[NV];
    for (int v = 0; v < NV; v++) acc[v] = 0.0;
    if (k < p.cols)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) f(r, k, acc);
    for (int v = 0; v < NV; v++) sh[v][threadIdx.y][threadIdx.x] = acc[v];
    __syncthreads();
    if (threadIdx.y == 0 && k < p.cols)
        for (int v = 0; v < NV; v++) {
            double t = 0.0;
            for (int y = 0; y < 8; y++) t += sh[v][y][threadIdx.x];
            part[((size_t)v * p.nchunk + blockIdx.y) * p.cols + k] = t;
        }
}

template <int NV, class F>
static void col_partial(nesf_cuda *c, const char *what, ColPlan p, F f, double *part)
{
    dim3 grid((p.cols + 31) / 32, p.nchunk);
    NESF_LAUNCH(k_col_partial<NV NESF_COMMA F>, grid, dim3(32, 8), 0, c->stream, p, f, part);
    nesf_cuda_launched(c, what);
}

/* Sum of the chunks of value v for column k, in chunk order. */
__device__ static double col_total(const ColPlan &p, const double *part, int v, int k)
{
    double t = 0.0;
    for (int j = 0; j < p.nchunk; j++) t += part[((size_t)v * p.nchunk + j) * p.cols + k];
    return t;
}

static void cu_col_sum(nesf_backend *be, int rows, int cols, const float *X, int ldx, float *b)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (rows <= 0 || cols <= 0) return;
    nesf_cuda_bind(c);
    ColPlan p = col_plan(rows, cols);
    double *part = (double *)nesf_cuda_scratch(c, (size_t)p.nchunk * cols * sizeof(double));
    if (!part) return;
    col_partial<1>(c, "col_sum", p, [=] __device__(int r, int k, double *acc) {
        acc[0] += X[(size_t)r * ldx + k];
    }, part);
    nesf_each1d(c, "col_sum", (size_t)cols, [=] __device__(size_t k) {
        b[k] += (float)col_total(p, part, 0, (int)k);
    });
}

/* The BatchNorm ops' scratch on the bound device: the plan of their two
 * column sums, its partials (*part) and 2 x cols floats (returned); NULL
 * for an empty matrix (nothing to do) or when the scratch cannot grow (the
 * failure is recorded). */
static float *bn_workspace(nesf_cuda *c, int rows, int cols, ColPlan *p, double **part)
{
    if (rows <= 0 || cols <= 0) return NULL;
    nesf_cuda_bind(c);
    *p = col_plan(rows, cols);
    size_t pbytes = (size_t)2 * p->nchunk * cols * sizeof(double);
    char *ws = (char *)nesf_cuda_scratch(c, pbytes + (size_t)2 * cols * sizeof(float));
    *part = (double *)ws;
    return ws ? (float *)(ws + pbytes) : NULL;
}

static void cu_bn_train(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                        const float *gamma, const float *beta, float eps, float momentum,
                        float *running_mean, float *running_var, float *mean, float *invstd,
                        float *out, int ldo)
{
    nesf_cuda *c = nesf_cuda_of(be);
    ColPlan p;
    double *part;
    float *ws = bn_workspace(c, rows, cols, &p, &part);
    if (!ws) return; /* an empty matrix, or no scratch */
    float *mu = mean ? mean : ws;
    float *is = invstd ? invstd : ws + cols;

    /* sums of (x - x0) and its square, x0 the column's first value: the
     * shift keeps the one-pass variance accurate when |mean| >> std */
    col_partial<2>(c, "bn_train", p, [=] __device__(int r, int k, double *acc) {
        double d = (double)X[(size_t)r * ldx + k] - (double)X[k];
        acc[0] += d;
        acc[1] += d * d;
    }, part);
    nesf_each1d(c, "bn_train", (size_t)cols, [=] __device__(size_t k) {
        double n = p.rows;
        double dm = col_total(p, part, 0, (int)k) / n;
        double var = col_total(p, part, 1, (int)k) / n - dm * dm;
        if (var < 0.0) var = 0.0;
        float m = (float)((double)X[k] + dm);
        mu[k] = m;
        is[k] = (float)(1.0 / sqrt(var + (double)eps));
        if (running_mean) running_mean[k] = (1.0f - momentum) * running_mean[k] + momentum * m;
        if (running_var) {
            float unb = (float)(p.rows > 1 ? var * n / (n - 1.0) : var);
            running_var[k] = (1.0f - momentum) * running_var[k] + momentum * unb;
        }
    });
    nesf_each2d(c, "bn_train", rows, cols, [=] __device__(int r, int k) {
        float g = gamma ? gamma[k] : 1.0f, bb = beta ? beta[k] : 0.0f;
        out[(size_t)r * ldo + k] = g * (X[(size_t)r * ldx + k] - mu[k]) * is[k] + bb;
    });
}

static void cu_relu_bn_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                                const float *mean, const float *invstd, const float *gamma,
                                const float *dOut, int ldo, float *dY, int ldd, float *dgamma,
                                float *dbeta)
{
    nesf_cuda *c = nesf_cuda_of(be);
    ColPlan p;
    double *part;
    float *ws = bn_workspace(c, rows, cols, &p, &part);
    if (!ws) return; /* an empty matrix, or no scratch */
    float *kd = ws;                     /* mean of dOut */
    float *kx = kd + cols;              /* mean of dOut * xhat, times invstd */

    col_partial<2>(c, "relu_bn_backward", p, [=] __device__(int r, int k, double *acc) {
        float g = dOut[(size_t)r * ldo + k];
        acc[0] += g;
        acc[1] += g * (R[(size_t)r * ldr + k] - mean[k]) * invstd[k];
    }, part);
    nesf_each1d(c, "relu_bn_backward", (size_t)cols, [=] __device__(size_t k) {
        double sd = col_total(p, part, 0, (int)k), sx = col_total(p, part, 1, (int)k);
        if (dbeta) dbeta[k] += (float)sd;
        if (dgamma) dgamma[k] += (float)sx;
        kd[k] = (float)(sd / p.rows);
        kx[k] = (float)(sx / p.rows) * invstd[k];
    });
    /* dX = gamma invstd (dOut - mean(dOut) - (R - mean) invstd mean(dOut xhat)),
     * then ReLU; grouped as the CPU backend does */
    nesf_each2d(c, "relu_bn_backward", rows, cols, [=] __device__(int r, int k) {
        float rv = R[(size_t)r * ldr + k];
        float g = dOut[(size_t)r * ldo + k];
        float k1 = (gamma ? gamma[k] : 1.0f) * invstd[k];
        dY[(size_t)r * ldd + k] = rv > 0.0f ? k1 * (g - kd[k] - (rv - mean[k]) * kx[k]) : 0.0f;
    });
}

static void cu_relu_backward(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                             const float *dOut, int ldo, float *dY, int ldd)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    nesf_each2d(c, "relu_backward", rows, cols, [=] __device__(int r, int k) {
        float g = dOut[(size_t)r * ldo + k];
        dY[(size_t)r * ldd + k] = R[(size_t)r * ldr + k] > 0.0f ? g : 0.0f;
    });
}

static void cu_dropout(nesf_backend *be, int rows, int cols, float p, uint64_t seed, float *X,
                       int ldx, float *mask)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    float keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    nesf_each2d(c, "dropout", rows, cols, [=] __device__(int r, int k) {
        size_t i = (size_t)r * cols + k;
        float m = nesf_hash_uniform(seed, i) < p ? 0.0f : keep;
        mask[i] = m;
        X[(size_t)r * ldx + k] *= m;
    });
}

static void cu_mul(nesf_backend *be, int rows, int cols, const float *M, float *X, int ldx)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    nesf_each2d(c, "mul", rows, cols, [=] __device__(int r, int k) {
        X[(size_t)r * ldx + k] *= M[(size_t)r * cols + k];
    });
}

/* ---- losses: per-block partials in double, then one block sums them ---- */

#define RED_THREADS 256

/* Sum of v over the block (RED_THREADS threads), valid in thread 0. */
__device__ static double block_sum(double v)
{
    __shared__ double sh[RED_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < RED_THREADS / 32; w++) t += sh[w];
    return t;
}

__global__ void k_sum_partials(const double *part, int n, double *out)
{
    double v = 0.0;
    for (int i = threadIdx.x; i < n; i += RED_THREADS) v += part[i];
    v = block_sum(v);
    if (threadIdx.x == 0) *out = v;
}

/* Sums nb partials on the device and returns the total (synchronises). */
static double finish_sum(nesf_cuda *c, const char *what, double *part, int nb)
{
    NESF_LAUNCH(k_sum_partials, 1, RED_THREADS, 0, c->stream, part, nb, part + nb);
    if (nesf_cuda_launched(c, what)) return NAN;
    if (nesf_cuda_check(c, what, cudaMemcpyAsync(c->host_scalar, part + nb, sizeof(double),
                                                 cudaMemcpyDeviceToHost, c->stream)))
        return NAN;
    if (nesf_cuda_check(c, what, cudaStreamSynchronize(c->stream)) || c->failed) return NAN;
    return *c->host_scalar;
}

__global__ void k_mse(size_t n, const float *P, const float *T, float g, float *dP,
                      double *part)
{
    double acc = 0.0;
    for (size_t i = (size_t)blockIdx.x * RED_THREADS + threadIdx.x; i < n;
         i += (size_t)gridDim.x * RED_THREADS) {
        float d = P[i] - T[i];
        acc += (double)d * d;
        if (dP) dP[i] = g * d;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

static float cu_mse(nesf_backend *be, size_t n, const float *P, const float *T, float scale,
                    float *dP)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (n == 0) return 0.0f;
    nesf_cuda_bind(c);
    unsigned nb = nesf_blocks_1d(n, RED_THREADS * 8, 1024);
    double *part = (double *)nesf_cuda_scratch(c, (nb + 1) * sizeof(double));
    if (!part) return NAN;
    NESF_LAUNCH(k_mse, nb, RED_THREADS, 0, c->stream, n, P, T, (float)(2.0 * scale / (double)n), dP, part);
    if (nesf_cuda_launched(c, "mse")) return NAN;
    return (float)(finish_sum(c, "mse", part, (int)nb) / (double)n);
}

/* A warp per row: max, sum of exponentials, then loss and gradient. */
__global__ void k_cross_entropy(int rows, int ncls, const float *L, const int *label, float g,
                                float *dL, double *part)
{
    int lane = threadIdx.x & 31;
    double acc = 0.0;
    for (int r = blockIdx.x * (RED_THREADS / 32) + (threadIdx.x >> 5); r < rows;
         r += gridDim.x * (RED_THREADS / 32)) {
        const float *l = L + (size_t)r * ncls;
        int y = label[r];
        float mx = -INFINITY;
        for (int j = lane; j < ncls; j += 32) mx = fmaxf(mx, l[j]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float se = 0.0f;
        for (int j = lane; j < ncls; j += 32) se += expf(l[j] - mx);
        for (int o = 16; o > 0; o >>= 1) se += __shfl_xor_sync(0xffffffffu, se, o);
        float lse = mx + logf(se);
        float ly = (y >= 0 && y < ncls) ? l[y] : lse; /* read before dL may overwrite L */
        __syncwarp();
        if (lane == 0) acc += (double)lse - (double)ly;
        if (dL)
            for (int j = lane; j < ncls; j += 32)
                dL[(size_t)r * ncls + j] = g * (expf(l[j] - mx) / se - (j == y ? 1.0f : 0.0f));
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

static float cu_cross_entropy(nesf_backend *be, int rows, int ncls, const float *L,
                              const int *label, float scale, float *dL)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (rows <= 0 || ncls <= 0) return 0.0f;
    nesf_cuda_bind(c);
    unsigned nb = nesf_blocks_1d((size_t)rows, RED_THREADS / 32, 2048);
    double *part = (double *)nesf_cuda_scratch(c, (nb + 1) * sizeof(double));
    if (!part) return NAN;
    NESF_LAUNCH(k_cross_entropy, nb, RED_THREADS, 0, c->stream, rows, ncls, L, label,
                                                       (float)(scale / (double)rows), dL, part);
    if (nesf_cuda_launched(c, "cross_entropy")) return NAN;
    return (float)(finish_sum(c, "cross_entropy", part, (int)nb) / rows);
}

/* ---- optimiser, scores ---- */

static void cu_adam(nesf_backend *be, size_t n, float *p, const float *g, float *m, float *v,
                    float lr, float beta1, float beta2, float eps, int t)
{
    nesf_cuda *c = nesf_cuda_of(be);
    nesf_cuda_bind(c);
    /* the CPU backend's arithmetic, operation for operation */
    const float step = lr / (1.0f - powf(beta1, (float)t));
    const float rbc2 = 1.0f / sqrtf(1.0f - powf(beta2, (float)t));
    nesf_each1d(c, "adam", n, [=] __device__(size_t i) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * mi / (sqrtf(vi) * rbc2 + eps);
    });
}

static void cu_row_sqnorm(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                          float *out)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (rows <= 0) return;
    nesf_cuda_bind(c);
    nesf_each1d(c, "row_sqnorm", (size_t)rows, [=] __device__(size_t r) {
        const float *x = X + r * ldx;
        float s = 0.0f;
        for (int k = 0; k < cols; k++) s += x[k] * x[k];
        out[r] = s;
    });
}

static void cu_xyz_fourier(nesf_backend *be, int rows, const float *xyz, int nf, float period,
                           float *out, int ldo)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (rows <= 0) return;
    nesf_cuda_bind(c);
    nesf_each1d(c, "xyz_fourier", (size_t)rows, [=] __device__(size_t r) {
        nesf_fourier_row(xyz + 3 * r, nf, period, out + r * ldo);
    });
}

static void cu_linear(nesf_backend *be, int rows, int N, int K, const float *X, int ldx,
                      const float *W, int ldw, const float *b, int relu, float *out, int ldo)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (rows <= 0 || N <= 0) return;
    nesf_cuda_bind(c);
    if (K > 0 && !nesf_cuda_lt_linear(c, rows, N, K, X, ldx, W, ldw, b, relu, out, ldo)) return;
    cu_gemm(be, 0, 1, rows, N, K, 1.0f, X, ldx, W, ldw, 0.0f, out, ldo);
    cu_bias_act(be, rows, N, out, ldo, b, relu, out, ldo);
}

/* A block per group: each thread takes rows, finds their argmax and adds
 * its vote in shared memory (integer counts: the order does not matter). */
__global__ void k_vote(int n, int P, int A, const float *L, int *cls)
{
    NESF_DYNAMIC_SHARED(int, votes);
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        for (int c = threadIdx.x; c < A; c += blockDim.x) votes[c] = 0;
        __syncthreads();
        for (int p = threadIdx.x; p < P; p += blockDim.x) {
            const float *x = L + ((size_t)i * P + p) * A;
            int b = 0;
            for (int c = 1; c < A; c++)
                if (x[c] > x[b] || (isnan(x[b]) && !isnan(x[c]))) b = c;
            atomicAdd(&votes[b], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int best = 0;
            for (int c = 1; c < A; c++)
                if (votes[c] > votes[best]) best = c;
            cls[i] = best;
        }
        __syncthreads();
    }
}

static void cu_vote(nesf_backend *be, int n, int P, int A, const float *L, int *cls)
{
    nesf_cuda *c = nesf_cuda_of(be);
    if (n <= 0 || A <= 0) return;
    nesf_cuda_bind(c);
    unsigned grid = (unsigned)(n < 65535 ? n : 65535);
    NESF_LAUNCH(k_vote, grid, 256, (size_t)A * sizeof(int), c->stream, n, P, A, L, cls);
    nesf_cuda_launched(c, "vote");
}

/* As the CPU backend's: the first failure's text, kept after sync(). */
static const char *cu_error(const nesf_backend *be)
{
    return ((const nesf_cuda *)be->impl)->msg;
}

static const nesf_backend_ops cuda_ops = {
    .destroy = cu_destroy,
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .sync = cu_sync,
    .gemm = cu_gemm,
    .fill = cu_fill,
    .axpy = cu_axpy,
    .copy2d = cu_copy2d,
    .bias_act = cu_bias_act,
    .group_linear = cu_group_linear,
    .group_sum = cu_group_sum,
    .group_max = cu_group_max,
    .group_max_backward = cu_group_max_backward,
    .col_sum = cu_col_sum,
    .bn_train = cu_bn_train,
    .relu_bn_backward = cu_relu_bn_backward,
    .relu_backward = cu_relu_backward,
    .dropout = cu_dropout,
    .mul = cu_mul,
    .mse = cu_mse,
    .cross_entropy = cu_cross_entropy,
    .adam = cu_adam,
    .row_sqnorm = cu_row_sqnorm,
    .xyz_fourier = cu_xyz_fourier,
    .linear = cu_linear,
    .vote = cu_vote,
    .error = cu_error,
};

/* ---- creation ---- */

int nesf_backend_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

/* The cuBLAS compute type of a math mode (backend.h). */
static int compute_type(int math, cublasComputeType_t *ct)
{
    if (math == NESF_CUDA_MATH_FP32) *ct = CUBLAS_COMPUTE_32F;
    else if (math == NESF_CUDA_MATH_TF32) *ct = CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (math == NESF_CUDA_MATH_BF16) *ct = CUBLAS_COMPUTE_32F_FAST_16BF;
    else return -1;
    return 0;
}

/* Dense peak of the GEMM mode from the boost clock and the per-SM rates of
 * the architecture (FLOP per clock per SM: FP32 lanes x 2, tensor-core
 * TF32 / BF16 dense); 0 for an architecture not listed. */
static double peak_flops(int device, int major, int minor, int sms, int math)
{
    int khz = 0;
    if (cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    double fp32, tf32, bf16;
    if (major == 8 && minor == 0) { fp32 = 128; tf32 = 1024; bf16 = 2048; } /* A100 */
    else if (major == 9 && minor == 0) { fp32 = 256; tf32 = 2048; bf16 = 4096; } /* H100, H200 */
    else return 0;
    double per_clk = math == NESF_CUDA_MATH_TF32 ? tf32 : math == NESF_CUDA_MATH_BF16 ? bf16 : fp32;
    return per_clk * sms * khz * 1e3;
}

int nesf_backend_cuda_create(const nesf_backend_params *p, nesf_backend **out, nesf_error *err)
{
    static const char *math_names[] = {"fp32", "tf32", "bf16"};
    nesf_backend_params dflt;
    if (!p) {
        nesf_backend_params_default(&dflt);
        p = &dflt;
    }
    const int device = p->device;
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        return nesf_fail(err, NESF_ERR_BACKEND, "CUDA: no device (%s)",
                         e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (device < 0 || device >= n)
        return nesf_fail(err, NESF_ERR_INVALID, "CUDA device %d out of range (%d devices)",
                         device, n);
    const int math = p->cuda_math;
    cublasComputeType_t ct;
    if (compute_type(math, &ct))
        return nesf_fail(err, NESF_ERR_INVALID, "CUDA math mode %d: expected fp32, tf32 or bf16", math);

    nesf_backend *be = (nesf_backend *)calloc(1, sizeof *be);
    nesf_cuda *c = (nesf_cuda *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return nesf_fail(err, NESF_ERR_NOMEM, "CUDA backend: out of memory");
    }
    be->name = "cuda";
    be->ops = &cuda_ops;
    be->impl = c;
    be->threads = 1;
    c->device = device;
    c->math = math;
    c->compute = ct;

    cudaDeviceProp prop;
    int cublas_ver = 0;
    const char *step = "cudaSetDevice";
    e = cudaSetDevice(device);
    if (e == cudaSuccess) { step = "cudaGetDeviceProperties"; e = cudaGetDeviceProperties(&prop, device); }
    if (e == cudaSuccess) { step = "cudaStreamCreate"; e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking); }
    if (e == cudaSuccess) { step = "cudaMallocHost"; e = cudaMallocHost((void **)&c->host_scalar, 4 * sizeof(double)); }
    if (e == cudaSuccess) e = cudaMallocHost((void **)&c->stage_mem, NESF_CUDA_STAGE_SLOTS * NESF_CUDA_STAGE_BYTES);
    for (int i = 0; i < NESF_CUDA_STAGE_SLOTS && e == cudaSuccess; i++) {
        step = "cudaEventCreate";
        c->stage[i].host = c->stage_mem + i * NESF_CUDA_STAGE_BYTES;
        e = cudaEventCreateWithFlags(&c->stage[i].done, cudaEventDisableTiming);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        int rc = nesf_fail(err, NESF_ERR_BACKEND, "CUDA device %d: %s: %s", device, step,
                           cudaGetErrorString(e));
        cu_destroy(be);
        return rc;
    }
    cublasStatus_t st = cublasCreate(&c->blas);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(c->blas, c->stream);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasGetVersion(c->blas, &cublas_ver);
    if (st != CUBLAS_STATUS_SUCCESS) {
        int rc = nesf_fail(err, NESF_ERR_BACKEND, "cuBLAS on device %d: %s", device,
                           cublasGetStatusString(st));
        cu_destroy(be);
        return rc;
    }
    /* the fused Linear is optional: without it GEMM + bias_act do the work */
    if (p->cuda_lt) nesf_cuda_lt_init(c);
    c->sm_count = prop.multiProcessorCount;
    /* field chunks: enough rows that each GEMM fills the device and launch
     * costs are amortised; p->cuda_chunk overrides (tuning) */
    be->chunk_rows = p->cuda_chunk >= 256 ? p->cuda_chunk : 1 << 16;
    be->peak_flops = peak_flops(device, prop.major, prop.minor, prop.multiProcessorCount, math);
    snprintf(be->device, sizeof be->device, "CUDA %d: %.64s, sm_%d%d, %d SMs, %.0f GiB; cuBLAS %d.%d, %s",
             device, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
             prop.totalGlobalMem / 1073741824.0, cublas_ver / 10000, cublas_ver / 100 % 100,
             math_names[math]);
    *out = be;
    return NESF_OK;
}
