/* GEMMs on the GPU through cuBLASLt (cuBLAS where cuBLASLt has no algorithm):
 * the handles and one workspace made once per process and device (a
 * gemm_cuda_context), the linear op of ops.h on device buffers in fp32, bf16 or
 * fp16, and the row-major strided-batched GEMM that attention and conv use. Every GEMM accumulates in fp32 (CUBLAS_COMPUTE_32F,
 * never TF32), so fp32 results match the CPU's sgemm to rounding.
 *
 * All pointers are DEVICE pointers; the work is queued on `stream` (NULL: the
 * default stream) and nothing waits for it. Errors end the program through
 * fatal_internal (base/fatal.h). Only meaningful in a CUDA build (LDM_HAVE_CUDA).
 * Status: not yet run on a GPU; tests/test_ops_cuda.c passes on the CPU
 * emulation of cuBLASLt (tests/cuda_emulation/, in CI). */
#ifndef LDM_GEMM_CUBLASLT_H
#define LDM_GEMM_CUBLASLT_H

#ifdef LDM_HAVE_CUDA

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

#include "precision.h"

/* A CUDA stream (the same type as cudaStream_t), so that C callers need no CUDA header. */
typedef struct CUstream_st *ldm_stream;

typedef struct gemm_cuda_context gemm_cuda_context;

/* A cuBLASLt handle, a cuBLAS handle (the fallback) and a 32 MiB workspace on
 * the current device. The workspace is shared by every call: use one context
 * per stream that runs GEMMs concurrently. */
gemm_cuda_context *gemm_cuda_context_create(void);
void gemm_cuda_context_destroy(gemm_cuda_context *ctx);

/* How a context's GEMMs were carried out, one count per GEMM call: by cuBLASLt
 * with the heuristic's first algorithm, or with a later one (the ones before it
 * were refused when run); by cublasGemmStridedBatchedEx or by cublasGemmEx (once
 * per call, per matrix of the batch when the strided one refused) when no
 * cuBLASLt algorithm did; and the linear calls whose bias no cuBLASLt algorithm
 * took in its epilogue (the bias is then written apart). For tests and reports:
 * on a GPU, anything but lt_first_result is a shape worth a look. */
typedef struct {
    long long lt_first_result, lt_later_result, cublas_strided_batched, cublas_gemm, bias_epilogue_refused;
} gemm_cuda_path_counts;
void gemm_cuda_context_path_counts(const gemm_cuda_context *ctx, gemm_cuda_path_counts *counts);

/* Row-major, fp32, batched with constant strides (in elements) between the
 * matrices of one batch: for i < batch_count,
 *   C_i (m, n) = alpha * A_i' B_i' + beta * C_i,   X_i = X + i * stride_x,
 * with A_i' = A_i (m, k) or, transposed, A_i (k, m) read as its transpose, and
 * likewise B_i' from B_i (k, n) or (n, k); lda, ldb, ldc are row strides, as in
 * cblas_sgemm(CblasRowMajor, ...). beta 0 overwrites C. The matrices C_i must
 * not overlap. */
void gemm_cuda_strided_batched(gemm_cuda_context *ctx, int transpose_a, int transpose_b, int m, int n, int k,
                               float alpha, const float *a, int lda, long long stride_a, const float *b, int ldb,
                               long long stride_b, float beta, float *c, int ldc, long long stride_c, int batch_count,
                               ldm_stream stream);

/* linear_forward / linear_backward of ops.h on the GPU. in, weight (and d_out in
 * backward) are in the storage type of `precision`: float for PRECISION_FP32,
 * the uint16_t bits of precision.h's formats for PRECISION_BF16 / PRECISION_FP16;
 * bias, out and all gradients are float. Products are exact and accumulate in fp32.
 * out (rows, out_features) = in (rows, in_features) @ weight (out_features, in_features)^T + bias. */
void linear_forward_cuda(gemm_cuda_context *ctx, float *out, const void *in, const void *weight, const float *bias,
                         int rows, int in_features, int out_features, ldm_precision precision, ldm_stream stream);
/* d_in = d_in_beta * d_in + d_out @ weight (beta 0 does not read d_in);
 * d_weight += d_out^T @ in; d_bias += column sums of d_out (fixed order, no atomics).
 * NULL gradients are skipped. */
void linear_backward_cuda(gemm_cuda_context *ctx, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                          const void *d_out, const void *in, const void *weight, int rows, int in_features,
                          int out_features, ldm_precision precision, ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif
