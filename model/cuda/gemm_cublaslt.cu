/* The GEMM layer over cuBLASLt (see gemm_cublaslt.h): the context (handle and
 * workspace), one column-major matmul call that everything goes through, its
 * row-major view, the linear op and the strided-batched GEMM.
 *
 * Row-major vs column-major: a row-major (r, c) matrix with row stride ld is the
 * column-major (c, r) matrix with leading dimension ld, its transpose. So the
 * row-major C = A' B' is computed as the column-major C^T = B'^T A'^T: the
 * operands swap places (and m and n swap), the transpose flags stay with their
 * operands. For linear, out^T (out_features, rows) = W in^T.
 *
 * The matmul descriptor, layouts and the heuristic's algorithm are made once
 * per GEMM shape (types, transposes, sizes, leading dimensions, strides,
 * batch, alignments, whether there is a bias) and kept in the context: a DiT
 * step makes the same few dozen shapes hundreds of times, and asking the
 * heuristic costs host time on every call. Only the bias pointer is set per
 * call (cuBLASLt reads the descriptor when the matmul is queued). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_device.cuh"

extern "C" {
#include "gemm_cublaslt.h"
}

#define GEMM_WORKSPACE_BYTES ((size_t)32 << 20) /* NVIDIA's recommendation for Hopper */

/* What a GEMM's plan depends on. */
typedef struct {
    int transpose_a, transpose_b, m, n, k, batch_count, has_bias;
    int type_a, type_b, ld_a, ld_b, ld_c;
    long long stride_a, stride_b, stride_c;
    uint32_t align_a, align_b, align_c;
} gemm_key;

/* A GEMM shape's descriptor, layouts and algorithm (have_algorithm 0: the
 * heuristic found none, which the caller handles as before). */
typedef struct {
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t layout_a, layout_b, layout_c;
    cublasLtMatmulHeuristicResult_t heuristic;
    int have_algorithm;
} gemm_plan;

#define GEMM_PLANS 512

struct gemm_cuda_context {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_bytes;
    gemm_plan *plans; /* (GEMM_PLANS) the shapes seen so far, in the order first seen */
    int plan_count;
};

extern "C" gemm_cuda_context *gemm_cuda_context_create(void) {
    gemm_cuda_context *ctx = (gemm_cuda_context *)xcalloc(1, sizeof(*ctx));
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
    ctx->workspace_bytes = GEMM_WORKSPACE_BYTES;
    CUDA_CHECK(cudaMalloc(&ctx->workspace, ctx->workspace_bytes));
    ctx->plans = (gemm_plan *)xcalloc(GEMM_PLANS, sizeof(gemm_plan));
    return ctx;
}

static void destroy_plan(gemm_plan *plan) {
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan->layout_c));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan->layout_b));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan->layout_a));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(plan->desc));
}

extern "C" void gemm_cuda_context_destroy(gemm_cuda_context *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->plan_count; i++) destroy_plan(&ctx->plans[i]);
    free(ctx->plans);
    CUDA_CHECK(cudaFree(ctx->workspace));
    CUBLAS_CHECK(cublasLtDestroy(ctx->handle));
    free(ctx);
}

static cudaDataType_t cuda_data_type(ldm_precision precision) {
    return precision == PRECISION_BF16 ? CUDA_R_16BF : precision == PRECISION_FP16 ? CUDA_R_16F : CUDA_R_32F;
}

/* A matrix operand as cuBLASLt sees it (column-major). */
typedef struct {
    const void *data;
    cudaDataType_t type;
    size_t element_bytes;
    int ld;
    long long stride; /* elements between the matrices of a batch */
} gemm_operand;

/* The largest power of two up to 256 that divides the operand's address and
 * batch stride in bytes: what the heuristic may assume (its default is 256, and
 * attention's per-head views are offset by head_dim elements). */
static uint32_t operand_alignment(const gemm_operand *op) {
    uint64_t bits = (uint64_t)(uintptr_t)op->data | (uint64_t)op->stride * op->element_bytes;
    uint32_t alignment = 256;
    while (alignment > 1 && bits % alignment != 0) alignment >>= 1;
    return alignment;
}

/* A layout of rows x cols (column-major, leading dimension op->ld), batched when batch_count > 1. */
static cublasLtMatrixLayout_t make_layout(const gemm_operand *op, int rows, int cols, int batch_count) {
    cublasLtMatrixLayout_t layout;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, op->type, (uint64_t)rows, (uint64_t)cols, (int64_t)op->ld));
    if (batch_count > 1) {
        int32_t count = batch_count;
        int64_t stride = op->stride;
        CUBLAS_CHECK(
            cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                      sizeof(stride)));
    }
    return layout;
}

/* C is an fp32 output of batch_count column-major matrices. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
scale_column_major_kernel(float *c, int rows, int cols, int ldc, long long stride, float beta,
                          const float *bias, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t per_matrix = (size_t)rows * cols;
        size_t batch = i / per_matrix, within = i % per_matrix;
        size_t row = within % rows, col = within / rows;
        float *p = c + batch * stride + col * ldc + row;
        float value = beta == 0.0f ? 0.0f : beta * *p;
        *p = bias ? value + bias[row] : value;
    }
}

/* The plan of key: found among those made, or made now (descriptor, layouts,
 * the heuristic's best algorithm for the alignments the key promises). */
static const gemm_plan *find_or_make_plan(gemm_cuda_context *ctx, const gemm_key *key, const gemm_operand *a,
                                          const gemm_operand *b, const gemm_operand *out, const float *bias) {
    for (int i = ctx->plan_count - 1; i >= 0; i--)
        if (memcmp(&ctx->plans[i].key, key, sizeof *key) == 0) return &ctx->plans[i];
    if (ctx->plan_count == GEMM_PLANS) { /* more shapes than any model here makes: start over */
        CUDA_CHECK(cudaDeviceSynchronize());
        for (int i = 0; i < ctx->plan_count; i++) destroy_plan(&ctx->plans[i]);
        ctx->plan_count = 0;
    }
    gemm_plan *plan = &ctx->plans[ctx->plan_count];
    memset(plan, 0, sizeof *plan);
    plan->key = *key;
    const int m = key->m, n = key->n, k = key->k, batch_count = key->batch_count;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = key->transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = key->transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (key->has_bias) {
        const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = CUDA_R_32F; /* the default (D's type), made explicit */
        CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                    sizeof(bias_type)));
        /* this call's; every later call sets its own */
        CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    plan->layout_a = make_layout(a, key->transpose_a ? k : m, key->transpose_a ? m : k, batch_count);
    plan->layout_b = make_layout(b, key->transpose_b ? n : k, key->transpose_b ? k : n, batch_count);
    plan->layout_c = make_layout(out, m, n, batch_count); /* C and D */

    cublasLtMatmulPreference_t preference;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = ctx->workspace_bytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
    const uint32_t align_a = key->align_a, align_b = key->align_b, align_c = key->align_c;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                      sizeof(align_a)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                      sizeof(align_b)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                      sizeof(align_c)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                      sizeof(align_c)));
    int found = 0;
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(ctx->handle, plan->desc, plan->layout_a, plan->layout_b,
                                                           plan->layout_c, plan->layout_c, preference, 1,
                                                           &plan->heuristic, &found);
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
    /* Only "not supported" (or nothing found) means no algorithm; any other
     * failure is a mistake in what was asked, not a reason to fall back. */
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)
        fatal_internal("cuBLASLt cublasLtMatmulAlgoGetHeuristic failed for a %d x %d x %d GEMM: %s", m, n, k,
                       cublasLtGetStatusString(status));
    plan->have_algorithm = status == CUBLAS_STATUS_SUCCESS && found > 0;
    ctx->plan_count++;
    return plan;
}

/* Column-major, cuBLASLt's own terms: for each batch i,
 *   D_i (m, n) = alpha op_a(A_i) op_b(B_i) + beta C_i (+ bias[row] when bias != NULL),
 * with C = D = c (fp32, ldc, stride_c), A stored (m, k) or (k, m) when transposed,
 * B stored (k, n) or (n, k). Returns 0 without doing anything only when a bias
 * epilogue was asked for and cuBLASLt has no algorithm for it (the caller then
 * adds the bias itself); any other failure is fatal. */
static int lt_matmul(gemm_cuda_context *ctx, int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                     const gemm_operand *a, const gemm_operand *b, float beta, float *c, int ldc, long long stride_c,
                     int batch_count, const float *bias, cudaStream_t stream) {
    if (m <= 0 || n <= 0 || batch_count <= 0) return 1;
    if (k <= 0) { /* no products: D = beta C (+ bias); cuBLASLt is not asked about k = 0 */
        CUDA_LAUNCH_ELEMENTWISE(scale_column_major_kernel, (size_t)batch_count * m * n, stream, c, m, n, ldc,
                                stride_c, beta, bias);
        return 1;
    }
    const gemm_operand out = {c, CUDA_R_32F, sizeof(float), ldc, stride_c};
    gemm_key key;
    memset(&key, 0, sizeof key); /* compared with memcmp: no stray padding bytes */
    key.transpose_a = transpose_a, key.transpose_b = transpose_b, key.m = m, key.n = n, key.k = k;
    key.batch_count = batch_count, key.has_bias = bias != NULL;
    key.type_a = (int)a->type, key.type_b = (int)b->type, key.ld_a = a->ld, key.ld_b = b->ld, key.ld_c = ldc;
    key.stride_a = batch_count > 1 ? a->stride : 0, key.stride_b = batch_count > 1 ? b->stride : 0;
    key.stride_c = batch_count > 1 ? stride_c : 0;
    key.align_a = operand_alignment(a), key.align_b = operand_alignment(b), key.align_c = operand_alignment(&out);
    const gemm_plan *plan = find_or_make_plan(ctx, &key, a, b, &out, bias);
    if (plan->have_algorithm) {
        if (bias)
            CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                        sizeof(bias)));
        CUBLAS_CHECK(cublasLtMatmul(ctx->handle, plan->desc, &alpha, a->data, plan->layout_a, b->data, plan->layout_b,
                                    &beta, c, plan->layout_c, c, plan->layout_c, &plan->heuristic.algo,
                                    ctx->workspace, ctx->workspace_bytes, stream));
    } else if (!bias) {
        fatal_internal("cuBLASLt has no algorithm for a %d x %d x %d GEMM (types %d, %d; transposes %d, %d; batch %d; "
                       "alignments %u, %u, %u)",
                       m, n, k, (int)a->type, (int)b->type, transpose_a, transpose_b, batch_count, key.align_a,
                       key.align_b, key.align_c);
    }
    return plan->have_algorithm;
}

/* Row-major C (m, n) = alpha A' B' + beta C (+ bias[column]), batched: the
 * column-major C^T = B'^T A'^T (see the top of the file). */
static int gemm_row_major(gemm_cuda_context *ctx, int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                          const gemm_operand *a, const gemm_operand *b, float beta, float *c, int ldc,
                          long long stride_c, int batch_count, const float *bias, cudaStream_t stream) {
    return lt_matmul(ctx, transpose_b, transpose_a, n, m, k, alpha, b, a, beta, c, ldc, stride_c, batch_count, bias,
                     stream);
}

extern "C" void gemm_cuda_strided_batched(gemm_cuda_context *ctx, int transpose_a, int transpose_b, int m, int n,
                                          int k, float alpha, const float *a, int lda, long long stride_a,
                                          const float *b, int ldb, long long stride_b, float beta, float *c, int ldc,
                                          long long stride_c, int batch_count, ldm_stream stream) {
    const gemm_operand op_a = {a, CUDA_R_32F, sizeof(float), lda, stride_a};
    const gemm_operand op_b = {b, CUDA_R_32F, sizeof(float), ldb, stride_b};
    gemm_row_major(ctx, transpose_a, transpose_b, m, n, k, alpha, &op_a, &op_b, beta, c, ldc, stride_c, batch_count,
                   NULL, stream);
}

/* A single (unbatched) operand in the storage type of precision. */
static gemm_operand single_operand(const void *data, ldm_precision precision, int ld) {
    gemm_operand op = {data, cuda_data_type(precision), precision_bytes(precision), ld, 0};
    return op;
}

extern "C" void linear_forward_cuda(gemm_cuda_context *ctx, float *out, const void *in, const void *weight,
                                    const float *bias, int rows, int in_features, int out_features,
                                    ldm_precision precision, ldm_stream stream) {
    if (rows <= 0 || out_features <= 0) return;
    const gemm_operand op_in = single_operand(in, precision, in_features);
    const gemm_operand op_weight = single_operand(weight, precision, in_features);
    /* out = in W^T + bias, the bias in cuBLASLt's epilogue when it takes it (a
     * 16-byte aligned vector), else written into out first and accumulated onto */
    if (bias && (uintptr_t)bias % 16 == 0 &&
        gemm_row_major(ctx, 0, 1, rows, out_features, in_features, 1.0f, &op_in, &op_weight, 0.0f, out, out_features,
                       0, 1, bias, stream))
        return;
    float beta = 0.0f;
    if (bias) {
        CUDA_LAUNCH_ELEMENTWISE(scale_column_major_kernel, (size_t)rows * out_features, stream, out, out_features, rows,
                                out_features, 0LL, 0.0f, bias);
        beta = 1.0f;
    }
    gemm_row_major(ctx, 0, 1, rows, out_features, in_features, 1.0f, &op_in, &op_weight, beta, out, out_features, 0, 1,
                   NULL, stream);
}

extern "C" void linear_backward_cuda(gemm_cuda_context *ctx, float *d_in, float d_in_beta, float *d_weight,
                                     float *d_bias, const void *d_out, const void *in, const void *weight, int rows,
                                     int in_features, int out_features, ldm_precision precision, ldm_stream stream) {
    const gemm_operand op_d_out = single_operand(d_out, precision, out_features);
    const gemm_operand op_in = single_operand(in, precision, in_features);
    const gemm_operand op_weight = single_operand(weight, precision, in_features);
    /* d_in (rows, in) = d_in_beta d_in + d_out (rows, out) @ W (out, in) */
    if (d_in)
        gemm_row_major(ctx, 0, 0, rows, in_features, out_features, 1.0f, &op_d_out, &op_weight, d_in_beta, d_in,
                       in_features, 0, 1, NULL, stream);
    /* d_weight (out, in) += d_out^T (out, rows) @ in (rows, in) */
    if (d_weight)
        gemm_row_major(ctx, 1, 0, out_features, in_features, rows, 1.0f, &op_d_out, &op_in, 1.0f, d_weight,
                       in_features, 0, 1, NULL, stream);
    if (d_bias) column_sums_accumulate_cuda(d_bias, 0, d_out, precision, NULL, 1, rows, out_features, stream);
}
