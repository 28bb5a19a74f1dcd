/* CUDA emulation (see cublasLt.h): cuBLASLt's handle, matmul descriptor,
 * matrix layouts, preference, heuristic and matmul, on the CPU; the refusals
 * that LDM_CUDA_EMULATION_CUBLASLT_REFUSE asks for; and cuBLAS's GEMMs
 * (cublas_v2.h) over the same matmul.
 *
 * The matmul is column-major, as cuBLASLt's: for each matrix i of a batch,
 *   D_i (m, n) = alpha op(A_i) op(B_i) + beta C_i (+ bias[row] with the BIAS epilogue),
 * each dot product accumulated in float in k order, as the GPU's fp32
 * accumulation does, then alpha acc + beta c + bias. 16-bit inputs are widened
 * exactly. beta == 0 does not read C (it may hold NaN), as the real library.
 *
 * What answers a status and what ends the program:
 *  - a setter given a value of the wrong size, an unknown attribute or an
 *    out-of-range value answers CUBLAS_STATUS_INVALID_VALUE, as the real library;
 *  - a problem the emulation does not carry out (types, compute type, epilogue)
 *    answers CUBLAS_STATUS_NOT_SUPPORTED from the heuristic (no algorithm) and
 *    from the matmul: callers handle "no algorithm", so this is not fatal;
 *  - a mistake of the caller in the heuristic or the matmul (layouts that do
 *    not fit together or with the transposes, ld < rows, an operand outside its
 *    device allocation, an alignment promised to the heuristic and broken,
 *    an output that overlaps an input) ends the program through
 *    fatal_internal, naming the call and the fault. On a GPU these give an
 *    error status at best and wrong numbers or a fault at worst; here they are
 *    found where they are made. (The caller turns a failed heuristic into a
 *    fallback, so a status alone could hide a wrong layout.) */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cublasLt.h"
#include "cublas_v2.h"
#include "cuda_emulation_queue.h"
#include "fatal.h"

/* Marks an algorithm as one this emulation's heuristic filled in. */
#define ALGO_MAGIC UINT64_C(0x6c646d2d6c742d31)
/* The preference's alignment promises default to 256 bytes, as in cuBLASLt. */
#define DEFAULT_ALIGNMENT_BYTES 256u
/* How many results the heuristic gives at most (the algorithm's index is its data[ALGO_INDEX]). */
#define HEURISTIC_ALGORITHMS 3
#define ALGO_INDEX 5

struct cublasLtContext {
    int unused; /* the emulation keeps no per-handle state */
};

struct cublasLtMatmulDescOpaque_st {
    cublasComputeType_t compute_type;
    cudaDataType_t scale_type;
    int32_t transa, transb;
    uint32_t epilogue;
    const void *bias;
    int32_t bias_type; /* BIAS_TYPE_OF_D until set: the bias then has D's type */
};
typedef struct cublasLtMatmulDescOpaque_st matmul_desc;
#define BIAS_TYPE_OF_D (-1)

struct cublasLtMatrixLayoutOpaque_st {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch_count;
    int64_t batch_stride; /* elements */
};
typedef struct cublasLtMatrixLayoutOpaque_st matrix_layout;

/* Indexes of the promises below and in the algorithm's data. */
enum { OPERAND_A, OPERAND_B, OPERAND_C, OPERAND_D, OPERAND_COUNT };

struct cublasLtMatmulPreferenceOpaque_st {
    uint64_t max_workspace_bytes;
    uint32_t min_alignment[OPERAND_COUNT];
};

const char *cublasLtGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

/* A caller's mistake in the heuristic or the matmul: ends the program. */
__attribute__((noreturn, format(printf, 2, 3))) static void misuse(const char *call, const char *fmt, ...) {
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fatal_internal("CUDA emulation: %s: %s", call, message);
}

/* ---- refusals (LDM_CUDA_EMULATION_CUBLASLT_REFUSE, see cublasLt.h) ---- */

enum {
    REFUSE_FIRST = 1,
    REFUSE_ALL = 2,
    REFUSE_NONE = 4,
    REFUSE_UNALIGNED = 8,
    REFUSE_STRIDE0 = 16,
    REFUSE_STRIDED = 32,
};

/* The refusals asked for now: read on every call, so that a test can change them. */
static unsigned refusals(void) {
    static const struct {
        const char *word;
        unsigned bit;
    } words[] = {{"first", REFUSE_FIRST},         {"all", REFUSE_ALL},         {"none", REFUSE_NONE},
                 {"unaligned", REFUSE_UNALIGNED}, {"stride0", REFUSE_STRIDE0}, {"strided", REFUSE_STRIDED}};
    const char *text = getenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE");
    unsigned bits = 0;
    for (const char *p = text; p && *p;) {
        const char *end = strchr(p, ',');
        const size_t length = end ? (size_t)(end - p) : strlen(p);
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof words / sizeof words[0] && !bit; i++)
            if (strlen(words[i].word) == length && strncmp(p, words[i].word, length) == 0) bit = words[i].bit;
        if (!bit && length > 0)
            fatal_internal("CUDA emulation: LDM_CUDA_EMULATION_CUBLASLT_REFUSE=%s: unknown word '%.*s' (expected "
                           "words of first, all, none, unaligned, stride0, strided separated by commas)",
                           text, (int)length, p);
        bits |= bit;
        p = end ? end + 1 : p + length;
    }
    return bits;
}

/* ---- handle ---- */

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = NULL;
    /* As the real library, a handle needs a device to run on. */
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    *handle = calloc(1, sizeof **handle);
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- attribute setters: the value must have exactly the attribute's size ---- */

/* Copies the attribute's value out of buf when it has the attribute's size. */
static int take_value(void *value, size_t value_bytes, const void *buf, size_t size_in_bytes) {
    if (!buf || size_in_bytes != value_bytes) return 0;
    memcpy(value, buf, value_bytes);
    return 1;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    *matmulDesc = malloc(sizeof **matmulDesc);
    if (!*matmulDesc) return CUBLAS_STATUS_ALLOC_FAILED;
    **matmulDesc = (matmul_desc){
        .compute_type = computeType,
        .scale_type = scaleType,
        .transa = CUBLAS_OP_N,
        .transb = CUBLAS_OP_N,
        .epilogue = CUBLASLT_EPILOGUE_DEFAULT,
        .bias = NULL,
        .bias_type = BIAS_TYPE_OF_D,
    };
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    int taken = 0;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
        taken = take_value(&matmulDesc->transa, sizeof matmulDesc->transa, buf, sizeInBytes);
        break;
    case CUBLASLT_MATMUL_DESC_TRANSB:
        taken = take_value(&matmulDesc->transb, sizeof matmulDesc->transb, buf, sizeInBytes);
        break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        taken = take_value(&matmulDesc->epilogue, sizeof matmulDesc->epilogue, buf, sizeInBytes);
        break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        taken = take_value(&matmulDesc->bias, sizeof matmulDesc->bias, buf, sizeInBytes);
        break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
        taken = take_value(&matmulDesc->bias_type, sizeof matmulDesc->bias_type, buf, sizeInBytes);
        break;
    }
    return taken ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    free(matmulDesc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    *matLayout = malloc(sizeof **matLayout);
    if (!*matLayout) return CUBLAS_STATUS_ALLOC_FAILED;
    **matLayout = (matrix_layout){
        .type = type, .rows = rows, .cols = cols, .ld = ld, .batch_count = 1, .batch_stride = 0};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t sizeInBytes) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: {
        int32_t count;
        if (!take_value(&count, sizeof count, buf, sizeInBytes) || count < 1) return CUBLAS_STATUS_INVALID_VALUE;
        matLayout->batch_count = count;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: {
        /* Negative strides are refused: nothing in ldm needs them, and the
         * extent checks below assume the batch grows upwards. */
        int64_t stride;
        if (!take_value(&stride, sizeof stride, buf, sizeInBytes) || stride < 0) return CUBLAS_STATUS_INVALID_VALUE;
        matLayout->batch_stride = stride;
        return CUBLAS_STATUS_SUCCESS;
    }
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    free(matLayout);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = malloc(sizeof **pref);
    if (!*pref) return CUBLAS_STATUS_ALLOC_FAILED;
    (*pref)->max_workspace_bytes = 0;
    for (int i = 0; i < OPERAND_COUNT; i++) (*pref)->min_alignment[i] = DEFAULT_ALIGNMENT_BYTES;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    int taken = 0;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        taken = take_value(&pref->max_workspace_bytes, sizeof pref->max_workspace_bytes, buf, sizeInBytes);
        break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: {
        const int operand = (int)attr - (int)CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES;
        taken = take_value(&pref->min_alignment[operand], sizeof pref->min_alignment[operand], buf, sizeInBytes);
        break;
    }
    }
    return taken ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    free(pref);
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- the problem a descriptor and four layouts describe ---- */

static const char *const operand_names[OPERAND_COUNT] = {"A", "B", "C", "D"};

static size_t element_bytes(cudaDataType_t type) {
    switch (type) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    case CUDA_R_64F: return 8;
    case CUDA_R_32I: return 4;
    }
    return 0;
}

static const char *operation_name(int32_t op) { return op == CUBLAS_OP_N ? "N" : op == CUBLAS_OP_T ? "T" : "?"; }

typedef struct {
    int32_t op_a, op_b;
    uint64_t m, n, k;
    int32_t batch_count;
    const float *bias; /* NULL without the BIAS epilogue */
} matmul_problem;

/* The number of elements a layout's batch spans, from its first element to
 * its last ((batch - 1) stride + (cols - 1) ld + rows); 0 when empty. */
static uint64_t layout_extent_elements(const char *call, const char *name, const matrix_layout *l) {
    if (l->rows == 0 || l->cols == 0) return 0;
    uint64_t batch_span, column_span, extent;
    if (__builtin_mul_overflow((uint64_t)(l->batch_count - 1), (uint64_t)l->batch_stride, &batch_span) ||
        __builtin_mul_overflow(l->cols - 1, (uint64_t)l->ld, &column_span) ||
        __builtin_add_overflow(batch_span, column_span, &extent) ||
        __builtin_add_overflow(extent, l->rows, &extent) || extent > SIZE_MAX / 8)
        misuse(call, "%s's layout (%llu x %llu, ld %lld, batch %d, stride %lld) spans more memory than there is", name,
               (unsigned long long)l->rows, (unsigned long long)l->cols, (long long)l->ld, (int)l->batch_count,
               (long long)l->batch_stride);
    return extent;
}

/* Checks that the descriptor and layouts describe one problem the emulation
 * carries out and fills *problem. NOT_SUPPORTED for what it does not carry
 * out; a caller's mistake ends the program. */
static cublasStatus_t read_problem(const char *call, const matmul_desc *desc,
                                   const matrix_layout *const layouts[OPERAND_COUNT], matmul_problem *problem) {
    if (!desc) misuse(call, "the matmul descriptor is NULL");
    for (int i = 0; i < OPERAND_COUNT; i++)
        if (!layouts[i]) misuse(call, "the layout of %s is NULL", operand_names[i]);
    const matrix_layout *a = layouts[OPERAND_A], *b = layouts[OPERAND_B], *c = layouts[OPERAND_C],
                        *d = layouts[OPERAND_D];

    if (a->type != b->type)
        misuse(call, "A and B have different types (cudaDataType %d and %d)", (int)a->type, (int)b->type);
    if (desc->compute_type != CUBLAS_COMPUTE_32F || desc->scale_type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (a->type != CUDA_R_32F && a->type != CUDA_R_16F && a->type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (c->type != CUDA_R_32F || d->type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((desc->transa != CUBLAS_OP_N && desc->transa != CUBLAS_OP_T) ||
        (desc->transb != CUBLAS_OP_N && desc->transb != CUBLAS_OP_T))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (desc->epilogue != CUBLASLT_EPILOGUE_DEFAULT && desc->epilogue != CUBLASLT_EPILOGUE_BIAS)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const int has_bias = desc->epilogue == CUBLASLT_EPILOGUE_BIAS;
    if (has_bias && desc->bias_type != BIAS_TYPE_OF_D && desc->bias_type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;

    for (int i = 0; i < OPERAND_COUNT; i++)
        if (layouts[i]->ld < 1 || (uint64_t)layouts[i]->ld < layouts[i]->rows)
            misuse(call, "%s's leading dimension %lld is less than its %llu rows", operand_names[i],
                   (long long)layouts[i]->ld, (unsigned long long)layouts[i]->rows);

    /* D fixes m and n, A (with its transpose) fixes k; the rest must agree. */
    problem->op_a = desc->transa;
    problem->op_b = desc->transb;
    problem->m = d->rows;
    problem->n = d->cols;
    const int a_transposed = desc->transa == CUBLAS_OP_T, b_transposed = desc->transb == CUBLAS_OP_T;
    problem->k = a_transposed ? a->rows : a->cols;
    const uint64_t m = problem->m, n = problem->n, k = problem->k;
    const uint64_t a_rows = a_transposed ? k : m, a_cols = a_transposed ? m : k;
    const uint64_t b_rows = b_transposed ? n : k, b_cols = b_transposed ? k : n;
    if (a->rows != a_rows || a->cols != a_cols)
        misuse(call, "A is %llu x %llu, but with TRANSA = %s and D %llu x %llu it must be %llu x %llu",
               (unsigned long long)a->rows, (unsigned long long)a->cols, operation_name(desc->transa),
               (unsigned long long)m, (unsigned long long)n, (unsigned long long)a_rows, (unsigned long long)a_cols);
    if (b->rows != b_rows || b->cols != b_cols)
        misuse(call, "B is %llu x %llu, but with TRANSB = %s, k = %llu (from A) and n = %llu (from D) it must be "
                     "%llu x %llu",
               (unsigned long long)b->rows, (unsigned long long)b->cols, operation_name(desc->transb),
               (unsigned long long)k, (unsigned long long)n, (unsigned long long)b_rows, (unsigned long long)b_cols);
    if (c->rows != m || c->cols != n)
        misuse(call, "C is %llu x %llu but D is %llu x %llu", (unsigned long long)c->rows,
               (unsigned long long)c->cols, (unsigned long long)m, (unsigned long long)n);

    problem->batch_count = d->batch_count;
    for (int i = 0; i < OPERAND_COUNT; i++)
        if (layouts[i]->batch_count != d->batch_count)
            misuse(call, "%s's batch count %d differs from D's %d", operand_names[i], (int)layouts[i]->batch_count,
                   (int)d->batch_count);
    for (int i = 0; i < OPERAND_COUNT; i++) layout_extent_elements(call, operand_names[i], layouts[i]);

    problem->bias = NULL;
    if (has_bias) {
        if (!desc->bias) misuse(call, "the BIAS epilogue is asked for, but CUBLASLT_MATMUL_DESC_BIAS_POINTER is NULL");
        problem->bias = desc->bias;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- heuristic ---- */

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount) {
    static const char call[] = "cublasLtMatmulAlgoGetHeuristic";
    if (returnAlgoCount) *returnAlgoCount = 0;
    if (!lightHandle) misuse(call, "the handle is NULL");
    if (!preference) misuse(call, "the preference is NULL");
    if (requestedAlgoCount < 1 || !heuristicResultsArray || !returnAlgoCount)
        misuse(call, "room for %d results at %p, count at %p: at least one result and the count are needed",
               requestedAlgoCount, (void *)heuristicResultsArray, (void *)returnAlgoCount);
    const matrix_layout *const layouts[OPERAND_COUNT] = {Adesc, Bdesc, Cdesc, Ddesc};
    matmul_problem problem;
    cublasStatus_t status = read_problem(call, operationDesc, layouts, &problem);
    if (status != CUBLAS_STATUS_SUCCESS) return status;

    /* No algorithm for layouts the test asks to refuse, as a GPU's heuristic
     * may have none (the count stays 0). */
    const unsigned refused = refusals();
    if (refused & REFUSE_NONE) return CUBLAS_STATUS_NOT_SUPPORTED;
    for (int i = 0; i < OPERAND_COUNT; i++) {
        if ((refused & REFUSE_UNALIGNED) && preference->min_alignment[i] < DEFAULT_ALIGNMENT_BYTES)
            return CUBLAS_STATUS_NOT_SUPPORTED;
        if ((refused & REFUSE_STRIDE0) && layouts[i]->batch_count > 1 && layouts[i]->batch_stride == 0)
            return CUBLAS_STATUS_NOT_SUPPORTED;
    }

    /* Algorithms that compute alike and need no workspace, told apart by their
     * index. Each carries the alignments the heuristic was promised, which the
     * matmul then holds the operands to: a GPU kernel chosen on a promise reads
     * misaligned memory when it is broken. */
    const int count = requestedAlgoCount < HEURISTIC_ALGORITHMS ? requestedAlgoCount : HEURISTIC_ALGORITHMS;
    for (int r = 0; r < count; r++) {
        cublasLtMatmulHeuristicResult_t result;
        memset(&result, 0, sizeof result);
        result.algo.data[0] = ALGO_MAGIC;
        for (int i = 0; i < OPERAND_COUNT; i++) result.algo.data[1 + i] = preference->min_alignment[i];
        result.algo.data[ALGO_INDEX] = (uint64_t)r;
        result.workspaceSize = 0;
        result.state = CUBLAS_STATUS_SUCCESS;
        result.wavesCount = 1.0f;
        heuristicResultsArray[r] = result;
    }
    *returnAlgoCount = count;
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- matmul ---- */

/* One operand as the checks see it: where it is and which elements it covers. */
typedef struct {
    const char *name;
    uintptr_t address;
    size_t element_bytes;
    uint64_t rows, cols, ld, batch_stride;
    int32_t batch_count;
    uint64_t extent_bytes;
} operand_view;

static operand_view view_of(const char *call, const char *name, const void *data, const matrix_layout *l) {
    operand_view view = {
        .name = name,
        .address = (uintptr_t)data,
        .element_bytes = element_bytes(l->type),
        .rows = l->rows,
        .cols = l->cols,
        .ld = (uint64_t)l->ld,
        .batch_stride = (uint64_t)l->batch_stride,
        .batch_count = l->batch_count,
    };
    view.extent_bytes = layout_extent_elements(call, name, l) * view.element_bytes;
    return view;
}

/* The operand is device memory, naturally aligned, and inside one allocation. */
static void require_operand(const char *call, const operand_view *v) {
    if (v->extent_bytes == 0) return;
    if (!v->address) misuse(call, "%s is NULL", v->name);
    if (v->address % v->element_bytes != 0)
        misuse(call, "%s at %p is not aligned to its %zu-byte elements", v->name, (void *)v->address,
               v->element_bytes);
    char what[256];
    snprintf(what, sizeof what, "%s operand %s (%llu x %llu, ld %llu, batch %d, stride %llu elements of %zu bytes)",
             call, v->name, (unsigned long long)v->rows, (unsigned long long)v->cols, (unsigned long long)v->ld,
             (int)v->batch_count, (unsigned long long)v->batch_stride, v->element_bytes);
    cuda_emulation_require_device_range((const void *)v->address, (size_t)v->extent_bytes, what);
}

/* The alignment promised to the heuristic divides the operand's address and,
 * when batched, its batch stride in bytes (every matrix of the batch is read
 * on that promise). */
static void require_promised_alignment(const char *call, const operand_view *v, uint64_t promise) {
    if (promise <= 1 || v->extent_bytes == 0) return;
    const uint64_t stride_bytes = v->batch_count > 1 ? v->batch_stride * v->element_bytes : 0;
    if (v->address % promise != 0 || stride_bytes % promise != 0)
        misuse(call, "%s at %p (batch stride %llu bytes) is not %llu-byte aligned, which "
                     "CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_%s_BYTES promised to the heuristic",
               v->name, (void *)v->address, (unsigned long long)stride_bytes, (unsigned long long)promise, v->name);
}

/* Calls visit(run_begin, run_end, context) for every column of every matrix of
 * the operand, clipped to [low, high); stops and returns 1 when visit does. */
static int for_each_column_run(const operand_view *v, uintptr_t low, uintptr_t high,
                               int (*visit)(uintptr_t begin, uintptr_t end, void *context), void *context) {
    if (v->extent_bytes == 0) return 0;
    const uint64_t run_bytes = v->rows * v->element_bytes;
    for (int32_t batch = 0; batch < v->batch_count; batch++)
        for (uint64_t col = 0; col < v->cols; col++) {
            uintptr_t begin = v->address + (uintptr_t)((batch * v->batch_stride + col * v->ld) * v->element_bytes);
            uintptr_t end = begin + (uintptr_t)run_bytes;
            if (begin < low) begin = low;
            if (end > high) end = high;
            if (begin < end && visit(begin, end, context)) return 1;
        }
    return 0;
}

/* The bytes of the window [low, high) that the first operand covers. */
typedef struct {
    unsigned char *covered;
    uintptr_t low;
} coverage_map;

static int mark_covered(uintptr_t begin, uintptr_t end, void *context) {
    coverage_map *map = context;
    memset(map->covered + (begin - map->low), 1, end - begin);
    return 0;
}

static int find_covered(uintptr_t begin, uintptr_t end, void *context) {
    const coverage_map *map = context;
    for (uintptr_t p = begin; p < end; p++)
        if (map->covered[p - map->low]) return 1;
    return 0;
}

/* 1 when the two operands share a byte, element for element (interleaved
 * operands that only share address ranges do not count); -1 out of memory. */
static int operands_share_bytes(const operand_view *x, const operand_view *y) {
    if (x->extent_bytes == 0 || y->extent_bytes == 0) return 0;
    const uintptr_t x_end = x->address + (uintptr_t)x->extent_bytes, y_end = y->address + (uintptr_t)y->extent_bytes;
    const uintptr_t low = x->address > y->address ? x->address : y->address;
    const uintptr_t high = x_end < y_end ? x_end : y_end;
    if (low >= high) return 0;
    coverage_map map = {calloc(high - low, 1), low};
    if (!map.covered) return -1;
    for_each_column_run(x, low, high, mark_covered, &map);
    const int shared = for_each_column_run(y, low, high, find_covered, &map);
    free(map.covered);
    return shared;
}

/* 1 when two matrices of the operand's batch share an element. Matrices i and
 * i + d overlap when d * stride = dc * ld + dr with |dc| < cols, |dr| < rows;
 * as ld >= rows, only the two column offsets around d * stride / ld can fit. */
static int batch_overlaps_itself(const operand_view *v) {
    if (v->batch_count < 2 || v->extent_bytes == 0) return 0;
    if (v->batch_stride >= (v->cols - 1) * v->ld + v->rows) return 0; /* each matrix ends before the next */
    for (uint64_t d = 1; d < (uint64_t)v->batch_count; d++) {
        const uint64_t offset = d * v->batch_stride, column = offset / v->ld, within = offset % v->ld;
        if (column < v->cols && within < v->rows) return 1;
        if (column + 1 < v->cols && v->ld - within < v->rows) return 1;
    }
    return 0;
}

/* An output must not share memory with what the same call reads: on a GPU
 * the blocks would race. (C == D with one layout is the in-place matmul cuBLASLt allows.) */
static cublasStatus_t require_apart(const char *call, const operand_view *output, const operand_view *input) {
    const int shared = operands_share_bytes(output, input);
    if (shared < 0) return CUBLAS_STATUS_ALLOC_FAILED;
    if (shared)
        misuse(call, "%s (at %p) shares memory with %s (at %p), which the same call reads", output->name,
               (void *)output->address, input->name, (void *)input->address);
    return CUBLAS_STATUS_SUCCESS;
}

/* bf16 is the top half of a float. */
static float bf16_bits_to_float(uint16_t bits) {
    const uint32_t widened = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &widened, sizeof value);
    return value;
}

/* IEEE binary16, exactly: every half is a float (subnormals become normal floats). */
static float fp16_bits_to_float(uint16_t bits) {
    const uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24 */
        const float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    /* infinity and NaN (payload kept) keep an all-ones exponent; normals rebias 15 -> 127 */
    const uint32_t float_exponent = exponent == 0x1fu ? 0xffu : exponent + (127u - 15u);
    const uint32_t widened = sign | float_exponent << 23 | mantissa << 13;
    float value;
    memcpy(&value, &widened, sizeof value);
    return value;
}

static float element_as_float(const unsigned char *base, cudaDataType_t type, uint64_t index) {
    switch (type) {
    case CUDA_R_16F:
    case CUDA_R_16BF: {
        uint16_t bits;
        memcpy(&bits, base + index * 2, sizeof bits);
        return type == CUDA_R_16F ? fp16_bits_to_float(bits) : bf16_bits_to_float(bits);
    }
    default: {
        float value;
        memcpy(&value, base + index * 4, sizeof value);
        return value;
    }
    }
}

/* The arithmetic, once the checks have passed. For each matrix of the batch,
 * op(A) is widened to float as k columns of m (a_columns), and each column j of
 * D accumulates over l in order: acc[i] += op(A)[i][l] * op(B)[l][j]. */
static cublasStatus_t compute(const matmul_problem *p, float alpha, float beta, const void *a_data,
                              const matrix_layout *a, const void *b_data, const matrix_layout *b, const float *c_data,
                              const matrix_layout *c, float *d_data, const matrix_layout *d) {
    const uint64_t m = p->m, n = p->n, k = p->k;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    float *a_columns = malloc((size_t)(k ? k : 1) * m * sizeof *a_columns);
    float *acc = malloc((size_t)m * sizeof *acc);
    if (!a_columns || !acc) {
        free(a_columns);
        free(acc);
        return CUBLAS_STATUS_ALLOC_FAILED;
    }
    const uint64_t lda = (uint64_t)a->ld, ldb = (uint64_t)b->ld, ldc = (uint64_t)c->ld, ldd = (uint64_t)d->ld;
    for (int32_t batch = 0; batch < p->batch_count; batch++) {
        const uint64_t a_offset = (uint64_t)batch * (uint64_t)a->batch_stride;
        const uint64_t b_offset = (uint64_t)batch * (uint64_t)b->batch_stride;
        const float *c_matrix = c_data + (uint64_t)batch * (uint64_t)c->batch_stride;
        float *d_matrix = d_data + (uint64_t)batch * (uint64_t)d->batch_stride;
        for (uint64_t l = 0; l < k; l++)
            for (uint64_t i = 0; i < m; i++)
                a_columns[l * m + i] =
                    element_as_float(a_data, a->type, a_offset + (p->op_a == CUBLAS_OP_N ? l * lda + i : i * lda + l));
        for (uint64_t j = 0; j < n; j++) {
            for (uint64_t i = 0; i < m; i++) acc[i] = 0.0f;
            for (uint64_t l = 0; l < k; l++) {
                const float b_lj =
                    element_as_float(b_data, b->type, b_offset + (p->op_b == CUBLAS_OP_N ? j * ldb + l : l * ldb + j));
                const float *a_column = a_columns + l * m;
                for (uint64_t i = 0; i < m; i++) acc[i] += a_column[i] * b_lj;
            }
            /* C is read only when beta != 0, and element by element just before
             * D's element is written, so C == D (in place) reads C's own values. */
            for (uint64_t i = 0; i < m; i++) {
                float value = alpha * acc[i];
                if (beta != 0.0f) value += beta * c_matrix[j * ldc + i];
                if (p->bias) value += p->bias[i];
                d_matrix[j * ldd + i] = value;
            }
        }
    }
    free(a_columns);
    free(acc);
    return CUBLAS_STATUS_SUCCESS;
}

/* A matmul waiting in its stream's queue (cuda_emulation_queue.h). */
typedef struct {
    matmul_problem problem;
    float alpha, beta;
    const void *a;
    matrix_layout a_layout;
    const void *b;
    matrix_layout b_layout;
    const float *c;
    matrix_layout c_layout;
    float *d;
    matrix_layout d_layout;
} queued_matmul;

static void run_queued_matmul(void *data) {
    const queued_matmul *q = data;
    if (compute(&q->problem, q->alpha, q->beta, q->a, &q->a_layout, q->b, &q->b_layout, q->c, &q->c_layout, q->d,
                &q->d_layout) != CUBLAS_STATUS_SUCCESS)
        fatal_internal("CUDA emulation: cublasLtMatmul: out of memory while it ran");
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream) {
    static const char call[] = "cublasLtMatmul";
    if (!lightHandle) misuse(call, "the handle is NULL");
    cuda_emulation_require_stream(stream, call);
    if (!alpha || !beta) misuse(call, "alpha (%p) and beta (%p) must point to host floats", alpha, beta);
    const matrix_layout *const layouts[OPERAND_COUNT] = {Adesc, Bdesc, Cdesc, Ddesc};
    matmul_problem problem;
    cublasStatus_t status = read_problem(call, computeDesc, layouts, &problem);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    /* The scale type is CUDA_R_32F and the pointer mode host: alpha and beta are host floats. */
    float alpha_value, beta_value;
    memcpy(&alpha_value, alpha, sizeof alpha_value);
    memcpy(&beta_value, beta, sizeof beta_value);
    const int reads_c = beta_value != 0.0f;

    operand_view views[OPERAND_COUNT];
    const void *const data[OPERAND_COUNT] = {A, B, C, D};
    for (int i = 0; i < OPERAND_COUNT; i++) views[i] = view_of(call, operand_names[i], data[i], layouts[i]);
    for (int i = 0; i < OPERAND_COUNT; i++)
        if (i != OPERAND_C || reads_c) require_operand(call, &views[i]);
    operand_view bias_view = {.name = "bias"};
    if (problem.bias && problem.m > 0 && problem.n > 0) {
        /* one vector of m floats, the same for every matrix of the batch */
        bias_view = (operand_view){.name = "bias",
                                   .address = (uintptr_t)problem.bias,
                                   .element_bytes = sizeof(float),
                                   .rows = problem.m,
                                   .cols = 1,
                                   .ld = problem.m,
                                   .batch_stride = 0,
                                   .batch_count = 1,
                                   .extent_bytes = problem.m * sizeof(float)};
        require_operand(call, &bias_view);
    }

    /* algo NULL: the library picks one knowing the pointers, so nothing was promised. */
    if (algo) {
        if (algo->data[0] != ALGO_MAGIC)
            misuse(call, "the algorithm at %p was not filled in by cublasLtMatmulAlgoGetHeuristic", (const void *)algo);
        for (int i = 0; i < OPERAND_COUNT; i++)
            if (i != OPERAND_C || reads_c) require_promised_alignment(call, &views[i], algo->data[1 + i]);
        /* the emulation's algorithms need no workspace, so any size will do */
        const unsigned refused = refusals();
        if ((refused & REFUSE_ALL) || ((refused & REFUSE_FIRST) && algo->data[ALGO_INDEX] == 0))
            return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (workspaceSizeInBytes > 0) {
        if (!workspace) misuse(call, "the workspace is NULL but its size is %zu bytes", workspaceSizeInBytes);
        cuda_emulation_require_device_range(workspace, workspaceSizeInBytes, "cublasLtMatmul workspace");
    }

    const operand_view *d_view = &views[OPERAND_D];
    if (batch_overlaps_itself(d_view))
        misuse(call, "the %d matrices of D (%llu x %llu, ld %llu) overlap at a batch stride of %llu elements",
               (int)d_view->batch_count, (unsigned long long)d_view->rows, (unsigned long long)d_view->cols,
               (unsigned long long)d_view->ld, (unsigned long long)d_view->batch_stride);
    const operand_view *const inputs[] = {&views[OPERAND_A], &views[OPERAND_B], &bias_view};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        status = require_apart(call, d_view, inputs[i]);
        if (status != CUBLAS_STATUS_SUCCESS) return status;
    }
    if (reads_c) {
        if (C == D) {
            if (Cdesc->ld != Ddesc->ld || Cdesc->batch_stride != Ddesc->batch_stride)
                misuse(call, "C and D are the same memory (in place) with different layouts (ld %lld and %lld, batch "
                             "stride %lld and %lld)",
                       (long long)Cdesc->ld, (long long)Ddesc->ld, (long long)Cdesc->batch_stride,
                       (long long)Ddesc->batch_stride);
        } else {
            status = require_apart(call, d_view, &views[OPERAND_C]);
            if (status != CUBLAS_STATUS_SUCCESS) return status;
        }
    }

    /* Queued on stream with copies of what the call was given: the caller may
     * change or destroy the descriptors once the call returns. */
    queued_matmul *queued = malloc(sizeof *queued);
    if (!queued) return CUBLAS_STATUS_ALLOC_FAILED;
    *queued = (queued_matmul){problem, alpha_value, beta_value, A, *Adesc, B, *Bdesc, C, *Cdesc, D, *Ddesc};
    cuda_emulation_enqueue(stream, call, run_queued_matmul, free, queued, (cuda_emulation_work_reads){0});
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLAS (cublas_v2.h): the GEMMs, through the matmul above ---- */

struct cublasContext {
    cublasLtHandle_t lt;
    cudaStream_t stream;
    void *workspace; /* NULL: the library's own (the emulation needs none) */
    size_t workspace_bytes;
};

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = calloc(1, sizeof **handle);
    if (!*handle) return CUBLAS_STATUS_ALLOC_FAILED;
    const cublasStatus_t status = cublasLtCreate(&(*handle)->lt);
    if (status != CUBLAS_STATUS_SUCCESS) {
        free(*handle);
        *handle = NULL;
    }
    return status;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const cublasStatus_t status = cublasLtDestroy(handle->lt);
    free(handle);
    return status;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t streamId) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    cuda_emulation_require_stream(streamId, "cublasSetStream");
    handle->stream = streamId;
    handle->workspace = NULL;
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (workspaceSizeInBytes > 0) {
        if (!workspace) misuse("cublasSetWorkspace", "the workspace is NULL but its size is %zu bytes",
                               workspaceSizeInBytes);
        cuda_emulation_require_device_range(workspace, workspaceSizeInBytes, "cublasSetWorkspace workspace");
    }
    handle->workspace = workspace;
    handle->workspace_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

/* A column-major layout of rows x cols for the matmul; NULL when out of memory. */
static cublasLtMatrixLayout_t gemm_layout(cudaDataType type, int rows, int cols, int ld, long long stride,
                                          int batch_count) {
    cublasLtMatrixLayout_t layout = NULL;
    if (cublasLtMatrixLayoutCreate(&layout, type, (uint64_t)rows, (uint64_t)cols, ld) != CUBLAS_STATUS_SUCCESS)
        return NULL;
    layout->batch_count = batch_count;
    layout->batch_stride = stride;
    return layout;
}

/* Both GEMMs: a descriptor and layouts of the problem, and the matmul with no
 * algorithm (the library's own choice, knowing the pointers). */
static cublasStatus_t gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype, int lda,
                           long long strideA, const void *B, cudaDataType Btype, int ldb, long long strideB,
                           const void *beta, void *C, cudaDataType Ctype, int ldc, long long strideC, int batchCount,
                           cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || batchCount < 0 || (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) ||
        (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (algo != CUBLAS_GEMM_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulDesc_t desc = NULL;
    cublasStatus_t status = cublasLtMatmulDescCreate(&desc, computeType, CUDA_R_32F);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    const int32_t op_a = transa, op_b = transb;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a);
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b);
    cublasLtMatrixLayout_t la = gemm_layout(Atype, transa == CUBLAS_OP_N ? m : k, transa == CUBLAS_OP_N ? k : m, lda,
                                            strideA, batchCount);
    cublasLtMatrixLayout_t lb = gemm_layout(Btype, transb == CUBLAS_OP_N ? k : n, transb == CUBLAS_OP_N ? n : k, ldb,
                                            strideB, batchCount);
    cublasLtMatrixLayout_t lc = gemm_layout(Ctype, m, n, ldc, strideC, batchCount);
    if (!la || !lb || !lc)
        status = CUBLAS_STATUS_ALLOC_FAILED;
    else
        status = cublasLtMatmul(handle->lt, desc, alpha, A, la, B, lb, beta, C, lc, C, lc, NULL, handle->workspace,
                                handle->workspace_bytes, handle->stream);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(desc);
    return status;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C,
                Ctype, ldc, 0, 1, computeType, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    if (handle && batchCount > 1 && (refusals() & REFUSE_STRIDED)) return CUBLAS_STATUS_NOT_SUPPORTED;
    return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B,
                Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType, algo);
}
