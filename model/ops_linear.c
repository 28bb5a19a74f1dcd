/* The linear op (fully connected layer) forward and backward, as GEMMs through
 * OpenBLAS's cblas_sgemm.
 *
 * Threading: OpenBLAS runs single-threaded and the GEMMs are split over the
 * OpenMP threads here, by rows or columns of the result. Two thread pools (OpenMP
 * for the elementwise ops, OpenBLAS's own for GEMMs) spin against each other on
 * few cores and made training steps ten times slower; one pool does not, and each
 * element of a result is then computed by one sequential sgemm, in an order that
 * does not depend on the thread schedule. The bias gradient is a column sum over
 * rows, split by column blocks so each column is summed in row order by one thread.
 *
 * Batch invariance: the forward GEMMs cut their rows at sample boundaries, so a
 * sample's outputs come from sgemm calls whose shape and row positions do not
 * depend on the other samples of the batch. OpenBLAS's Haswell and Zen kernels
 * round a row differently with its position and the call's row count; without
 * this a sample drawn in a batch differed from the same sample drawn alone.
 *
 * The bf16-bits variants run oneDNN's matmul on operands that are bf16 bits
 * already (gemm_onednn.h), in one call per product, and the oneDNN fp32
 * variants (the DiT's fp32 GEMMs where oneDNN is there) the same on fp32
 * operands: a row of oneDNN's result does not depend on the number of rows
 * (tests/test_gemm_onednn.c), so they need no cut at sample boundaries. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "gemm_bf16.h"
#include "gemm_onednn.h"
#include "ops.h"

/* From OpenBLAS (declared in its cblas.h as well in recent versions). */
void openblas_set_num_threads(int num_threads);

void ops_blas_single_threaded(void) {
    static int done; /* first reached outside parallel regions, from the main thread */
    if (!done) {
        openblas_set_num_threads(1);
        done = 1;
    }
}

/* Results are cut into tiles of this many rows or columns, a number that does not
 * depend on the thread count, so that every element is computed by the same
 * sequential sgemm call shape, and results are bit-identical whatever the number
 * of threads. 256 rows measured fastest on DiT-S (128: -5%, 512: -3%). */
#define GEMM_TILE 256

/* One sgemm over rows [lo, hi) or columns [lo, hi) of C. */
static void gemm_part(int transpose_a, int transpose_b, int split_rows, int lo, int hi, int m, int n, int k,
                      const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    const float *a_part = a, *b_part = b;
    float *c_part = c;
    if (split_rows) {
        a_part = transpose_a ? a + lo : a + (size_t)lo * lda;
        c_part = c + (size_t)lo * ldc;
    } else {
        b_part = transpose_b ? b + (size_t)lo * ldb : b + lo;
        c_part = c + lo;
    }
    cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
                split_rows ? hi - lo : m, split_rows ? n : hi - lo, k, 1.0f, a_part, lda, b_part, ldb, beta, c_part,
                ldc);
}

/* C (m, n) = A' B' + beta C with A' = A or A^T and B' = B or B^T, row-major;
 * tiled along the longer side of C, tiles spread over the threads. With
 * sample_rows > 0 the rows of C are samples of sample_rows rows each (m a
 * multiple of it): tiles are then rows of one sample, cut every GEMM_TILE rows
 * from the sample's first, so that they do not depend on the batch. */
static void gemm_threaded(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc, int sample_rows) {
    ops_blas_single_threaded();
    if (sample_rows > 0) {
        const int per_sample = (sample_rows + GEMM_TILE - 1) / GEMM_TILE, tiles = m / sample_rows * per_sample;
#pragma omp parallel for schedule(static) if (tiles > 1)
        for (int tile = 0; tile < tiles; tile++) {
            const int first = tile / per_sample * sample_rows, lo = first + tile % per_sample * GEMM_TILE;
            const int hi = lo + GEMM_TILE < first + sample_rows ? lo + GEMM_TILE : first + sample_rows;
            gemm_part(transpose_a, transpose_b, 1, lo, hi, m, n, k, a, lda, b, ldb, beta, c, ldc);
        }
        return;
    }
    const int split_rows = m >= n;
    const int extent = split_rows ? m : n;
    const int tiles = (extent + GEMM_TILE - 1) / GEMM_TILE;
#pragma omp parallel for schedule(static) if (tiles > 1)
    for (int tile = 0; tile < tiles; tile++) {
        const int lo = tile * GEMM_TILE, hi = lo + GEMM_TILE < extent ? lo + GEMM_TILE : extent;
        gemm_part(transpose_a, transpose_b, split_rows, lo, hi, m, n, k, a, lda, b, ldb, beta, c, ldc);
    }
}

void add_row_broadcast(float *out, const float *row, int rows, int dim) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * dim;
        for (int j = 0; j < dim; j++) o[j] += row[j];
    }
}

void add_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* gemm_threaded, or in bf16 the bf16 GEMM where the CPU has it. */
static void gemm_precision(ldm_precision precision, int transpose_a, int transpose_b, int m, int n, int k,
                           const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                           int sample_rows) {
    if (precision == PRECISION_BF16 && gemm_bf16(transpose_a, transpose_b, m, n, k, a, lda, b, ldb, beta, c, ldc))
        return;
    gemm_threaded(transpose_a, transpose_b, m, n, k, a, lda, b, ldb, beta, c, ldc, sample_rows);
}

/* Every row of out (rows, out_features) = bias, when there is one: the GEMM then
 * accumulates onto it. Returns the GEMM's beta (1 with a bias, else 0). */
static float bias_rows(float *out, const float *bias, int rows, int out_features) {
    if (!bias) return 0.0f;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) memcpy(out + (size_t)r * out_features, bias, sizeof(float) * (size_t)out_features);
    return 1.0f;
}

void linear_forward_precision(float *out, const float *in, const float *weight, const float *bias, int rows,
                              int sample_rows, int in_features, int out_features, ldm_precision precision) {
    const float beta = bias_rows(out, bias, rows, out_features);
    gemm_precision(precision, 0, 1, rows, out_features, in_features, in, in_features, weight, in_features, beta, out,
                   out_features, sample_rows);
}

void linear_forward(float *out, const float *in, const float *weight, const float *bias, int rows, int sample_rows,
                    int in_features, int out_features) {
    linear_forward_precision(out, in, weight, bias, rows, sample_rows, in_features, out_features, PRECISION_FP32);
}

/* d_bias[j] += sum_r d_out[r, j], column blocks of 64 per thread; d_out (rows, cols)
 * as fp32 values or, with d_out NULL, as bf16 bits (the same sums of the same values). */
static void column_sum_accumulate_any(float *d_bias, const float *d_out, const uint16_t *d_out_bits, int rows,
                                      int cols) {
    enum { BLOCK = 64 };
    int blocks = (cols + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        int j0 = blk * BLOCK;
        int j1 = j0 + BLOCK < cols ? j0 + BLOCK : cols;
        float acc[BLOCK];
        for (int j = j0; j < j1; j++) acc[j - j0] = 0.0f;
        for (int r = 0; r < rows; r++) {
            const size_t row = (size_t)r * cols;
            if (d_out)
                for (int j = j0; j < j1; j++) acc[j - j0] += d_out[row + j];
            else
                for (int j = j0; j < j1; j++) acc[j - j0] += bf16_to_float(d_out_bits[row + j]);
        }
        for (int j = j0; j < j1; j++) d_bias[j] += acc[j - j0];
    }
}

static void column_sum_accumulate(float *d_bias, const float *d_out, int rows, int cols) {
    column_sum_accumulate_any(d_bias, d_out, NULL, rows, cols);
}

void linear_backward_precision(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                               const float *in, const float *weight, int rows, int in_features, int out_features,
                               ldm_precision precision) {
    if (d_in)
        gemm_precision(precision, 0, 0, rows, in_features, out_features, d_out, out_features, weight, in_features,
                       d_in_beta, d_in, in_features, 0);
    if (d_weight)
        gemm_precision(precision, 1, 0, out_features, in_features, rows, d_out, out_features, in, in_features, 1.0f,
                       d_weight, in_features, 0);
    if (d_bias) column_sum_accumulate(d_bias, d_out, rows, out_features);
}

void linear_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                     const float *d_out, const float *in, const float *weight,
                     int rows, int in_features, int out_features) {
    linear_backward_precision(d_in, d_in_beta, d_weight, d_bias, d_out, in, weight, rows, in_features, out_features,
                              PRECISION_FP32);
}

/* The bf16-bits linear (ops.h): GEMMs through oneDNN. */

void linear_forward_bf16_bits(float *out, const uint16_t *in, const uint16_t *weight, const float *bias, int rows,
                              int in_features, int out_features) {
    gemm_onednn(0, 1, rows, out_features, in_features, in, in_features, weight, in_features, bias, 0.0f, out,
                out_features);
}

static void column_sum_accumulate_bits(float *d_bias, const uint16_t *d_out, int rows, int cols) {
    column_sum_accumulate_any(d_bias, NULL, d_out, rows, cols);
}

void linear_backward_bf16_bits(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const uint16_t *d_out,
                               const uint16_t *in, const uint16_t *weight, int rows, int in_features,
                               int out_features) {
    if (d_in)
        gemm_onednn(0, 0, rows, in_features, out_features, d_out, out_features, weight, in_features, NULL, d_in_beta,
                    d_in, in_features);
    if (d_weight)
        gemm_onednn(1, 0, out_features, in_features, rows, d_out, out_features, in, in_features, NULL, 1.0f, d_weight,
                    in_features);
    if (d_bias) column_sum_accumulate_bits(d_bias, d_out, rows, out_features);
}

/* The oneDNN fp32 linear (ops.h): the same products on fp32 operands. */

void linear_forward_onednn(float *out, const float *in, const float *weight, const float *bias, int rows,
                           int in_features, int out_features) {
    gemm_onednn_f32(0, 1, rows, out_features, in_features, in, in_features, weight, in_features, bias, 0.0f, out,
                    out_features);
}

void linear_backward_onednn(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                            const float *in, const float *weight, int rows, int in_features, int out_features) {
    if (d_in)
        gemm_onednn_f32(0, 0, rows, in_features, out_features, d_out, out_features, weight, in_features, NULL,
                        d_in_beta, d_in, in_features);
    if (d_weight)
        gemm_onednn_f32(1, 0, out_features, in_features, rows, d_out, out_features, in, in_features, NULL, 1.0f,
                        d_weight, in_features);
    if (d_bias) column_sum_accumulate(d_bias, d_out, rows, out_features);
}

void linear_backward_onednn_times(float *d_in, const float *factor, float *d_weight, float *d_bias,
                                  const float *d_out, const float *in, const float *weight, int rows,
                                  int in_features, int out_features) {
    gemm_onednn_f32_times(0, rows, in_features, out_features, d_out, out_features, weight, in_features, factor, d_in,
                          in_features);
    linear_backward_onednn(NULL, 0.0f, d_weight, d_bias, d_out, in, weight, rows, in_features, out_features);
}

void linear_plan_onednn_times(int rows, int in_features, int out_features) {
    gemm_onednn_f32_times_plan(0, rows, in_features, out_features, out_features, in_features, in_features);
}

/* The primitives of a layer's three products, through plan (bf16 or fp32). */
static void linear_plan(void (*plan)(int, int, int, int, int, int, int, int, float, int), int rows, int in_features,
                        int out_features, int with_bias, float d_in_beta, int with_d_in) {
    plan(0, 1, rows, out_features, in_features, in_features, in_features, with_bias, 0.0f, out_features);
    if (with_d_in) plan(0, 0, rows, in_features, out_features, out_features, in_features, 0, d_in_beta, in_features);
    plan(1, 0, out_features, in_features, rows, out_features, in_features, 0, 1.0f, in_features);
}

void linear_plan_bf16_bits(int rows, int in_features, int out_features, int with_bias, float d_in_beta,
                           int with_d_in) {
    linear_plan(gemm_onednn_plan, rows, in_features, out_features, with_bias, d_in_beta, with_d_in);
}

void linear_plan_onednn(int rows, int in_features, int out_features, int with_bias, float d_in_beta, int with_d_in) {
    linear_plan(gemm_onednn_f32_plan, rows, in_features, out_features, with_bias, d_in_beta, with_d_in);
}
