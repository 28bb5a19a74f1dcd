/* The CPU's bf16 GEMMs through oneDNN's matmul primitive (bf16 operands, fp32
 * accumulation and output), its fp32 GEMMs for the DiT, and the run-time choice
 * of the CPU's bf16 GEMM.
 *
 * Choice (cpu_gemm_bf16_kind), where this build has oneDNN: its bf16 matmul on
 * bf16 bits (onednn) on CPUs with AVX512_BF16 whose bf16 dot product does more
 * multiply-adds per cycle than fp32 FMAs (AMD's), else its fp32 matmul on fp32
 * buffers holding bf16-rounded values (onednn-f32: the same products exactly, fp32
 * sums). Without oneDNN: the own bf16 GEMM (gemm_bf16.h) where the CPU has the
 * instruction, else OpenBLAS's sgemm on rounded values. LDM_CPU_GEMM=onednn,
 * onednn-f32, own or openblas forces one (one that cannot run is an error);
 * LDM_NO_BF16_GEMM=1 is LDM_CPU_GEMM=openblas.
 *
 * Primitives are made once per shape (gemm_onednn_plan, called when a model is
 * laid out) and kept in a table shared by every model; gemm_onednn runs the one
 * made for its shape (making it first if no plan made it: that is counted, so
 * tests can check that a training step makes none). Every primitive runs with
 * the one scratchpad buffer (user mode), grown only when a primitive is made.
 * oneDNN uses the program's OpenMP threads: call from outside parallel regions,
 * from one thread at a time.
 *
 * Numerics: each element is accumulated in fp32 in an order fixed by the shape:
 * the ISA is held at avx512_core_bf16 (no AMX, whose order differs), and a
 * product with a transposed left operand (a weight gradient, k = rows) is cut
 * into k chunks of at most GEMM_ONEDNN_K_CHUNK, below the size at which oneDNN
 * 2.6 splits k over threads. So results do not depend on the thread count, and
 * a row of C does not depend on the other rows (on m): tests/test_gemm_onednn.c
 * checks both. */
#ifndef LDM_GEMM_ONEDNN_H
#define LDM_GEMM_ONEDNN_H

#include <stdint.h>

typedef enum { CPU_GEMM_OPENBLAS, CPU_GEMM_OWN, CPU_GEMM_ONEDNN, CPU_GEMM_ONEDNN_F32 } cpu_gemm_kind;

/* The bf16 GEMM this process uses (decided once, from the CPU, the build and
 * LDM_CPU_GEMM / LDM_NO_BF16_GEMM; a bad value ends the program with one line). */
cpu_gemm_kind cpu_gemm_bf16_kind(void);
/* The DiT's fp32 GEMM (decided once): oneDNN where this build has it, which finds
 * the CPU's instruction set itself (OpenBLAS falls back to generic kernels on a
 * CPU it does not recognise unless OPENBLAS_CORETYPE names one), else OpenBLAS;
 * LDM_CPU_GEMM=openblas or own gives OpenBLAS, onednn or onednn-f32 oneDNN. */
cpu_gemm_kind cpu_gemm_fp32_kind(void);
/* 1 when the CPU has AVX512_BF16 (and AVX-512F). */
int cpu_has_avx512_bf16(void);
/* 1 when this build links oneDNN. */
int onednn_built(void);
/* "onednn", "onednn-f32", "own", "openblas". */
const char *cpu_gemm_kind_name(cpu_gemm_kind kind);

#define GEMM_ONEDNN_K_CHUNK 1024

/* C (m, n) = beta * C + A' B' (+ bias in every row), row-major, beta 0 or 1:
 * A' (m, k) is A or A^T (A stored (k, m)), B' (k, n) is B or B^T (B stored (n, k)),
 * A and B bf16 bits, bias (n) fp32 or NULL, C fp32. Only where
 * cpu_gemm_bf16_kind() is CPU_GEMM_ONEDNN. */
void gemm_onednn(int transpose_a, int transpose_b, int m, int n, int k, const uint16_t *a, int lda,
                 const uint16_t *b, int ldb, const float *bias, float beta, float *c, int ldc);
/* Makes the primitives gemm_onednn of these arguments will run (bias: with one or not). */
void gemm_onednn_plan(int transpose_a, int transpose_b, int m, int n, int k, int lda, int ldb, int with_bias,
                      float beta, int ldc);

/* The same with A and B fp32 (the DiT's fp32 GEMMs where cpu_gemm_fp32_kind() is
 * CPU_GEMM_ONEDNN), with the same numerics: fixed order, k chunks with a
 * transposed A, rows independent of m (tests/test_gemm_onednn.c). */
void gemm_onednn_f32(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
                     int ldb, const float *bias, float beta, float *c, int ldc);
void gemm_onednn_f32_plan(int transpose_a, int transpose_b, int m, int n, int k, int lda, int ldb, int with_bias,
                          float beta, int ldc);

/* C (m, n) = (A B') * F elementwise (fp32, A not transposed, no bias, beta 0):
 * the product and then one multiply by F (m, n; C's row stride), in the GEMM's
 * last pass over C (a binary post-op) instead of a pass of its own; the same bits
 * as gemm_onednn_f32 followed by that multiply. The DiT's fc2 input gradient
 * times GELU's slope. */
void gemm_onednn_f32_times(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                           const float *factor, float *c, int ldc);
void gemm_onednn_f32_times_plan(int transpose_b, int m, int n, int k, int lda, int ldb, int ldc);

/* A batched product of strided views: for every (i, j) < batch,
 * C[i, j] (m, n) = scale * A[i, j] (m, k) B[i, j] (k, n), element (i, j, r, c) of A
 * at a[i * a_strides[0] + j * a_strides[1] + r * a_strides[2] + c * a_strides[3]],
 * likewise B (k, n) and C (m, n); A and B bf16 bits, C fp32 (overwritten). */
typedef struct {
    int64_t batch[2], m, n, k;
    int64_t a_strides[4], b_strides[4], c_strides[4];
} batched_product;
void batched_gemm_onednn(const batched_product *p, const uint16_t *a, const uint16_t *b, float scale, float *c);
void batched_gemm_onednn_plan(const batched_product *p, float scale);
/* The same with A and B fp32. */
void batched_gemm_onednn_f32(const batched_product *p, const float *a, const float *b, float scale, float *c);
void batched_gemm_onednn_f32_plan(const batched_product *p, float scale);

/* How many primitives this process has made (for the tests). */
long gemm_onednn_primitives_made(void);
/* Destroys every primitive (tests: to make them again under another thread count). */
void gemm_onednn_release_all(void);

#ifdef LDM_HAVE_ONEDNN
#include <dnnl.h>
/* The process's one oneDNN CPU engine (made on first use, with the ISA limited
 * to avx512_core_bf16 so that a CPU with AMX computes the same bits); the
 * convolutions (conv_onednn.c) make their primitives on it too. */
dnnl_engine_t onednn_cpu_engine(void);
#endif

#endif
