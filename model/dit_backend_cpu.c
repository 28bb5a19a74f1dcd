/* The DiT graph's CPU backends (dit_graph.h): the ops of ops.h, and the storage
 * of bf16/fp16 as the CPU emulates it (precision.h).
 *
 * dit_backend_cpu: GEMMs read fp32 buffers holding values rounded to the format:
 * an activation's work buffer, rounded in place when it is kept; the weights and
 * biases from compute_params, a rounded copy of the master parameters made at
 * every forward pass.
 *
 * dit_backend_cpu_bf16_bits (bf16 with oneDNN): the same except that GEMMs read
 * bf16 bits: the kept activations (kept_tensor.kept), the activation gradients'
 * bits written once by grad_operand, and weight_bits, written with compute_params
 * at every forward pass. Biases stay fp32 (rounded values). Attention runs its
 * products batched over (sample, head) (ops_attention.c).
 *
 * dit_backend_cpu_fp32_onednn (fp32 and fp16 where oneDNN is the fp32 GEMM,
 * cpu_gemm_fp32_kind; bf16 where the bf16 kind is onednn-f32): dit_backend_cpu
 * with the linear layers on oneDNN's fp32 matmul, whose primitives
 * dit_backend_cpu_plan makes, and attention's products batched over (sample,
 * head) on its fp32 matmul (scratch in d_hidden as for the bits backend); in
 * bf16/fp16 it reads the rounded values. */
#include <string.h>

#include "dit_graph.h"
#include "gemm_onednn.h"
#include "ops.h"

static const dit_cpu_state *state(const dit_graph *g) { return g->backend_state; }
/* (trainable_numel) the parameters the GEMMs read: params itself in fp32, else a rounded copy */
static float *compute_params(const dit_graph *g) { return state(g)->compute_params; }

/* Copied and rounded a cache-sized chunk at a time: one pass over the parameters. */
#define PREPARE_CHUNK 16384
static void cpu_prepare_weights(const dit_graph *g) {
    if (g->precision == PRECISION_FP32) return; /* compute_params is params */
    float *rounded = compute_params(g);
    const size_t n = g->trainable_numel, chunks = (n + PREPARE_CHUNK - 1) / PREPARE_CHUNK;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        const size_t at = c * PREPARE_CHUNK, count = n - at < PREPARE_CHUNK ? n - at : PREPARE_CHUNK;
        memcpy(rounded + at, g->params + at, sizeof(float) * count);
        precision_round_serial(g->precision, rounded + at, count);
    }
}

static const void *cpu_weight(const dit_graph *g, int index) { return compute_params(g) + g->entries[index].offset; }

static const float *cpu_bias(const dit_graph *g, int index) { return compute_params(g) + g->entries[index].offset; }

static void cpu_round(const dit_graph *g, float *x, size_t n) { precision_round_array(g->precision, x, n); }

static const void *cpu_keep(const dit_graph *g, kept_tensor k, size_t n) {
    if (g->precision != PRECISION_FP32) precision_store(g->precision, k.kept, k.work, n);
    return k.work;
}

static const float *cpu_load(const dit_graph *g, kept_tensor k, size_t n) {
    if (g->precision != PRECISION_FP32) precision_load(g->precision, k.work, k.kept, n);
    return k.work;
}

static const void *cpu_kept_operand(const dit_graph *g, kept_tensor k, size_t n) { return cpu_load(g, k, n); }

static const void *cpu_grad_operand(const dit_graph *g, float *grad, uint16_t *bits, size_t n) {
    (void)bits;
    cpu_round(g, grad, n);
    return grad;
}

static void cpu_zero(const dit_graph *g, void *x, size_t bytes) {
    (void)g;
    memset(x, 0, bytes);
}

static void cpu_copy(const dit_graph *g, void *to, const void *from, size_t bytes) {
    (void)g;
    memcpy(to, from, bytes);
}

static void cpu_scale(const dit_graph *g, float *out, const float *in, float factor, size_t n) {
    (void)g;
    for (size_t i = 0; i < n; i++) out[i] = factor * in[i];
}

static void cpu_add(const dit_graph *g, float *out, const float *a, const float *b, size_t n) {
    (void)g;
    add_forward(out, a, b, n);
}

static void cpu_add_row_broadcast(const dit_graph *g, float *out, const float *row, int rows, int dim) {
    (void)g;
    add_row_broadcast(out, row, rows, dim);
}

static void cpu_linear(const dit_graph *g, float *out, const void *in, const void *w, const float *b, int rows,
                       int sample_rows, int in_features, int out_features) {
    linear_forward_precision(out, in, w, b, rows, sample_rows, in_features, out_features, g->precision);
}

static void cpu_linear_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                                const void *d_out, const void *in, const void *w, int rows, int in_features,
                                int out_features) {
    linear_backward_precision(d_in, d_in_beta, d_weight, d_bias, d_out, in, w, rows, in_features, out_features,
                              g->precision);
}

/* LayerNorm, its output kept (rounded in place in bf16/fp16), then modulate of
 * what is kept. */
static void cpu_layernorm_modulate(const dit_graph *g, float *out, kept_tensor ln, float *mean, float *rstd,
                                   const float *in, const float *shift, const float *scale_, int mod_stride, int batch,
                                   int tokens, int dim) {
    if (g->precision == PRECISION_FP32) { /* one pass; keep is nothing in fp32 */
        layernorm_modulate_forward(out, ln.work, mean, rstd, in, shift, scale_, mod_stride, batch, tokens, dim,
                                   DIT_LAYERNORM_EPS);
        return;
    }
    /* in 16 bits modulate reads the normalized values as kept (keep rounds them in place) */
    layernorm_forward(ln.work, mean, rstd, in, batch * tokens, dim, DIT_LAYERNORM_EPS);
    cpu_keep(g, ln, (size_t)batch * tokens * dim);
    modulate_forward(out, ln.work, shift, scale_, mod_stride, batch, tokens, dim);
}

static void cpu_layernorm_backward_normalized(const dit_graph *g, float *d_in, float d_in_beta, const float *d_out,
                                              const float *normalized, const float *rstd, int rows, int dim) {
    (void)g;
    layernorm_backward_normalized(d_in, d_in_beta, d_out, normalized, rstd, rows, dim);
}

static void cpu_modulate_backward(const dit_graph *g, float *d_in, float *d_shift, float *d_scale, const float *d_out,
                                  const float *in, const float *scale_, int mod_stride, int batch, int tokens,
                                  int dim) {
    (void)g;
    modulate_backward(d_in, d_shift, d_scale, d_out, in, scale_, mod_stride, batch, tokens, dim);
}

static void cpu_modulate_layernorm_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_shift,
                                           float *d_scale, const float *d_out, const float *normalized,
                                           const float *rstd, const float *scale_, int mod_stride, int batch,
                                           int tokens, int dim, float *d_modulated) {
    (void)g;
    modulate_layernorm_backward(d_in, d_in_beta, d_shift, d_scale, d_out, normalized, rstd, scale_, mod_stride, batch,
                                tokens, dim, d_modulated);
}

static void cpu_gated_residual_forward(const dit_graph *g, float *x, const float *y, const float *gate, int mod_stride,
                                       int batch, int tokens, int dim) {
    (void)g;
    gated_residual_forward(x, y, gate, mod_stride, batch, tokens, dim);
}

static void cpu_gated_residual_backward(const dit_graph *g, float *d_y, float *d_gate, const float *d_x, const float *y,
                                        const float *gate, int mod_stride, int batch, int tokens, int dim) {
    (void)g;
    gated_residual_backward(d_y, d_gate, d_x, y, gate, mod_stride, batch, tokens, dim);
}

static void cpu_attention_forward(const dit_graph *g, float *out, float *probs, const float *qkv, int batch, int tokens,
                                  int heads, int head_dim) {
    attention_forward_precision(out, probs, qkv, batch, tokens, heads, head_dim, g->precision);
}

static void cpu_attention_backward(const dit_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                   const float *qkv, const float *probs, int batch, int tokens, int heads,
                                   int head_dim) {
    attention_backward_precision(d_qkv, d_scores, d_out, qkv, probs, batch, tokens, heads, head_dim, g->precision);
}

static void cpu_gelu_tanh_forward(const dit_graph *g, float *out, const float *in, size_t n) {
    (void)g;
    gelu_tanh_forward(out, in, n);
}

static void cpu_gelu_tanh_backward(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    (void)g;
    gelu_tanh_backward(d_in, d_out, in, n);
}

static void cpu_gelu_tanh_forward_keep_slope(const dit_graph *g, float *out, float *x_then_slope, size_t n) {
    (void)g;
    gelu_tanh_forward_keep_slope(out, x_then_slope, n);
}

static void cpu_gelu_tanh_backward_from_slope(const dit_graph *g, float *d_in, const float *d_out,
                                              const float *slope, size_t n) {
    (void)g;
    gelu_tanh_backward_from_slope(d_in, d_out, slope, n);
}

static void cpu_silu_forward(const dit_graph *g, float *out, const float *in, size_t n) {
    (void)g;
    silu_forward(out, in, n);
}

static void cpu_silu_backward(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    (void)g;
    silu_backward(d_in, d_out, in, n);
}

static void cpu_patchify_forward(const dit_graph *g, float *patches, const float *image, int batch, int channels,
                                 int size, int patch) {
    (void)g;
    patchify_forward(patches, image, batch, channels, size, patch);
}

static void cpu_patchify_backward(const dit_graph *g, float *d_image, const float *d_patches, int batch, int channels,
                                  int size, int patch) {
    (void)g;
    patchify_backward(d_image, d_patches, batch, channels, size, patch);
}

static void cpu_unpatchify_forward(const dit_graph *g, float *image, const float *tokens, int batch, int channels,
                                   int size, int patch) {
    (void)g;
    unpatchify_forward(image, tokens, batch, channels, size, patch);
}

static void cpu_unpatchify_backward(const dit_graph *g, float *d_tokens, const float *d_image, int batch, int channels,
                                    int size, int patch) {
    (void)g;
    unpatchify_backward(d_tokens, d_image, batch, channels, size, patch);
}

static void cpu_timestep_embedding_forward(const dit_graph *g, float *out, const float *t, int batch, int dim) {
    (void)g;
    timestep_embedding_forward(out, t, batch, dim);
}

static void cpu_embedding_forward(const dit_graph *g, float *out, const float *table, const int *labels, int batch,
                                  int dim) {
    (void)g;
    embedding_forward(out, table, labels, batch, dim);
}

static void cpu_embedding_backward(const dit_graph *g, float *d_table, const float *d_out, const int *labels, int batch,
                                   int dim, int table_rows) {
    (void)g;
    (void)table_rows; /* the labels were checked by dit_forward */
    embedding_backward(d_table, d_out, labels, batch, dim);
}

/* The optional ops every CPU table has (the graph uses them in fp32 only). */
#define DIT_BACKEND_CPU_OPTIONAL                                          \
    .gelu_tanh_forward_keep_slope = cpu_gelu_tanh_forward_keep_slope, \
    .gelu_tanh_backward_from_slope = cpu_gelu_tanh_backward_from_slope, \
    .modulate_layernorm_backward = cpu_modulate_layernorm_backward

const dit_backend dit_backend_cpu = {.gemm_reads_bits = 0, DIT_BACKEND_FUNCTIONS(cpu_), DIT_BACKEND_CPU_OPTIONAL};

/* ---- dit_backend_cpu_bf16_bits: what differs from dit_backend_cpu ---- */

/* compute_params and weight_bits from the master parameters in one pass (what a copy
 * then precision_store gives, reading and writing the parameters once less). */
static void bits_prepare_weights(const dit_graph *g) {
    const float *params = g->params;
    float *rounded = compute_params(g);
    uint16_t *bits = state(g)->weight_bits;
    const size_t n = g->trainable_numel;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const uint16_t h = bf16_from_float(params[i]);
        bits[i] = h;
        rounded[i] = bf16_to_float(h);
    }
}

static const void *bits_weight(const dit_graph *g, int index) { return state(g)->weight_bits + g->entries[index].offset; }

static const void *bits_keep(const dit_graph *g, kept_tensor k, size_t n) {
    (void)g;
    precision_store(PRECISION_BF16, k.kept, k.work, n);
    return k.kept;
}

static const void *bits_kept_operand(const dit_graph *g, kept_tensor k, size_t n) {
    (void)g, (void)n;
    return k.kept;
}

static const void *bits_grad_operand(const dit_graph *g, float *grad, uint16_t *bits, size_t n) {
    (void)g;
    precision_store(PRECISION_BF16, bits, grad, n);
    return bits;
}

static void bits_linear(const dit_graph *g, float *out, const void *in, const void *w, const float *b, int rows,
                        int sample_rows, int in_features, int out_features) {
    (void)g, (void)sample_rows; /* a row's result does not depend on the others (ops.h) */
    linear_forward_bf16_bits(out, in, w, b, rows, in_features, out_features);
}

static void bits_linear_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                                 const void *d_out, const void *in, const void *w, int rows, int in_features,
                                 int out_features) {
    (void)g;
    linear_backward_bf16_bits(d_in, d_in_beta, d_weight, d_bias, d_out, in, w, rows, in_features, out_features);
}

static void bits_attention_forward(const dit_graph *g, float *out, float *probs, const float *qkv, int batch,
                                   int tokens, int heads, int head_dim) {
    attention_forward_bf16_bits(out, probs, qkv, &state(g)->attention, batch, tokens, heads, head_dim);
}

static void bits_attention_backward(const dit_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                    const float *qkv, const float *probs, int batch, int tokens, int heads,
                                    int head_dim) {
    attention_backward_bf16_bits(d_qkv, d_scores, d_out, qkv, probs, &state(g)->attention, batch, tokens, heads,
                                 head_dim);
}

/* The table of dit_backend_cpu with the functions above in their fields: later
 * designators replace earlier ones (C11 6.7.9), which -Woverride-init reports. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
const dit_backend dit_backend_cpu_bf16_bits = {
    .gemm_reads_bits = 1, DIT_BACKEND_FUNCTIONS(cpu_), .prepare_weights = bits_prepare_weights,
    .weight = bits_weight, .keep = bits_keep, .kept_operand = bits_kept_operand,
    .grad_operand = bits_grad_operand, .linear = bits_linear, .linear_backward = bits_linear_backward,
    .attention_forward = bits_attention_forward, .attention_backward = bits_attention_backward};
#pragma GCC diagnostic pop

/* ---- dit_backend_cpu_fp32_onednn: dit_backend_cpu with the linear layers on oneDNN ---- */

static void onednn_linear(const dit_graph *g, float *out, const void *in, const void *w, const float *b, int rows,
                          int sample_rows, int in_features, int out_features) {
    (void)g, (void)sample_rows; /* a row's result does not depend on the others (ops.h) */
    linear_forward_onednn(out, in, w, b, rows, in_features, out_features);
}

static void onednn_linear_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                                   const void *d_out, const void *in, const void *w, int rows, int in_features,
                                   int out_features) {
    (void)g;
    linear_backward_onednn(d_in, d_in_beta, d_weight, d_bias, d_out, in, w, rows, in_features, out_features);
}

static void onednn_linear_backward_times_slope(const dit_graph *g, float *d_in, const float *slope, float *d_weight,
                                               float *d_bias, const void *d_out, const void *in, const void *w,
                                               int rows, int in_features, int out_features) {
    (void)g;
    linear_backward_onednn_times(d_in, slope, d_weight, d_bias, d_out, in, w, rows, in_features, out_features);
}

static void onednn_attention_forward(const dit_graph *g, float *out, float *probs, const float *qkv, int batch,
                                     int tokens, int heads, int head_dim) {
    attention_forward_onednn(out, probs, qkv, state(g)->attention_f32, batch, tokens, heads, head_dim, g->precision);
}

static void onednn_attention_backward(const dit_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                      const float *qkv, const float *probs, int batch, int tokens, int heads,
                                      int head_dim) {
    attention_backward_onednn(d_qkv, d_scores, d_out, qkv, probs, state(g)->attention_f32, batch, tokens, heads,
                              head_dim, g->precision);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
const dit_backend dit_backend_cpu_fp32_onednn = {
    .gemm_reads_bits = 0, DIT_BACKEND_FUNCTIONS(cpu_), DIT_BACKEND_CPU_OPTIONAL, .linear = onednn_linear,
    .linear_backward = onednn_linear_backward, .attention_forward = onednn_attention_forward,
    .attention_backward = onednn_attention_backward, .linear_backward_times_slope = onednn_linear_backward_times_slope};
#pragma GCC diagnostic pop

const dit_backend *dit_backend_cpu_for(ldm_precision precision) {
    if (precision == PRECISION_BF16) {
        const cpu_gemm_kind kind = cpu_gemm_bf16_kind();
        return kind == CPU_GEMM_ONEDNN       ? &dit_backend_cpu_bf16_bits
               : kind == CPU_GEMM_ONEDNN_F32 ? &dit_backend_cpu_fp32_onednn
                                             : &dit_backend_cpu;
    }
    return cpu_gemm_fp32_kind() == CPU_GEMM_ONEDNN ? &dit_backend_cpu_fp32_onednn : &dit_backend_cpu;
}

/* Every linear of dit_graph.c at max_batch through plan: (rows, in, out, bias, d_in's
 * beta, whether d_in is computed). */
static void plan_linears(const dit_graph *g, void (*plan)(int, int, int, int, float, int)) {
    const dit_shape *s = &g->shape;
    const int B = g->max_batch, BT = B * g->tokens, D = s->hidden_size, F = s->mlp_hidden;
    const int E = DIT_FREQUENCY_EMBEDDING_SIZE, PPC = s->patch_size * s->patch_size * s->in_channels;
    plan(BT, PPC, D, 1, 0.0f, 1); /* patch embedding (d_x when asked for) */
    for (int embedder = 0; embedder < (s->guidance_input ? 2 : 1); embedder++) {
        plan(B, E, D, 1, 0.0f, 0); /* mlp.0: no input gradient */
        plan(B, D, D, 1, 0.0f, 1); /* mlp.2 */
    }
    plan(B, D, 6 * D, 1, 1.0f, 1); /* every block's adaLN: d_cond_act accumulates */
    plan(BT, D, 3 * D, 1, 0.0f, 1); /* qkv */
    plan(BT, D, D, 1, 0.0f, 1);     /* proj */
    plan(BT, D, F, 1, 0.0f, 1);     /* fc1 */
    plan(BT, F, D, 1, 0.0f, 1);     /* fc2 */
    plan(B, D, 2 * D, 1, 0.0f, 1);  /* final adaLN */
    plan(BT, D, PPC, 1, 0.0f, 1);   /* final linear */
}

void dit_backend_cpu_plan(const dit_graph *g) {
    const dit_shape *s = &g->shape;
    const int B = g->max_batch, D = s->hidden_size;
    dit_cpu_state *cpu = g->backend_state;
    if (g->ops == &dit_backend_cpu_fp32_onednn) {
        cpu->attention_f32 = cpu->attention_memory ? cpu->attention_memory : g->d_hidden;
        plan_linears(g, linear_plan_onednn);
        if (g->precision == PRECISION_FP32) /* fc2's backward times GELU's slope (dit_graph.c) */
            linear_plan_onednn_times(B * g->tokens, s->mlp_hidden, D);
        attention_plan_onednn(B, g->tokens, s->num_heads, D / s->num_heads);
    }
    if (g->ops != &dit_backend_cpu_bf16_bits) return;
    cpu->attention = attention_bits_scratch_place(cpu->attention_memory ? cpu->attention_memory : (void *)g->d_hidden,
                                                  B, g->tokens, s->num_heads, D / s->num_heads);
    plan_linears(g, linear_plan_bf16_bits);
    attention_plan_bf16_bits(B, g->tokens, s->num_heads, D / s->num_heads);
}
