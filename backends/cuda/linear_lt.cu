/* linear_lt.cu - the Linear layer out = act(X W^T + b) as one cuBLASLt
 * matmul whose epilogue adds the bias and applies the ReLU, so the
 * activations are written once instead of being written by the GEMM and
 * then read and rewritten by a bias kernel.
 *
 * Plans (descriptors, layouts and the heuristic's algorithm) are cached per
 * shape, leading dimensions, epilogue and pointer alignment: the fields
 * repeat the same few shapes thousands of times per decode. */
#include <cstring>

#include "cuda_common.cuh"

#define LT_WORKSPACE ((size_t)32 << 20)
/* widest bias staged (floats): every layer of the network is narrower */
#define LT_BIAS_FLOATS 4096

enum { NESF_LT_OK = 1, NESF_LT_NONE = 2 }; /* nesf_lt_plan.valid */

int nesf_cuda_lt_init(nesf_cuda *c)
{
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        c->lt = NULL;
        return NESF_ERR_BACKEND;
    }
    if (cudaMalloc(&c->lt_ws, LT_WORKSPACE) != cudaSuccess) {
        (void)cudaGetLastError();
        c->lt_ws = NULL; /* heuristics then pick workspace-free algorithms */
    } else {
        c->lt_ws_bytes = LT_WORKSPACE;
    }
    if (cudaMalloc((void **)&c->lt_bias, LT_BIAS_FLOATS * sizeof(float)) != cudaSuccess) {
        (void)cudaGetLastError();
        c->lt_bias = NULL; /* then a misaligned bias takes the GEMM + bias_act path */
    } else {
        c->lt_bias_floats = LT_BIAS_FLOATS;
    }
    return NESF_OK;
}

static void plan_clear(nesf_lt_plan *p)
{
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    memset(p, 0, sizeof *p);
}

void nesf_cuda_lt_free(nesf_cuda *c)
{
    for (int i = 0; i < NESF_LT_PLANS; i++) plan_clear(&c->plans[i]);
    if (c->lt_ws) cudaFree(c->lt_ws);
    if (c->lt_bias) cudaFree(c->lt_bias);
    if (c->lt) cublasLtDestroy(c->lt);
    c->lt = NULL;
    c->lt_ws = NULL;
    c->lt_bias = NULL;
}

/* Largest power of two (<= 16 bytes) dividing every address the matmul
 * forms from p with leading dimension ld (floats). */
static int alignment(const void *p, int ld)
{
    uintptr_t v = (uintptr_t)p | ((uintptr_t)ld * sizeof(float)) | 16;
    return (int)(v & (~v + 1));
}

/* The heuristic is told the true alignment of X, W and out (it assumes 256
 * bytes otherwise); the bias is always 16-byte aligned here (the caller
 * stages a misaligned one), as the bias epilogue's vector loads need. */
static int plan_build(nesf_cuda *c, nesf_lt_plan *p, const float *b, int align_x, int align_w,
                      int align_o)
{
    /* Row-major out (rows x n) = X W^T is column-major out^T (n x rows) =
     * W' X' where W' is W (stored as column-major k x n) transposed and X'
     * is X stored as column-major k x rows. */
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)p->epi;
    if (cublasLtMatmulDescCreate(&p->op, c->compute, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) ||
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) ||
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) ||
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b) ||
        cublasLtMatrixLayoutCreate(&p->a, CUDA_R_32F, p->k, p->n, p->ldw) ||
        cublasLtMatrixLayoutCreate(&p->b, CUDA_R_32F, p->k, p->rows, p->ldx) ||
        cublasLtMatrixLayoutCreate(&p->d, CUDA_R_32F, p->n, p->rows, p->ldo))
        return -1;
    cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulPreferenceCreate(&pref)) return -1;
    uint32_t ax = (uint32_t)align_x, aw = (uint32_t)align_w, ao = (uint32_t)align_o;
    int bad =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &c->lt_ws_bytes, sizeof c->lt_ws_bytes) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                             &aw, sizeof aw) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                             &ax, sizeof ax) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                             &ao, sizeof ao) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                             &ao, sizeof ao);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (!bad &&
        cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->d, p->d, pref, 1, &res,
                                       &found) == CUBLAS_STATUS_SUCCESS &&
        found > 0 && res.state == CUBLAS_STATUS_SUCCESS)
        p->algo = res.algo;
    else
        found = 0;
    cublasLtMatmulPreferenceDestroy(pref);
    return found > 0 ? 0 : -1;
}

int nesf_cuda_lt_linear(nesf_cuda *c, int rows, int n, int k, const float *X, int ldx,
                        const float *W, int ldw, const float *b, int relu, float *out, int ldo)
{
    if (!c->lt) return -1;
    if (b && ((uintptr_t)b & 15)) {
        /* a misaligned epilogue bias faults (misaligned address, a sticky
         * error that ends the context): copy it to aligned memory, queued
         * before the matmul on the same stream */
        if ((size_t)n > c->lt_bias_floats ||
            nesf_cuda_check(c, "linear bias", cudaMemcpyAsync(c->lt_bias, b, (size_t)n * sizeof(float),
                                                              cudaMemcpyDeviceToDevice, c->stream)))
            return -1;
        b = c->lt_bias;
    }
    int epi = b ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                : (relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT);
    int ax = alignment(X, ldx), aw = alignment(W, ldw), ao = alignment(out, ldo);
    /* one byte per alignment: they are 4, 8 or 16 */
    int align = ax | aw << 8 | ao << 16;
    nesf_lt_plan *p = NULL;
    for (int i = 0; i < NESF_LT_PLANS && !p; i++) {
        nesf_lt_plan *q = &c->plans[i];
        if (q->valid && q->rows == rows && q->n == n && q->k == k && q->ldx == ldx &&
            q->ldw == ldw && q->ldo == ldo && q->epi == epi && q->align == align)
            p = q;
    }
    if (!p) {
        p = &c->plans[c->plan_next];
        c->plan_next = (c->plan_next + 1) % NESF_LT_PLANS;
        plan_clear(p);
        p->rows = rows, p->n = n, p->k = k, p->ldx = ldx, p->ldw = ldw, p->ldo = ldo;
        p->epi = epi, p->align = align;
        if (plan_build(c, p, b, ax, aw, ao)) {
            plan_clear(p);
            p->rows = rows, p->n = n, p->k = k, p->ldx = ldx, p->ldw = ldw, p->ldo = ldo;
            p->epi = epi, p->align = align;
            p->valid = NESF_LT_NONE; /* remembered: no plan for this shape */
            return -1;
        }
        p->valid = NESF_LT_OK;
    } else if (p->valid == NESF_LT_NONE ||
               cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b,
                                              sizeof b)) {
        return -1;
    }
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t st = cublasLtMatmul(c->lt, p->op, &one, W, p->a, X, p->b, &zero, out, p->d,
                                       out, p->d, &p->algo, c->lt_ws, c->lt_ws_bytes, c->stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
        /* rejected before launch (nothing queued): never use this plan again */
        p->valid = NESF_LT_NONE;
        return -1;
    }
    return 0;
}
