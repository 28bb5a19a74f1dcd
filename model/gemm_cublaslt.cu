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
 * For now the matmul descriptor, layouts and preference are created (and the
 * heuristic asked) on every call; caching them per shape is for the performance
 * pass. */
#include <stdint.h>
#include <stdlib.h>

#include "cuda_device.cuh"

extern "C" {
#include "gemm_cublaslt.h"
}

#define GEMM_WORKSPACE_BYTES ((size_t)32 << 20) /* NVIDIA's recommendation for Hopper */

struct gemm_cuda_context {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_bytes;
};

extern "C" gemm_cuda_context *gemm_cuda_context_create(void) {
    gemm_cuda_context *ctx = (gemm_cuda_context *)xcalloc(1, sizeof(*ctx));
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
    ctx->workspace_bytes = GEMM_WORKSPACE_BYTES;
    CUDA_CHECK(cudaMalloc(&ctx->workspace, ctx->workspace_bytes));
    return ctx;
}

extern "C" void gemm_cuda_context_destroy(gemm_cuda_context *ctx) {
    if (!ctx) return;
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
__global__ static void scale_column_major_kernel(float *c, int rows, int cols, int ldc, long long stride, float beta,
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

    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (bias) {
        const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = CUDA_R_32F; /* the default (D's type), made explicit */
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
        CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    }

    cublasLtMatrixLayout_t layout_a = make_layout(a, transpose_a ? k : m, transpose_a ? m : k, batch_count);
    cublasLtMatrixLayout_t layout_b = make_layout(b, transpose_b ? n : k, transpose_b ? k : n, batch_count);
    cublasLtMatrixLayout_t layout_c = make_layout(&out, m, n, batch_count); /* C and D */

    cublasLtMatmulPreference_t preference;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace_bytes = ctx->workspace_bytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
    const uint32_t align_a = operand_alignment(a), align_b = operand_alignment(b), align_c = operand_alignment(&out);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                      sizeof(align_a)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                      sizeof(align_b)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                      sizeof(align_c)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                      sizeof(align_c)));

    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(ctx->handle, desc, layout_a, layout_b, layout_c, layout_c,
                                                           preference, 1, &heuristic, &found);
    /* Only "not supported" (or nothing found) means no algorithm; any other
     * failure is a mistake in what was asked, not a reason to fall back. */
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)
        fatal_internal("cuBLASLt cublasLtMatmulAlgoGetHeuristic failed for a %d x %d x %d GEMM: %s", m, n, k,
                       cublasLtGetStatusString(status));
    const int have_algorithm = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (have_algorithm) {
        CUBLAS_CHECK(cublasLtMatmul(ctx->handle, desc, &alpha, a->data, layout_a, b->data, layout_b, &beta, c, layout_c,
                                    c, layout_c, &heuristic.algo, ctx->workspace, ctx->workspace_bytes, stream));
    } else if (!bias) {
        fatal_internal("cuBLASLt has no algorithm for a %d x %d x %d GEMM (types %d, %d; transposes %d, %d; batch %d; "
                       "alignments %u, %u, %u): %s",
                       m, n, k, (int)a->type, (int)b->type, transpose_a, transpose_b, batch_count, align_a, align_b,
                       align_c, status == CUBLAS_STATUS_SUCCESS ? "none found" : cublasLtGetStatusString(status));
    }
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(layout_c));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(layout_b));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(layout_a));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
    return have_algorithm;
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
