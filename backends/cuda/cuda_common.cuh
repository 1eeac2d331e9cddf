/* cuda_common.cuh - state and helpers shared by the CUDA sources: the
 * backend's private record (stream, cuBLAS handle, scratch, first error
 * since the last sync) and the launch shapes the kernels use.
 * C++ (nvcc) only; the C side sees nothing but include/backend.h. */
#ifndef NESF_CUDA_COMMON_CUH
#define NESF_CUDA_COMMON_CUH

#include <cstddef>
#include <cstdint>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "backend.h"
#include "error.h"
}

/* Kernel launches and dynamic shared memory go through these so that the
 * same sources also build as host code for the emulation harness
 * (backends/cuda/emu, meson -Demulate_cuda=true), where <<< >>> does not exist. */
/* a template kernel's argument list: k<A NESF_COMMA B> */
#define NESF_COMMA ,
#ifdef NESF_CUDA_EMULATION
#define NESF_LAUNCH(k, grid, block, shmem, stream, ...) \
    nesf_emu_launch(#k, grid, block, shmem, stream, k, __VA_ARGS__)
#define NESF_DYNAMIC_SHARED(T, name) T *name = (T *)nesf_emu_dynamic_shared()
#else
#define NESF_LAUNCH(k, grid, block, shmem, stream, ...) k<<<grid, block, shmem, stream>>>(__VA_ARGS__)
#define NESF_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

/* NESF_CUDA_MATH selects the GEMM arithmetic: fp32 (default, exact FP32),
 * tf32 or bf16 (tensor cores, FP32 in and out, inputs rounded). */
enum { NESF_CUDA_FP32 = 0, NESF_CUDA_TF32, NESF_CUDA_BF16 };

/* Small uploads go through a ring of pinned staging slots: a copy from
 * pageable memory may wait for the stream to drain, one from pinned memory
 * is queued like a kernel, so per-chunk offsets and per-step batches do not
 * stall the pipeline.  A slot is reused once the event recorded after its
 * copy has fired. */
#define NESF_CUDA_STAGE_SLOTS 16
#define NESF_CUDA_STAGE_BYTES ((size_t)256 << 10)

typedef struct nesf_cuda_stage {
    char *host;               /* NESF_CUDA_STAGE_BYTES of pinned memory */
    cudaEvent_t done;
    int pending;              /* done was recorded and may not have fired */
} nesf_cuda_stage;

/* A cuBLASLt plan for one Linear shape (backends/cuda/linear_lt.cu). */
typedef struct nesf_lt_plan {
    int valid;                /* 0 free, else a plan or "none for this key" */
    int rows, n, k, ldx, ldw, ldo, epi, align;   /* the key */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} nesf_lt_plan;

#define NESF_LT_PLANS 64

typedef struct nesf_cuda {
    int device;
    int sm_count;
    int math;                 /* NESF_CUDA_FP32 ... */
    cublasComputeType_t compute;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *scratch;            /* grown on demand, device memory */
    size_t scratch_bytes;
    double *host_scalar;      /* pinned, for scalar results (losses) */
    char *stage_mem;          /* pinned, NESF_CUDA_STAGE_SLOTS slots */
    nesf_cuda_stage stage[NESF_CUDA_STAGE_SLOTS];
    int stage_next;
    cublasLtHandle_t lt;      /* NULL: fused Linear disabled (NESF_CUDA_LT=0) */
    void *lt_ws;              /* cuBLASLt workspace */
    size_t lt_ws_bytes;
    float *lt_bias;           /* 16-byte aligned copy of a misaligned bias */
    size_t lt_bias_floats;
    nesf_lt_plan plans[NESF_LT_PLANS];
    int plan_next;
    int failed;               /* NESF_ERR_BACKEND once something failed */
    char msg[256];            /* first failure since the last sync */
} nesf_cuda;

static inline nesf_cuda *nesf_cuda_of(nesf_backend *be) { return (nesf_cuda *)be->impl; }

/* Records the first failure (later ones would only repeat its cause) and
 * returns NESF_ERR_BACKEND. */
int nesf_cuda_fail(nesf_cuda *c, const char *what, const char *why);
int nesf_cuda_check(nesf_cuda *c, const char *what, cudaError_t e);
/* After a launch: records a launch failure (bad configuration, sticky
 * error); returns nonzero when the op must stop. */
int nesf_cuda_launched(nesf_cuda *c, const char *what);
/* Makes c's device current in the calling thread (threads other than the
 * creator's may drive the backend, one at a time). */
void nesf_cuda_bind(nesf_cuda *c);
/* Device scratch of at least bytes, valid until the next call; it is only
 * used by work queued on c->stream, so growing it waits for that work.
 * NULL (failure recorded) when out of memory. */
void *nesf_cuda_scratch(nesf_cuda *c, size_t bytes);

/* Fused Linear through cuBLASLt (GEMM with the bias and ReLU in its
 * epilogue).  init: 0 or a CUDA/cuBLAS failure (then lt stays NULL and the
 * backend falls back to GEMM + bias_act).  linear: 0 when queued, nonzero
 * when cuBLASLt has no plan for the shape (nothing queued, fall back). */
int nesf_cuda_lt_init(nesf_cuda *c);
void nesf_cuda_lt_free(nesf_cuda *c);
int nesf_cuda_lt_linear(nesf_cuda *c, int rows, int n, int k, const float *X, int ldx,
                        const float *W, int ldw, const float *b, int relu, float *out, int ldo);

/* Grid-stride shapes.  Element-wise 2-D work uses a 256-thread block whose
 * x extent is the smallest power of two >= cols (at most 32), so narrow
 * matrices (xyz, 3 columns) do not idle most of a warp. */
struct nesf_shape2d {
    dim3 grid, block;
};

static inline nesf_shape2d nesf_shape_2d(int rows, int cols)
{
    int bx = 32;
    while (bx > 1 && bx / 2 >= cols) bx /= 2;
    int by = 256 / bx;
    long gx = (cols + bx - 1) / bx;
    long gy = (rows + by - 1) / by;
    if (gx < 1) gx = 1;
    if (gy < 1) gy = 1;
    if (gy > 65535) gy = 65535;
    nesf_shape2d s;
    s.grid = dim3((unsigned)gx, (unsigned)gy, 1);
    s.block = dim3((unsigned)bx, (unsigned)by, 1);
    return s;
}

/* Calls f(r, c) once for every r < rows, c < cols. */
template <class F>
__global__ void nesf_k_each2d(int rows, int cols, F f)
{
    for (int r = blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += gridDim.y * blockDim.y)
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
            f(r, c);
}

template <class F>
static inline void nesf_each2d(nesf_cuda *c, const char *what, int rows, int cols, F f)
{
    if (rows <= 0 || cols <= 0) return;
    nesf_shape2d s = nesf_shape_2d(rows, cols);
    NESF_LAUNCH(nesf_k_each2d<F>, s.grid, s.block, 0, c->stream, rows, cols, f);
    nesf_cuda_launched(c, what);
}

/* 1-D grid-stride: f(i) for i < n.  The grid depends on n only, never on
 * the device, so reductions built on it are reproducible everywhere. */
template <class F>
__global__ void nesf_k_each1d(size_t n, F f)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        f(i);
}

static inline unsigned nesf_blocks_1d(size_t n, unsigned threads, unsigned max_blocks)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > max_blocks) b = max_blocks;
    return (unsigned)b;
}

template <class F>
static inline void nesf_each1d(nesf_cuda *c, const char *what, size_t n, F f)
{
    if (n == 0) return;
    NESF_LAUNCH(nesf_k_each1d<F>, nesf_blocks_1d(n, 256, 65535), 256, 0, c->stream, n, f);
    nesf_cuda_launched(c, what);
}

#endif
