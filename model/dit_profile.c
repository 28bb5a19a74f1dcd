/* Time per phase of a CPU DiT (see dit_profile.h): a dit_backend whose every
 * function reads the clock, calls the same function of the model's own backend
 * and adds the elapsed time and, for products, the FLOPs into its phase. */
#include "dit_profile.h"

#include <time.h>

#include "dit_graph.h"
#include "fatal.h"

/* The profiled model's own backend and where its times go (one model at a time). */
static const dit_backend *inner;
static dit_profile *out;

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The wall clock; the process's CPU time goes beside it into cpu_start. */
static double cpu_start;
static double now(void) {
    cpu_start = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
    return clock_seconds(CLOCK_MONOTONIC);
}

static void add(dit_phase phase, double t0, double flops) {
    out->seconds[phase] += clock_seconds(CLOCK_MONOTONIC) - t0;
    out->cpu_seconds[phase] += clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    out->flops[phase] += flops;
    out->calls[phase]++;
}

const char *dit_phase_name(dit_phase phase) {
    static const char *const names[DIT_PHASES] = {"gemm forward",       "gemm backward", "attention forward",
                                                  "attention backward", "norm+modulate", "elementwise",
                                                  "precision convert",  "embed+patch"};
    return phase < DIT_PHASES ? names[phase] : "?";
}

/* A void op of phase `phase`: time the inner call. */
#define TIMED(phase, flops, call)                                                                                     \
    do {                                                                                                              \
        const double t0_ = now();                                                                                     \
        inner->call;                                                                                                  \
        add(phase, t0_, flops);                                                                                       \
    } while (0)
/* An op returning a value. */
#define TIMED_RETURN(type, phase, call)                                                                               \
    do {                                                                                                              \
        const double t0_ = now();                                                                                     \
        type r_ = inner->call;                                                                                        \
        add(phase, t0_, 0);                                                                                           \
        return r_;                                                                                                    \
    } while (0)

static void p_prepare_weights(const dit_graph *g) { TIMED(DIT_PHASE_CONVERT, 0, prepare_weights(g)); }
static const void *p_weight(const dit_graph *g, int index) { return inner->weight(g, index); }
static const float *p_bias(const dit_graph *g, int index) { return inner->bias(g, index); }
static void p_round(const dit_graph *g, float *x, size_t n) { TIMED(DIT_PHASE_CONVERT, 0, round(g, x, n)); }
static const void *p_keep(const dit_graph *g, kept_tensor k, size_t n) {
    TIMED_RETURN(const void *, DIT_PHASE_CONVERT, keep(g, k, n));
}
static const float *p_load(const dit_graph *g, kept_tensor k, size_t n) {
    TIMED_RETURN(const float *, DIT_PHASE_CONVERT, load(g, k, n));
}
static const void *p_kept_operand(const dit_graph *g, kept_tensor k, size_t n) {
    TIMED_RETURN(const void *, DIT_PHASE_CONVERT, kept_operand(g, k, n));
}
static const void *p_grad_operand(const dit_graph *g, float *grad, uint16_t *bits, size_t n) {
    TIMED_RETURN(const void *, DIT_PHASE_CONVERT, grad_operand(g, grad, bits, n));
}
static void p_zero(const dit_graph *g, void *x, size_t bytes) { TIMED(DIT_PHASE_ELEMENTWISE, 0, zero(g, x, bytes)); }
static void p_copy(const dit_graph *g, void *to, const void *from, size_t bytes) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, copy(g, to, from, bytes));
}
static void p_scale(const dit_graph *g, float *o, const float *in, float factor, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, scale(g, o, in, factor, n));
}
static void p_add(const dit_graph *g, float *o, const float *a, const float *b, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, add(g, o, a, b, n));
}
static void p_add_row_broadcast(const dit_graph *g, float *o, const float *row, int rows, int dim) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, add_row_broadcast(g, o, row, rows, dim));
}
static void p_linear(const dit_graph *g, float *o, const void *in, const void *w, const float *b, int rows,
                     int sample_rows, int in_features, int out_features) {
    TIMED(DIT_PHASE_GEMM_FORWARD, 2.0 * rows * in_features * out_features,
          linear(g, o, in, w, b, rows, sample_rows, in_features, out_features));
}
static void p_linear_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                              const void *d_out, const void *in, const void *w, int rows, int in_features,
                              int out_features) {
    const double products = (d_in ? 1 : 0) + (d_weight ? 1 : 0);
    TIMED(DIT_PHASE_GEMM_BACKWARD, 2.0 * products * rows * in_features * out_features,
          linear_backward(g, d_in, d_in_beta, d_weight, d_bias, d_out, in, w, rows, in_features, out_features));
}
static void p_linear_backward_times_slope(const dit_graph *g, float *d_in, const float *slope, float *d_weight,
                                          float *d_bias, const void *d_out, const void *in, const void *w, int rows,
                                          int in_features, int out_features) {
    TIMED(DIT_PHASE_GEMM_BACKWARD, 2.0 * 2 * rows * in_features * out_features,
          linear_backward_times_slope(g, d_in, slope, d_weight, d_bias, d_out, in, w, rows, in_features,
                                      out_features));
}
static void p_modulate_layernorm_backward(const dit_graph *g, float *d_in, float d_in_beta, float *d_shift,
                                          float *d_scale, const float *d_out, const float *normalized,
                                          const float *rstd, const float *scale_, int mod_stride, int batch,
                                          int tokens, int dim, float *d_modulated) {
    TIMED(DIT_PHASE_NORM, 0,
          modulate_layernorm_backward(g, d_in, d_in_beta, d_shift, d_scale, d_out, normalized, rstd, scale_,
                                      mod_stride, batch, tokens, dim, d_modulated));
}
static void p_layernorm_modulate(const dit_graph *g, float *o, kept_tensor ln, float *mean, float *rstd,
                                 const float *in, const float *shift, const float *scale_, int mod_stride, int batch,
                                 int tokens, int dim) {
    TIMED(DIT_PHASE_NORM, 0,
          layernorm_modulate(g, o, ln, mean, rstd, in, shift, scale_, mod_stride, batch, tokens, dim));
}
static void p_layernorm_backward_normalized(const dit_graph *g, float *d_in, float d_in_beta, const float *d_out,
                                            const float *normalized, const float *rstd, int rows, int dim) {
    TIMED(DIT_PHASE_NORM, 0, layernorm_backward_normalized(g, d_in, d_in_beta, d_out, normalized, rstd, rows, dim));
}
static void p_modulate_backward(const dit_graph *g, float *d_in, float *d_shift, float *d_scale, const float *d_out,
                                const float *in, const float *scale_, int mod_stride, int batch, int tokens, int dim) {
    TIMED(DIT_PHASE_NORM, 0,
          modulate_backward(g, d_in, d_shift, d_scale, d_out, in, scale_, mod_stride, batch, tokens, dim));
}
static void p_gated_residual_forward(const dit_graph *g, float *x, const float *y, const float *gate, int mod_stride,
                                     int batch, int tokens, int dim) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, gated_residual_forward(g, x, y, gate, mod_stride, batch, tokens, dim));
}
static void p_gated_residual_backward(const dit_graph *g, float *d_y, float *d_gate, const float *d_x, const float *y,
                                      const float *gate, int mod_stride, int batch, int tokens, int dim) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0,
          gated_residual_backward(g, d_y, d_gate, d_x, y, gate, mod_stride, batch, tokens, dim));
}
/* q k^T and p v: 2 products of (T, T, E) per (sample, head); backward 4. */
static double attention_flops(int products, int batch, int tokens, int heads, int head_dim) {
    return 2.0 * products * batch * heads * (double)tokens * tokens * head_dim;
}
static void p_attention_forward(const dit_graph *g, float *o, float *probs, const float *qkv, int batch, int tokens,
                                int heads, int head_dim) {
    TIMED(DIT_PHASE_ATTENTION_FORWARD, attention_flops(2, batch, tokens, heads, head_dim),
          attention_forward(g, o, probs, qkv, batch, tokens, heads, head_dim));
}
static void p_attention_backward(const dit_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                 const float *qkv, const float *probs, int batch, int tokens, int heads,
                                 int head_dim) {
    TIMED(DIT_PHASE_ATTENTION_BACKWARD, attention_flops(4, batch, tokens, heads, head_dim),
          attention_backward(g, d_qkv, d_scores, d_out, qkv, probs, batch, tokens, heads, head_dim));
}
static void p_fused_attention_forward(const dit_graph *g, float *o, float *row_lse, const void *qkv, int batch,
                                      int tokens, int heads, int head_dim) {
    TIMED(DIT_PHASE_ATTENTION_FORWARD, attention_flops(2, batch, tokens, heads, head_dim),
          fused_attention_forward(g, o, row_lse, qkv, batch, tokens, heads, head_dim));
}
static void p_fused_attention_backward(const dit_graph *g, float *d_qkv, float *row_dot, const float *d_out,
                                       const void *qkv, const void *o, const float *row_lse, int batch, int tokens,
                                       int heads, int head_dim) {
    TIMED(DIT_PHASE_ATTENTION_BACKWARD, attention_flops(5, batch, tokens, heads, head_dim),
          fused_attention_backward(g, d_qkv, row_dot, d_out, qkv, o, row_lse, batch, tokens, heads, head_dim));
}
static void p_gelu_tanh_forward(const dit_graph *g, float *o, const float *in, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, gelu_tanh_forward(g, o, in, n));
}
static void p_gelu_tanh_backward(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, gelu_tanh_backward(g, d_in, d_out, in, n));
}
static void p_gelu_tanh_forward_keep_slope(const dit_graph *g, float *o, float *x_then_slope, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, gelu_tanh_forward_keep_slope(g, o, x_then_slope, n));
}
static void p_gelu_tanh_backward_from_slope(const dit_graph *g, float *d_in, const float *d_out, const float *slope,
                                            size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, gelu_tanh_backward_from_slope(g, d_in, d_out, slope, n));
}
static void p_silu_forward(const dit_graph *g, float *o, const float *in, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, silu_forward(g, o, in, n));
}
static void p_silu_backward(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    TIMED(DIT_PHASE_ELEMENTWISE, 0, silu_backward(g, d_in, d_out, in, n));
}
static void p_patchify_forward(const dit_graph *g, float *patches, const float *image, int batch, int channels,
                               int size, int patch) {
    TIMED(DIT_PHASE_EMBED, 0, patchify_forward(g, patches, image, batch, channels, size, patch));
}
static void p_patchify_backward(const dit_graph *g, float *d_image, const float *d_patches, int batch, int channels,
                                int size, int patch) {
    TIMED(DIT_PHASE_EMBED, 0, patchify_backward(g, d_image, d_patches, batch, channels, size, patch));
}
static void p_unpatchify_forward(const dit_graph *g, float *image, const float *tokens, int batch, int channels,
                                 int size, int patch) {
    TIMED(DIT_PHASE_EMBED, 0, unpatchify_forward(g, image, tokens, batch, channels, size, patch));
}
static void p_unpatchify_backward(const dit_graph *g, float *d_tokens, const float *d_image, int batch, int channels,
                                  int size, int patch) {
    TIMED(DIT_PHASE_EMBED, 0, unpatchify_backward(g, d_tokens, d_image, batch, channels, size, patch));
}
static void p_timestep_embedding_forward(const dit_graph *g, float *o, const float *t, int batch, int dim) {
    TIMED(DIT_PHASE_EMBED, 0, timestep_embedding_forward(g, o, t, batch, dim));
}
static void p_embedding_forward(const dit_graph *g, float *o, const float *table, const int *labels, int batch,
                                int dim) {
    TIMED(DIT_PHASE_EMBED, 0, embedding_forward(g, o, table, labels, batch, dim));
}
static void p_embedding_backward(const dit_graph *g, float *d_table, const float *d_out, const int *labels, int batch,
                                 int dim, int table_rows) {
    TIMED(DIT_PHASE_EMBED, 0, embedding_backward(g, d_table, d_out, labels, batch, dim, table_rows));
}

static dit_backend timed;

void dit_profile_start(dit_model *model, dit_profile *profile) {
    if (inner) fatal_internal("dit_profile_start: a model is profiled already");
    dit_graph *g = model->graph;
    inner = g->ops;
    out = profile;
    timed = (dit_backend){.gemm_reads_bits = inner->gemm_reads_bits, DIT_BACKEND_FUNCTIONS(p_)};
    if (inner->fused_attention_forward) { /* the graph takes this path only where the backend has it */
        timed.fused_attention_forward = p_fused_attention_forward;
        timed.fused_attention_backward = p_fused_attention_backward;
    }
    if (inner->gelu_tanh_forward_keep_slope) { /* likewise (in fp32) */
        timed.gelu_tanh_forward_keep_slope = p_gelu_tanh_forward_keep_slope;
        timed.gelu_tanh_backward_from_slope = p_gelu_tanh_backward_from_slope;
    }
    if (inner->linear_backward_times_slope) timed.linear_backward_times_slope = p_linear_backward_times_slope;
    if (inner->modulate_layernorm_backward) timed.modulate_layernorm_backward = p_modulate_layernorm_backward;
    g->ops = &timed;
}

void dit_profile_stop(dit_model *model) {
    if (!inner) return;
    model->graph->ops = inner;
    inner = NULL;
    out = NULL;
}
