/* The bf16 GEMM (see gemm_bf16.h). The usual blocked layout: the right-hand
 * matrix is packed block by block (KC rows of k by NC columns, in panels of NR
 * columns whose k-pairs are interleaved as vdpbf16ps reads them), the left-hand
 * one strip by strip (MR rows), and a micro-kernel keeps an MR x NR block of C
 * in 12 registers while it runs over the block's k-pairs. The KC x NC block
 * (256 KiB) stays in L2 while every strip of the left-hand matrix passes over it. */
#include "gemm_bf16.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_onednn.h"
#include "precision.h"

#define MR 6   /* rows of a strip */
#define NR 32  /* columns of a panel: two registers of 16 floats */
#define KC 256 /* k of a block (even) */
#define NC 512 /* columns of a block (a multiple of NR) */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* (KC / 2, NC, 2) per block: the right-hand block, panel after panel. */
static uint16_t packed_b[KC * NC] __attribute__((aligned(64)));

int gemm_bf16_available(void) {
    static int available = -1;
    if (available < 0) {
        __builtin_cpu_init();
        available = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f") &&
                    cpu_gemm_bf16_kind() != CPU_GEMM_OPENBLAS;
    }
    return available;
}

typedef struct {
    int transpose_a, transpose_b;
    const float *a, *b;
    int lda, ldb;
} operands;

static inline float a_at(const operands *o, int i, int p) {
    return o->transpose_a ? o->a[(size_t)p * o->lda + i] : o->a[(size_t)i * o->lda + p];
}
static inline float b_at(const operands *o, int p, int j) {
    return o->transpose_b ? o->b[(size_t)j * o->ldb + p] : o->b[(size_t)p * o->ldb + j];
}

/* One panel (NR columns from j0, nr of them real) of the block k0 .. k0 + kc:
 * out (kcp, NR, 2), zero beyond the matrix. Full panels take loops without
 * conditions, in the order that reads the matrix along its rows. */
static void pack_b_panel(uint16_t *out, const operands *o, int k0, int kc, int j0, int nr) {
    const int kcp = (kc + 1) / 2;
    if (nr == NR && kc % 2 == 0) {
        if (o->transpose_b) { /* B (n, k): a column's pairs are adjacent */
            for (int c = 0; c < NR; c++) {
                const float *column = o->b + (size_t)(j0 + c) * o->ldb + k0;
                for (int q = 0; q < kcp; q++) {
                    out[(size_t)q * NR * 2 + 2 * c] = bf16_from_float(column[2 * q]);
                    out[(size_t)q * NR * 2 + 2 * c + 1] = bf16_from_float(column[2 * q + 1]);
                }
            }
        } else { /* B (k, n): two rows interleaved */
            for (int q = 0; q < kcp; q++) {
                const float *even = o->b + (size_t)(k0 + 2 * q) * o->ldb + j0, *odd = even + o->ldb;
                uint16_t *row = out + (size_t)q * NR * 2;
                for (int c = 0; c < NR; c++) {
                    row[2 * c] = bf16_from_float(even[c]);
                    row[2 * c + 1] = bf16_from_float(odd[c]);
                }
            }
        }
        return;
    }
    for (int q = 0; q < kcp; q++) {
        uint16_t *row = out + (size_t)q * NR * 2;
        int p = k0 + 2 * q;
        int second = 2 * q + 1 < kc;
        for (int c = 0; c < NR; c++) {
            row[2 * c] = c < nr ? bf16_from_float(b_at(o, p, j0 + c)) : 0;
            row[2 * c + 1] = c < nr && second ? bf16_from_float(b_at(o, p + 1, j0 + c)) : 0;
        }
    }
}

/* MR rows from i0 (mr real) of the block: out (kcp, MR, 2); full strips as above. */
static void pack_a_strip(uint16_t *out, const operands *o, int i0, int mr, int k0, int kc) {
    const int kcp = (kc + 1) / 2;
    if (mr == MR && kc % 2 == 0) {
        if (o->transpose_a) { /* A (k, m): two rows of A, MR adjacent values each */
            for (int q = 0; q < kcp; q++) {
                const float *even = o->a + (size_t)(k0 + 2 * q) * o->lda + i0, *odd = even + o->lda;
                for (int r = 0; r < MR; r++) {
                    out[((size_t)q * MR + r) * 2] = bf16_from_float(even[r]);
                    out[((size_t)q * MR + r) * 2 + 1] = bf16_from_float(odd[r]);
                }
            }
        } else { /* A (m, k): a row's pairs are adjacent */
            for (int r = 0; r < MR; r++) {
                const float *row = o->a + (size_t)(i0 + r) * o->lda + k0;
                for (int q = 0; q < kcp; q++) {
                    out[((size_t)q * MR + r) * 2] = bf16_from_float(row[2 * q]);
                    out[((size_t)q * MR + r) * 2 + 1] = bf16_from_float(row[2 * q + 1]);
                }
            }
        }
        return;
    }
    for (int q = 0; q < kcp; q++) {
        int p = k0 + 2 * q;
        int second = 2 * q + 1 < kc;
        for (int r = 0; r < MR; r++) {
            out[((size_t)q * MR + r) * 2] = r < mr ? bf16_from_float(a_at(o, i0 + r, p)) : 0;
            out[((size_t)q * MR + r) * 2 + 1] = r < mr && second ? bf16_from_float(a_at(o, i0 + r, p + 1)) : 0;
        }
    }
}

/* C (mr, nr) += strip (kcp, MR, 2) . panel (kcp, NR, 2). */
__attribute__((target("avx512f,avx512bf16"))) static void kernel(int kcp, const uint16_t *ap, const uint16_t *bp,
                                                                  float *c, int ldc, int mr, int nr) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int q = 0; q < kcp; q++) {
        __m512i b0 = _mm512_load_si512((const void *)(bp + (size_t)q * NR * 2));
        __m512i b1 = _mm512_load_si512((const void *)(bp + (size_t)q * NR * 2 + 32));
        for (int r = 0; r < MR; r++) {
            int32_t pair; /* the row's two bf16 values, as one 32-bit lane (memcpy: no aliasing) */
            memcpy(&pair, ap + ((size_t)q * MR + r) * 2, sizeof pair);
            __m512i a = _mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)a, (__m512bh)b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)a, (__m512bh)b1);
        }
    }
    const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    for (int r = 0; r < mr; r++) {
        float *row = c + (size_t)r * ldc;
        _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), acc[r][0]));
        if (m1) _mm512_mask_storeu_ps(row + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row + 16), acc[r][1]));
    }
}

int gemm_bf16(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
              int ldb, float beta, float *c, int ldc) {
    if (!gemm_bf16_available() || omp_in_parallel() || (beta != 0.0f && beta != 1.0f)) return 0;
    const operands o = {transpose_a, transpose_b, a, b, lda, ldb};
    if (beta == 0.0f) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < m; i++) memset(c + (size_t)i * ldc, 0, sizeof(float) * (size_t)n);
    }
    const int strips = (m + MR - 1) / MR;
    for (int j0 = 0; j0 < n; j0 += NC) {
        const int nc = n - j0 < NC ? n - j0 : NC, panels = (nc + NR - 1) / NR;
        for (int k0 = 0; k0 < k; k0 += KC) {
            const int kc = k - k0 < KC ? k - k0 : KC, kcp = (kc + 1) / 2;
#pragma omp parallel
            {
#pragma omp for schedule(static)
                for (int t = 0; t < panels; t++) {
                    int jt = j0 + t * NR;
                    pack_b_panel(packed_b + (size_t)t * kcp * NR * 2, &o, k0, kc, jt, n - jt < NR ? n - jt : NR);
                }
                /* the implicit barrier: the block is packed */
                uint16_t strip[KC * MR] __attribute__((aligned(64)));
#pragma omp for schedule(static)
                for (int s = 0; s < strips; s++) {
                    int i0 = s * MR, mr = m - i0 < MR ? m - i0 : MR;
                    pack_a_strip(strip, &o, i0, mr, k0, kc);
                    for (int t = 0; t < panels; t++) {
                        int jt = j0 + t * NR;
                        kernel(kcp, strip, packed_b + (size_t)t * kcp * NR * 2, c + (size_t)i0 * ldc + jt, ldc, mr,
                               n - jt < NR ? n - jt : NR);
                    }
                }
            }
        }
    }
    return 1;
}

#else

int gemm_bf16_available(void) { return 0; }

int gemm_bf16(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
              int ldb, float beta, float *c, int ldc) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb;
    (void)beta, (void)c, (void)ldc;
    return 0;
}

#endif
