/* A GEMM on bfloat16 inputs with fp32 accumulation, through the AVX-512 BF16
 * dot-product instruction (vdpbf16ps), for the bf16 training path on CPUs that
 * have it. Its inputs are float arrays that hold bf16 values already (the bf16
 * path rounds every GEMM input where it is made), so packing them into bf16 is
 * exact. Results differ from sgemm's on the same values only in the order and
 * rounding of the fp32 accumulation; each element is summed in an order fixed
 * by the shapes, so results do not depend on the thread count.
 *
 * Nothing is allocated: the packed right-hand block lives in a static buffer,
 * so calls must not run concurrently (the models call it from the main thread,
 * outside parallel regions; inside one it is refused: gemm_bf16 returns 0). */
#ifndef LDM_GEMM_BF16_H
#define LDM_GEMM_BF16_H

#include <stddef.h>

/* True when this CPU and build can run gemm_bf16 (and LDM_CPU_GEMM=openblas or
 * LDM_NO_BF16_GEMM does not turn it off: gemm_onednn.h). */
int gemm_bf16_available(void);

/* C (m, n) = beta * C + A' B' with beta 0 or 1, every matrix row-major:
 * A' (m, k) is A or A^T (A stored (k, m) when transposed), likewise B' (k, n) is B
 * or B^T (B stored (n, k)). Returns 1 when done, 0 when it cannot run here (no
 * AVX-512 BF16, or called inside a parallel region): the caller then uses sgemm. */
int gemm_bf16(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
              int ldb, float beta, float *c, int ldc);

#endif
