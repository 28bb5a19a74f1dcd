/* Unit test of the cuBLASLt emulation (tests/cuda_emulation/cublasLt.h): the
 * matmul against a triple loop in double on the same (16-bit: the same
 * decoded) values, through the call sequence model/cuda/gemm_cublaslt.cu makes;
 * the refusals that LDM_CUDA_EMULATION_CUBLASLT_REFUSE asks for, and cuBLAS's
 * GEMMs (the fallback) giving the matmul's own bits;
 * the exact widening of half and bfloat16 bits; the statuses of the setters
 * and of unsupported problems; and, each in a child process, that the
 * caller's mistakes end the program (exit status 1) with a line naming them. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fork, pipe, setenv */
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cublasLt.h"
#include "cublas_v2.h"
#include "test_util.h"

/* ---- device memory, freed at the end ---- */

#define MAX_DEVICE_BUFFERS 64
static void *device_buffers[MAX_DEVICE_BUFFERS];
static int device_buffer_count;

static void *device_alloc(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess || !p || device_buffer_count == MAX_DEVICE_BUFFERS) {
        fprintf(stderr, "cudaMalloc of %zu bytes failed\n", bytes);
        exit(1);
    }
    device_buffers[device_buffer_count++] = p;
    return p;
}

static void *device_copy_of(const void *host, size_t bytes) {
    void *p = device_alloc(bytes);
    CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    return p;
}

static void fetch(void *host, const void *device, size_t bytes) {
    CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
}

static void release_device_buffers(void) {
    for (int i = 0; i < device_buffer_count; i++) CHECK(cudaFree(device_buffers[i]) == cudaSuccess);
    device_buffer_count = 0;
}

/* ---- values ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint32_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static float uniform(void) { return (float)((double)next_random() / 4294967296.0 * 2.0 - 1.0); }

/* Decoders written from the formats' definitions, independently of the
 * emulation's bit manipulation. */
static double half_value(uint16_t bits) {
    const int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
    double magnitude;
    if (exponent == 0x1f) magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0) magnitude = ldexp(mantissa, -24);
    else magnitude = ldexp(1024 + mantissa, exponent - 25);
    return sign ? -magnitude : magnitude;
}

static double bfloat16_value(uint16_t bits) {
    const int sign = bits >> 15, exponent = (bits >> 7) & 0xff, mantissa = bits & 0x7f;
    double magnitude;
    if (exponent == 0xff) magnitude = mantissa ? NAN : INFINITY;
    else if (exponent == 0) magnitude = ldexp(mantissa, -133);
    else magnitude = ldexp(128 + mantissa, exponent - 134);
    return sign ? -magnitude : magnitude;
}

/* Random finite 16-bit values of moderate size; one half in eight subnormal. */
static uint16_t random_half_bits(void) {
    const uint16_t sign = (uint16_t)((next_random() & 1u) << 15), mantissa = (uint16_t)(next_random() & 0x3ffu);
    const uint16_t exponent = next_random() % 8 == 0 ? 0 : (uint16_t)(11 + next_random() % 8);
    return (uint16_t)(sign | exponent << 10 | mantissa);
}

static uint16_t random_bfloat16_bits(void) {
    const uint16_t sign = (uint16_t)((next_random() & 1u) << 15), mantissa = (uint16_t)(next_random() & 0x7fu);
    return (uint16_t)(sign | (uint16_t)(120 + next_random() % 10) << 7 | mantissa);
}

static size_t type_bytes(cudaDataType_t type) { return type == CUDA_R_32F ? 4 : 2; }

/* ---- one operand: rows x cols column-major with leading dimension ld, batched ---- */

typedef struct {
    int rows, cols, ld, batch;
    long long stride; /* elements */
    size_t extent;    /* elements from the first to the last */
} geometry;

static geometry geometry_of(int rows, int cols, int pad, int gap, int batch) {
    geometry g = {rows, cols, rows + pad, batch, 0, 0};
    g.stride = (long long)(cols - 1) * g.ld + rows + gap;
    g.extent = (size_t)(batch - 1) * (size_t)g.stride + (size_t)(cols - 1) * g.ld + (size_t)rows;
    return g;
}

static size_t element_index(const geometry *g, int batch, int row, int col) {
    return (size_t)batch * (size_t)g->stride + (size_t)col * g->ld + (size_t)row;
}

/* The largest power of two up to 256 dividing the address and the batch
 * stride in bytes: the alignment model/cuda/gemm_cublaslt.cu promises. */
static uint32_t alignment_of(const void *p, const geometry *g, size_t bytes_per_element) {
    const uint64_t stride_bytes = g->batch > 1 ? (uint64_t)g->stride * bytes_per_element : 0;
    const uint64_t bits = (uint64_t)(uintptr_t)p | stride_bytes;
    uint32_t alignment = 256;
    while (alignment > 1 && bits % alignment != 0) alignment >>= 1;
    return alignment;
}

static cublasLtMatrixLayout_t make_layout(cudaDataType_t type, const geometry *g) {
    cublasLtMatrixLayout_t layout = NULL;
    CHECK(cublasLtMatrixLayoutCreate(&layout, type, (uint64_t)g->rows, (uint64_t)g->cols, g->ld) ==
          CUBLAS_STATUS_SUCCESS);
    if (g->batch > 1) {
        const int32_t count = g->batch;
        const int64_t stride = g->stride;
        CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count) ==
              CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                               sizeof stride) == CUBLAS_STATUS_SUCCESS);
    }
    return layout;
}

static cublasLtHandle_t handle;
#define WORKSPACE_BYTES ((size_t)1 << 20)
static void *workspace;

/* ---- the matmul against the triple loop ---- */

typedef struct {
    const char *name;
    int transpose_a, transpose_b, m, n, k, batch;
    int pad;      /* ld = rows + pad (D: rows + pad + 1 when it is not C) */
    int gap;      /* elements between one matrix's end and the next's start */
    cudaDataType_t ab_type;
    float alpha, beta;
    int with_bias;
    int in_place;  /* D is C, as in model/cuda/gemm_cublaslt.cu */
    int nan_in_c;  /* C holds NaN (with beta 0: must not be read) */
    int a_offset;  /* A starts this many elements into its allocation */
} gemm_case;

/* Fills an operand's storage: NaN everywhere (so that a read outside the
 * matrices shows), then random values in the matrices; values[] gets each
 * element as a double. */
static void fill_operand(const geometry *g, cudaDataType_t type, unsigned char *storage, double *values) {
    memset(storage, 0xff, g->extent * type_bytes(type)); /* NaN in all three formats */
    for (size_t i = 0; i < g->extent; i++) values[i] = NAN;
    for (int b = 0; b < g->batch; b++)
        for (int c = 0; c < g->cols; c++)
            for (int r = 0; r < g->rows; r++) {
                const size_t at = element_index(g, b, r, c);
                if (type == CUDA_R_32F) {
                    const float v = uniform();
                    memcpy(storage + at * 4, &v, 4);
                    values[at] = v;
                } else {
                    const uint16_t bits = type == CUDA_R_16F ? random_half_bits() : random_bfloat16_bits();
                    memcpy(storage + at * 2, &bits, 2);
                    values[at] = type == CUDA_R_16F ? half_value(bits) : bfloat16_value(bits);
                }
            }
}

static void check_gemm_case(const gemm_case *t) {
    const int m = t->m, n = t->n, k = t->k;
    const size_t ab_bytes = type_bytes(t->ab_type);
    const geometry ga = geometry_of(t->transpose_a ? k : m, t->transpose_a ? m : k, t->pad, t->gap, t->batch);
    const geometry gb = geometry_of(t->transpose_b ? n : k, t->transpose_b ? k : n, t->pad, t->gap, t->batch);
    const geometry gc = geometry_of(m, n, t->pad, t->gap, t->batch);
    const geometry gd = t->in_place ? gc : geometry_of(m, n, t->pad + 1, t->gap + 3, t->batch);

    unsigned char *a_storage = malloc(ga.extent * ab_bytes), *b_storage = malloc(gb.extent * ab_bytes);
    double *a_values = malloc(ga.extent * sizeof(double)), *b_values = malloc(gb.extent * sizeof(double));
    float *c_host = malloc(gc.extent * sizeof(float)), *d_before = malloc(gd.extent * sizeof(float));
    float *d_after = malloc(gd.extent * sizeof(float)), *bias = malloc((size_t)m * sizeof(float));
    if (!a_storage || !b_storage || !a_values || !b_values || !c_host || !d_before || !d_after || !bias) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    fill_operand(&ga, t->ab_type, a_storage, a_values);
    fill_operand(&gb, t->ab_type, b_storage, b_values);
    /* C: values everywhere, padding included (in place it must survive) */
    for (size_t i = 0; i < gc.extent; i++) c_host[i] = t->nan_in_c ? NAN : uniform();
    for (int i = 0; i < m; i++) bias[i] = uniform();

    unsigned char *a_allocation = device_alloc((size_t)(t->a_offset + ga.extent) * ab_bytes);
    void *d_a = a_allocation + (size_t)t->a_offset * ab_bytes;
    CHECK(cudaMemcpy(d_a, a_storage, ga.extent * ab_bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    void *d_b = device_copy_of(b_storage, gb.extent * ab_bytes);
    float *d_c = device_copy_of(c_host, gc.extent * sizeof(float));
    float *d_d = d_c;
    if (t->in_place) {
        memcpy(d_before, c_host, gc.extent * sizeof(float));
    } else {
        for (size_t i = 0; i < gd.extent; i++) d_before[i] = 777.0f;
        d_d = device_copy_of(d_before, gd.extent * sizeof(float));
    }
    float *d_bias = t->with_bias ? device_copy_of(bias, (size_t)m * sizeof(float)) : NULL;

    /* the call sequence of model/cuda/gemm_cublaslt.cu */
    cublasLtMatmulDesc_t desc = NULL;
    CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    const cublasOperation_t op_a = t->transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = t->transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b) ==
          CUBLAS_STATUS_SUCCESS);
    if (t->with_bias) {
        const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = CUDA_R_32F;
        CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue) ==
              CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &d_bias, sizeof d_bias) ==
              CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                             sizeof bias_type) == CUBLAS_STATUS_SUCCESS);
    }
    cublasLtMatrixLayout_t la = make_layout(t->ab_type, &ga), lb = make_layout(t->ab_type, &gb);
    cublasLtMatrixLayout_t lc = make_layout(CUDA_R_32F, &gc), ld = t->in_place ? lc : make_layout(CUDA_R_32F, &gd);

    cublasLtMatmulPreference_t preference = NULL;
    CHECK(cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS);
    const uint64_t workspace_bytes = WORKSPACE_BYTES;
    CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                               sizeof workspace_bytes) == CUBLAS_STATUS_SUCCESS);
    const uint32_t alignments[4] = {alignment_of(d_a, &ga, ab_bytes), alignment_of(d_b, &gb, ab_bytes),
                                    alignment_of(d_c, &gc, 4), alignment_of(d_d, &gd, 4)};
    const cublasLtMatmulPreferenceAttributes_t alignment_attributes[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        CHECK(cublasLtMatmulPreferenceSetAttribute(preference, alignment_attributes[i], &alignments[i],
                                                   sizeof alignments[i]) == CUBLAS_STATUS_SUCCESS);

    cublasLtMatmulHeuristicResult_t results[4];
    int found = -1;
    CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, lc, ld, preference, 4, results, &found) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK_MSG(found == 3, "%s: the heuristic found %d algorithms (3 expected)", t->name, found);
    for (int r = 0; r < 3 && r < found; r++)
        CHECK(results[r].state == CUBLAS_STATUS_SUCCESS && results[r].workspaceSize <= WORKSPACE_BYTES);
    const cublasStatus_t status = cublasLtMatmul(handle, desc, &t->alpha, d_a, la, d_b, lb, &t->beta, d_c, lc, d_d,
                                                 ld, &results[0].algo, workspace, WORKSPACE_BYTES, NULL);
    CHECK_MSG(status == CUBLAS_STATUS_SUCCESS, "%s: cublasLtMatmul: %s", t->name, cublasLtGetStatusString(status));
    fetch(d_after, d_d, gd.extent * sizeof(float));

    /* every element of every D matrix against the reference; the rest of D's memory untouched */
    char *in_matrix = calloc(gd.extent, 1);
    int wrong = 0;
    double worst = 0.0;
    for (int b = 0; b < t->batch; b++)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                double sum = 0.0, magnitude = 0.0;
                for (int l = 0; l < k; l++) {
                    const double a = a_values[element_index(&ga, b, t->transpose_a ? l : i, t->transpose_a ? i : l)];
                    const double bv = b_values[element_index(&gb, b, t->transpose_b ? j : l, t->transpose_b ? l : j)];
                    sum += a * bv;
                    magnitude += fabs(a * bv);
                }
                double expected = (double)t->alpha * sum, scale = fabs((double)t->alpha) * magnitude;
                if (t->beta != 0.0f) {
                    const double c = c_host[element_index(&gc, b, i, j)];
                    expected += (double)t->beta * c;
                    scale += fabs((double)t->beta * c);
                }
                if (t->with_bias) {
                    expected += bias[i];
                    scale += fabs(bias[i]);
                }
                const size_t at = element_index(&gd, b, i, j);
                in_matrix[at] = 1;
                const double error = fabs((double)d_after[at] - expected);
                if (!(error <= 1e-5 * scale + 1e-30)) {
                    if (wrong++ < 5)
                        fprintf(stderr, "%s: D[batch %d][%d][%d] = %.9g, expected %.9g\n", t->name, b, i, j,
                                (double)d_after[at], expected);
                } else if (scale > 0 && error / scale > worst) {
                    worst = error / scale;
                }
            }
    CHECK_MSG(wrong == 0, "%s: %d elements of D wrong", t->name, wrong);
    size_t touched = 0;
    for (size_t i = 0; i < gd.extent; i++)
        if (!in_matrix[i] && memcmp(&d_after[i], &d_before[i], sizeof(float)) != 0) touched++;
    CHECK_MSG(touched == 0, "%s: %zu elements between D's matrices were written", t->name, touched);
    printf("%s: worst error %.2g of the magnitude\n", t->name, worst);

    CHECK(cublasLtMatmulPreferenceDestroy(preference) == CUBLAS_STATUS_SUCCESS);
    if (!t->in_place) CHECK(cublasLtMatrixLayoutDestroy(ld) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lc) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lb) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(la) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(desc) == CUBLAS_STATUS_SUCCESS);
    free(in_matrix);
    free(a_storage);
    free(b_storage);
    free(a_values);
    free(b_values);
    free(c_host);
    free(d_before);
    free(d_after);
    free(bias);
    release_device_buffers();
}

static void test_matmul_against_reference(void) {
    for (int ta = 0; ta <= 1; ta++)
        for (int tb = 0; tb <= 1; tb++) {
            char name[96], apart_name[96];
            snprintf(name, sizeof name, "fp32 TRANSA %c TRANSB %c, 5 x 7 x 3, batch 3, in place", ta ? 'T' : 'N',
                     tb ? 'T' : 'N');
            snprintf(apart_name, sizeof apart_name, "fp32 TRANSA %c TRANSB %c, batch 3, out of place, ldd != ldc",
                     ta ? 'T' : 'N', tb ? 'T' : 'N');
            const gemm_case in_place = {name, ta, tb, 5, 7, 3, 3, 2, 4, CUDA_R_32F, 0.75f, -0.5f, 0, 1, 0, 0};
            check_gemm_case(&in_place);
            gemm_case apart = in_place;
            apart.name = apart_name;
            apart.in_place = 0;
            apart.beta = 1.25f;
            check_gemm_case(&apart);
        }
    const gemm_case cases[] = {
        {"fp32 long k", 0, 1, 17, 9, 64, 1, 0, 0, CUDA_R_32F, 1.0f, 1.0f, 0, 1, 0, 0},
        {"fp32 beta 0, NaN in C, in place", 1, 0, 6, 4, 5, 3, 1, 2, CUDA_R_32F, 2.0f, 0.0f, 0, 1, 1, 0},
        {"fp32 beta 0, NaN in C, out of place", 0, 0, 6, 4, 5, 2, 0, 0, CUDA_R_32F, -1.0f, 0.0f, 0, 0, 1, 0},
        {"fp32 bias (the linear's call)", 1, 0, 8, 6, 10, 1, 0, 0, CUDA_R_32F, 1.0f, 0.0f, 1, 1, 1, 0},
        {"fp32 bias, batch 3, beta 0.5", 0, 1, 5, 3, 4, 3, 1, 1, CUDA_R_32F, 0.5f, 0.5f, 1, 0, 0, 0},
        {"bf16 TRANSA T", 1, 0, 6, 4, 33, 1, 2, 0, CUDA_R_16BF, 1.0f, 0.0f, 0, 1, 1, 1},
        {"bf16 TRANSB T, batch 3, bias", 0, 1, 7, 5, 9, 3, 1, 3, CUDA_R_16BF, 0.5f, 1.0f, 1, 1, 0, 3},
        {"fp16 TRANSA T", 1, 0, 6, 4, 33, 1, 0, 0, CUDA_R_16F, 1.0f, 0.0f, 0, 1, 1, 1},
        {"fp16 N N, batch 2, out of place", 0, 0, 4, 6, 12, 2, 3, 1, CUDA_R_16F, -2.0f, 0.25f, 0, 0, 0, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_gemm_case(&cases[i]);
}

/* ---- 16-bit values are widened exactly ---- */

/* D (patterns x 1) = A (patterns x 1, 16-bit) times B (1 x 1) = 1: each
 * element of D is 0 + a * 1, the widened value itself (-0 comes out +0). */
static void check_widening(const char *name, cudaDataType_t type, const uint16_t *patterns, const double *expected,
                           int count, uint16_t one) {
    void *d_a = device_copy_of(patterns, (size_t)count * 2);
    void *d_b = device_copy_of(&one, 2);
    float *d_d = device_alloc((size_t)count * sizeof(float));
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&la, type, (uint64_t)count, 1, count) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&lb, type, 1, 1, 1) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, (uint64_t)count, 1, count) == CUBLAS_STATUS_SUCCESS);
    const float alpha = 1.0f, beta = 0.0f;
    /* no algorithm: the library's own choice, no alignment promised */
    CHECK(cublasLtMatmul(handle, desc, &alpha, d_a, la, d_b, lb, &beta, d_d, ld, d_d, ld, NULL, NULL, 0, NULL) ==
          CUBLAS_STATUS_SUCCESS);
    float got[32];
    fetch(got, d_d, (size_t)count * sizeof(float));
    for (int i = 0; i < count; i++) {
        const int same = isnan(expected[i]) ? isnan(got[i]) : (double)got[i] == expected[i];
        CHECK_MSG(same, "%s 0x%04x widened to %.9g, expected %.9g", name, patterns[i], (double)got[i], expected[i]);
    }
    CHECK(cublasLtMatrixLayoutDestroy(ld) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lb) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(la) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(desc) == CUBLAS_STATUS_SUCCESS);
    release_device_buffers();
}

static void test_widening(void) {
    const uint16_t half_patterns[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0x3c01,
                                      0xc000, 0x3555, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7c01};
    const double half_expected[] = {0.0,        0.0,     0x1p-24, -0x1p-24, 1023 * 0x1p-24, 0x1p-14,   1.0,
                                    1 + 0x1p-10, -2.0,   0.333251953125, 65504.0,  INFINITY,  -INFINITY, NAN, NAN};
    check_widening("fp16", CUDA_R_16F, half_patterns, half_expected, (int)(sizeof half_patterns / 2), 0x3c00);
    const uint16_t bfloat16_patterns[] = {0x0000, 0x8000, 0x0001, 0x007f, 0x0080, 0x3f80, 0xc040,
                                          0x3eab, 0x7f7f, 0x7f80, 0xff80, 0x7fc0, 0x7f81};
    const double bfloat16_expected[] = {0.0,    0.0,         0x1p-133,  127 * 0x1p-133, 0x1p-126, 1.0, -3.0,
                                        0.333984375, 0x1.fep127, INFINITY, -INFINITY,      NAN,      NAN};
    check_widening("bf16", CUDA_R_16BF, bfloat16_patterns, bfloat16_expected, (int)(sizeof bfloat16_patterns / 2),
                   0x3f80);
}

/* ---- statuses ---- */

static void test_setter_statuses(void) {
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t layout = NULL;
    cublasLtMatmulPreference_t preference = NULL;
    CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, 4, 3, 4) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS);

    const int64_t wide = 1;
    const int32_t narrow = 1;
    const float *pointer = NULL;
    /* a value of the wrong size, no value, an attribute that is not there */
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &wide, 2) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &narrow, sizeof narrow) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, NULL, sizeof narrow) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(desc, (cublasLtMatmulDescAttributes_t)99, &narrow, sizeof narrow) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &narrow,
                                           sizeof narrow) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, (cublasLtMatrixLayoutAttribute_t)2, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &narrow,
                                               sizeof narrow) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &wide,
                                               sizeof wide) == CUBLAS_STATUS_INVALID_VALUE);
    /* values out of range */
    const int32_t no_batch = 0;
    const int64_t negative_stride = -4;
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &no_batch, sizeof no_batch) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &negative_stride,
                                           sizeof negative_stride) == CUBLAS_STATUS_INVALID_VALUE);
    /* and the right sizes are taken */
    CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pointer, sizeof pointer) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &narrow, sizeof narrow) ==
          CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &wide, sizeof wide) ==
          CUBLAS_STATUS_SUCCESS);

    CHECK(cublasLtMatmulPreferenceDestroy(preference) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(layout) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(desc) == CUBLAS_STATUS_SUCCESS);

    CHECK(strcmp(cublasLtGetStatusString(CUBLAS_STATUS_SUCCESS), "CUBLAS_STATUS_SUCCESS") == 0);
    CHECK(strcmp(cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED") == 0);
    CHECK(strcmp(cublasLtGetStatusString(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE") == 0);
    CHECK(CUBLAS_STATUS_INVALID_VALUE == 7 && CUBLAS_STATUS_NOT_SUPPORTED == 15 && CUBLAS_COMPUTE_32F == 68);
}

/* A 4 x 3 x 2 problem of the given types and epilogue (other than the
 * default: with a bias of bias_type); the answer of the heuristic and of the
 * matmul (which is not fatal for what is not supported either). */
static void expect_not_supported(const char *name, cublasComputeType_t compute, cudaDataType_t ab_type,
                                 cudaDataType_t cd_type, uint32_t epilogue, int32_t bias_type) {
    float *d_a = device_alloc(64), *d_b = device_alloc(64), *d_c = device_alloc(64), *d_bias = device_alloc(64);
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t preference = NULL;
    CHECK(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
        CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue) ==
              CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &d_bias, sizeof d_bias) ==
              CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                             sizeof bias_type) == CUBLAS_STATUS_SUCCESS);
    }
    CHECK(cublasLtMatrixLayoutCreate(&la, ab_type, 4, 2, 4) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&lb, ab_type, 2, 3, 2) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&lc, cd_type, 4, 3, 4) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t result;
    int found = -1;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, lc, lc, preference, 1, &result, &found);
    CHECK_MSG(status == CUBLAS_STATUS_NOT_SUPPORTED && found == 0, "%s: heuristic %s, found %d", name,
              cublasLtGetStatusString(status), found);
    const float alpha = 1.0f, beta = 0.0f;
    CHECK(cublasLtMatmul(handle, desc, &alpha, d_a, la, d_b, lb, &beta, d_c, lc, d_c, lc, NULL, NULL, 0, NULL) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmulPreferenceDestroy(preference) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lc) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lb) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(la) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(desc) == CUBLAS_STATUS_SUCCESS);
    release_device_buffers();
}

static void test_unsupported(void) {
    const uint32_t plain = CUBLASLT_EPILOGUE_DEFAULT, bias = CUBLASLT_EPILOGUE_BIAS;
    const uint32_t relu_bias = 6; /* CUBLASLT_EPILOGUE_RELU_BIAS, which the emulation does not declare */
    expect_not_supported("fp64 inputs", CUBLAS_COMPUTE_32F, CUDA_R_64F, CUDA_R_32F, plain, 0);
    expect_not_supported("TF32 compute", CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F, CUDA_R_32F, plain, 0);
    expect_not_supported("bf16 output", CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_16BF, plain, 0);
    expect_not_supported("bf16 bias", CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_32F, bias, CUDA_R_16BF);
    expect_not_supported("ReLU epilogue", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_32F, relu_bias, CUDA_R_32F);
}

static void test_handle(void) {
    cublasLtHandle_t other = NULL;
    CHECK(cublasLtCreate(&other) == CUBLAS_STATUS_SUCCESS && other);
    CHECK(cublasLtDestroy(other) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtDestroy(NULL) == CUBLAS_STATUS_NOT_INITIALIZED);
    /* no device, no handle */
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    char *saved = visible ? strdup(visible) : NULL;
    setenv("CUDA_VISIBLE_DEVICES", "-1", 1);
    CHECK(cublasLtCreate(&other) == CUBLAS_STATUS_NOT_INITIALIZED && !other);
    if (saved) setenv("CUDA_VISIBLE_DEVICES", saved, 1);
    else unsetenv("CUDA_VISIBLE_DEVICES");
    free(saved);
    (void)cudaGetLastError(); /* the device count's error */
}

/* ---- the caller's mistakes end the program ---- */

/* A valid 4 x 3 x 2 fp32 problem (A 4 x 2, B 2 x 3, C = D 4 x 3) that each
 * mistake below spoils one thing of, in a child process. Every buffer has
 * SPARE elements after it, so that moved pointers stay inside it. */
#define SPARE 64
typedef struct {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulPreference_t preference; /* promises 4-byte alignment */
    float *d_a, *d_b, *d_c, *d_bias;
    float alpha, beta;
} fixture;
static fixture fx;

static void fixture_make(void) {
    fx.d_a = device_alloc((8 + SPARE) * sizeof(float));
    fx.d_b = device_alloc((6 + SPARE) * sizeof(float));
    fx.d_c = device_alloc((12 + SPARE) * sizeof(float));
    fx.d_bias = device_alloc(4 * sizeof(float));
    CHECK(cudaMemset(fx.d_a, 0, (8 + SPARE) * sizeof(float)) == cudaSuccess);
    CHECK(cudaMemset(fx.d_b, 0, (6 + SPARE) * sizeof(float)) == cudaSuccess);
    CHECK(cudaMemset(fx.d_c, 0, (12 + SPARE) * sizeof(float)) == cudaSuccess);
    CHECK(cudaMemset(fx.d_bias, 0, 4 * sizeof(float)) == cudaSuccess);
    CHECK(cublasLtMatmulDescCreate(&fx.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&fx.a, CUDA_R_32F, 4, 2, 4) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&fx.b, CUDA_R_32F, 2, 3, 2) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutCreate(&fx.c, CUDA_R_32F, 4, 3, 4) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulPreferenceCreate(&fx.preference) == CUBLAS_STATUS_SUCCESS);
    const uint32_t four = 4;
    for (int i = 0; i < 4; i++)
        CHECK(cublasLtMatmulPreferenceSetAttribute(
                  fx.preference, (cublasLtMatmulPreferenceAttributes_t)(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i),
                  &four, sizeof four) == CUBLAS_STATUS_SUCCESS);
    fx.alpha = 1.0f;
    fx.beta = 1.0f;
}

static void fixture_release(void) {
    CHECK(cublasLtMatmulPreferenceDestroy(fx.preference) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(fx.c) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(fx.b) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(fx.a) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulDescDestroy(fx.desc) == CUBLAS_STATUS_SUCCESS);
    release_device_buffers();
}

/* The fixture's heuristic, then its matmul with these operands and layouts. */
static void fixture_run(const void *a, cublasLtMatrixLayout_t la, const void *b, cublasLtMatrixLayout_t lb,
                        const float *c, cublasLtMatrixLayout_t lc, float *d, cublasLtMatrixLayout_t ld,
                        cublasLtMatmulPreference_t preference) {
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(handle, fx.desc, la, lb, lc, ld, preference, 1, &result, &found) !=
            CUBLAS_STATUS_SUCCESS ||
        found != 1)
        return;
    cublasLtMatmul(handle, fx.desc, &fx.alpha, a, la, b, lb, &fx.beta, c, lc, d, ld, &result.algo, workspace,
                   WORKSPACE_BYTES, NULL);
}

static void fixture_run_with(const void *a, const void *b, const float *c, float *d) {
    fixture_run(a, fx.a, b, fx.b, c, fx.c, d, fx.c, fx.preference);
}

static cublasLtMatrixLayout_t layout_or_exit(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld,
                                             int32_t batch, int64_t stride) {
    cublasLtMatrixLayout_t layout = NULL;
    if (cublasLtMatrixLayoutCreate(&layout, type, rows, cols, ld) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride) !=
            CUBLAS_STATUS_SUCCESS)
        _exit(3);
    return layout;
}

static void wrong_a_shape(void) {
    fixture_run(fx.d_a, layout_or_exit(CUDA_R_32F, 5, 2, 5, 1, 0), fx.d_b, fx.b, fx.d_c, fx.c, fx.d_c, fx.c,
                fx.preference);
}

static void wrong_b_shape_for_its_transpose(void) {
    const cublasOperation_t transposed = CUBLAS_OP_T;
    cublasLtMatmulDescSetAttribute(fx.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transposed, sizeof transposed);
    fixture_run_with(fx.d_a, fx.d_b, fx.d_c, fx.d_c);
}

static void ld_below_rows(void) {
    fixture_run(fx.d_a, fx.a, fx.d_b, fx.b, fx.d_c, fx.c, fx.d_c, layout_or_exit(CUDA_R_32F, 4, 3, 3, 1, 0),
                fx.preference);
}

static void mixed_input_types(void) {
    fixture_run(fx.d_a, fx.a, fx.d_b, layout_or_exit(CUDA_R_16BF, 2, 3, 2, 1, 0), fx.d_c, fx.c, fx.d_c, fx.c,
                fx.preference);
}

static void batch_counts_differ(void) {
    fixture_run(fx.d_a, layout_or_exit(CUDA_R_32F, 4, 2, 4, 2, 8), fx.d_b, fx.b, fx.d_c, fx.c, fx.d_c, fx.c,
                fx.preference);
}

static void b_past_its_allocation(void) { fixture_run_with(fx.d_a, fx.d_b + SPARE + 1, fx.d_c, fx.d_c); }

static void b_in_host_memory(void) {
    static float host_b[6];
    fixture_run_with(fx.d_a, host_b, fx.d_c, fx.d_c);
}

static void b_between_elements(void) {
    fixture_run_with(fx.d_a, (const char *)fx.d_b + 2, fx.d_c, fx.d_c);
}

static void bias_past_its_allocation(void) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const float *bias = fx.d_bias + 1;
    cublasLtMatmulDescSetAttribute(fx.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue);
    cublasLtMatmulDescSetAttribute(fx.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    fixture_run_with(fx.d_a, fx.d_b, fx.d_c, fx.d_c);
}

static void bias_epilogue_without_bias(void) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(fx.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue);
    fixture_run_with(fx.d_a, fx.d_b, fx.d_c, fx.d_c);
}

static void alignment_promise_broken(void) {
    const uint32_t promise = 16;
    cublasLtMatmulPreferenceSetAttribute(fx.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &promise,
                                         sizeof promise);
    fixture_run_with(fx.d_a + 1, fx.d_b, fx.d_c, fx.d_c);
}

static void default_alignment_promise_broken(void) {
    cublasLtMatmulPreference_t preference = NULL;
    cublasLtMatmulPreferenceCreate(&preference); /* promises 256 bytes for every operand */
    fixture_run(fx.d_a, fx.a, fx.d_b, fx.b, fx.d_c + 4, fx.c, fx.d_c + 4, fx.c, preference);
}

static void batch_stride_breaks_the_promise(void) {
    const uint32_t promise = 16;
    cublasLtMatmulPreferenceSetAttribute(fx.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &promise,
                                         sizeof promise);
    fixture_run(fx.d_a, layout_or_exit(CUDA_R_32F, 4, 2, 4, 2, 8), fx.d_b, layout_or_exit(CUDA_R_32F, 2, 3, 2, 2, 7),
                fx.d_c, layout_or_exit(CUDA_R_32F, 4, 3, 4, 2, 12), fx.d_c, layout_or_exit(CUDA_R_32F, 4, 3, 4, 2, 12),
                fx.preference);
}

static void d_overlaps_a(void) {
    fx.beta = 0.0f;
    fixture_run_with(fx.d_a, fx.d_b, fx.d_c, fx.d_a + 6);
}

static void d_matrices_overlap(void) {
    fx.beta = 0.0f;
    fixture_run(fx.d_a, layout_or_exit(CUDA_R_32F, 4, 2, 4, 2, 0), fx.d_b, layout_or_exit(CUDA_R_32F, 2, 3, 2, 2, 0),
                fx.d_c, layout_or_exit(CUDA_R_32F, 4, 3, 4, 2, 0), fx.d_c, layout_or_exit(CUDA_R_32F, 4, 3, 6, 2, 2),
                fx.preference);
}

static void c_and_d_in_place_with_other_layouts(void) {
    fixture_run(fx.d_a, fx.a, fx.d_b, fx.b, fx.d_c, fx.c, fx.d_c, layout_or_exit(CUDA_R_32F, 4, 3, 5, 1, 0),
                fx.preference);
}

static void c_partly_overlaps_d(void) {
    fixture_run_with(fx.d_a, fx.d_b, fx.d_c, fx.d_c + 2);
}

static void algorithm_not_from_the_heuristic(void) {
    cublasLtMatmulAlgo_t algo;
    memset(&algo, 0, sizeof algo);
    cublasLtMatmul(handle, fx.desc, &fx.alpha, fx.d_a, fx.a, fx.d_b, fx.b, &fx.beta, fx.d_c, fx.c, fx.d_c, fx.c, &algo,
                   NULL, 0, NULL);
}

static void workspace_in_host_memory(void) {
    static char host_workspace[64];
    cublasLtMatmul(handle, fx.desc, &fx.alpha, fx.d_a, fx.a, fx.d_b, fx.b, &fx.beta, fx.d_c, fx.c, fx.d_c, fx.c, NULL,
                   host_workspace, sizeof host_workspace, NULL);
}

static void unknown_refusal(void) {
    setenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE", "first,sometimes", 1);
    fixture_run_with(fx.d_a, fx.d_b, fx.d_c, fx.d_c);
}

/* Runs mistake() in a child: it must end with exit status 1 and a line on
 * stderr containing `expected`. */
static void expect_fatal(const char *name, void (*mistake)(void), const char *expected) {
    int pipe_ends[2];
    if (pipe(pipe_ends) != 0) {
        perror("pipe");
        exit(1);
    }
    fflush(stdout);
    fflush(stderr);
    const pid_t child = fork();
    if (child < 0) {
        perror("fork");
        exit(1);
    }
    if (child == 0) {
        close(pipe_ends[0]);
        dup2(pipe_ends[1], STDERR_FILENO);
        mistake();
        _exit(0); /* the mistake went unnoticed */
    }
    close(pipe_ends[1]);
    char output[4096];
    size_t used = 0;
    ssize_t got;
    while ((got = read(pipe_ends[0], output + used, sizeof output - 1 - used)) > 0) used += (size_t)got;
    output[used] = '\0';
    close(pipe_ends[0]);
    int wait_status = 0;
    CHECK(waitpid(child, &wait_status, 0) == child);
    const int exit_status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
    CHECK_MSG(exit_status == 1, "%s: exit status %d (1 expected), stderr: %s", name, exit_status, output);
    CHECK_MSG(strstr(output, expected) != NULL, "%s: \"%s\" expected in: %s", name, expected, output);
    if (exit_status == 1) printf("%s: %s", name, output);
}

static void test_mistakes_are_fatal(void) {
    fixture_make();
    expect_fatal("wrong A shape", wrong_a_shape, "cublasLtMatmulAlgoGetHeuristic: A is 5 x 2");
    expect_fatal("B not transposed", wrong_b_shape_for_its_transpose, "TRANSB = T");
    expect_fatal("ld < rows", ld_below_rows, "D's leading dimension 3 is less than its 4 rows");
    expect_fatal("A and B types", mixed_input_types, "A and B have different types");
    expect_fatal("batch counts", batch_counts_differ, "batch count");
    expect_fatal("B past its allocation", b_past_its_allocation, "cublasLtMatmul operand B");
    expect_fatal("B in host memory", b_in_host_memory, "not device memory");
    expect_fatal("B misaligned", b_between_elements, "B at");
    expect_fatal("bias past its allocation", bias_past_its_allocation, "cublasLtMatmul operand bias");
    expect_fatal("BIAS without a pointer", bias_epilogue_without_bias, "CUBLASLT_MATMUL_DESC_BIAS_POINTER is NULL");
    expect_fatal("alignment promise", alignment_promise_broken, "CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES");
    expect_fatal("default alignment promise", default_alignment_promise_broken, "not 256-byte aligned");
    expect_fatal("batch stride promise", batch_stride_breaks_the_promise, "(batch stride 28 bytes) is not 16-byte");
    expect_fatal("D overlaps A", d_overlaps_a, "D (at");
    expect_fatal("D's matrices overlap", d_matrices_overlap, "matrices of D");
    expect_fatal("in place, two layouts", c_and_d_in_place_with_other_layouts, "different layouts");
    expect_fatal("C partly D", c_partly_overlaps_d, "shares memory with C");
    expect_fatal("algorithm", algorithm_not_from_the_heuristic, "not filled in by cublasLtMatmulAlgoGetHeuristic");
    expect_fatal("workspace", workspace_in_host_memory, "cublasLtMatmul workspace");
    expect_fatal("unknown refusal", unknown_refusal,
                 "LDM_CUDA_EMULATION_CUBLASLT_REFUSE=first,sometimes: unknown word 'sometimes'");
    fixture_release();
}

/* ---- refusals (LDM_CUDA_EMULATION_CUBLASLT_REFUSE) and cuBLAS's GEMMs ---- */

/* The heuristic's count and status for the fixture's problem with layout b
 * for B and alignment promises of `alignment` bytes. */
static int heuristic_count(cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                           uint32_t alignment, cublasLtMatmulHeuristicResult_t results[3]) {
    cublasLtMatmulPreference_t preference;
    CHECK(cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < 4; i++)
        CHECK(cublasLtMatmulPreferenceSetAttribute(
                  preference, (cublasLtMatmulPreferenceAttributes_t)(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i),
                  &alignment, sizeof alignment) == CUBLAS_STATUS_SUCCESS);
    int found = -1;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, fx.desc, la, lb, lc, lc, preference, 3, results, &found);
    CHECK(cublasLtMatmulPreferenceDestroy(preference) == CUBLAS_STATUS_SUCCESS);
    CHECK_MSG((status == CUBLAS_STATUS_SUCCESS) == (found > 0), "heuristic %s with %d results",
              cublasLtGetStatusString(status), found);
    return found;
}

static cublasStatus_t matmul_with(const cublasLtMatmulHeuristicResult_t *result, cublasLtMatrixLayout_t la,
                                  cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc) {
    return cublasLtMatmul(handle, fx.desc, &fx.alpha, fx.d_a, la, fx.d_b, lb, &fx.beta, fx.d_c, lc, fx.d_c, lc,
                          &result->algo, workspace, WORKSPACE_BYTES, NULL);
}

static void set_refusals(const char *words) {
    if (words)
        setenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE", words, 1);
    else
        unsetenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE");
}

/* Each refusal on the fixture's problem (batch 2: A 4 x 2, B 2 x 3 of stride 0
 * or 6, C 4 x 3 of stride 12), and cuBLAS's GEMMs (which the refusals of
 * cuBLASLt leave alone) against the matmul's own result. */
static void test_refusals(void) {
    fixture_make();
    cublasLtMatrixLayout_t la = layout_or_exit(CUDA_R_32F, 4, 2, 4, 2, 8);
    cublasLtMatrixLayout_t lb = layout_or_exit(CUDA_R_32F, 2, 3, 2, 2, 6);
    cublasLtMatrixLayout_t lb0 = layout_or_exit(CUDA_R_32F, 2, 3, 2, 2, 0);
    cublasLtMatrixLayout_t lc = layout_or_exit(CUDA_R_32F, 4, 3, 4, 2, 12);
    cublasLtMatmulHeuristicResult_t results[3];

    set_refusals(NULL);
    CHECK(heuristic_count(la, lb, lc, 256, results) == 3);
    CHECK(heuristic_count(la, lb0, lc, 4, results) == 3);
    for (int r = 0; r < 3; r++) CHECK(matmul_with(&results[r], la, lb0, lc) == CUBLAS_STATUS_SUCCESS);
    set_refusals("first");
    CHECK(heuristic_count(la, lb, lc, 4, results) == 3);
    CHECK(matmul_with(&results[0], la, lb, lc) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(matmul_with(&results[1], la, lb, lc) == CUBLAS_STATUS_SUCCESS);
    set_refusals("all");
    CHECK(heuristic_count(la, lb, lc, 4, results) == 3);
    for (int r = 0; r < 3; r++) CHECK(matmul_with(&results[r], la, lb, lc) == CUBLAS_STATUS_NOT_SUPPORTED);
    set_refusals("none");
    CHECK(heuristic_count(la, lb, lc, 256, results) == 0);
    set_refusals("unaligned");
    CHECK(heuristic_count(la, lb, lc, 256, results) == 3);
    CHECK(heuristic_count(la, lb, lc, 32, results) == 0);
    set_refusals("stride0");
    CHECK(heuristic_count(la, lb, lc, 4, results) == 3);
    CHECK(heuristic_count(la, lb0, lc, 4, results) == 0);

    /* cuBLAS: the same numbers as the matmul, also when cuBLASLt refuses everything */
    float a[16], b[12], c[24];
    for (int i = 0; i < 16; i++) a[i] = uniform();
    for (int i = 0; i < 12; i++) b[i] = uniform();
    for (int i = 0; i < 24; i++) c[i] = uniform();
    CHECK(cudaMemcpy(fx.d_a, a, sizeof a, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(fx.d_b, b, sizeof b, cudaMemcpyHostToDevice) == cudaSuccess);
    set_refusals(NULL);
    CHECK(heuristic_count(la, lb, lc, 4, results) == 3);
    CHECK(cudaMemcpy(fx.d_c, c, sizeof c, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(matmul_with(&results[0], la, lb, lc) == CUBLAS_STATUS_SUCCESS);
    float expected[24], got[24];
    fetch(expected, fx.d_c, sizeof expected);

    set_refusals("none,all");
    cublasHandle_t cublas = NULL;
    CHECK(cublasCreate(&cublas) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasSetStream(cublas, NULL) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasSetWorkspace(cublas, workspace, WORKSPACE_BYTES) == CUBLAS_STATUS_SUCCESS);
    CHECK(cudaMemcpy(fx.d_c, c, sizeof c, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cublasGemmStridedBatchedEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 2, &fx.alpha, fx.d_a, CUDA_R_32F, 4, 8,
                                     fx.d_b, CUDA_R_32F, 2, 6, &fx.beta, fx.d_c, CUDA_R_32F, 4, 12, 2,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    fetch(got, fx.d_c, sizeof got);
    CHECK_MSG(memcmp(got, expected, sizeof got) == 0, "cublasGemmStridedBatchedEx differs from cublasLtMatmul");
    CHECK(cudaMemcpy(fx.d_c, c, sizeof c, cudaMemcpyHostToDevice) == cudaSuccess);
    for (int i = 0; i < 2; i++)
        CHECK(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 2, &fx.alpha, fx.d_a + 8 * i, CUDA_R_32F, 4,
                           fx.d_b + 6 * i, CUDA_R_32F, 2, &fx.beta, fx.d_c + 12 * i, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    fetch(got, fx.d_c, sizeof got);
    CHECK_MSG(memcmp(got, expected, sizeof got) == 0, "cublasGemmEx per matrix differs from cublasLtMatmul");
    set_refusals("strided");
    CHECK(cublasGemmStridedBatchedEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 2, &fx.alpha, fx.d_a, CUDA_R_32F, 4, 8,
                                     fx.d_b, CUDA_R_32F, 2, 6, &fx.beta, fx.d_c, CUDA_R_32F, 4, 12, 2,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasGemmEx(NULL, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 2, &fx.alpha, fx.d_a, CUDA_R_32F, 4, fx.d_b, CUDA_R_32F,
                       2, &fx.beta, fx.d_c, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_INITIALIZED);
    CHECK(cublasDestroy(cublas) == CUBLAS_STATUS_SUCCESS);
    set_refusals(NULL);

    CHECK(cublasLtMatrixLayoutDestroy(lc) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lb0) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(lb) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatrixLayoutDestroy(la) == CUBLAS_STATUS_SUCCESS);
    fixture_release();
}

int main(void) {
    if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasLtCreate failed\n");
        return 1;
    }
    /* shared by every matmul, so outside device_buffers */
    if (cudaMalloc(&workspace, WORKSPACE_BYTES) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc of the workspace failed\n");
        return 1;
    }

    test_matmul_against_reference();
    test_widening();
    test_setter_statuses();
    test_unsupported();
    test_handle();
    test_mistakes_are_fatal();
    test_refusals();

    CHECK(cudaFree(workspace) == cudaSuccess);
    CHECK(cublasLtDestroy(handle) == CUBLAS_STATUS_SUCCESS);
    return test_finish("test_cuda_emulation_cublaslt");
}
