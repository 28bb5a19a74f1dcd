/* CUDA emulation (see cublasLt.h): the subset of cuBLAS that
 * model/cuda/gemm_cublaslt.cu falls back to when cuBLASLt has no algorithm for
 * a GEMM, carried out by cuda_emulation_cublaslt.c through the emulated
 * cuBLASLt matmul (with no algorithm given, so no alignment is promised; its
 * checks name cublasLtMatmul). Names, signatures and constants are the real
 * library's (cublas_v2.h maps the names to their _v2 symbols there).
 * Header for C and C++. */
#ifndef LDM_CUDA_EMULATION_CUBLAS_V2_H
#define LDM_CUDA_EMULATION_CUBLAS_V2_H

#include "cublasLt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cublasContext *cublasHandle_t;

/* Only the default algorithm is carried out. */
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
/* As the real library, also resets the workspace to the library's own. */
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t streamId);
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes);

/* Column-major C = alpha op(A) op(B) + beta C; alpha and beta host floats of
 * the CUBLAS_COMPUTE_32F compute type. Runs to completion before it returns. */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo);
/* The same for batchCount matrices X_i = X + i * strideX (elements). Refused
 * (CUBLAS_STATUS_NOT_SUPPORTED) for batches of several matrices when
 * LDM_CUDA_EMULATION_CUBLASLT_REFUSE names `strided` (see cublasLt.h). */
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo);

#ifdef __cplusplus
}
#endif

#endif
