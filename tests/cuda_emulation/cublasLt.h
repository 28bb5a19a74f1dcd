/* CUDA emulation (see cuda_runtime_api.h): the subset of cuBLASLt that
 * model/cuda/gemm_cublaslt.cu uses, carried out on the CPU by
 * cuda_emulation_cublaslt.c. Names, types, signatures and the numeric values of
 * the constants are the real library's, so that the same source compiles
 * against either; everything else (what the opaque handles hold) is not.
 *
 * Only what ldm uses is declared: a call, attribute or constant that is not
 * here is one the emulation does not carry out, and code that starts using
 * one fails to compile in the emulated build rather than running wrongly.
 *
 * The emulation computes D = alpha op(A) op(B) + beta C (+ bias) column-major,
 * each dot product accumulated in float in k order. It also checks what the
 * real library would leave to chance on a GPU (operands inside their device
 * allocations, the alignments promised in the preference, outputs that overlap
 * inputs) and ends the program through fatal_internal naming the call and the
 * fault. Header for C and C++. */
#ifndef LDM_CUDA_EMULATION_CUBLASLT_H
#define LDM_CUDA_EMULATION_CUBLASLT_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_runtime_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cublas_api.h */
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
} cublasStatus_t;

typedef enum {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
} cublasOperation_t;

/* Only CUBLAS_COMPUTE_32F is carried out; the others are here so that asking
 * for one can be answered CUBLAS_STATUS_NOT_SUPPORTED, as a GPU without it would. */
typedef enum {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
} cublasComputeType_t;

/* cublasLt.h */
typedef struct cublasLtContext *cublasLtHandle_t;
typedef struct cublasLtMatmulDescOpaque_st *cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutOpaque_st *cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceOpaque_st *cublasLtMatmulPreference_t;

/* An algorithm as the heuristic describes it: opaque to the caller, as in the
 * real library (the emulation keeps the preference's alignment promises in it,
 * so that cublasLtMatmul can hold the operands to them). */
typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;

typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

typedef enum {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_BIAS = 4, /* D += bias[row], bias a device vector of m elements */
} cublasLtEpilogue_t;

/* The value each attribute takes (its size is checked) is in the comment. */
typedef enum {
    CUBLASLT_MATMUL_DESC_TRANSA = 3,          /* int32_t (cublasOperation_t) */
    CUBLASLT_MATMUL_DESC_TRANSB = 4,          /* int32_t (cublasOperation_t) */
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,        /* uint32_t (cublasLtEpilogue_t) */
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,    /* const void * */
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26, /* int32_t (cudaDataType_t) */
} cublasLtMatmulDescAttributes_t;

typedef enum {
    CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,          /* int32_t, default 1 */
    CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6, /* int64_t, in elements, default 0 */
} cublasLtMatrixLayoutAttribute_t;

typedef enum {
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,  /* uint64_t, default 0 */
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5, /* uint32_t, default 256 */
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6, /* uint32_t, default 256 */
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7, /* uint32_t, default 256 */
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8, /* uint32_t, default 256 */
} cublasLtMatmulPreferenceAttributes_t;

const char *cublasLtGetStatusString(cublasStatus_t status);

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc);

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t sizeInBytes);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout);

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);

/* At most three results (the emulation's algorithms differ only in their
 * index; none needs a workspace). CUBLAS_STATUS_NOT_SUPPORTED with no result
 * when the emulation is told to refuse the problem (below). */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount);

/* Runs to completion before it returns (the stream is only checked). alpha and
 * beta are host floats; beta == 0 does not read C. CUBLAS_STATUS_NOT_SUPPORTED,
 * without touching D, for an algorithm the emulation is told to refuse.
 *
 * A GPU's cuBLASLt may have no algorithm for a layout (a batch stride of 0,
 * operands aligned to less than 16 bytes) or refuse, when it is run, an
 * algorithm its heuristic proposed. The emulation answers every problem unless
 * LDM_CUDA_EMULATION_CUBLASLT_REFUSE in the environment (read on every call)
 * names, separated by commas, what to refuse, so that the callers' fallbacks
 * run on the CPU:
 *   first      cublasLtMatmul refuses the heuristic's first result;
 *   all        cublasLtMatmul refuses every result;
 *   none       the heuristic has no result for any problem;
 *   unaligned  the heuristic has no result when an alignment promised in the
 *              preference is below the 256-byte default;
 *   stride0    the heuristic has no result when a batched layout has stride 0;
 *   strided    cublasGemmStridedBatchedEx (cublas_v2.h) refuses every batch of
 *              more than one matrix. */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
