/* The CUDA op set (model/cuda/ops_cuda.h, model/cuda/gemm_cublaslt.h) against the CPU ops
 * (ops.h, train/optimizer.h, precision.h): random inputs, the CPU op and the
 * CUDA op (copy in, run, copy out), compared. Shapes are not multiples of 32
 * (rows 37, dim 72, tokens 17, heads 3, head_dim 24, n 100003). Outputs the
 * GPU overwrites are filled with NaN first (so an element left unwritten, or a
 * beta-0 GEMM that reads its output, shows up); gradients that accumulate start
 * from the same random values on both sides.
 *
 * Tolerances (a = GPU, b = CPU):
 * - elementwise fp32 ops (modulate, gated residual, activations):
 *   |a - b| <= atol + rtol |b| with (1e-6, 1e-6) where the GPU may only fuse a
 *   multiply-add, (1e-5, 1e-5) for GELU/SiLU (CUDA's tanhf/expf vs fast_math.h's,
 *   a few ulp apart) and for LayerNorm and the column sums (sums in another order);
 * - GEMMs: |a - b| <= tol * S with S the same product on absolute values
 *   (|in| @ |W|^T + |bias|, and |accumulated start| where beta = 1), the bound of
 *   the rounding error of a dot product: tol 1e-5 in fp32 (TF32, with its 10-bit
 *   mantissa, would be off by ~6e-5 S and fail), 1e-4 for bf16/fp16 inputs (the
 *   CPU multiplies the same rounded values in fp32, products are exact, only the
 *   accumulation differs; an output rounded to 16 bits would be off by ~2e-3 S);
 * - attention: |a - b| <= tol * max|b| over the tensor, tol 1e-4 in fp32; with
 *   bf16/fp16 rounding of the probabilities a value next to a rounding boundary
 *   may round the other way, so probabilities may differ by one ulp of the format
 *   (rtol 2^-7 bf16, 2^-10 fp16) and out, d_qkv by 1e-2 (bf16), 2e-3 (fp16) of max;
 * - timestep embedding (double on both sides): atol 1e-6; its backward (1e-5, 1e-6);
 * - loss: rtol 1e-6 (double sums in another order, then rounded to float);
 * - bit-identical: patchify/unpatchify, embedding lookup and gradient, add,
 *   add_row_broadcast, the AdamW step (5 steps: params, m, v), the EMA update
 *   (decays 0.999, 0.5 and 0, which copies), scaling, and every cast of
 *   precision.h (special values, 2^20 random bit patterns, all 65536 16-bit values);
 * - the squared gradient norm: within 1e-12 relative of grad_clip.h's (double
 *   sums in another order), for 0, 1, 255, 257 and 100003 values, the same bits
 *   twice, and not finite once a value is infinite or NaN.
 * Determinism: reductions (column sums, LayerNorm backward, attention backward,
 * linear gradients, the loss) run twice give the same bits.
 * Reports itself skipped (exit 77) in a CPU build or without a GPU. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "ema.h"
#include "grad_clip.h"
#include "ops.h"
#include "optimizer.h"
#include "precision.h"
#include "rng.h"
#include "test_util.h"

#ifdef LDM_HAVE_CUDA
#include "cuda_test_arrays.h"
#include "ops_cuda.h"

/* ---- comparisons beyond cuda_test_arrays.h's ---- */

/* |gpu - cpu| <= tol * max |cpu|. */
static void expect_close_to_max(const char *what, const float *gpu, const float *cpu, size_t n, double tol) {
    double max = 0.0;
    for (size_t i = 0; i < n; i++) max = fabs(cpu[i]) > max ? fabs(cpu[i]) : max;
    expect_close_or_both_nan(what, gpu, cpu, n, tol * max, 0.0);
}

/* ---- LayerNorm, modulate, gated residual ---- */

enum { ROWS = 37, DIM = 72, BATCH = 3, TOKENS = 17, MOD_STRIDE = 6 * DIM };
#define LN_EPS 1e-6f

static void test_layernorm(void) {
    const size_t n = (size_t)ROWS * DIM;
    float *x = host_normal(n, 2.0f);
    for (size_t i = 0; i < n; i++) x[i] += 3.0f + (float)(i / DIM); /* a mean per row */
    float *out = host_alloc(n * 4), *mean = host_alloc(ROWS * 4), *rstd = host_alloc(ROWS * 4);
    layernorm_forward(out, mean, rstd, x, ROWS, DIM, LN_EPS);
    float *d_x = to_device_f(x, n), *d_out = device_nan(n), *d_mean = device_nan(ROWS), *d_rstd = device_nan(ROWS);
    layernorm_forward_cuda(d_out, d_mean, d_rstd, d_x, ROWS, DIM, LN_EPS, NULL);
    expect_close_or_both_nan("layernorm_forward out", fetch(d_out, n), out, n, 1e-5, 1e-5);
    expect_close_or_both_nan("layernorm_forward mean", fetch(d_mean, ROWS), mean, ROWS, 1e-6, 1e-6);
    expect_close_or_both_nan("layernorm_forward rstd", fetch(d_rstd, ROWS), rstd, ROWS, 0.0, 1e-6);

    /* backward from the CPU's statistics, with beta 0 (d_in NaN) and 1 */
    float *g = host_normal(n, 1.0f), *start = host_normal(n, 1.0f);
    float *d_g = to_device_f(g, n), *c_mean = to_device_f(mean, ROWS), *c_rstd = to_device_f(rstd, ROWS);
    float *c_out = to_device_f(out, n);
    for (int beta = 0; beta <= 1; beta++) {
        float *cpu = host_copy(start, n), *cpu_normalized = host_copy(start, n);
        layernorm_backward(cpu, (float)beta, g, x, mean, rstd, ROWS, DIM);
        layernorm_backward_normalized(cpu_normalized, (float)beta, g, out, rstd, ROWS, DIM);
        float *d_in = beta ? to_device_f(start, n) : device_nan(n);
        float *d_in_normalized = beta ? to_device_f(start, n) : device_nan(n);
        layernorm_backward_cuda(d_in, (float)beta, d_g, d_x, c_mean, c_rstd, ROWS, DIM, NULL);
        layernorm_backward_normalized_cuda(d_in_normalized, (float)beta, d_g, c_out, c_rstd, ROWS, DIM, NULL);
        expect_close_or_both_nan(beta ? "layernorm_backward beta 1" : "layernorm_backward beta 0", fetch(d_in, n),
                                 cpu, n, 1e-5, 1e-5);
        expect_close_or_both_nan(beta ? "layernorm_backward_normalized beta 1" : "layernorm_backward_normalized beta 0",
                                 fetch(d_in_normalized, n), cpu_normalized, n, 1e-5, 1e-5);
    }
    /* determinism */
    float *d_first = device_nan(n), *d_second = device_nan(n);
    layernorm_backward_cuda(d_first, 0.0f, d_g, d_x, c_mean, c_rstd, ROWS, DIM, NULL);
    layernorm_backward_cuda(d_second, 0.0f, d_g, d_x, c_mean, c_rstd, ROWS, DIM, NULL);
    expect_same_bits_f("layernorm_backward twice", fetch(d_first, n), fetch(d_second, n), n);
    release_all();
}

static void test_layernorm_modulate(void) {
    const int rows = BATCH * TOKENS;
    const size_t n = (size_t)rows * DIM, n_ada = (size_t)BATCH * MOD_STRIDE;
    float *x = host_normal(n, 1.5f), *ada = host_normal(n_ada, 0.5f);
    const float *shift = ada + 0 * DIM, *scale = ada + 1 * DIM;
    float *ln = host_alloc(n * 4), *mean = host_alloc(rows * 4), *rstd = host_alloc(rows * 4), *out = host_alloc(n * 4);
    layernorm_forward(ln, mean, rstd, x, rows, DIM, LN_EPS);
    modulate_forward(out, ln, shift, scale, MOD_STRIDE, BATCH, TOKENS, DIM);
    float *d_x = to_device_f(x, n), *d_ada = to_device_f(ada, n_ada);
    float *d_out = device_nan(n), *d_ln = device_nan(n), *d_mean = device_nan(rows), *d_rstd = device_nan(rows);
    layernorm_modulate_forward_cuda(d_out, d_ln, d_mean, d_rstd, d_x, d_ada + 0 * DIM, d_ada + 1 * DIM, MOD_STRIDE,
                                    BATCH, TOKENS, DIM, LN_EPS, NULL);
    expect_close_or_both_nan("layernorm_modulate_forward out", fetch(d_out, n), out, n, 1e-5, 1e-5);
    expect_close_or_both_nan("layernorm_modulate_forward normalized", fetch(d_ln, n), ln, n, 1e-5, 1e-5);
    expect_close_or_both_nan("layernorm_modulate_forward mean", fetch(d_mean, rows), mean, rows, 1e-6, 1e-6);
    expect_close_or_both_nan("layernorm_modulate_forward rstd", fetch(d_rstd, rows), rstd, rows, 0.0, 1e-6);
    float *d_out_only = device_nan(n); /* normalized, mean, rstd not needed */
    layernorm_modulate_forward_cuda(d_out_only, NULL, NULL, NULL, d_x, d_ada + 0 * DIM, d_ada + 1 * DIM, MOD_STRIDE,
                                    BATCH, TOKENS, DIM, LN_EPS, NULL);
    expect_close_or_both_nan("layernorm_modulate_forward, out only", fetch(d_out_only, n), out, n, 1e-5, 1e-5);
    release_all();
}

static void test_modulate_and_gate(void) {
    const size_t n = (size_t)BATCH * TOKENS * DIM, n_ada = (size_t)BATCH * MOD_STRIDE;
    float *x = host_normal(n, 1.0f), *y = host_normal(n, 1.0f), *ada = host_normal(n_ada, 0.5f);
    float *g = host_normal(n, 1.0f), *grad_start = host_normal(n_ada, 1.0f);
    float *d_x = to_device_f(x, n), *d_y = to_device_f(y, n), *d_ada = to_device_f(ada, n_ada);
    float *d_g = to_device_f(g, n);

    /* modulate: shift at column block 0, scale at 1 (as DiT's first pair) */
    float *out = host_alloc(n * 4);
    modulate_forward(out, x, ada, ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM);
    float *d_out = device_nan(n);
    modulate_forward_cuda(d_out, d_x, d_ada, d_ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM, NULL);
    expect_close_or_both_nan("modulate_forward", fetch(d_out, n), out, n, 1e-6, 1e-6);

    float *d_in_cpu = host_alloc(n * 4), *grads = host_copy(grad_start, n_ada);
    modulate_backward(d_in_cpu, grads, grads + DIM, g, x, ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM);
    float *d_in = device_nan(n), *d_grads = to_device_f(grad_start, n_ada);
    modulate_backward_cuda(d_in, d_grads, d_grads + DIM, d_g, d_x, d_ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM, NULL);
    expect_close_or_both_nan("modulate_backward d_in", fetch(d_in, n), d_in_cpu, n, 1e-6, 1e-6);
    /* the whole modulation gradient: untouched columns must stay as they were */
    expect_close_or_both_nan("modulate_backward d_shift, d_scale", fetch(d_grads, n_ada), grads, n_ada, 1e-5, 1e-5);

    /* only d_shift; and determinism of the column sums */
    float *shift_only = host_copy(grad_start, n_ada);
    modulate_backward(NULL, shift_only, NULL, g, x, ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM);
    float *d_first = to_device_f(grad_start, n_ada), *d_second = to_device_f(grad_start, n_ada);
    modulate_backward_cuda(NULL, d_first, NULL, d_g, d_x, d_ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM, NULL);
    modulate_backward_cuda(NULL, d_second, NULL, d_g, d_x, d_ada + DIM, MOD_STRIDE, BATCH, TOKENS, DIM, NULL);
    float *first = fetch(d_first, n_ada);
    expect_close_or_both_nan("modulate_backward d_shift only", first, shift_only, n_ada, 1e-5, 1e-5);
    expect_same_bits_f("modulate_backward twice", first, fetch(d_second, n_ada), n_ada);

    /* gated residual: gate at column block 2 */
    float *residual = host_copy(x, n);
    gated_residual_forward(residual, y, ada + 2 * DIM, MOD_STRIDE, BATCH, TOKENS, DIM);
    float *d_residual = to_device_f(x, n);
    gated_residual_forward_cuda(d_residual, d_y, d_ada + 2 * DIM, MOD_STRIDE, BATCH, TOKENS, DIM, NULL);
    expect_close_or_both_nan("gated_residual_forward", fetch(d_residual, n), residual, n, 1e-6, 1e-6);

    float *d_y_cpu = host_alloc(n * 4), *gate_grads = host_copy(grad_start, n_ada);
    gated_residual_backward(d_y_cpu, gate_grads + 2 * DIM, g, y, ada + 2 * DIM, MOD_STRIDE, BATCH, TOKENS, DIM);
    float *d_dy = device_nan(n), *d_gate_grads = to_device_f(grad_start, n_ada);
    gated_residual_backward_cuda(d_dy, d_gate_grads + 2 * DIM, d_g, d_y, d_ada + 2 * DIM, MOD_STRIDE, BATCH, TOKENS,
                                 DIM, NULL);
    expect_close_or_both_nan("gated_residual_backward d_y", fetch(d_dy, n), d_y_cpu, n, 1e-6, 1e-6);
    expect_close_or_both_nan("gated_residual_backward d_gate", fetch(d_gate_grads, n_ada), gate_grads, n_ada, 1e-5,
                             1e-5);
    release_all();
}

/* ---- activations ---- */

static void test_activations(void) {
    const size_t n = 100003; /* not a multiple of the block size */
    float *x = host_normal(n, 3.0f), *g = host_normal(n, 1.0f);
    float *d_x = to_device_f(x, n), *d_g = to_device_f(g, n);
    float *cpu = host_alloc(n * 4), *d_out = device_nan(n);

    gelu_tanh_forward(cpu, x, n);
    gelu_tanh_forward_cuda(d_out, d_x, n, NULL);
    expect_close_or_both_nan("gelu_tanh_forward", fetch(d_out, n), cpu, n, 1e-5, 1e-5);
    gelu_tanh_backward(cpu, g, x, n);
    float *d_inplace = to_device_f(g, n); /* d_in aliasing d_out, as dit.c calls it */
    gelu_tanh_backward_cuda(d_inplace, d_inplace, d_x, n, NULL);
    expect_close_or_both_nan("gelu_tanh_backward (in place)", fetch(d_inplace, n), cpu, n, 1e-5, 1e-5);

    silu_forward(cpu, x, n);
    silu_forward_cuda(d_out, d_x, n, NULL);
    expect_close_or_both_nan("silu_forward", fetch(d_out, n), cpu, n, 1e-5, 1e-5);
    silu_backward(cpu, g, x, n);
    float *d_in = device_nan(n);
    silu_backward_cuda(d_in, d_g, d_x, n, NULL);
    expect_close_or_both_nan("silu_backward", fetch(d_in, n), cpu, n, 1e-5, 1e-5);
    release_all();
}

/* ---- attention ---- */

static void test_attention(ldm_precision precision, gemm_cuda_context *ctx) {
    enum { B = 2, T = 17, H = 3, HD = 24 };
    const size_t n_qkv = (size_t)B * T * 3 * H * HD, n_out = (size_t)B * T * H * HD, n_p = (size_t)B * H * T * T;
    char what[128];
    const char *name = precision_name(precision);
    float *qkv = host_normal(n_qkv, 1.0f), *g = host_normal(n_out, 1.0f);
    float *out = host_alloc(n_out * 4), *probs = host_alloc(n_p * 4);
    attention_forward_precision(out, probs, qkv, B, T, H, HD, precision);
    float *d_qkv = to_device_f(qkv, n_qkv), *d_out = device_nan(n_out), *d_probs = device_nan(n_p);
    attention_forward_cuda(ctx, d_out, d_probs, d_qkv, B, T, H, HD, precision, NULL);
    const double out_tol = precision == PRECISION_BF16 ? 1e-2 : precision == PRECISION_FP16 ? 2e-3 : 1e-4;
    snprintf(what, sizeof(what), "attention_forward %s probs", name);
    if (precision == PRECISION_FP32)
        expect_close_to_max(what, fetch(d_probs, n_p), probs, n_p, 1e-4);
    else
        expect_close_or_both_nan(what, fetch(d_probs, n_p), probs, n_p, 1e-6,
                                 precision == PRECISION_BF16 ? 0x1p-7 : 0x1p-10);
    snprintf(what, sizeof(what), "attention_forward %s out", name);
    expect_close_to_max(what, fetch(d_out, n_out), out, n_out, out_tol);

    /* backward from the CPU's probabilities */
    float *d_qkv_cpu = host_alloc(n_qkv * 4), *scores = host_alloc(n_p * 4);
    attention_backward_precision(d_qkv_cpu, scores, g, qkv, probs, B, T, H, HD, precision);
    float *c_probs = to_device_f(probs, n_p), *d_g = to_device_f(g, n_out);
    float *d_grad = device_nan(n_qkv), *d_scores = device_nan(n_p);
    attention_backward_cuda(ctx, d_grad, d_scores, d_g, d_qkv, c_probs, B, T, H, HD, precision, NULL);
    float *grad = fetch(d_grad, n_qkv);
    snprintf(what, sizeof(what), "attention_backward %s d_qkv", name);
    expect_close_to_max(what, grad, d_qkv_cpu, n_qkv, out_tol);
    float *d_again = device_nan(n_qkv);
    attention_backward_cuda(ctx, d_again, d_scores, d_g, d_qkv, c_probs, B, T, H, HD, precision, NULL);
    snprintf(what, sizeof(what), "attention_backward %s twice", name);
    expect_same_bits_f(what, grad, fetch(d_again, n_qkv), n_qkv);
    release_all();
}

/* The fused attention (flash_attention_*_cuda) against the CPU's attention in the
 * same precision: qkv (and in 16 bits d_out and the kept out) hold format values,
 * the GPU reads qkv and out as the graph keeps them (fp32, or 16-bit bits).
 * Tolerances, relative to the largest CPU value: out and d_qkv 1e-5 in fp32
 * (summation order only); in 16 bits the CPU rounds the probabilities before
 * p v where the fused forward keeps its fp32 running sums, so 1e-2 (bf16) and
 * 2e-3 (fp16), and backward the same. The log-sum-exp against a double
 * reference, 1e-5 absolute. Both passes run twice: the same bits. */
static void test_fused_attention(ldm_precision precision, int B, int T, int H, int HD) {
    const size_t n_qkv = (size_t)B * T * 3 * H * HD, n_out = (size_t)B * T * H * HD, n_p = (size_t)B * H * T * T;
    const size_t n_rows = (size_t)B * H * T;
    const int half = precision != PRECISION_FP32;
    char what[160];
    char shape[64];
    snprintf(shape, sizeof(shape), "%s B %d T %d H %d head_dim %d", precision_name(precision), B, T, H, HD);
    float *qkv = host_normal(n_qkv, 1.0f), *g = host_normal(n_out, 1.0f);
    uint16_t *qkv_bits = host_alloc(n_qkv * 2), *out_bits = host_alloc(n_out * 2);
    if (half) {
        precision_store(precision, qkv_bits, qkv, n_qkv); /* qkv rounded in place */
        precision_round_array(precision, g, n_out);       /* the graph rounds d_out before attention */
    }
    const void *qkv_stored = half ? to_device(qkv_bits, n_qkv * 2) : (const void *)to_device_f(qkv, n_qkv);
    float *out = host_alloc(n_out * 4), *probs = host_alloc(n_p * 4);
    attention_forward_precision(out, probs, qkv, B, T, H, HD, precision);
    float *d_out = device_nan(n_out), *d_lse = device_nan(n_rows), *d_out_again = device_nan(n_out);
    flash_attention_forward_cuda(d_out, d_lse, qkv_stored, B, T, H, HD, precision, NULL);
    flash_attention_forward_cuda(d_out_again, d_lse, qkv_stored, B, T, H, HD, precision, NULL);
    const double tol = precision == PRECISION_BF16 ? 1e-2 : precision == PRECISION_FP16 ? 2e-3 : 1e-5;
    float *gpu_out = fetch(d_out, n_out);
    snprintf(what, sizeof(what), "flash_attention_forward %s out", shape);
    expect_close_to_max(what, gpu_out, out, n_out, tol);
    snprintf(what, sizeof(what), "flash_attention_forward %s twice", shape);
    expect_same_bits_f(what, gpu_out, fetch(d_out_again, n_out), n_out);
    /* the log-sum-exp of every row of scaled scores, in double */
    float *lse = host_alloc(n_rows * 4);
    const int dim = H * HD;
    const double scale = 1.0 / sqrt((double)HD);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double max = -INFINITY, sum = 0.0, s[T];
                for (int j = 0; j < T; j++) {
                    const float *q = qkv + ((size_t)b * T + i) * 3 * dim + (size_t)h * HD;
                    const float *k = qkv + ((size_t)b * T + j) * 3 * dim + dim + (size_t)h * HD;
                    double dot = 0.0;
                    for (int d = 0; d < HD; d++) dot += (double)q[d] * k[d];
                    s[j] = scale * dot;
                    max = s[j] > max ? s[j] : max;
                }
                for (int j = 0; j < T; j++) sum += exp(s[j] - max);
                lse[((size_t)b * H + h) * T + i] = (float)(max + log(sum));
            }
    snprintf(what, sizeof(what), "flash_attention_forward %s log-sum-exp", shape);
    expect_close_or_both_nan(what, fetch(d_lse, n_rows), lse, n_rows, 1e-5, 0.0);

    /* backward: the CPU from its probabilities, the GPU from the log-sum-exp and
     * its own forward output as the graph keeps it (rounded in 16 bits) */
    float *d_qkv_cpu = host_alloc(n_qkv * 4), *scores = host_alloc(n_p * 4);
    attention_backward_precision(d_qkv_cpu, scores, g, qkv, probs, B, T, H, HD, precision);
    const void *out_kept = gpu_out;
    if (half) {
        precision_store(precision, out_bits, gpu_out, n_out);
        out_kept = to_device(out_bits, n_out * 2);
    } else {
        out_kept = to_device_f(gpu_out, n_out);
    }
    float *d_g = to_device_f(g, n_out), *d_row_dot = device_nan(n_rows);
    float *d_grad = device_nan(n_qkv), *d_again = device_nan(n_qkv);
    flash_attention_backward_cuda(d_grad, d_row_dot, d_g, qkv_stored, out_kept, d_lse, B, T, H, HD, precision, NULL);
    flash_attention_backward_cuda(d_again, d_row_dot, d_g, qkv_stored, out_kept, d_lse, B, T, H, HD, precision, NULL);
    float *grad = fetch(d_grad, n_qkv);
    snprintf(what, sizeof(what), "flash_attention_backward %s d_qkv", shape);
    expect_close_to_max(what, grad, d_qkv_cpu, n_qkv, tol);
    snprintf(what, sizeof(what), "flash_attention_backward %s twice", shape);
    expect_same_bits_f(what, grad, fetch(d_again, n_qkv), n_qkv);
    release_all();
}

/* The strided-batched GEMM by itself, all four transpose cases, with padded
 * leading dimensions and strides, alpha and beta, against a double reference. */
static void test_strided_batched(gemm_cuda_context *ctx) {
    enum { BATCHES = 3, M = 13, N = 7, K = 9, PAD = 3, GAP = 5 };
    const float alpha = 0.5f, beta = 0.25f;
    for (int ta = 0; ta <= 1; ta++)
        for (int tb = 0; tb <= 1; tb++) {
            const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
            const int lda = a_cols + PAD, ldb = b_cols + PAD, ldc = N + PAD;
            const long long sa = (long long)a_rows * lda + GAP, sb = (long long)b_rows * ldb + GAP,
                            sc = (long long)M * ldc + GAP;
            float *a = host_normal((size_t)sa * BATCHES, 1.0f), *b = host_normal((size_t)sb * BATCHES, 1.0f);
            float *c = host_normal((size_t)sc * BATCHES, 1.0f);
            float *expected = host_copy(c, (size_t)sc * BATCHES), *scale = host_abs(c, (size_t)sc * BATCHES);
            for (int i = 0; i < BATCHES; i++)
                for (int r = 0; r < M; r++)
                    for (int col = 0; col < N; col++) {
                        double sum = 0.0, abs_sum = 0.0;
                        for (int l = 0; l < K; l++) {
                            double av = a[i * sa + (ta ? (size_t)l * lda + r : (size_t)r * lda + l)];
                            double bv = b[i * sb + (tb ? (size_t)col * ldb + l : (size_t)l * ldb + col)];
                            sum += av * bv;
                            abs_sum += fabs(av * bv);
                        }
                        size_t at = i * sc + (size_t)r * ldc + col;
                        expected[at] = (float)(alpha * sum + beta * (double)c[at]);
                        scale[at] = (float)(alpha * abs_sum + beta * fabs(c[at]));
                    }
            float *d_a = to_device_f(a, (size_t)sa * BATCHES), *d_b = to_device_f(b, (size_t)sb * BATCHES);
            float *d_c = to_device_f(c, (size_t)sc * BATCHES);
            gemm_cuda_strided_batched(ctx, ta, tb, M, N, K, alpha, d_a, lda, sa, d_b, ldb, sb, beta, d_c, ldc, sc,
                                      BATCHES, NULL);
            char what[96];
            snprintf(what, sizeof(what), "gemm_cuda_strided_batched transposes %d %d", ta, tb);
            /* padding and gaps: scale = |c| there and expected = c, so they must be untouched */
            expect_close_scaled(what, fetch(d_c, (size_t)sc * BATCHES), expected, scale, (size_t)sc * BATCHES, 1e-5);
        }
    release_all();
}

/* ---- the GEMM's fallbacks (gemm_cublaslt.cu) ---- */

/* One strided-batched GEMM of test_gemm_fallbacks: the layouts that a GPU's
 * cuBLASLt may have no algorithm for. Offsets and strides in floats. */
typedef struct {
    const char *name;
    int ta, tb, m, n, k, batch;
    size_t a_offset, b_offset;
    long long sa, sb, sc; /* 0 for sa: one A for the whole batch */
    int below_256_bytes;  /* an operand's address or stride is aligned to less than 256 bytes */
} fallback_gemm;

static const fallback_gemm fallback_gemms[] = {
    /* every operand 256-byte aligned */
    {"aligned batch", 0, 1, 13, 7, 9, 3, 0, 0, 192, 128, 128, 0},
    /* the shared conv weight: stride 0 */
    {"stride-0 weight", 0, 0, 13, 7, 9, 3, 0, 0, 0, 128, 128, 0},
    /* attention's per-head views: 32 bytes off, strides of 8 floats times an odd number */
    {"32-byte views", 0, 1, 17, 17, 24, 3, 8, 8, 136, 136, 320, 1},
    /* conv bands: 4 bytes off, odd strides */
    {"4-byte bands", 1, 0, 11, 5, 9, 2, 1, 3, 111, 51, 64, 1},
};

/* The path gemm_cublaslt.cu must take for a GEMM under the emulation's
 * refusals (tests/cuda_emulation/cublasLt.h): adds one to the count it lands in. */
static void count_expected_path(gemm_cuda_path_counts *expected, const char *refuse, int batched, int stride0,
                                int below_256_bytes, int bias) {
    const int lt_has_none = strstr(refuse, "none") || (strstr(refuse, "unaligned") && below_256_bytes) ||
                            (strstr(refuse, "stride0") && stride0);
    const int lt_refuses_all = lt_has_none || strstr(refuse, "all");
    if (!lt_refuses_all) {
        if (strstr(refuse, "first"))
            expected->lt_later_result++;
        else
            expected->lt_first_result++;
        return;
    }
    if (bias) { /* the bias is written apart, then the GEMM without it */
        expected->bias_epilogue_refused++;
        count_expected_path(expected, refuse, batched, stride0, below_256_bytes, 0);
        return;
    }
    if (batched && !strstr(refuse, "strided"))
        expected->cublas_strided_batched++;
    else
        expected->cublas_gemm++;
}

/* The fallback GEMMs against a double reference, and (in the emulation) the
 * path each took, for refuse: the value of LDM_CUDA_EMULATION_CUBLASLT_REFUSE. */
static void run_fallback_gemms(const char *refuse) {
    gemm_cuda_context *ctx = gemm_cuda_context_create();
    gemm_cuda_path_counts expected = {0, 0, 0, 0, 0};
    const float alpha = 0.75f, beta = 0.5f;
    char what[160];
    for (size_t g = 0; g < sizeof fallback_gemms / sizeof fallback_gemms[0]; g++) {
        const fallback_gemm *t = &fallback_gemms[g];
        const int a_rows = t->ta ? t->k : t->m, a_cols = t->ta ? t->m : t->k;
        const int b_rows = t->tb ? t->n : t->k, b_cols = t->tb ? t->k : t->n;
        const int lda = a_cols, ldb = b_cols, ldc = t->n;
        const size_t a_size = t->a_offset + (size_t)t->sa * (t->batch - 1) + (size_t)a_rows * lda;
        const size_t b_size = t->b_offset + (size_t)t->sb * (t->batch - 1) + (size_t)b_rows * ldb;
        const size_t c_size = (size_t)t->sc * (t->batch - 1) + (size_t)t->m * ldc;
        float *a = host_normal(a_size, 1.0f), *b = host_normal(b_size, 1.0f), *c = host_normal(c_size, 1.0f);
        float *expected_c = host_copy(c, c_size), *scale = host_abs(c, c_size);
        for (int i = 0; i < t->batch; i++)
            for (int r = 0; r < t->m; r++)
                for (int col = 0; col < t->n; col++) {
                    double sum = 0.0, abs_sum = 0.0;
                    for (int l = 0; l < t->k; l++) {
                        const double av = a[t->a_offset + (size_t)i * t->sa +
                                            (t->ta ? (size_t)l * lda + r : (size_t)r * lda + l)];
                        const double bv = b[t->b_offset + (size_t)i * t->sb +
                                            (t->tb ? (size_t)col * ldb + l : (size_t)l * ldb + col)];
                        sum += av * bv;
                        abs_sum += fabs(av * bv);
                    }
                    const size_t at = (size_t)i * t->sc + (size_t)r * ldc + col;
                    expected_c[at] = (float)(alpha * sum + beta * (double)c[at]);
                    scale[at] = (float)(alpha * abs_sum + beta * fabs(c[at]));
                }
        float *d_a = to_device_f(a, a_size), *d_b = to_device_f(b, b_size), *d_c = to_device_f(c, c_size);
        gemm_cuda_strided_batched(ctx, t->ta, t->tb, t->m, t->n, t->k, alpha, d_a + t->a_offset, lda, t->sa,
                                  d_b + t->b_offset, ldb, t->sb, beta, d_c, ldc, t->sc, t->batch, NULL);
        snprintf(what, sizeof what, "GEMM %s, refusing '%s'", t->name, refuse);
        expect_close_scaled(what, fetch(d_c, c_size), expected_c, scale, c_size, 1e-5);
        count_expected_path(&expected, refuse, 1, t->sa == 0, t->below_256_bytes, 0);
    }
    /* linear with a bias for cuBLASLt's epilogue */
    enum { ROWS_L = 5, IN_L = 9, OUT_L = 6 };
    float *in = host_normal(ROWS_L * IN_L, 1.0f), *w = host_normal(OUT_L * IN_L, 1.0f), *bias = host_normal(OUT_L, 1.0f);
    float *out = host_alloc(ROWS_L * OUT_L * 4), *out_scale = host_alloc(ROWS_L * OUT_L * 4);
    linear_forward(out, in, w, bias, ROWS_L, 0, IN_L, OUT_L);
    linear_forward(out_scale, host_abs(in, ROWS_L * IN_L), host_abs(w, OUT_L * IN_L), host_abs(bias, OUT_L), ROWS_L,
                   0, IN_L, OUT_L);
    float *d_out = device_nan(ROWS_L * OUT_L);
    linear_forward_cuda(ctx, d_out, to_device_f(in, ROWS_L * IN_L), to_device_f(w, OUT_L * IN_L),
                        to_device_f(bias, OUT_L), ROWS_L, IN_L, OUT_L, PRECISION_FP32, NULL);
    snprintf(what, sizeof what, "linear with bias, refusing '%s'", refuse);
    expect_close_scaled(what, fetch(d_out, ROWS_L * OUT_L), out, out_scale, ROWS_L * OUT_L, 1e-5);
    count_expected_path(&expected, refuse, 0, 0, 0, 1);

    gemm_cuda_path_counts got;
    gemm_cuda_context_path_counts(ctx, &got);
    printf("test_ops_cuda: GEMM paths refusing '%s': cuBLASLt first %lld, later %lld; cuBLAS strided %lld, "
           "per matrix %lld; bias apart %lld\n",
           refuse, got.lt_first_result, got.lt_later_result, got.cublas_strided_batched, got.cublas_gemm,
           got.bias_epilogue_refused);
#ifdef LDM_CUDA_EMULATION
    CHECK_MSG(memcmp(&got, &expected, sizeof got) == 0,
              "refusing '%s': expected cuBLASLt first %lld, later %lld; cuBLAS strided %lld, per matrix %lld; bias "
              "apart %lld",
              refuse, expected.lt_first_result, expected.lt_later_result, expected.cublas_strided_batched,
              expected.cublas_gemm, expected.bias_epilogue_refused);
#else
    /* a GPU's heuristic chooses for itself: every GEMM went one way or another */
    CHECK(got.lt_first_result + got.lt_later_result + got.cublas_strided_batched + got.cublas_gemm ==
          expected.lt_first_result + expected.lt_later_result + expected.cublas_strided_batched + expected.cublas_gemm);
#endif
    gemm_cuda_context_destroy(ctx);
    release_all();
}

/* Stride-0 batches, 32-byte and 4-byte aligned operands and a bias epilogue,
 * as they are (on a GPU: as its cuBLASLt takes them) and, in the emulation,
 * with cuBLASLt told to refuse each way (so that every fallback runs): the same
 * results every time, each GEMM on the path the refusals leave it. */
static void test_gemm_fallbacks(void) {
    const char *outside = getenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE");
    char saved[128];
    snprintf(saved, sizeof saved, "%s", outside ? outside : "");
    run_fallback_gemms(saved);
#ifdef LDM_CUDA_EMULATION
    static const char *const refusals[] = {"first", "all", "none", "unaligned", "stride0", "none,strided"};
    for (size_t r = 0; r < sizeof refusals / sizeof refusals[0]; r++) {
        setenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE", refusals[r], 1);
        run_fallback_gemms(refusals[r]);
    }
    if (outside)
        setenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE", saved, 1);
    else
        unsetenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE");
#endif
}

/* ---- linear ---- */

/* Host values of n inputs in the format: bits (to upload) and the rounded floats
 * (for the CPU); in fp32 the floats themselves. */
typedef struct {
    float *values;
    const void *upload;
    size_t upload_bytes;
} format_input;

static format_input format_input_of(float *x, size_t n, ldm_precision precision) {
    format_input f = {x, x, n * sizeof(float)};
    if (precision != PRECISION_FP32) {
        uint16_t *bits = host_alloc(n * sizeof(uint16_t));
        precision_store(precision, bits, x, n); /* x rounded in place */
        f.upload = bits;
        f.upload_bytes = n * sizeof(uint16_t);
    }
    return f;
}

/* bias_mode 0: none, 1: a 256-byte aligned bias (cuBLASLt's epilogue), 2: a bias
 * 4 bytes off 16-byte alignment (the separate bias path). */
static void test_linear(gemm_cuda_context *ctx, ldm_precision precision, int out_features, int bias_mode) {
    const int rows = ROWS, in_features = DIM;
    const size_t n_in = (size_t)rows * in_features, n_w = (size_t)out_features * in_features;
    const size_t n_out = (size_t)rows * out_features;
    const double tol = precision == PRECISION_FP32 ? 1e-5 : 1e-4;
    char what[160];
    snprintf(what, sizeof(what), "linear %s out %d bias %d", precision_name(precision), out_features, bias_mode);
    const size_t what_len = strlen(what);

    format_input in = format_input_of(host_normal(n_in, 1.0f), n_in, precision);
    format_input weight = format_input_of(host_normal(n_w, 0.2f), n_w, precision);
    format_input d_out = format_input_of(host_normal(n_out, 1.0f), n_out, precision);
    float *bias_host = host_normal(out_features + 1, 1.0f), *bias = bias_mode ? bias_host + 1 : NULL;
    float *dev_in = to_device(in.upload, in.upload_bytes), *dev_w = to_device(weight.upload, weight.upload_bytes);
    float *dev_d_out = to_device(d_out.upload, d_out.upload_bytes);
    float *dev_bias_block = to_device_f(bias_host, out_features + 1);
    float *dev_bias = NULL;
    if (bias_mode == 1) dev_bias = to_device_f(bias, out_features);
    if (bias_mode == 2) dev_bias = dev_bias_block + 1;

    /* forward */
    float *out = host_alloc(n_out * 4), *out_scale = host_alloc(n_out * 4);
    linear_forward(out, in.values, weight.values, bias, rows, 0, in_features, out_features);
    linear_forward(out_scale, host_abs(in.values, n_in), host_abs(weight.values, n_w),
                   bias ? host_abs(bias, out_features) : NULL, rows, 0, in_features, out_features);
    float *dev_out = device_nan(n_out);
    linear_forward_cuda(ctx, dev_out, dev_in, dev_w, dev_bias, rows, in_features, out_features, precision, NULL);
    snprintf(what + what_len, sizeof(what) - what_len, " forward");
    expect_close_scaled(what, fetch(dev_out, n_out), out, out_scale, n_out, tol);

    /* backward, d_in with beta 0 (d_in NaN) and 1; d_weight, d_bias accumulate */
    float *start_in = host_normal(n_in, 1.0f), *start_w = host_normal(n_w, 1.0f);
    float *start_b = host_normal(out_features, 1.0f);
    for (int beta = 0; beta <= 1; beta++) {
        float *g_in = host_copy(start_in, n_in), *g_w = host_copy(start_w, n_w);
        float *g_b = host_copy(start_b, out_features);
        linear_backward(g_in, (float)beta, g_w, g_b, d_out.values, in.values, weight.values, rows, in_features,
                        out_features);
        float *s_in = host_abs(start_in, n_in), *s_w = host_abs(start_w, n_w), *s_b = host_abs(start_b, out_features);
        linear_backward(s_in, (float)beta, s_w, s_b, host_abs(d_out.values, n_out), host_abs(in.values, n_in),
                        host_abs(weight.values, n_w), rows, in_features, out_features);
        float *dev_g_in = beta ? to_device_f(start_in, n_in) : device_nan(n_in);
        float *dev_g_w = to_device_f(start_w, n_w), *dev_g_b = to_device_f(start_b, out_features);
        linear_backward_cuda(ctx, dev_g_in, (float)beta, dev_g_w, dev_g_b, dev_d_out, dev_in, dev_w, rows, in_features,
                             out_features, precision, NULL);
        snprintf(what + what_len, sizeof(what) - what_len, " backward d_in beta %d", beta);
        expect_close_scaled(what, fetch(dev_g_in, n_in), g_in, s_in, n_in, tol);
        snprintf(what + what_len, sizeof(what) - what_len, " backward d_weight");
        float *got_w = fetch(dev_g_w, n_w);
        expect_close_scaled(what, got_w, g_w, s_w, n_w, tol);
        snprintf(what + what_len, sizeof(what) - what_len, " backward d_bias");
        float *got_b = fetch(dev_g_b, out_features);
        expect_close_scaled(what, got_b, g_b, s_b, out_features, 1e-5);
        if (beta == 1) {
            /* determinism, and NULL gradients skipped: only d_bias this time */
            float *dev_again_w = to_device_f(start_w, n_w), *dev_again_b = to_device_f(start_b, out_features);
            linear_backward_cuda(ctx, NULL, 0.0f, dev_again_w, NULL, dev_d_out, dev_in, dev_w, rows, in_features,
                                 out_features, precision, NULL);
            linear_backward_cuda(ctx, NULL, 0.0f, NULL, dev_again_b, dev_d_out, dev_in, dev_w, rows, in_features,
                                 out_features, precision, NULL);
            snprintf(what + what_len, sizeof(what) - what_len, " backward twice d_weight");
            expect_same_bits_f(what, got_w, fetch(dev_again_w, n_w), n_w);
            snprintf(what + what_len, sizeof(what) - what_len, " backward twice d_bias");
            expect_same_bits_f(what, got_b, fetch(dev_again_b, out_features), out_features);
        }
    }
    release_all();
}

/* ---- patchify, embeddings, loss, add ---- */

typedef void (*permute_cpu)(float *, const float *, int, int, int, int);
typedef void (*permute_cuda)(float *, const float *, int, int, int, int, ldm_stream);

/* The four permutations, each into a fresh NaN-filled buffer. */
static void test_patchify(int channels, int size, int patch) {
    enum { B = 2 };
    static const struct {
        const char *name;
        permute_cpu cpu;
        permute_cuda cuda;
        int from_image; /* image -> tokens, else tokens -> image */
    } cases[] = {
        {"patchify_forward", patchify_forward, patchify_forward_cuda, 1},
        {"patchify_backward", patchify_backward, patchify_backward_cuda, 0},
        {"unpatchify_forward", unpatchify_forward, unpatchify_forward_cuda, 0},
        {"unpatchify_backward", unpatchify_backward, unpatchify_backward_cuda, 1},
    };
    const int grid = size / patch;
    const size_t n_image = (size_t)B * channels * size * size;
    const size_t n_tokens = (size_t)B * grid * grid * channels * patch * patch;
    float *image = host_normal(n_image, 1.0f), *tokens = host_normal(n_tokens, 1.0f);
    float *d_image = to_device_f(image, n_image), *d_tokens = to_device_f(tokens, n_tokens);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const int from_image = cases[c].from_image;
        const size_t n = from_image ? n_tokens : n_image;
        float *cpu = host_alloc(n * 4), *dev = device_nan(n);
        cases[c].cpu(cpu, from_image ? image : tokens, B, channels, size, patch);
        cases[c].cuda(dev, from_image ? d_image : d_tokens, B, channels, size, patch, NULL);
        char what[96];
        snprintf(what, sizeof(what), "%s c %d size %d patch %d", cases[c].name, channels, size, patch);
        expect_same_bits_f(what, fetch(dev, n), cpu, n);
    }
    release_all();
}

static void test_embeddings(void) {
    enum { B = ROWS, TABLE_ROWS = 11 };
    const size_t n = (size_t)B * DIM, n_table = (size_t)TABLE_ROWS * DIM;
    float *t = host_alloc(B * 4);
    rng_stream *rng = cuda_test_rng();
    for (int b = 0; b < B; b++) t[b] = 2000.0f * rng_uniform(rng) - 1000.0f; /* 250 ln sigma covers this range */
    float *cpu = host_alloc(n * 4), *d_t = to_device_f(t, B), *dev_out = device_nan(n);
    timestep_embedding_forward(cpu, t, B, DIM);
    timestep_embedding_forward_cuda(dev_out, d_t, B, DIM, NULL);
    expect_close_or_both_nan("timestep_embedding_forward", fetch(dev_out, n), cpu, n, 1e-6, 0.0);
    float *g = host_normal(n, 1.0f), *cpu_dt = host_alloc(B * 4), *dev_dt = device_nan(B);
    timestep_embedding_backward(cpu_dt, g, t, B, DIM);
    timestep_embedding_backward_cuda(dev_dt, to_device_f(g, n), d_t, B, DIM, NULL);
    expect_close_or_both_nan("timestep_embedding_backward", fetch(dev_dt, B), cpu_dt, B, 1e-5, 1e-6);

    int *labels = host_alloc(B * sizeof(int));
    for (int b = 0; b < B; b++) labels[b] = (int)(rng_next_u64(rng) % TABLE_ROWS); /* repeats */
    float *table = host_normal(n_table, 1.0f), *start = host_normal(n_table, 1.0f);
    int *dev_labels = to_device(labels, B * sizeof(int));
    embedding_forward(cpu, table, labels, B, DIM);
    embedding_forward_cuda(dev_out, to_device_f(table, n_table), dev_labels, B, DIM, NULL);
    expect_same_bits_f("embedding_forward", fetch(dev_out, n), cpu, n);
    float *cpu_table = host_copy(start, n_table), *dev_table = to_device_f(start, n_table);
    embedding_backward(cpu_table, g, labels, B, DIM);
    embedding_backward_cuda(dev_table, to_device_f(g, n), dev_labels, B, DIM, TABLE_ROWS, NULL);
    expect_same_bits_f("embedding_backward", fetch(dev_table, n_table), cpu_table, n_table);
    release_all();
}

static void test_loss(void) {
    enum { B = ROWS, PER_SAMPLE = 300 };
    const size_t n = (size_t)B * PER_SAMPLE;
    float *pred = host_normal(n, 1.0f), *target = host_normal(n, 1.0f), *weight = host_alloc(B * 4);
    rng_stream *rng = cuda_test_rng();
    for (int b = 0; b < B; b++) weight[b] = 0.5f + 1.5f * rng_uniform(rng);
    float *d_pred = to_device_f(pred, n), *d_target = to_device_f(target, n), *d_weight = to_device_f(weight, B);
    for (int weighted = 0; weighted <= 1; weighted++) {
        const float *w = weighted ? weight : NULL, *dev_w = weighted ? d_weight : NULL;
        float *per_sample = host_alloc(B * 4);
        float loss = weighted_mse_forward(per_sample, pred, target, w, B, PER_SAMPLE);
        float *dev_loss = device_nan(1), *dev_per_sample = device_nan(B), *dev_loss_again = device_nan(1);
        weighted_mse_forward_cuda(dev_loss, dev_per_sample, d_pred, d_target, dev_w, B, PER_SAMPLE, NULL);
        weighted_mse_forward_cuda(dev_loss_again, NULL, d_pred, d_target, dev_w, B, PER_SAMPLE, NULL);
        float *got = fetch(dev_loss, 1);
        expect_close_or_both_nan(weighted ? "weighted_mse_forward loss" : "weighted_mse_forward loss, no weight", got,
                                 &loss, 1, 0.0, 1e-6);
        expect_close_or_both_nan(weighted ? "weighted_mse_forward per sample"
                                          : "weighted_mse_forward per sample, no weight",
                                 fetch(dev_per_sample, B), per_sample, B, 0.0, 1e-6);
        expect_same_bits_f("weighted_mse_forward twice", got, fetch(dev_loss_again, 1), 1);

        float *cpu = host_alloc(n * 4), *dev_grad = device_nan(n);
        weighted_mse_backward(cpu, 0.7f, pred, target, w, B, PER_SAMPLE);
        weighted_mse_backward_cuda(dev_grad, 0.7f, d_pred, d_target, dev_w, B, PER_SAMPLE, NULL);
        expect_close_or_both_nan(weighted ? "weighted_mse_backward" : "weighted_mse_backward, no weight",
                                 fetch(dev_grad, n), cpu, n, 0.0, 1e-6);
    }
    release_all();
}

static void test_add(void) {
    const size_t n = 100003;
    float *a = host_normal(n, 1.0f), *b = host_normal(n, 1.0f), *cpu = host_alloc(n * 4), *dev_out = device_nan(n);
    add_forward(cpu, a, b, n);
    add_forward_cuda(dev_out, to_device_f(a, n), to_device_f(b, n), n, NULL);
    expect_same_bits_f("add_forward", fetch(dev_out, n), cpu, n);
    const size_t n_rows = (size_t)ROWS * DIM;
    float *x = host_normal(n_rows, 1.0f), *row = host_normal(DIM, 1.0f), *cpu_rows = host_copy(x, n_rows);
    float *dev_x = to_device_f(x, n_rows);
    add_row_broadcast(cpu_rows, row, ROWS, DIM);
    add_row_broadcast_cuda(dev_x, to_device_f(row, DIM), ROWS, DIM, NULL);
    expect_same_bits_f("add_row_broadcast", fetch(dev_x, n_rows), cpu_rows, n_rows);
    release_all();
}

/* ---- AdamW ---- */

static void test_adamw(void) {
    const size_t n = 100003;
    const adamw_hyper hyper = {0.9f, 0.999f, 1e-8f, 0.01f};
    adamw_state state;
    adamw_create(&state, n, hyper);
    float *params = host_normal(n, 1.0f);
    float *d_params = to_device_f(params, n), *d_m = device_nan(n), *d_v = device_nan(n);
    cuda_buffer_fill_bytes(d_m, 0, n * 4);
    cuda_buffer_fill_bytes(d_v, 0, n * 4);
    for (int step = 0; step < 5; step++) {
        float *grads = host_normal(n, step == 2 ? 1e-3f : 1.0f);
        const float lr = 1e-3f * (float)(step + 1) / 5.0f; /* as under warmup */
        adamw_step(&state, params, grads, lr);
        adamw_step_cuda(d_params, to_device_f(grads, n), d_m, d_v, n, lr, hyper.beta1, hyper.beta2, hyper.eps,
                        hyper.weight_decay, state.step, NULL);
    }
    expect_same_bits_f("adamw params after 5 steps", fetch(d_params, n), params, n);
    expect_same_bits_f("adamw m after 5 steps", fetch(d_m, n), state.m, n);
    expect_same_bits_f("adamw v after 5 steps", fetch(d_v, n), state.v, n);
    adamw_destroy(&state);
    release_all();
}

/* ---- the rest of the optimizer step: EMA, scaling, the gradient norm ---- */

static void test_step_vectors(void) {
    const size_t n = 100003;
    float *params = host_normal(n, 1.0f), *ema = host_normal(n, 1.0f);
    float *d_params = to_device_f(params, n), *d_ema = to_device_f(ema, n);
    const double decays[] = {0.999, 0.5, 0.0};
    for (int k = 0; k < 3; k++) { /* decay 0 copies */
        ema_update(ema, params, n, decays[k]);
        ema_update_cuda(d_ema, d_params, n, decays[k], NULL);
        expect_same_bits_f(k == 2 ? "ema_update decay 0" : "ema_update", fetch(d_ema, n), ema, n);
        ema_update_cuda(d_ema, d_params, n, 0.9, NULL); /* moves it away again */
        ema_update(ema, params, n, 0.9);
    }
    float *x = host_normal(n, 3.0f);
    float *d_x = to_device_f(x, n);
    scale_cuda(d_x, n, 0.3f, NULL);
    for (size_t i = 0; i < n; i++) x[i] *= 0.3f;
    expect_same_bits_f("scale", fetch(d_x, n), x, n);

    double *d_partials = (double *)device_nan((SQUARED_NORM_PARTIALS + 2) * 2);
    double *d_total = d_partials + SQUARED_NORM_PARTIALS, got = 0, again = 0;
    const size_t counts[] = {n, 1, 255, 257, 0};
    for (int k = 0; k < 5; k++) {
        squared_norm_cuda(d_total, d_partials, d_x, counts[k], NULL);
        cuda_copy_to_host(&got, d_total, sizeof got);
        squared_norm_cuda(d_total, d_partials, d_x, counts[k], NULL);
        cuda_copy_to_host(&again, d_total, sizeof again);
        const double expected = grad_global_norm(x, counts[k]) * grad_global_norm(x, counts[k]);
        CHECK_MSG(fabs(got - expected) <= 1e-12 * expected, "squared_norm of %zu: %.17g, expected %.17g", counts[k],
                  got, expected);
        CHECK_MSG(memcmp(&got, &again, sizeof got) == 0, "squared_norm of %zu: not the same bits twice", counts[k]);
    }
    const float specials[2] = {INFINITY, NAN};
    for (int k = 0; k < 2; k++) {
        cuda_copy_to_device(d_x + 77777, &specials[k], sizeof(float));
        squared_norm_cuda(d_total, d_partials, d_x, n, NULL);
        cuda_copy_to_host(&got, d_total, sizeof got);
        CHECK_MSG(!isfinite(got), "squared_norm with a%s value: %g", k ? " NaN" : "n infinite", got);
    }
    release_all();
}

/* ---- casts ---- */

static void test_casts(void) {
    static const uint32_t specials[] = {
        0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,             /* zeros, infinities */
        0x7fc00000u, 0x7f800001u, 0xffc00001u, 0x7fa5a5a5u, 0xffffffffu, /* NaNs with payloads */
        0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u, 0x7f7f7fffu,             /* near float's max: bf16 overflow */
        0x00800000u, 0x00000001u, 0x007fffffu, 0x80000001u,             /* float subnormals */
        0x477fe000u, 0x477fefffu, 0x477ff000u, 0x47800000u, 0xc77ff000u, /* 65504, ..., 65520, 65536 */
        0x38800000u, 0x387fffffu, 0x33800000u, 0x33000000u, 0x33000001u, /* 2^-14, 2^-24, 2^-25 (tie to 0) */
        0x33c00000u, 0x33a00000u, 0x34200000u,                          /* 1.5, 1.25, 2.5 x 2^-24 */
        0x3f808000u, 0x3f818000u, 0x3f808001u, 0xbf808000u,             /* bf16 ties */
        0x3f801000u, 0x3f803000u, 0x3f801001u,                          /* fp16 ties */
    };
    const size_t n_special = sizeof(specials) / sizeof(specials[0]), n_random = (size_t)1 << 20;
    const size_t n_scaled = 5 * 4096, n = n_special + n_random + n_scaled;
    float *x = host_alloc(n * 4);
    memcpy(x, specials, sizeof(specials));
    rng_stream *rng = cuda_test_rng();
    for (size_t i = 0; i < n_random; i++) {
        uint32_t bits = (uint32_t)rng_next_u64(rng);
        memcpy(&x[n_special + i], &bits, 4);
    }
    static const float scales[5] = {1e-8f, 3e-5f, 1.0f, 1e4f, 7e4f};
    for (size_t i = 0; i < n_scaled; i++) x[n_special + n_random + i] = scales[i / 4096] * rng_normal(rng);
    float *d_x = to_device_f(x, n);

    uint16_t *all16 = host_alloc(65536 * 2);
    for (uint32_t i = 0; i < 65536; i++) all16[i] = (uint16_t)i;
    uint16_t *d_all16 = to_device(all16, 65536 * 2);

    for (int p = PRECISION_BF16; p <= PRECISION_FP16; p++) {
        const ldm_precision precision = (ldm_precision)p;
        const int bf16 = precision == PRECISION_BF16;
        char what[96];
        uint16_t *bits = host_alloc(n * 2);
        float *rounded = host_alloc(n * 4);
        for (size_t i = 0; i < n; i++) {
            bits[i] = bf16 ? bf16_from_float(x[i]) : fp16_from_float(x[i]);
            rounded[i] = precision_round(precision, x[i]);
        }
        uint16_t *d_bits = device_alloc(n * 2), *got_bits = host_alloc(n * 2);
        precision_to_bits_cuda(precision, d_bits, d_x, n, NULL);
        cuda_device_synchronize();
        cuda_copy_to_host(got_bits, d_bits, n * 2);
        snprintf(what, sizeof(what), "precision_to_bits_cuda %s", precision_name(precision));
        expect_same_bits(what, got_bits, bits, n, 2);

        float *d_round = to_device_f(x, n);
        precision_round_cuda(precision, d_round, n, NULL);
        snprintf(what, sizeof(what), "precision_round_cuda %s", precision_name(precision));
        expect_same_bits_f(what, fetch(d_round, n), rounded, n);

        float *d_store = to_device_f(x, n);
        uint16_t *d_stored = device_alloc(n * 2);
        precision_store_cuda(precision, d_stored, d_store, n, NULL);
        snprintf(what, sizeof(what), "precision_store_cuda %s values", precision_name(precision));
        expect_same_bits_f(what, fetch(d_store, n), rounded, n);
        cuda_copy_to_host(got_bits, d_stored, n * 2);
        snprintf(what, sizeof(what), "precision_store_cuda %s bits", precision_name(precision));
        expect_same_bits(what, got_bits, bits, n, 2);

        float *back = host_alloc(65536 * 4), *d_back = device_nan(65536);
        for (uint32_t i = 0; i < 65536; i++) back[i] = bf16 ? bf16_to_float((uint16_t)i) : fp16_to_float((uint16_t)i);
        precision_from_bits_cuda(precision, d_back, d_all16, 65536, NULL);
        snprintf(what, sizeof(what), "precision_from_bits_cuda %s, all 65536", precision_name(precision));
        expect_same_bits_f(what, fetch(d_back, 65536), back, 65536);
    }
    /* fp32: nothing happens */
    float *d_same = to_device_f(x, n);
    precision_round_cuda(PRECISION_FP32, d_same, n, NULL);
    expect_same_bits_f("precision_round_cuda fp32 leaves x", fetch(d_same, n), x, n);
    release_all();
}

/* ---- sizes of 0 ---- */

static void test_empty(gemm_cuda_context *ctx) {
    /* nothing to do, nothing read, nothing launched (NULL data pointers) */
    layernorm_forward_cuda(NULL, NULL, NULL, NULL, 0, DIM, LN_EPS, NULL);
    layernorm_backward_cuda(NULL, 0.0f, NULL, NULL, NULL, NULL, 0, DIM, NULL);
    modulate_forward_cuda(NULL, NULL, NULL, NULL, MOD_STRIDE, 0, TOKENS, DIM, NULL);
    gelu_tanh_forward_cuda(NULL, NULL, 0, NULL);
    attention_forward_cuda(ctx, NULL, NULL, NULL, 0, TOKENS, 3, 24, PRECISION_FP32, NULL);
    patchify_forward_cuda(NULL, NULL, 0, 4, 8, 2, NULL);
    embedding_backward_cuda(NULL, NULL, NULL, 0, DIM, 11, NULL);
    weighted_mse_backward_cuda(NULL, 1.0f, NULL, NULL, NULL, 0, 10, NULL);
    adamw_step_cuda(NULL, NULL, NULL, NULL, 0, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, NULL);
    precision_round_cuda(PRECISION_BF16, NULL, 0, NULL);
    linear_forward_cuda(ctx, NULL, NULL, NULL, NULL, 0, DIM, 45, PRECISION_FP32, NULL);

    /* rows 0: the weight gradient gains nothing, the bias gradient neither */
    float *start = host_normal((size_t)45 * DIM, 1.0f), *start_b = host_normal(45, 1.0f);
    float *d_w = to_device_f(start, (size_t)45 * DIM), *d_b = to_device_f(start_b, 45);
    float *dummy = device_nan(1);
    linear_backward_cuda(ctx, NULL, 0.0f, d_w, d_b, dummy, dummy, dummy, 0, DIM, 45, PRECISION_FP32, NULL);
    expect_same_bits_f("linear_backward rows 0 leaves d_weight", fetch(d_w, (size_t)45 * DIM), start,
                       (size_t)45 * DIM);
    expect_same_bits_f("linear_backward rows 0 leaves d_bias", fetch(d_b, 45), start_b, 45);
    /* tokens 0: the modulation gradients gain nothing */
    modulate_backward_cuda(NULL, d_b, d_b, dummy, dummy, dummy, 0, 1, 0, 45, NULL);
    expect_same_bits_f("modulate_backward tokens 0 leaves d_shift", fetch(d_b, 45), start_b, 45);
    /* in_features 0: no products, out = bias in every row */
    float *bias = host_normal(45, 1.0f), *cpu = host_alloc((size_t)ROWS * 45 * 4);
    for (int r = 0; r < ROWS; r++) memcpy(cpu + (size_t)r * 45, bias, 45 * sizeof(float));
    float *d_out = device_nan((size_t)ROWS * 45);
    linear_forward_cuda(ctx, d_out, dummy, dummy, to_device_f(bias, 45), ROWS, 0, 45, PRECISION_FP32, NULL);
    expect_same_bits_f("linear_forward in_features 0", fetch(d_out, (size_t)ROWS * 45), cpu, (size_t)ROWS * 45);
    release_all();
}

static void run_all(void) {
    cuda_test_arrays_init("test_ops_cuda", rng_stream_for(20240601, 7, 11), &test_checks, &test_failures);
    gemm_cuda_context *ctx = gemm_cuda_context_create();
    test_layernorm();
    test_layernorm_modulate();
    test_modulate_and_gate();
    test_activations();
    for (int p = PRECISION_FP32; p <= PRECISION_FP16; p++) test_attention((ldm_precision)p, ctx);
    /* fused attention: head_dim 24, 32, 64 and 72 (rows padded to 32, 32, 64, 128); token counts that are
     * not multiples of the tiles (8, 16, 32) nor of the row blocks (32, 64), and more than one row block */
    for (int p = PRECISION_FP32; p <= PRECISION_FP16; p++) {
        test_fused_attention((ldm_precision)p, 2, 17, 3, 24);
        test_fused_attention((ldm_precision)p, 1, 37, 2, 32);
        test_fused_attention((ldm_precision)p, 2, 70, 2, 64);
        test_fused_attention((ldm_precision)p, 1, 45, 1, 72);
    }
    test_strided_batched(ctx);
    test_gemm_fallbacks();
    for (int bias_mode = 0; bias_mode <= 2; bias_mode++) {
        test_linear(ctx, PRECISION_FP32, 45, bias_mode);
        test_linear(ctx, PRECISION_BF16, 40, bias_mode);
        test_linear(ctx, PRECISION_FP16, 40, bias_mode);
    }
    test_patchify(3, 10, 2);
    test_patchify(4, 7, 1);
    test_embeddings();
    test_loss();
    test_add();
    test_adamw();
    test_step_vectors();
    test_casts();
    test_empty(ctx);
    report_gemm_paths(ctx);
    gemm_cuda_context_destroy(ctx);
}
#endif

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_ops_cuda");
#ifdef LDM_HAVE_CUDA
    run_all();
#endif
    return test_finish("test_ops_cuda");
}
