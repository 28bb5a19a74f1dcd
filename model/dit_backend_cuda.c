/* The DiT graph's CUDA backend (dit_graph.h): the ops of ops_cuda.h and
 * gemm_cublaslt.h queued on the model's stream, and the storage of bf16/fp16 on
 * the GPU. GEMMs read 16-bit bits: a kept activation's kept buffer, an activation
 * gradient's bits (grad_operand), the weights' 16-bit copy with the rounded fp32
 * biases, made at every forward pass.
 *
 * Where this differs from the CPU backend (at rounding level only; the math is
 * the same): LayerNorm and modulate run fused (layernorm_modulate_forward_cuda),
 * so in 16 bits modulate reads the fp32 LayerNorm output where the CPU reads it
 * rounded (what is kept is rounded in both). Plain C; only meaningful in a CUDA
 * build (LDM_HAVE_CUDA). */
#ifdef LDM_HAVE_CUDA

#include "dit_backend_cuda.h"

#include "dit_cuda_kernels.h"
#include "ops_cuda.h"

static const dit_cuda_state *state_of(const dit_graph *g) { return g->backend_state; }
static ldm_stream stream_of(const dit_graph *g) { return state_of(g)->stream; }
static gemm_cuda_context *gemm_of(const dit_graph *g) { return state_of(g)->gemm; }

static void cuda_prepare_weights(const dit_graph *g) {
    const dit_cuda_state *s = state_of(g);
    if (g->precision == PRECISION_FP32) return; /* the GEMMs read the master parameters */
    precision_to_bits_cuda(g->precision, s->weight_bits, g->params, g->trainable_numel, s->stream);
    dit_cuda_round_segments(g->precision, s->bias_rounded, g->params, s->bias_segments, s->bias_count, s->stream);
}

/* The weight a GEMM reads: the master in fp32, its 16-bit bits in bf16/fp16. */
static const void *cuda_weight(const dit_graph *g, int index) {
    const size_t offset = g->entries[index].offset;
    if (g->precision == PRECISION_FP32) return g->params + offset;
    return state_of(g)->weight_bits + offset;
}

/* The bias a GEMM adds: the master in fp32, the rounded copy in bf16/fp16. */
static const float *cuda_bias(const dit_graph *g, int index) {
    if (g->precision == PRECISION_FP32) return g->params + g->entries[index].offset;
    const dit_cuda_state *s = state_of(g);
    return s->bias_rounded + s->bias_offset[index];
}

static void cuda_round(const dit_graph *g, float *x, size_t n) {
    precision_round_cuda(g->precision, x, n, stream_of(g));
}

/* In bf16/fp16 the bits into k.kept and work rounded to them (precision_store). */
static const void *cuda_keep(const dit_graph *g, kept_tensor k, size_t n) {
    if (g->precision != PRECISION_FP32) precision_store_cuda(g->precision, k.kept, k.work, n, stream_of(g));
    return k.kept;
}

static const float *cuda_load(const dit_graph *g, kept_tensor k, size_t n) {
    if (g->precision != PRECISION_FP32) precision_from_bits_cuda(g->precision, k.work, k.kept, n, stream_of(g));
    return k.work;
}

static const void *cuda_kept_operand(const dit_graph *g, kept_tensor k, size_t n) {
    (void)g;
    (void)n;
    return k.kept;
}

static const void *cuda_grad_operand(const dit_graph *g, float *grad, uint16_t *bits, size_t n) {
    if (g->precision == PRECISION_FP32) return grad;
    precision_store_cuda(g->precision, bits, grad, n, stream_of(g));
    return bits;
}

static void cuda_zero(const dit_graph *g, void *x, size_t bytes) { dit_cuda_zero_async(x, bytes, stream_of(g)); }

static void cuda_copy(const dit_graph *g, void *to, const void *from, size_t bytes) {
    dit_cuda_copy_async(to, from, bytes, stream_of(g));
}

static void cuda_scale(const dit_graph *g, float *out, const float *in, float factor, size_t n) {
    dit_cuda_scale(out, in, factor, n, stream_of(g));
}

static void cuda_add(const dit_graph *g, float *out, const float *a, const float *b, size_t n) {
    add_forward_cuda(out, a, b, n, stream_of(g));
}

static void cuda_add_row_broadcast(const dit_graph *g, float *out, const float *row, int rows, int dim) {
    add_row_broadcast_cuda(out, row, rows, dim, stream_of(g));
}

static void cuda_linear(const dit_graph *g, float *out, const void *in, const void *w, const float *b, int rows,
                        int sample_rows, int in_features, int out_features) {
    (void)sample_rows; /* cuBLASLt picks its algorithm by shape: batch invariance is a CPU promise */
    linear_forward_cuda(gemm_of(g), out, in, w, b, rows, in_features, out_features, g->precision, stream_of(g));
}

static void cuda_linear_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                                 const void *d_out, const void *in, const void *w, int rows, int in_features,
                                 int out_features) {
    linear_backward_cuda(gemm_of(g), d_in, d_in_beta, d_weight, d_bias, d_out, in, w, rows, in_features, out_features,
                         g->precision, stream_of(g));
}

/* Fused: modulate reads the fp32 LayerNorm output; what is kept is rounded after. */
static void cuda_layernorm_modulate(const dit_graph *g, float *out, kept_tensor ln, float *mean, float *rstd,
                                    const float *in, const float *shift, const float *scale_, int mod_stride, int batch,
                                    int tokens, int dim) {
    layernorm_modulate_forward_cuda(out, ln.work, mean, rstd, in, shift, scale_, mod_stride, batch, tokens, dim,
                                    DIT_LAYERNORM_EPS, stream_of(g));
    cuda_keep(g, ln, (size_t)batch * tokens * dim);
}

static void cuda_layernorm_backward_normalized(const dit_graph *g, float *d_in, float d_in_beta, const float *d_out,
                                               const float *normalized, const float *rstd, int rows, int dim) {
    layernorm_backward_normalized_cuda(d_in, d_in_beta, d_out, normalized, rstd, rows, dim, stream_of(g));
}

static void cuda_modulate_backward(const dit_graph *g, float *d_in, float *d_shift, float *d_scale, const float *d_out,
                                   const float *in, const float *scale_, int mod_stride, int batch, int tokens,
                                   int dim) {
    modulate_backward_cuda(d_in, d_shift, d_scale, d_out, in, scale_, mod_stride, batch, tokens, dim, stream_of(g));
}

static void cuda_gated_residual_forward(const dit_graph *g, float *x, const float *y, const float *gate, int mod_stride,
                                        int batch, int tokens, int dim) {
    gated_residual_forward_cuda(x, y, gate, mod_stride, batch, tokens, dim, stream_of(g));
}

static void cuda_gated_residual_backward(const dit_graph *g, float *d_y, float *d_gate, const float *d_x,
                                         const float *y, const float *gate, int mod_stride, int batch, int tokens,
                                         int dim) {
    gated_residual_backward_cuda(d_y, d_gate, d_x, y, gate, mod_stride, batch, tokens, dim, stream_of(g));
}

static void cuda_attention_forward(const dit_graph *g, float *out, float *probs, const float *qkv, int batch,
                                   int tokens, int heads, int head_dim) {
    attention_forward_cuda(gemm_of(g), out, probs, qkv, batch, tokens, heads, head_dim, g->precision, stream_of(g));
}

static void cuda_attention_backward(const dit_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                    const float *qkv, const float *probs, int batch, int tokens, int heads,
                                    int head_dim) {
    attention_backward_cuda(gemm_of(g), d_qkv, d_scores, d_out, qkv, probs, batch, tokens, heads, head_dim,
                            g->precision, stream_of(g));
}

/* The DiT's attention: fused (flash_attention_*_cuda), reading qkv and the
 * kept output as kept (16-bit bits in bf16/fp16), keeping the row log-sum-exp. */
static void cuda_fused_attention_forward(const dit_graph *g, float *out, float *row_lse, const void *qkv, int batch,
                                         int tokens, int heads, int head_dim) {
    flash_attention_forward_cuda(out, row_lse, qkv, batch, tokens, heads, head_dim, g->precision, stream_of(g));
}

static void cuda_fused_attention_backward(const dit_graph *g, float *d_qkv, float *row_dot, const float *d_out,
                                          const void *qkv, const void *out, const float *row_lse, int batch,
                                          int tokens, int heads, int head_dim) {
    flash_attention_backward_cuda(d_qkv, row_dot, d_out, qkv, out, row_lse, batch, tokens, heads, head_dim,
                                  g->precision, stream_of(g));
}

static void cuda_gelu_tanh_forward(const dit_graph *g, float *out, const float *in, size_t n) {
    gelu_tanh_forward_cuda(out, in, n, stream_of(g));
}

static void cuda_gelu_tanh_backward(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    gelu_tanh_backward_cuda(d_in, d_out, in, n, stream_of(g));
}

static void cuda_silu_forward(const dit_graph *g, float *out, const float *in, size_t n) {
    silu_forward_cuda(out, in, n, stream_of(g));
}

static void cuda_silu_backward(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    silu_backward_cuda(d_in, d_out, in, n, stream_of(g));
}

static void cuda_patchify_forward(const dit_graph *g, float *patches, const float *image, int batch, int channels,
                                  int size, int patch) {
    patchify_forward_cuda(patches, image, batch, channels, size, patch, stream_of(g));
}

static void cuda_patchify_backward(const dit_graph *g, float *d_image, const float *d_patches, int batch, int channels,
                                   int size, int patch) {
    patchify_backward_cuda(d_image, d_patches, batch, channels, size, patch, stream_of(g));
}

static void cuda_unpatchify_forward(const dit_graph *g, float *image, const float *tokens, int batch, int channels,
                                    int size, int patch) {
    unpatchify_forward_cuda(image, tokens, batch, channels, size, patch, stream_of(g));
}

static void cuda_unpatchify_backward(const dit_graph *g, float *d_tokens, const float *d_image, int batch, int channels,
                                     int size, int patch) {
    unpatchify_backward_cuda(d_tokens, d_image, batch, channels, size, patch, stream_of(g));
}

static void cuda_timestep_embedding_forward(const dit_graph *g, float *out, const float *t, int batch, int dim) {
    timestep_embedding_forward_cuda(out, t, batch, dim, stream_of(g));
}

static void cuda_embedding_forward(const dit_graph *g, float *out, const float *table, const int *labels, int batch,
                                   int dim) {
    embedding_forward_cuda(out, table, labels, batch, dim, stream_of(g));
}

static void cuda_embedding_backward(const dit_graph *g, float *d_table, const float *d_out, const int *labels,
                                    int batch, int dim, int table_rows) {
    embedding_backward_cuda(d_table, d_out, labels, batch, dim, table_rows, stream_of(g));
}

const dit_backend dit_backend_cuda = {.gemm_reads_bits = 1, DIT_BACKEND_FUNCTIONS(cuda_),
                                      .fused_attention_forward = cuda_fused_attention_forward,
                                      .fused_attention_backward = cuda_fused_attention_backward};

#endif /* LDM_HAVE_CUDA */
