/* The host emulation's own checks (backends/cuda/emu): each case runs in a child
 * process, since a fault is sticky for the whole process as on a device.
 * Barriers and shuffles must compute what a GPU computes; an out-of-bounds
 * store, a divergent barrier, a host pointer handed to a kernel, a
 * misaligned cuBLASLt operand or epilogue bias must fault (sticky); bad
 * cuBLAS arguments and copies of the wrong kind must fail without one.
 * Built and run only with -Demulate_cuda=true. */
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <cublas_v2.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(c)                                                            \
    do {                                                                    \
        if (!(c)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            return 1;                                                       \
        }                                                                   \
    } while (0)

__global__ void k_block_sum(const float *x, float *out)
{
    __shared__ float sh[256];
    int t = threadIdx.x;
    sh[t] = x[blockIdx.x * 256 + t];
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = sh[0];
}

/* out[w]: sum of warp w by shfl_down; out[640 + i]: x of lane i ^ 1 */
__global__ void k_warp_sum(const float *x, float *out)
{
    int i = blockIdx.x * 64 + threadIdx.x;
    float v = x[i];
    out[640 + i] = __shfl_xor_sync(0xffffffffu, v, 1);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

__global__ void k_store(float *p, int i) { if (threadIdx.x == 0) p[i] = 1.0f; }

__global__ void k_divergent(float *p)
{
    if (threadIdx.x < 16) __syncthreads();
    p[threadIdx.x] = 0;
}

static int case_barrier_and_shuffle(void)
{
    const int nb = 10;
    float h[nb * 256], *x, *o, r[1280];
    for (int i = 0; i < nb * 256; i++) h[i] = (float)(i % 7) - 3.0f;
    CHECK(cudaMalloc((void **)&x, sizeof h) == cudaSuccess);
    CHECK(cudaMalloc((void **)&o, sizeof r) == cudaSuccess);
    CHECK(cudaMemcpy(x, h, sizeof h, cudaMemcpyHostToDevice) == cudaSuccess);
    nesf_emu_launch("k_block_sum", dim3(nb), dim3(256), 0, 0, k_block_sum, (const float *)x, o);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(cudaMemcpy(r, o, nb * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    for (int b = 0; b < nb; b++) {
        float s = 0;
        for (int t = 0; t < 256; t++) s += h[b * 256 + t];
        CHECK(r[b] == s); /* small integers: exact in any order */
    }
    nesf_emu_launch("k_warp_sum", dim3(nb), dim3(64), 0, 0, k_warp_sum, (const float *)x, o);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(cudaMemcpy(r, o, sizeof r, cudaMemcpyDeviceToHost) == cudaSuccess);
    for (int w = 0; w < 2 * nb; w++) {
        float s = 0;
        for (int t = 0; t < 32; t++) s += h[w * 32 + t];
        CHECK(r[w] == s);
    }
    for (int i = 0; i < nb * 64; i++) CHECK(r[640 + i] == h[i ^ 1]);
    return 0;
}

static int case_out_of_bounds_store(void)
{
    float *p;
    CHECK(cudaMalloc((void **)&p, 100 * sizeof(float)) == cudaSuccess);
    nesf_emu_launch("k_store", dim3(1), dim3(32), 0, 0, k_store, p, 101);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
    CHECK(cudaGetLastError() == cudaErrorIllegalAddress); /* sticky: not cleared */
    CHECK(cudaMalloc((void **)&p, 4) == cudaErrorIllegalAddress);
    return 0;
}

static int case_divergent_barrier(void)
{
    float *p;
    CHECK(cudaMalloc((void **)&p, 64 * sizeof(float)) == cudaSuccess);
    nesf_emu_launch("k_divergent", dim3(1), dim3(32), 0, 0, k_divergent, p);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    return 0;
}

static int case_host_pointer_argument(void)
{
    static float host[32];
    nesf_emu_launch("k_store", dim3(1), dim3(32), 0, 0, k_store, host, 0);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
    return 0;
}

static int case_bad_config_not_sticky(void)
{
    float *p;
    CHECK(cudaMalloc((void **)&p, 64) == cudaSuccess);
    nesf_emu_launch("k_store", dim3(1), dim3(2048), 0, 0, k_store, p, 0);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaSuccess); /* cleared */
    float h[4];
    CHECK(cudaMemcpy(h, p, 16, cudaMemcpyHostToDevice) == cudaErrorInvalidValue); /* wrong kind */
    CHECK(cudaMemcpy(h, p, 16, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(cudaMemcpy(h, p, 1024, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue); /* past the end */
    cublasHandle_t b;
    CHECK(cublasCreate(&b) == CUBLAS_STATUS_SUCCESS);
    float one = 1, zero = 0;
    CHECK(cublasGemmEx(b, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, p, CUDA_R_32F, 2, p, CUDA_R_32F,
                       4, &zero, p, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    return 0;
}

/* D (2 x 3, column-major, ld 4) = A^T B + bias through cuBLASLt; prefs: the
 * alignments told to the heuristic (0: none, cuBLASLt assumes 256). */
static cudaError_t lt_case(int bias_off, int a_off, unsigned told, float *d_out)
{
    float *m;
    if (cudaMalloc((void **)&m, 256 * sizeof(float))) return cudaErrorMemoryAllocation;
    float h[256];
    for (int i = 0; i < 256; i++) h[i] = (float)(i % 5);
    cudaMemcpy(m, h, sizeof h, cudaMemcpyHostToDevice);
    float *A = m + a_off, *B = m + 64, *D = m + 128, *bias = m + 192 + bias_off;
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    cublasLtMatmulDesc_t op;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t t = CUBLAS_OP_T;
    cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, 4, 2, 4); /* A: 4 x 2, op(A) 2 x 4 */
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, 4, 3, 4);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, 2, 3, 4); /* ld 4: 16-byte columns */
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    for (int i = 0; told && i < 4; i++)
        cublasLtMatmulPreferenceSetAttribute(
            pref, (cublasLtMatmulPreferenceAttributes_t)(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i),
            &told, sizeof told);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, 1, &res, &found);
    float one = 1, zero = 0;
    cublasLtMatmul(lt, op, &one, A, la, B, lb, &zero, D, ld, D, ld, &res.algo, NULL, 0, 0);
    cudaError_t rc = cudaDeviceSynchronize();
    if (rc == cudaSuccess) cudaMemcpy(d_out, D, 12 * sizeof(float), cudaMemcpyDeviceToHost);
    return rc;
}

static int case_lt_aligned(void)
{
    float d[12];
    CHECK(lt_case(0, 0, 16, d) == cudaSuccess);
    float h[256];
    for (int i = 0; i < 256; i++) h[i] = (float)(i % 5);
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 2; i++) {
            float s = h[192 + i];
            for (int k = 0; k < 4; k++) s += h[i * 4 + k] * h[64 + j * 4 + k];
            CHECK(d[j * 4 + i] == s);
        }
    return 0;
}

static int case_lt_misaligned_bias(void)
{
    float d[12];
    CHECK(lt_case(1, 0, 16, d) == cudaErrorMisalignedAddress);
    return 0;
}

static int case_lt_alignment_not_told(void)
{
    float d[12];
    CHECK(lt_case(0, 1, 0, d) == cudaErrorMisalignedAddress); /* 4-byte A, 256 assumed */
    return 0;
}

int main(void)
{
    struct {
        const char *name;
        int (*fn)(void);
    } cases[] = {
        {"barrier and shuffle results", case_barrier_and_shuffle},
        {"out-of-bounds store faults (sticky)", case_out_of_bounds_store},
        {"divergent __syncthreads faults", case_divergent_barrier},
        {"host pointer kernel argument faults", case_host_pointer_argument},
        {"bad launch / copy / GEMM arguments fail, not sticky", case_bad_config_not_sticky},
        {"cuBLASLt bias epilogue result", case_lt_aligned},
        {"cuBLASLt misaligned bias faults", case_lt_misaligned_bias},
        {"cuBLASLt alignment not told faults", case_lt_alignment_not_told},
    };
    int failed = 0;
    for (auto &c : cases) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) _exit(c.fn());
        int st = 0;
        waitpid(pid, &st, 0);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        printf("%s: %s\n", ok ? "ok  " : "FAIL", c.name);
        failed += !ok;
    }
    printf("%d of %zu cases failed\n", failed, sizeof cases / sizeof *cases);
    return failed != 0;
}
