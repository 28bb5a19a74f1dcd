/* The CUDA twin of the op set: each function mirrors the ops.h function of the
 * same name without the _cuda suffix (and the AdamW step of train/optimizer.h, the
 * casts of precision.h), with the same shapes and the same conventions:
 * - every tensor argument is a DEVICE pointer (dense, row-major);
 * - backward functions ACCUMULATE (+=) into parameter gradients (d_table,
 *   d_shift, d_scale, d_gate) and OVERWRITE activation gradients (d_in, d_x,
 *   d_y, d_qkv, ...); a NULL gradient pointer is skipped;
 * - reductions (LayerNorm rows, column sums over tokens, the loss, embedding
 *   gradients) run in a fixed order without float atomics: results are the same
 *   bits on every run on the same GPU;
 * - work is queued on `stream` (NULL: the default stream); nothing here waits for
 *   it, allocates, or frees;
 * - sizes of 0 are allowed and do nothing.
 * Elementwise results are meant to agree with the CPU ops to float rounding (the
 * GPU may fuse multiply-adds and uses CUDA's expf/tanhf); the AdamW step, the
 * casts, patchify, embedding lookup and gradient, and add are written to be
 * bit-identical to the CPU. tests/test_ops_cuda.c checks all of this.
 * Status: not yet run on a GPU; tests/test_ops_cuda.c passes on the CPU
 * emulation of CUDA (tests/cuda_emulation/, in CI), which checks the kernels'
 * arithmetic, indexing, barriers and stream ordering but not GPU rounding.
 * Errors end the program through fatal_internal (base/fatal.h).
 * The linear op and the GEMM context are in gemm_cublaslt.h (included here).
 * Only meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_OPS_CUDA_H
#define LDM_OPS_CUDA_H

#ifdef LDM_HAVE_CUDA

#include "gemm_cublaslt.h"

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

#include "precision.h"

/* ---- device memory (checked; for tests, set-up and wiring) ---- */
/* NULL for 0 bytes. */
void *cuda_buffer_alloc(size_t bytes);
void cuda_buffer_free(void *device);
/* Synchronous copies on the default stream, done when they return (they do
 * not wait for a non-blocking stream: wait for it first); 0 bytes do nothing. */
void cuda_copy_to_device(void *device, const void *host, size_t bytes);
void cuda_copy_to_host(void *host, const void *device, size_t bytes);
/* Every byte of device (bytes) set to value (synchronous). */
void cuda_buffer_fill_bytes(void *device, int value, size_t bytes);
/* Waits for all queued work on the device. */
void cuda_device_synchronize(void);
/* One GPU per rank: the ranks of a host take its GPUs in turn. Makes GPU
 * local_rank % (GPUs visible) this thread's current device and returns it. */
int cuda_use_device_of_local_rank(int local_rank);
/* The one device allocation of a model laid out for batches of max_batch in
 * precision, zero-filled. Checked against the GPU's free memory first: more
 * than there is ends the program through fatal_input, saying what `model`
 * ("the DiT") needs and what is free. */
void *cuda_model_memory_alloc(size_t bytes, const char *model, int max_batch, ldm_precision precision);
/* Page-locked host memory (cudaMallocHost), which copies to and from the
 * device read and write directly, so that they can run asynchronously; NULL
 * for 0 bytes. */
void *cuda_pinned_alloc(size_t bytes);
void cuda_pinned_free(void *host);
/* Copies queued on stream; the host buffer must stay as it is until the stream
 * has done them (pinned memory: truly asynchronous; pageable: correct, slower). */
void cuda_copy_to_device_async(void *device, const void *host, size_t bytes, ldm_stream stream);
void cuda_copy_to_host_async(void *host, const void *device, size_t bytes, ldm_stream stream);
/* Waits for the work queued on stream. */
void cuda_stream_synchronize(ldm_stream stream);

/* ---- LayerNorm without affine parameters ---- */
void layernorm_forward_cuda(float *out, float *mean, float *rstd, const float *in, int rows, int dim, float eps,
                            ldm_stream stream);
void layernorm_backward_cuda(float *d_in, float d_in_beta, const float *d_out, const float *in, const float *mean,
                             const float *rstd, int rows, int dim, ldm_stream stream);
void layernorm_backward_normalized_cuda(float *d_in, float d_in_beta, const float *d_out, const float *normalized,
                                        const float *rstd, int rows, int dim, ldm_stream stream);
/* LayerNorm and adaLN modulate in one pass over (batch * tokens) rows of in:
 * normalized = LN(in), out = normalized * (1 + scale) + shift with the per-sample
 * strided shift/scale of modulate_forward; the same as layernorm_forward followed
 * by modulate_forward. normalized, mean and rstd are what the backward functions
 * read; each may be NULL when not needed. */
void layernorm_modulate_forward_cuda(float *out, float *normalized, float *mean, float *rstd, const float *in,
                                     const float *shift, const float *scale, int mod_stride, int batch, int tokens,
                                     int dim, float eps, ldm_stream stream);

/* ---- adaLN modulate and gated residual ---- */
void modulate_forward_cuda(float *out, const float *in, const float *shift, const float *scale, int mod_stride,
                           int batch, int tokens, int dim, ldm_stream stream);
void modulate_backward_cuda(float *d_in, float *d_shift, float *d_scale, const float *d_out, const float *in,
                            const float *scale, int mod_stride, int batch, int tokens, int dim, ldm_stream stream);
void gated_residual_forward_cuda(float *x, const float *y, const float *gate, int mod_stride, int batch, int tokens,
                                 int dim, ldm_stream stream);
void gated_residual_backward_cuda(float *d_y, float *d_gate, const float *d_x, const float *y, const float *gate,
                                  int mod_stride, int batch, int tokens, int dim, ldm_stream stream);

/* ---- activations (d_in may alias d_out, out may alias in) ---- */
void gelu_tanh_forward_cuda(float *out, const float *in, size_t n, ldm_stream stream);
void gelu_tanh_backward_cuda(float *d_in, const float *d_out, const float *in, size_t n, ldm_stream stream);
void silu_forward_cuda(float *out, const float *in, size_t n, ldm_stream stream);
void silu_backward_cuda(float *d_in, const float *d_out, const float *in, size_t n, ldm_stream stream);

/* ---- attention core: the _precision variants of ops.h ----
 * q k^T and p v (and the backward GEMMs) are fp32 strided-batched GEMMs; one
 * fused kernel scales the scores and takes the softmax (one more the softmax
 * backward). With PRECISION_BF16 / FP16 the probabilities (and in backward the
 * score gradients) are rounded to the format before the GEMMs that read them,
 * as attention_forward_precision does; PRECISION_FP32 is attention_forward. */
void attention_forward_cuda(gemm_cuda_context *ctx, float *out, float *probs, const float *qkv, int batch, int tokens,
                            int heads, int head_dim, ldm_precision precision, ldm_stream stream);
void attention_backward_cuda(gemm_cuda_context *ctx, float *d_qkv, float *d_scores, const float *d_out,
                             const float *qkv, const float *probs, int batch, int tokens, int heads, int head_dim,
                             ldm_precision precision, ldm_stream stream);

/* ---- fused attention (flash-attention style): no probabilities in memory ----
 * The same attention as above, one kernel per pass with an fp32 online softmax;
 * backward recomputes the probabilities from q, k and the row's log-sum-exp.
 * qkv (batch, tokens, 3, heads, head_dim) and out are stored in `precision`:
 * fp32 floats, or the 16-bit bits of bf16/fp16 (what kept_operand gives a GEMM);
 * head_dim 1..128 (else the program ends). Deterministic (no atomics).
 * Forward: out (batch, tokens, heads * head_dim) fp32 (not rounded);
 * row_lse (batch, heads, tokens) fp32, the log-sum-exp of each row of scaled
 * scores, kept for backward. */
void flash_attention_forward_cuda(float *out, float *row_lse, const void *qkv, int batch, int tokens, int heads,
                                  int head_dim, ldm_precision precision, ldm_stream stream);
/* d_qkv (batch, tokens, 3 * heads * head_dim) fp32, overwritten; row_dot
 * (batch, heads, tokens) scratch; d_out (batch, tokens, heads * head_dim) fp32;
 * out: forward's output as kept (in `precision`); row_lse from forward. In
 * bf16/fp16 the recomputed probabilities and the score gradients are rounded
 * to the format, as attention_backward_precision does. */
void flash_attention_backward_cuda(float *d_qkv, float *row_dot, const float *d_out, const void *qkv,
                                   const void *out, const float *row_lse, int batch, int tokens, int heads,
                                   int head_dim, ldm_precision precision, ldm_stream stream);

/* ---- patchify / unpatchify ---- */
void patchify_forward_cuda(float *patches, const float *image, int batch, int channels, int size, int patch,
                           ldm_stream stream);
void patchify_backward_cuda(float *d_image, const float *d_patches, int batch, int channels, int size, int patch,
                            ldm_stream stream);
void unpatchify_forward_cuda(float *image, const float *tokens, int batch, int channels, int size, int patch,
                             ldm_stream stream);
void unpatchify_backward_cuda(float *d_tokens, const float *d_image, int batch, int channels, int size, int patch,
                              ldm_stream stream);

/* ---- embeddings ---- */
void timestep_embedding_forward_cuda(float *out, const float *t, int batch, int dim, ldm_stream stream);
void timestep_embedding_backward_cuda(float *d_t, const float *d_out, const float *t, int batch, int dim,
                                      ldm_stream stream);
/* labels (batch) are device ints in [0, table_rows). */
void embedding_forward_cuda(float *out, const float *table, const int *labels, int batch, int dim, ldm_stream stream);
/* d_table (table_rows, dim) accumulates; each row adds its samples in batch
 * order, as the CPU does (bit-identical). Labels outside [0, table_rows) add nothing. */
void embedding_backward_cuda(float *d_table, const float *d_out, const int *labels, int batch, int dim,
                             int table_rows, ldm_stream stream);

/* ---- loss ---- */
/* *loss (one device float) = weighted_mse_forward's return value; per_sample_loss
 * (batch) or NULL; weight (batch) or NULL. Sums in double, in a fixed order.
 * batch 0 makes *loss NaN, as the CPU's 0 / 0. */
void weighted_mse_forward_cuda(float *loss, float *per_sample_loss, const float *pred, const float *target,
                               const float *weight, int batch, int per_sample, ldm_stream stream);
/* d_loss is a host value (as in ops.h). */
void weighted_mse_backward_cuda(float *d_pred, float d_loss, const float *pred, const float *target,
                                const float *weight, int batch, int per_sample, ldm_stream stream);

/* ---- small elementwise helpers ---- */
void add_forward_cuda(float *out, const float *a, const float *b, size_t n, ldm_stream stream);
void add_row_broadcast_cuda(float *out, const float *row, int rows, int dim, ldm_stream stream);

/* ---- AdamW: one step of train/optimizer.c's adamw_step, bit for bit ----
 * params, grads, m, v (count); step is the step being taken (1 for the first,
 * adamw_state.step after its increment); lr, beta1, beta2, eps, weight_decay as
 * in adamw_hyper. */
void adamw_step_cuda(float *params, const float *grads, float *m, float *v, size_t count, float lr, float beta1,
                     float beta2, float eps, float weight_decay, int64_t step, ldm_stream stream);

/* ---- the rest of the optimizer step ---- */
/* ema (count) = ema + (1 - decay) (params - ema): train/ema.c's ema_update, bit for bit. */
void ema_update_cuda(float *ema, const float *params, size_t count, double decay, ldm_stream stream);
/* x (n) *= factor (the loss scale taken out, clipping). */
void scale_cuda(float *x, size_t n, float factor, ldm_stream stream);
/* *result (one device double) = the sum of x[i]^2 (n) in double, in a fixed
 * order (SQUARED_NORM_PARTIALS fixed slices, then their sum in order): the same
 * bits on every run; infinite or NaN when any x is. partials: device scratch of
 * SQUARED_NORM_PARTIALS doubles. */
#define SQUARED_NORM_PARTIALS 256
void squared_norm_cuda(double *result, double *partials, const float *x, size_t n, ldm_stream stream);

/* ---- 16-bit formats (precision.h), bit for bit; PRECISION_FP32 does nothing ---- */
/* stored (n) = the bits of x (n) in the format. */
void precision_to_bits_cuda(ldm_precision precision, uint16_t *stored, const float *x, size_t n, ldm_stream stream);
/* x (n) = the values of stored (n): precision_load. */
void precision_from_bits_cuda(ldm_precision precision, float *x, const uint16_t *stored, size_t n,
                              ldm_stream stream);
/* x (n) rounded in place to the format: precision_round_array. */
void precision_round_cuda(ldm_precision precision, float *x, size_t n, ldm_stream stream);
/* stored = bits of x, and x rounded in place: precision_store. */
void precision_store_cuda(ldm_precision precision, uint16_t *stored, float *x, size_t n, ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif
