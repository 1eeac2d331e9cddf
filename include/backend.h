/* backend.h - the compute backend: memory plus the few kernels the NeSF
 * network, its training and its decoding need.
 *
 * Every pointer handed to an op is backend memory (plain host memory for
 * the CPU backend, device memory for CUDA) obtained from alloc().  Matrices
 * are row-major with an explicit leading dimension (row stride, in
 * elements), so that a concatenation [features | xyz] is just a wider row
 * and a slice of columns is a pointer plus a stride.  Ops are queued in
 * order on one stream; sync() waits and reports an asynchronous failure.
 * Ops that return a scalar (losses) synchronise.
 *
 * Grouped ops work on rows partitioned into S contiguous groups: group s
 * owns rows [off[s], off[s+1]) with off an int array in backend memory.
 * Groups are structures: atoms of a structure in the encoder, query points
 * of a structure in the fields.
 *
 * A backend is owned by its creator and destroyed with nesf_backend_free
 * after everything allocated from it has been freed. */
#ifndef NESF_BACKEND_H
#define NESF_BACKEND_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct nesf_backend nesf_backend;

typedef struct nesf_backend_ops {
    void (*destroy)(nesf_backend *be);

    /* memory: alloc returns zeroed memory or NULL */
    void *(*alloc)(nesf_backend *be, size_t bytes);
    void (*free)(nesf_backend *be, void *p);
    int (*upload)(nesf_backend *be, void *dst, const void *src, size_t bytes);
    int (*download)(nesf_backend *be, void *dst, const void *src, size_t bytes);
    int (*copy)(nesf_backend *be, void *dst, const void *src, size_t bytes);
    int (*sync)(nesf_backend *be);

    /* C = alpha op(A) op(B) + beta C; op(X) = X^T when tX; C is M x N. */
    void (*gemm)(nesf_backend *be, int tA, int tB, int M, int N, int K,
                 float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);

    /* y[i] = v for i < n */
    void (*fill)(nesf_backend *be, float *y, size_t n, float v);
    /* y += a x over n elements */
    void (*axpy)(nesf_backend *be, size_t n, float a, const float *x, float *y);
    /* dst[r, c] = src[r, c] for r < rows, c < cols (strided 2-D copy) */
    void (*copy2d)(nesf_backend *be, int rows, int cols, const float *src, int lds,
                   float *dst, int ldd);

    /* out[r, c] = act(Y[r, c] + b[c]); act = ReLU when relu; b may be NULL;
     * out may alias Y when ldo == ldy. */
    void (*bias_act)(nesf_backend *be, int rows, int cols, const float *Y, int ldy,
                     const float *b, int relu, float *out, int ldo);

    /* First layer of a field, whose input is [z of the row's group, extra]:
     * out[r, c] = act(G[s, c] + b[c] + sum_k E[r, k] Wx[c * ldw + k]) for r in
     * group s, k < ne.  G (S x cols, ldg) holds z·Wz^T computed once per
     * group, so the latent part costs nothing per row. */
    void (*group_linear)(nesf_backend *be, int S, const int *off, int cols,
                         const float *G, int ldg, const float *E, int lde, int ne,
                         const float *Wx, int ldw, const float *b, int relu,
                         float *out, int ldo);
    /* out[s, c] = sum over rows r of group s of X[r, c] (accumulate when acc) */
    void (*group_sum)(nesf_backend *be, int S, const int *off, int cols,
                      const float *X, int ldx, float *out, int ldo, int acc);
    /* out[s, c] = max over group s of X[r, c]; arg[s, c] = that row (first
     * maximum).  An empty group gives 0 and arg -1. */
    void (*group_max)(nesf_backend *be, int S, const int *off, int cols,
                      const float *X, int ldx, float *out, int *arg);
    /* dX[arg[s, c], c] += dOut[s, c] (dX must be zeroed by the caller) */
    void (*group_max_backward)(nesf_backend *be, int S, int cols, const float *dOut,
                               const int *arg, float *dX, int ldx);

    /* b[c] += sum_r X[r, c] (bias gradients) */
    void (*col_sum)(nesf_backend *be, int rows, int cols, const float *X, int ldx, float *b);

    /* BatchNorm1d, training mode (PyTorch semantics): batch mean and biased
     * variance per column; mean and invstd = 1/sqrt(var + eps) are saved for
     * backward; running_mean/var updated with momentum using the unbiased
     * variance; out = gamma (X - mean) invstd + beta. */
    void (*bn_train)(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                     const float *gamma, const float *beta, float eps, float momentum,
                     float *running_mean, float *running_var,
                     float *mean, float *invstd, float *out, int ldo);
    /* Backward of ReLU followed by BatchNorm (train mode): R is the ReLU
     * output that fed BN, dOut the gradient of BN's output.  Writes dY (the
     * gradient before ReLU, ld ldd) and accumulates dgamma, dbeta. */
    void (*relu_bn_backward)(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                             const float *mean, const float *invstd, const float *gamma,
                             const float *dOut, int ldo, float *dY, int ldd,
                             float *dgamma, float *dbeta);
    /* dY[r, c] = dOut[r, c] if R[r, c] > 0 else 0 (may alias) */
    void (*relu_backward)(nesf_backend *be, int rows, int cols, const float *R, int ldr,
                          const float *dOut, int ldo, float *dY, int ldd);
    /* Inverted dropout with a counter-based RNG: mask[r, c] = 0 with
     * probability p else 1/(1-p), from (seed, r * cols + c) alone so every
     * backend draws the same mask; X *= mask in place. */
    void (*dropout)(nesf_backend *be, int rows, int cols, float p, uint64_t seed,
                    float *X, int ldx, float *mask);
    /* X[r, c] *= M[r, c] (M contiguous rows x cols) */
    void (*mul)(nesf_backend *be, int rows, int cols, const float *M, float *X, int ldx);

    /* Losses return the mean loss (unscaled) and write the gradient of
     * scale * loss.  mse: mean over n elements of (P - T)^2. */
    float (*mse)(nesf_backend *be, size_t n, const float *P, const float *T,
                 float scale, float *dP);
    /* cross_entropy: mean over rows of -log softmax(L[r])[label[r]]. */
    float (*cross_entropy)(nesf_backend *be, int rows, int ncls, const float *L,
                           const int *label, float scale, float *dL);

    /* Adam step (PyTorch semantics, no weight decay), bias correction with
     * step t >= 1. */
    void (*adam)(nesf_backend *be, size_t n, float *p, const float *g, float *m, float *v,
                 float lr, float beta1, float beta2, float eps, int t);

    /* out[r] = sum_c X[r, c]^2 (particle scores) */
    void (*row_sqnorm)(nesf_backend *be, int rows, int cols, const float *X, int ldx,
                       float *out);

    /* Fourier query columns (mlp.h, nesf_xyz_cols): row r of out (ld ldo)
     * = [x, y, z, then for k < nf and axis d: sin(w_k x_d), cos(w_k x_d)],
     * w_k = 2 pi 2^k / period, from xyz (rows x 3). */
    void (*xyz_fourier)(nesf_backend *be, int rows, const float *xyz, int nf, float period,
                        float *out, int ldo);

    /* A Linear layer: out = act(X W^T + b) with X rows x K (ldx), W N x K
     * (ldw), out rows x N (ldo, not aliasing X); b may be NULL; act = ReLU
     * when relu.  gemm + bias_act in one op, so that a GPU can apply the
     * bias and ReLU in the GEMM's epilogue. */
    void (*linear)(nesf_backend *be, int rows, int N, int K, const float *X, int ldx,
                   const float *W, int ldw, const float *b, int relu, float *out, int ldo);

    /* Species vote (decoding step 6): the n*P rows of L (A logits each,
     * contiguous) form n groups of P; cls[i] = the class that most rows of
     * group i have as their argmax (first maximum, NaN never wins), ties to
     * the lowest class.  cls: n ints in backend memory. */
    void (*vote)(nesf_backend *be, int n, int P, int A, const float *L, int *cls);

    /* The message of the first failure since the last sync(), else of the
     * last one reported, "" if none (nesf_backend_error). */
    const char *(*error)(const nesf_backend *be);
} nesf_backend_ops;

struct nesf_backend {
    const char *name;      /* "cpu", "cuda" */
    char device[160];      /* human description, e.g. "CPU, OpenBLAS 2 threads" */
    int threads;           /* CPU threads used (informational on CUDA) */
    double peak_flops;     /* peak FLOP/s of the GEMM arithmetic in use (0: unknown) */
    int chunk_rows;        /* rows per pass the backend runs best (field chunks):
                              cache-sized on the CPU, launch-amortising on a GPU */
    const nesf_backend_ops *ops;
    void *impl;            /* backend private state */
};

/* The parameters a backend is created with.  The library never reads the
 * environment: a tool or the daemon fills these (from flags, a config
 * file, or the documented variables through nesf_backend_params_lookup)
 * and passes them in. */
enum { NESF_CUDA_MATH_FP32 = 0, NESF_CUDA_MATH_TF32, NESF_CUDA_MATH_BF16 };
typedef struct nesf_backend_params {
    int threads;         /* CPU threads; <= 0: all cores */
    int device;          /* CUDA device index */
    int cuda_math;       /* NESF_CUDA_MATH_*: the GEMMs' arithmetic (FP32) */
    int cuda_lt;         /* the fused cuBLASLt Linear (1); 0: GEMM + bias_act */
    int cuda_chunk;      /* field rows per pass on CUDA; 0: the backend's 65536 */
    int allow_emulation; /* "cuda" may select the host emulation test harness
                            of an -Demulate_cuda build (0: refused) */
} nesf_backend_params;

/* threads 0, device 0, FP32, cuBLASLt on, the default chunk, no emulation. */
void nesf_backend_params_default(nesf_backend_params *p);

/* Sets the parameter a documented variable name stands for from its text:
 * NESF_CUDA_MATH (fp32 | tf32 | bf16), NESF_CUDA_LT ("0" turns the fused
 * Linear off), NESF_CUDA_CHUNK (rows, 256 .. 16777216), NESF_CUDA_EMULATION
 * ("1" allows the emulation).  An empty or NULL value leaves p as it is.
 * NESF_ERR_INVALID names the variable and the value it refuses. */
int nesf_backend_params_set(nesf_backend_params *p, const char *name, const char *value,
                            nesf_error *err);

/* Calls nesf_backend_params_set for each documented name with lookup(name)
 * (the caller's getenv, or a table of its own). */
int nesf_backend_params_lookup(nesf_backend_params *p, char *(*lookup)(const char *name),
                               nesf_error *err);

/* Backend selection: kind is "cpu", "cuda" or "auto" (CUDA when built in
 * and a device is present, else CPU); p NULL means the defaults. */
int nesf_backend_open(const char *kind, const nesf_backend_params *p, nesf_backend **out,
                      nesf_error *err);
/* nesf_backend_open with the default parameters and `threads` (<= 0: all
 * cores). */
int nesf_backend_create(const char *kind, int threads, nesf_backend **out, nesf_error *err);
void nesf_backend_free(nesf_backend *be);

int nesf_backend_cpu_create(int threads, nesf_backend **out, nesf_error *err);
/* Device p->device with p's CUDA parameters (p NULL: the defaults).
 * Defined only in CUDA builds; returns NESF_ERR_UNSUPPORTED otherwise. */
int nesf_backend_cuda_create(const nesf_backend_params *p, nesf_backend **out, nesf_error *err);
int nesf_backend_cuda_available(void);

/* Why the backend failed: the message of its first failure since the last
 * sync(), else of the last one sync() reported, "" if none.  Both backends
 * keep the first failure of the ops that return void (sticky): download()
 * reports it without clearing it, sync() reports its code and clears it. */
const char *nesf_backend_error(const nesf_backend *be);

/* Counter-based RNG shared by every backend: a uniform float in [0, 1)
 * from (seed, index), so CPU and GPU dropout masks agree bit for bit (the
 * CUDA kernels compile this very function for the device). */
#if defined(__CUDACC__)
#define NESF_HOSTDEV __host__ __device__
#else
#define NESF_HOSTDEV
#endif
static inline NESF_HOSTDEV float nesf_hash_uniform(uint64_t seed, uint64_t i)
{
    uint64_t x = seed ^ (i * 0x9E3779B97F4A7C15ull);
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27; x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return (float)(x >> 40) * (1.0f / 16777216.0f);
}

/* Angular frequency w_k = 2 pi 2^k / period of the Fourier query columns
 * (xyz_fourier): one formula for every backend and the reference. */
static inline NESF_HOSTDEV float nesf_fourier_freq(int k, float period)
{
    return (float)(6.283185307179586 * (double)(1u << k) / (double)period);
}

/* One row of xyz_fourier: o = [x, y, z, sin(w_0 x), cos(w_0 x), sin(w_0 y), ...]. */
static inline NESF_HOSTDEV void nesf_fourier_row(const float *x, int nf, float period, float *o)
{
    o[0] = x[0], o[1] = x[1], o[2] = x[2];
    for (int k = 0; k < nf; k++) {
        const float w = nesf_fourier_freq(k, period);
        for (int d = 0; d < 3; d++) {
            o[3 + 6 * k + 2 * d] = sinf(w * x[d]);
            o[4 + 6 * k + 2 * d] = cosf(w * x[d]);
        }
    }
}

/* Bump allocator over backend memory for the scratch of one forward or
 * training step: allocations live until the next reset.  When a step needs
 * more than the blocks hold another block (twice the last) is added;
 * blocks are kept across resets, so steady state is no allocation and no
 * fresh page touched (first touches of fresh memory are expensive: page
 * faults and zeroing). */
typedef struct nesf_arena_block {
    char *base;
    size_t cap, used;
} nesf_arena_block;

typedef struct nesf_arena {
    nesf_backend *be;
    nesf_arena_block blk[32];
    int nblk;
    int cur;        /* block allocations are taken from */
    size_t peak;
} nesf_arena;

void nesf_arena_init(nesf_arena *a, nesf_backend *be);
/* 64-byte aligned, NOT zeroed; NULL on allocation failure. */
void *nesf_arena_alloc(nesf_arena *a, size_t bytes);
float *nesf_arena_floats(nesf_arena *a, size_t n);
int nesf_arena_reset(nesf_arena *a);
void nesf_arena_release(nesf_arena *a);

#endif
