/* The GEMM layer over cuBLASLt (see gemm_cublaslt.h): the context (handles and
 * workspace), one column-major matmul call that everything goes through (with
 * its fallbacks), its row-major view, the linear op and the strided-batched GEMM.
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
 * call (cuBLASLt reads the descriptor when the matmul is queued).
 *
 * The heuristic is asked for several algorithms, tried in its order: on a GPU
 * a proposed algorithm may still be refused when it is run, and some layouts
 * (a batch stride of 0 for the shared conv weight, attention's per-head views
 * aligned to 32 bytes, conv bands aligned to 4) may have none at all. A shape
 * that no cuBLASLt algorithm carries out goes to cuBLAS:
 * cublasGemmStridedBatchedEx, or cublasGemmEx once per matrix of the batch when
 * that refuses too. Both accumulate in fp32 (CUBLAS_COMPUTE_32F, never TF32),
 * so every path computes the same products to rounding. What worked is kept in
 * the plan, so that a shape searches only once. Only when cuBLAS also refuses
 * does the program end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

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

/* How many algorithms the heuristic is asked for. */
#define GEMM_HEURISTIC_RESULTS 8

/* A GEMM shape's descriptor, layouts, the heuristic's algorithms and which of
 * them works. */
typedef struct {
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t layout_a, layout_b, layout_c;
    cublasLtMatmulHeuristicResult_t results[GEMM_HEURISTIC_RESULTS];
    int result_count;             /* what the heuristic answered (0: no algorithm) */
    int chosen;                   /* results[chosen] runs; result_count: none does, cuBLAS does */
    cublasStatus_t first_refusal; /* why the first result refused (for the message when all do) */
    int strided_refused;          /* cublasGemmStridedBatchedEx refused it too: cublasGemmEx per matrix */
    cublasStatus_t strided_status;
} gemm_plan;

#define GEMM_PLANS 512

struct gemm_cuda_context {
    cublasLtHandle_t handle;
    cublasHandle_t cublas; /* the fallback */
    void *workspace;       /* shared by cuBLASLt and cuBLAS: one stream runs them in turn */
    size_t workspace_bytes;
    gemm_plan *plans; /* (GEMM_PLANS) the shapes seen so far, in the order first seen */
    int plan_count;
    gemm_cuda_path_counts counts;
};

extern "C" gemm_cuda_context *gemm_cuda_context_create(void) {
    gemm_cuda_context *ctx = (gemm_cuda_context *)xcalloc(1, sizeof(*ctx));
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
    CUBLAS_CHECK(cublasCreate(&ctx->cublas));
    ctx->workspace_bytes = GEMM_WORKSPACE_BYTES;
    CUDA_CHECK(cudaMalloc(&ctx->workspace, ctx->workspace_bytes));
    ctx->plans = (gemm_plan *)xcalloc(GEMM_PLANS, sizeof(gemm_plan));
    return ctx;
}

extern "C" void gemm_cuda_context_path_counts(const gemm_cuda_context *ctx, gemm_cuda_path_counts *counts) {
    *counts = ctx->counts;
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
    CUBLAS_CHECK(cublasDestroy(ctx->cublas));
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
 * the heuristic's algorithms for the alignments the key promises, best first). */
static gemm_plan *find_or_make_plan(gemm_cuda_context *ctx, const gemm_key *key, const gemm_operand *a,
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
                                                           plan->layout_c, plan->layout_c, preference,
                                                           GEMM_HEURISTIC_RESULTS, plan->results, &found);
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
    /* Only "not supported" (or nothing found) means no algorithm; any other
     * failure is a mistake in what was asked, not a reason to fall back. */
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)
        fatal_internal("cuBLASLt cublasLtMatmulAlgoGetHeuristic failed for a %d x %d x %d GEMM: %s", m, n, k,
                       cublasLtGetStatusString(status));
    /* Results the heuristic marks as failed are dropped; the rest keep its order. */
    plan->result_count = 0;
    if (status == CUBLAS_STATUS_SUCCESS)
        for (int r = 0; r < found && r < GEMM_HEURISTIC_RESULTS; r++)
            if (plan->results[r].state == CUBLAS_STATUS_SUCCESS && plan->results[r].workspaceSize <= workspace_bytes)
                plan->results[plan->result_count++] = plan->results[r];
    plan->chosen = 0;
    plan->first_refusal = status; /* until the first result is run */
    if (plan->result_count == 0 && status == CUBLAS_STATUS_SUCCESS)
        plan->first_refusal = CUBLAS_STATUS_NOT_SUPPORTED; /* every result marked failed */
    ctx->plan_count++;
    return plan;
}

/* Runs the plan's algorithms from the one that last worked until one is
 * accepted; 0 when none is (plan->chosen is then result_count). */
static int run_lt_plan(gemm_cuda_context *ctx, gemm_plan *plan, float alpha, const gemm_operand *a,
                       const gemm_operand *b, float beta, float *c, const float *bias, cudaStream_t stream) {
    if (plan->chosen < plan->result_count && bias)
        CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    while (plan->chosen < plan->result_count) {
        cublasStatus_t status = cublasLtMatmul(ctx->handle, plan->desc, &alpha, a->data, plan->layout_a, b->data,
                                               plan->layout_b, &beta, c, plan->layout_c, c, plan->layout_c,
                                               &plan->results[plan->chosen].algo, ctx->workspace,
                                               ctx->workspace_bytes, stream);
        if (status == CUBLAS_STATUS_SUCCESS) {
            if (plan->chosen == 0)
                ctx->counts.lt_first_result++;
            else
                ctx->counts.lt_later_result++;
            return 1;
        }
        /* A refused algorithm leaves no work queued; a failed launch may leave
         * its (non-sticky) error for the next kernel's check to find. */
        (void)cudaGetLastError();
        if (plan->chosen == 0) plan->first_refusal = status;
        plan->chosen++;
    }
    return 0;
}

/* The GEMM of lt_matmul without cuBLASLt (no bias): cublasGemmStridedBatchedEx,
 * else cublasGemmEx once per matrix. Ends the program when cuBLAS refuses too. */
static void cublas_matmul(gemm_cuda_context *ctx, gemm_plan *plan, float alpha, const gemm_operand *a,
                          const gemm_operand *b, float beta, float *c, cudaStream_t stream) {
    const gemm_key *key = &plan->key;
    const cublasOperation_t op_a = key->transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = key->transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasSetStream(ctx->cublas, stream));
    /* after cublasSetStream, which puts back cuBLAS's default workspace pool:
     * the context's workspace, so that the fallback allocates nothing */
    CUBLAS_CHECK(cublasSetWorkspace(ctx->cublas, ctx->workspace, ctx->workspace_bytes));
    if (key->batch_count > 1 && !plan->strided_refused) {
        cublasStatus_t status = cublasGemmStridedBatchedEx(
            ctx->cublas, op_a, op_b, key->m, key->n, key->k, &alpha, a->data, a->type, a->ld, key->stride_a, b->data,
            b->type, b->ld, key->stride_b, &beta, c, CUDA_R_32F, key->ld_c, key->stride_c, key->batch_count,
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (status == CUBLAS_STATUS_SUCCESS) {
            ctx->counts.cublas_strided_batched++;
            return;
        }
        (void)cudaGetLastError();
        plan->strided_refused = 1;
        plan->strided_status = status;
    }
    for (int i = 0; i < key->batch_count; i++) {
        const char *a_i = (const char *)a->data + (size_t)i * (size_t)key->stride_a * a->element_bytes;
        const char *b_i = (const char *)b->data + (size_t)i * (size_t)key->stride_b * b->element_bytes;
        float *c_i = c + (size_t)i * (size_t)key->stride_c;
        cublasStatus_t status = cublasGemmEx(ctx->cublas, op_a, op_b, key->m, key->n, key->k, &alpha, a_i, a->type,
                                             a->ld, b_i, b->type, b->ld, &beta, c_i, CUDA_R_32F, key->ld_c,
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (status != CUBLAS_STATUS_SUCCESS)
            fatal_internal(
                "no GEMM of cuBLASLt or cuBLAS carries out a %d x %d x %d GEMM (types %d, %d; transposes %d, %d; "
                "batch %d, strides %lld, %lld, %lld; alignments %u, %u, %u): cuBLASLt %s (%d algorithm%s tried), "
                "cublasGemmStridedBatchedEx %s, cublasGemmEx %s",
                key->m, key->n, key->k, key->type_a, key->type_b, key->transpose_a, key->transpose_b,
                key->batch_count, key->stride_a, key->stride_b, key->stride_c, key->align_a, key->align_b,
                key->align_c, cublasLtGetStatusString(plan->first_refusal), plan->result_count,
                plan->result_count == 1 ? "" : "s",
                key->batch_count > 1 ? cublasLtGetStatusString(plan->strided_status) : "not tried (one matrix)",
                cublasLtGetStatusString(status));
    }
    ctx->counts.cublas_gemm++;
}

/* Column-major, cuBLASLt's own terms: for each batch i,
 *   D_i (m, n) = alpha op_a(A_i) op_b(B_i) + beta C_i (+ bias[row] when bias != NULL),
 * with C = D = c (fp32, ldc, stride_c), A stored (m, k) or (k, m) when transposed,
 * B stored (k, n) or (n, k). Returns 0 without doing anything only when a bias
 * epilogue was asked for and no cuBLASLt algorithm takes it (the caller then
 * adds the bias itself); without a bias, cuBLAS does what cuBLASLt does not. */
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
    gemm_plan *plan = find_or_make_plan(ctx, &key, a, b, &out, bias);
    if (run_lt_plan(ctx, plan, alpha, a, b, beta, c, bias, stream)) return 1;
    if (bias) {
        ctx->counts.bias_epilogue_refused++;
        return 0;
    }
    cublas_matmul(ctx, plan, alpha, a, b, beta, c, stream);
    return 1;
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
