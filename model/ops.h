/* The op set of the DiT denoiser on the CPU, fp32, forward and backward.
 *
 * Conventions, shared by every op:
 * - Tensors are dense row-major float buffers; shapes are written next to each
 *   argument. "rows" is the flattened leading dimension (batch * tokens).
 * - Backward functions ACCUMULATE (+=) into parameter gradients (d_weight,
 *   d_bias, d_table, d_shift, d_scale, d_gate) and OVERWRITE activation
 *   gradients (d_in, d_x, ...) unless the comment says otherwise. A NULL
 *   gradient pointer means "not needed" and is skipped.
 * - Nothing here allocates: scratch space, where needed, is passed in.
 * - Loops over rows are threaded with OpenMP; reductions over rows are split
 *   by column so that results do not depend on the thread count or schedule. */
#ifndef LDM_OPS_H
#define LDM_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "precision.h"

/* ---- linear: out = in @ weight^T + bias (GEMM through BLAS) ---- */
/* out (rows, out_features); in (rows, in_features); weight (out_features, in_features);
 * bias (out_features) or NULL. The rows are samples of sample_rows rows each (rows
 * a multiple of it): a sample's outputs are then the same bits whatever else is
 * in the batch. 0: no such grouping. */
void linear_forward(float *out, const float *in, const float *weight, const float *bias, int rows, int sample_rows,
                    int in_features, int out_features);
/* d_in (rows, in_features) = d_in_beta * d_in + d_out @ weight  (beta 0 overwrites, 1 accumulates);
 * d_weight (out_features, in_features) += d_out^T @ in; d_bias (out_features) += sum over rows. */
void linear_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                     const float *d_out, const float *in, const float *weight,
                     int rows, int in_features, int out_features);

/* The same with the GEMMs in a precision: in bf16 on a CPU with AVX-512 BF16
 * through gemm_bf16.h (its inputs must hold bf16 values already), else sgemm. */
void linear_forward_precision(float *out, const float *in, const float *weight, const float *bias, int rows,
                              int sample_rows, int in_features, int out_features, ldm_precision precision);
void linear_backward_precision(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                               const float *in, const float *weight, int rows, int in_features, int out_features,
                               ldm_precision precision);

/* The same in bf16 with operands that are bf16 bits (in, weight, d_out; bias fp32),
 * through oneDNN (gemm_onednn.h: only where cpu_gemm_bf16_kind() is CPU_GEMM_ONEDNN).
 * A row's outputs do not depend on the other rows, so no sample_rows is needed. */
void linear_forward_bf16_bits(float *out, const uint16_t *in, const uint16_t *weight, const float *bias, int rows,
                              int in_features, int out_features);
void linear_backward_bf16_bits(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const uint16_t *d_out,
                               const uint16_t *in, const uint16_t *weight, int rows, int in_features,
                               int out_features);
/* Makes the oneDNN primitives of a layer's forward and backward (d_in with its beta
 * when with_d_in), so that the training step makes none. */
void linear_plan_bf16_bits(int rows, int in_features, int out_features, int with_bias, float d_in_beta,
                           int with_d_in);
/* The same in fp32 through oneDNN's fp32 matmul (gemm_onednn_f32: only where
 * cpu_gemm_fp32_kind() is CPU_GEMM_ONEDNN): other bits than the sgemm path, also
 * independent of the thread count and of the other rows. */
void linear_forward_onednn(float *out, const float *in, const float *weight, const float *bias, int rows,
                           int in_features, int out_features);
void linear_backward_onednn(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                            const float *in, const float *weight, int rows, int in_features, int out_features);
void linear_plan_onednn(int rows, int in_features, int out_features, int with_bias, float d_in_beta, int with_d_in);
/* linear_backward_onednn with d_in = (d_out @ W) * factor elementwise (beta 0; factor
 * (rows, in_features)), the multiply in the GEMM's pass over d_in
 * (gemm_onednn_f32_times): the same bits as linear_backward_onednn and then the
 * multiply. The DiT's fc2 backward times GELU's kept slope. Its plan makes the
 * d_in product's primitive (linear_plan_onednn the others). */
void linear_backward_onednn_times(float *d_in, const float *factor, float *d_weight, float *d_bias,
                                  const float *d_out, const float *in, const float *weight, int rows,
                                  int in_features, int out_features);
void linear_plan_onednn_times(int rows, int in_features, int out_features);

/* ---- LayerNorm without affine parameters, eps given (DiT uses 1e-6) ---- */
/* out, in (rows, dim); mean, rstd (rows) saved for backward. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                       int rows, int dim, float eps);
/* d_in (rows, dim) = d_in_beta * d_in + dL/din. */
void layernorm_backward(float *d_in, float d_in_beta, const float *d_out, const float *in,
                        const float *mean, const float *rstd, int rows, int dim);
/* The same from the normalized output xhat (rows, dim) instead of the input: what a
 * model that keeps only the LayerNorm output (in 16 bits) has in backward. */
void layernorm_backward_normalized(float *d_in, float d_in_beta, const float *d_out, const float *normalized,
                                   const float *rstd, int rows, int dim);

/* ---- adaLN modulate: out = in * (1 + scale) + shift, per sample ----
 * in, out (batch, tokens, dim); shift and scale are rows of a per-sample modulation
 * buffer: shift[b * mod_stride + j], scale[b * mod_stride + j], j < dim. */
void modulate_forward(float *out, const float *in, const float *shift, const float *scale,
                      int mod_stride, int batch, int tokens, int dim);
/* d_in (batch, tokens, dim) overwritten; d_shift, d_scale accumulate (same strided layout). */
void modulate_backward(float *d_in, float *d_shift, float *d_scale, const float *d_out,
                       const float *in, const float *scale, int mod_stride,
                       int batch, int tokens, int dim);
/* LayerNorm then modulate, in one pass over the rows: layernorm_forward into
 * normalized (kept for the backward) and modulate_forward of it into out; the
 * same bits as the two. */
void layernorm_modulate_forward(float *out, float *normalized, float *mean, float *rstd, const float *in,
                                const float *shift, const float *scale, int mod_stride, int batch, int tokens,
                                int dim, float eps);
/* modulate_backward (d_out the gradient of the modulated output, normalized its
 * input) and then layernorm_backward_normalized of its input gradient into d_in
 * (with d_in_beta), in one pass over the rows of each sample, that gradient never
 * written out; the same bits as the two. Rows wider than 2048 take the two ops,
 * with d_modulated (batch, tokens, dim) as the gradient between them (scratch). */
void modulate_layernorm_backward(float *d_in, float d_in_beta, float *d_shift, float *d_scale, const float *d_out,
                                 const float *normalized, const float *rstd, const float *scale, int mod_stride,
                                 int batch, int tokens, int dim, float *d_modulated);

/* ---- gated residual: x += gate * y, gate per sample (strided like modulate) ----
 * x, y (batch, tokens, dim). */
void gated_residual_forward(float *x, const float *y, const float *gate, int mod_stride,
                            int batch, int tokens, int dim);
/* Given d_x (the gradient flowing through the residual, unchanged by this op):
 * d_y (batch, tokens, dim) overwritten = gate * d_x; d_gate accumulates sum_t d_x * y. */
void gated_residual_backward(float *d_y, float *d_gate, const float *d_x, const float *y,
                             const float *gate, int mod_stride, int batch, int tokens, int dim);

/* ---- activations, elementwise over n values ---- */
/* tanh-approximated GELU, as torch.nn.GELU(approximate="tanh"). */
void gelu_tanh_forward(float *out, const float *in, size_t n);
void gelu_tanh_backward(float *d_in, const float *d_out, const float *in, size_t n);
/* The same for training where GELU's input is not needed afterwards (the DiT's
 * fc1 output in fp32): out = gelu(x) with gelu_tanh_forward's bits, and
 * x_then_slope, which holds x, overwritten with the derivative gelu'(x) as
 * gelu_tanh_backward computes it from the same tanh; the backward is then
 * d_in = d_out * slope (gelu_tanh_backward_from_slope, d_in may be d_out): the
 * same bits, without evaluating tanh (an exponential and a division) again. */
void gelu_tanh_forward_keep_slope(float *out, float *x_then_slope, size_t n);
void gelu_tanh_backward_from_slope(float *d_in, const float *d_out, const float *slope, size_t n);
void silu_forward(float *out, const float *in, size_t n);
void silu_backward(float *d_in, const float *d_out, const float *in, size_t n);
/* SiLU for training where its input is not needed afterwards: out = silu(x) with
 * silu_forward's bits, and x_then_slope, which holds x, overwritten with the
 * derivative silu'(x) = s (1 + x (1 - s)), s = sigmoid(x); the backward is then
 * d_in = d_out * slope (silu_backward_from_slope; d_in may be d_out), one multiply
 * where silu_backward evaluates the exponential again. */
void silu_forward_keep_slope(float *out, float *x_then_slope, size_t n);
void silu_backward_from_slope(float *d_in, const float *d_out, const float *slope, size_t n);

/* ---- multi-head self-attention core: softmax(q k^T / sqrt(head_dim)) v ----
 * qkv (batch, tokens, 3, heads, head_dim) as timm's fused qkv linear produces it;
 * out (batch, tokens, heads, head_dim) = (batch, tokens, dim) ready for the proj linear;
 * probs (batch, heads, tokens, tokens) saved for backward. */
void attention_forward(float *out, float *probs, const float *qkv,
                       int batch, int tokens, int heads, int head_dim);
/* d_qkv (batch, tokens, 3 * heads * head_dim) overwritten;
 * d_scores (batch, heads, tokens, tokens) is scratch (its contents do not matter). */
void attention_backward(float *d_qkv, float *d_scores, const float *d_out, const float *qkv, const float *probs,
                        int batch, int tokens, int heads, int head_dim);
/* The same with the GEMM inputs made inside rounded to a 16-bit format (precision.h):
 * the probabilities before p v (softmax itself in fp32), and the score gradient
 * before the q and k gradients. PRECISION_FP32 is attention_forward/_backward. */
void attention_forward_precision(float *out, float *probs, const float *qkv, int batch, int tokens, int heads,
                                 int head_dim, ldm_precision precision);
void attention_backward_precision(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, int batch, int tokens, int heads, int head_dim,
                                  ldm_precision precision);

/* The same in bf16 with oneDNN (gemm_onednn.h): every product of all (sample, head)
 * pairs as one batched matmul on bf16 bits. qkv and d_out hold bf16 values; probs
 * (batch, heads, tokens, tokens) is written rounded to bf16; d_scores (the same
 * shape, fp32) is scratch. The scratch below is the caller's, for the largest batch. */
typedef struct {
    uint16_t *q, *k, *v, *d_out; /* (batch, heads, tokens, head_dim) head-major copies */
    uint16_t *probs;             /* (batch, heads, tokens, tokens) p's bits, in backward then d_scores' */
    float *d_part;               /* (batch * tokens, heads * head_dim) one part of d_qkv; NULL: d_scores */
} attention_bits_scratch;
/* Bytes of the scratch at this batch (64-byte aligned parts); with its d_part in
 * d_scores where that is as large (tokens >= head_dim), else in the scratch. */
size_t attention_bits_scratch_bytes(int batch, int tokens, int heads, int head_dim);
/* The scratch carved from memory (attention_bits_scratch_bytes of it, 64-byte aligned). */
attention_bits_scratch attention_bits_scratch_place(void *memory, int batch, int tokens, int heads, int head_dim);

/* The same products in fp32 through oneDNN (batched_gemm_onednn_f32: only where
 * cpu_gemm_fp32_kind() is CPU_GEMM_ONEDNN), for fp32 and for bf16/fp16 values held
 * in fp32 (precision: the probabilities and the score gradient rounded to it as in
 * attention_forward_precision). Shapes as attention_forward/_backward; scratch
 * (attention_onednn_scratch_bytes) holds head-major copies of q, k, v, d_out. */
size_t attention_onednn_scratch_bytes(int batch, int tokens, int heads, int head_dim);
void attention_plan_onednn(int batch, int tokens, int heads, int head_dim);
void attention_forward_onednn(float *out, float *probs, const float *qkv, float *scratch, int batch, int tokens,
                              int heads, int head_dim, ldm_precision precision);
void attention_backward_onednn(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                               const float *probs, float *scratch, int batch, int tokens, int heads, int head_dim,
                               ldm_precision precision);
/* The fp32 attention fused per (sample, head) for AVX-512 CPUs (the DiT's and the
 * autoencoder's fp32 training take it where usable: attention_forward_onednn and
 * attention_backward_onednn call it then): products, softmax and their backward
 * of a pair on one thread, reading and writing qkv, out, d_out and d_qkv in
 * their own layouts; scratch holds each pair's k or v transposed (batch * heads *
 * tokens * head_dim floats, a quarter of attention_onednn_scratch_bytes). Usable
 * where the CPU has AVX-512F and tokens and head_dim are multiples of 64; shapes
 * as attention_forward/_backward, results independent of the thread count. */
int attention_fused_f32_usable(int tokens, int head_dim);
void attention_forward_fused_f32(float *out, float *probs, const float *qkv, float *scratch, int batch, int tokens,
                                 int heads, int head_dim);
void attention_backward_fused_f32(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, float *scratch, int batch, int tokens, int heads, int head_dim);
void attention_forward_bf16_bits(float *out, float *probs, const float *qkv, const attention_bits_scratch *scratch,
                                 int batch, int tokens, int heads, int head_dim);
void attention_backward_bf16_bits(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, const attention_bits_scratch *scratch, int batch, int tokens,
                                  int heads, int head_dim);
/* Makes the oneDNN primitives of both at this batch. */
void attention_plan_bf16_bits(int batch, int tokens, int heads, int head_dim);

/* ---- patchify / unpatchify (a conv with stride = kernel = patch is patchify + linear) ----
 * image (batch, channels, size, size); patches (batch, grid*grid, channels*patch*patch)
 * with grid = size / patch, tokens in row-major grid order and each patch vector in
 * (channel, py, px) order, matching a Conv2d weight (hidden, channels, patch, patch). */
void patchify_forward(float *patches, const float *image, int batch, int channels, int size, int patch);
void patchify_backward(float *d_image, const float *d_patches, int batch, int channels, int size, int patch);
/* tokens (batch, grid*grid, patch*patch*channels), each token vector in (py, px, channel)
 * order as DiT's final linear produces it; image (batch, channels, size, size). */
void unpatchify_forward(float *image, const float *tokens, int batch, int channels, int size, int patch);
void unpatchify_backward(float *d_tokens, const float *d_image, int batch, int channels, int size, int patch);

/* ---- embeddings ---- */
/* Fixed 2-D sin-cos position embedding of DiT/MAE: out (grid*grid, dim), dim % 4 == 0. */
void pos_embed_2d_sincos(float *out, int dim, int grid);
/* Sinusoidal timestep embedding of DiT: out (batch, dim) = [cos(t f), sin(t f)],
 * f_i = exp(-ln(max_period) i / half), half = dim / 2, max_period 10000; t (batch). */
void timestep_embedding_forward(float *out, const float *t, int batch, int dim);
/* d_t (batch) overwritten. */
void timestep_embedding_backward(float *d_t, const float *d_out, const float *t, int batch, int dim);
/* Class embedding lookup: out (batch, dim) = table[labels[b]]; table (rows, dim);
 * labels in [0, rows) (the null class is row num_classes). */
void embedding_forward(float *out, const float *table, const int *labels, int batch, int dim);
/* d_table accumulates; labels may repeat. */
void embedding_backward(float *d_table, const float *d_out, const int *labels, int batch, int dim);

/* ---- loss: weighted mean squared error ----
 * loss = (1 / batch) * sum_b weight[b] * mean_j (pred[b, j] - target[b, j])^2,
 * pred, target (batch, per_sample); weight (batch) or NULL for all ones.
 * per_sample_loss (batch) or NULL: weight[b] * mean_j (...)^2. */
float weighted_mse_forward(float *per_sample_loss, const float *pred, const float *target,
                           const float *weight, int batch, int per_sample);
/* d_pred (batch, per_sample) overwritten = d_loss * dloss/dpred. */
void weighted_mse_backward(float *d_pred, float d_loss, const float *pred, const float *target,
                           const float *weight, int batch, int per_sample);

/* Makes OpenBLAS run each call on the calling thread: the ops split their work
 * over OpenMP threads themselves (see ops_linear.c). Called by the ops before
 * their first BLAS call; idempotent. */
void ops_blas_single_threaded(void);

/* ---- small elementwise helpers ---- */
/* out (n) = a + b; a or out may alias. */
void add_forward(float *out, const float *a, const float *b, size_t n);
/* out (rows, dim) += row (dim) for every row. */
void add_row_broadcast(float *out, const float *row, int rows, int dim);

#endif
