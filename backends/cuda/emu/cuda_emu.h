/* cuda_emu.h - host emulation of the slice of the CUDA runtime, cuBLAS and
 * cuBLASLt that cuda/ uses, so that the CUDA backend's own sources compile
 * with g++ and run on the CPU (meson -Demulate_cuda=true).
 *
 * A TEST HARNESS, NOT A BACKEND: kernels run block by block on host
 * threads, the threads of a block as ucontext fibers so that __syncthreads
 * and warp shuffles are real rendezvous; device memory is host memory
 * tracked by a registry with guard zones, so copies, GEMM operands and
 * kernel pointer arguments are checked against the allocations; cuBLAS and
 * cuBLASLt are column-major reference GEMMs with cuBLAS's argument checks,
 * cuBLASLt's alignment rules (a pointer less aligned than the heuristic was
 * told, or a misaligned epilogue bias, is a sticky misaligned-address
 * fault) and the TF32 / BF16 input rounding of the compute types.  Errors
 * follow the runtime: a per-thread last error that cudaGetLastError clears,
 * and sticky faults after which every call fails.  Work is executed at
 * enqueue time (streams and events are bookkeeping only).
 *
 * Included through the shim headers backends/cuda/emu/include/{cuda_runtime,
 * cublas_v2, cublasLt}.h; the runtime is backends/cuda/emu/cuda_emu.cpp. */
#ifndef NESF_CUDA_EMU_H
#define NESF_CUDA_EMU_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define NESF_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* block-shared: a block's fibers share their OS thread, blocks running in
 * parallel are on different OS threads */
#define __shared__ static thread_local

/* ---- types ---- */

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorLaunchFailure = 719,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorMisalignedAddress = 716,
    cudaErrorNoDevice = 100,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3,
};
struct cudaPointerAttributes {
    cudaMemoryType type;
    int device;
    void *devicePointer, *hostPointer;
};
enum cudaDeviceAttr { cudaDevAttrClockRate = 13 };

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor, multiProcessorCount;
};

typedef struct nesf_emu_stream *cudaStream_t;
typedef struct nesf_emu_event *cudaEvent_t;
#define cudaStreamNonBlocking 0x01u
#define cudaEventDisableTiming 0x02u

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t s = 0);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind k, cudaStream_t s = 0);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);

/* ---- device intrinsics ---- */

void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
/* exchanges 8 bytes with lane src of the caller's warp (all 32 lanes) */
uint64_t nesf_emu_shfl(unsigned mask, uint64_t v, int src_lane);
int nesf_emu_lane(void);
void *nesf_emu_dynamic_shared(void);

template <class T>
static inline T nesf_emu_shfl_t(unsigned mask, T v, int src)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    u = nesf_emu_shfl(mask, u, src);
    T r;
    memcpy(&r, &u, sizeof r);
    return r;
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    int lane = nesf_emu_lane(), base = lane / width * width;
    int src = lane - base + (int)delta < width ? lane + (int)delta : lane;
    return nesf_emu_shfl_t(mask, v, src);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lanemask, int width = 32)
{
    int lane = nesf_emu_lane();
    int src = lane ^ lanemask;
    if (src / width != lane / width) src = lane;
    return nesf_emu_shfl_t(mask, v, src);
}

static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicAdd(unsigned *p, unsigned v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline float atomicAdd(float *p, float v)
{
    float old, nv;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do nv = old + v;
    while (!__atomic_compare_exchange(p, &old, &nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
using std::isnan; /* device code calls it unqualified */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

/* ---- launches ---- */

/* nonzero when p is null or inside (or one past) a device allocation */
int nesf_emu_device_ptr(const void *p);
/* Runs body(ctx) for every thread of every block (see cuda_emu.cpp);
 * args_ok 0 is the fault of a host pointer handed to a kernel. */
void nesf_emu_run(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t s,
                  void (*body)(void *), void *ctx, int args_ok);

template <class T>
static inline int nesf_emu_arg_ok(const T &) { return 1; }
template <class T>
static inline int nesf_emu_arg_ok(T *p) { return nesf_emu_device_ptr(p); }

template <class... P, class... A>
static inline void nesf_emu_launch(const char *name, dim3 grid, dim3 block, size_t shmem,
                                   cudaStream_t s, void (*k)(P...), A &&...a)
{
    struct Ctx {
        void (*k)(P...);
        std::tuple<typename std::decay<P>::type...> args;
    };
    Ctx ctx{k, std::tuple<typename std::decay<P>::type...>(std::forward<A>(a)...)};
    int ok = std::apply([](const auto &...x) { return (1 & ... & nesf_emu_arg_ok(x)); }, ctx.args);
    nesf_emu_run(name, grid, block, shmem, s,
                 [](void *p) {
                     Ctx *c = (Ctx *)p;
                     std::apply(c->k, c->args); /* by value: each thread its own copy */
                 },
                 &ctx, ok);
}

/* ---- cuBLAS ---- */

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};
enum cudaDataType_t { CUDA_R_32F = 0 };
typedef cudaDataType_t cudaDataType;
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
typedef struct nesf_emu_blas *cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasGetVersion(cublasHandle_t h, int *v);
const char *cublasGetStatusString(cublasStatus_t st);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo);

/* ---- cuBLASLt ---- */

typedef struct nesf_emu_lt *cublasLtHandle_t;
typedef struct nesf_emu_lt_desc *cublasLtMatmulDesc_t;
typedef struct nesf_emu_lt_layout *cublasLtMatrixLayout_t;
typedef struct nesf_emu_lt_pref *cublasLtMatmulPreference_t;
struct cublasLtMatmulAlgo_t {
    uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
};
enum cublasLtEpilogue_t {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_RELU = 2,
    CUBLASLT_EPILOGUE_BIAS = 4,
    CUBLASLT_EPILOGUE_RELU_BIAS = 6,
};
enum cublasLtMatmulDescAttributes_t {
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
};
enum cublasLtMatmulPreferenceAttributes_t {
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t comp,
                                        cudaDataType_t scale);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t a, const void *buf,
                                              size_t size);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t t,
                                          uint64_t rows, uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *buf, size_t size);
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *res, int *found);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t ad, const void *B,
                              cublasLtMatrixLayout_t bd, const void *beta, const void *C,
                              cublasLtMatrixLayout_t cd, void *D, cublasLtMatrixLayout_t dd,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes,
                              cudaStream_t s);

#endif
