/* The autoencoder graph's ops on the CPU (ae_backend_cpu, see autoencoder_graph.h):
 * the ops of ops.h and ops_conv.h in fp32 host memory (the convolutions through
 * oneDNN or the own im2col + GEMM, chosen at each call by conv_onednn.h; the mid
 * block attention's linears and products on oneDNN's fp32 matmul as the DiT's, or on
 * sgemm), bf16/fp16 rounding through
 * precision.h, and the posterior and the loss as plain loops that sum in double one
 * value after another (the order every CPU result of the autoencoder is pinned to). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autoencoder_graph.h"
#include "conv_onednn.h"
#include "gemm_onednn.h"
#include "ops.h"
#include "ops_conv.h"
#include "precision.h"

static size_t cpu_conv_scratch_floats(const conv2d_dims *shape) {
    /* scratch for the threads there are at layout; fewer later give the same result */
    return conv2d_scratch_floats(shape, omp_get_max_threads());
}

/* The convolution behind the table's conv ops: oneDNN's or the own (conv_onednn.h),
 * and in bf16 oneDNN's bf16 or fp32 kernels. */
static int bf16_kernels(const ae_graph *g) { return g->precision == PRECISION_BF16 && cpu_conv_bf16_kernels(); }
static bool conv_on_onednn(const ae_graph *g) { return cpu_conv_kind_for(bf16_kernels(g)) == CPU_CONV_ONEDNN; }

static void cpu_conv_plan(const ae_graph *g, const conv2d_dims *shape) {
    if (conv_on_onednn(g)) conv_onednn_plan(shape, bf16_kernels(g));
}

static void cpu_conv_forward(const ae_graph *g, float *out, const float *in, const float *weight, const float *bias,
                             const conv2d_dims *shape) {
    if (conv_on_onednn(g))
        conv_onednn_forward(out, in, weight, bias, shape, bf16_kernels(g));
    else
        conv2d_forward(out, in, weight, bias, shape, g->conv_scratch, g->conv_scratch_floats);
}

static void cpu_conv_backward(const ae_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                              const float *d_out, const float *in, const float *weight, const conv2d_dims *shape) {
    if (conv_on_onednn(g))
        conv_onednn_backward(d_in, d_in_beta, d_weight, d_bias, d_out, in, weight, shape, bf16_kernels(g));
    else
        conv2d_backward(d_in, d_in_beta, d_weight, d_bias, d_out, in, weight, shape, g->conv_scratch,
                        g->conv_scratch_floats);
}

static void cpu_groupnorm_forward(const ae_graph *g, float *out, float *mean, float *rstd, const float *in,
                                  const float *gamma, const float *beta, int batch, int channels, int spatial) {
    groupnorm_forward(out, mean, rstd, in, gamma, beta, batch, channels, spatial, g->shape.norm_groups,
                      AE_GROUPNORM_EPS);
}

static void cpu_groupnorm_backward(const ae_graph *g, float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                                   const float *d_out, const float *in, const float *mean, const float *rstd,
                                   const float *gamma, int batch, int channels, int spatial) {
    groupnorm_backward(d_in, d_in_beta, d_gamma, d_beta, d_out, in, mean, rstd, gamma, batch, channels, spatial,
                       g->shape.norm_groups);
}

static void cpu_silu_forward(const ae_graph *g, float *out, const float *in, size_t n) {
    (void)g;
    silu_forward(out, in, n);
}

static void cpu_silu_backward(const ae_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    (void)g;
    silu_backward(d_in, d_out, in, n);
}

static void cpu_silu_forward_keep_slope(const ae_graph *g, float *out, float *x_then_slope, size_t n) {
    (void)g;
    silu_forward_keep_slope(out, x_then_slope, n);
}

static void cpu_silu_backward_from_slope(const ae_graph *g, float *d_in, const float *d_out, const float *slope,
                                         size_t n) {
    (void)g;
    silu_backward_from_slope(d_in, d_out, slope, n);
}

static void cpu_add(const ae_graph *g, float *out, const float *a, const float *b, size_t n) {
    (void)g;
    add_forward(out, a, b, n);
}

static void cpu_copy(const ae_graph *g, float *dst, const float *src, size_t n) {
    (void)g;
    memcpy(dst, src, sizeof(float) * n);
}

static void cpu_upsample_forward(const ae_graph *g, float *out, const float *in, int batch, int channels, int height,
                                 int width) {
    (void)g;
    upsample_nearest2x_forward(out, in, batch, channels, height, width);
}

static void cpu_upsample_backward(const ae_graph *g, float *d_in, const float *d_out, int batch, int channels,
                                  int height, int width) {
    (void)g;
    upsample_nearest2x_backward(d_in, d_out, batch, channels, height, width);
}

static void cpu_channels_to_tokens(const ae_graph *g, float *out, const float *in, int batch, int channels,
                                   int tokens) {
    (void)g;
    transpose_channels_tokens_forward(out, in, batch, channels, tokens);
}

static void cpu_tokens_to_channels(const ae_graph *g, float *out, const float *in, int batch, int channels,
                                   int tokens) {
    (void)g;
    transpose_channels_tokens_backward(out, in, batch, channels, tokens);
}

/* The attention unit's GEMMs: oneDNN's fp32 matmul where that is the CPU's fp32
 * GEMM (as the DiT's, cpu_gemm_fp32_kind: it picks its kernels from the CPU itself,
 * where OpenBLAS falls back to generic ones on a CPU it does not know), else the
 * sgemm path. Both are independent of the thread count and of the other rows. */
static bool gemm_on_onednn(void) { return cpu_gemm_fp32_kind() == CPU_GEMM_ONEDNN; }

static size_t cpu_attention_plan(const ae_graph *g, int batch, int tokens, int width) {
    if (!gemm_on_onednn()) return 0;
    const int rows = batch * tokens, with_d_in = g->parts.training;
    linear_plan_onednn(rows, width, 3 * width, 1, 0.0f, with_d_in); /* q, k, v */
    linear_plan_onednn(rows, width, width, 1, 0.0f, with_d_in);     /* the output */
    attention_plan_onednn(batch, tokens, 1, width);
    return (attention_onednn_scratch_bytes(batch, tokens, 1, width) + sizeof(float) - 1) / sizeof(float);
}

static void cpu_linear_forward(const ae_graph *g, float *out, const float *in, const float *weight, const float *bias,
                               int rows, int sample_rows, int in_features, int out_features) {
    (void)g;
    if (gemm_on_onednn())
        linear_forward_onednn(out, in, weight, bias, rows, in_features, out_features);
    else
        linear_forward(out, in, weight, bias, rows, sample_rows, in_features, out_features);
}

static void cpu_linear_backward(const ae_graph *g, float *d_in, float *d_weight, float *d_bias, const float *d_out,
                                const float *in, const float *weight, int rows, int in_features, int out_features) {
    (void)g;
    if (gemm_on_onednn())
        linear_backward_onednn(d_in, 0.0f, d_weight, d_bias, d_out, in, weight, rows, in_features, out_features);
    else
        linear_backward(d_in, 0.0f, d_weight, d_bias, d_out, in, weight, rows, in_features, out_features);
}

static void cpu_attention_forward(const ae_graph *g, float *out, float *probs, const float *qkv, int batch, int tokens,
                                  int width) {
    if (gemm_on_onednn())
        attention_forward_onednn(out, probs, qkv, g->conv_scratch, batch, tokens, 1, width, g->precision);
    else
        attention_forward_precision(out, probs, qkv, batch, tokens, 1, width, g->precision);
}

static void cpu_attention_backward(const ae_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                   const float *qkv, const float *probs, int batch, int tokens, int width) {
    if (gemm_on_onednn())
        attention_backward_onednn(d_qkv, d_scores, d_out, qkv, probs, g->conv_scratch, batch, tokens, 1, width,
                                  g->precision);
    else
        attention_backward_precision(d_qkv, d_scores, d_out, qkv, probs, batch, tokens, 1, width, g->precision);
}

static void cpu_round(const ae_graph *g, float *x, size_t n) {
    if (g->precision != PRECISION_FP32) precision_round_array(g->precision, x, n);
}

static float clamp_logvar(float v) { return v < AE_LOGVAR_MIN ? AE_LOGVAR_MIN : v > AE_LOGVAR_MAX ? AE_LOGVAR_MAX : v; }

static void cpu_posterior_forward(const ae_graph *g, float *mean, float *logvar, float *z, double *kl_sum,
                                  const float *moments, const float *noise, int batch, int per_sample) {
    const size_t per = (size_t)per_sample;
    double kl = 0;
    for (int b = 0; b < batch; b++) {
        const float *sample = moments + (size_t)b * 2 * per;
        for (size_t k = 0; k < per; k++) {
            const size_t i = (size_t)b * per + k;
            const float m = sample[k], lv = clamp_logvar(sample[per + k]);
            mean[i] = m;
            logvar[i] = lv;
            z[i] = noise ? m + expf(0.5f * lv) * noise[i] : m;
            kl += (double)m * m + exp((double)lv) - 1.0 - lv;
        }
    }
    *kl_sum = kl;
    cpu_round(g, z, (size_t)batch * per);
}

static void cpu_posterior_backward(const ae_graph *g, float *d_moments, const float *d_z, const float *moments,
                                   const float *mean, const float *logvar, const float *noise, float kl_scale,
                                   int batch, int per_sample) {
    const size_t per = (size_t)per_sample;
    for (int b = 0; b < batch; b++) {
        const float *raw = moments + (size_t)b * 2 * per;
        float *d_mean = d_moments + (size_t)b * 2 * per, *d_logvar = d_mean + per;
        for (size_t k = 0; k < per; k++) {
            const size_t i = (size_t)b * per + k;
            const float dz = d_z[i];
            d_mean[k] = dz + kl_scale * mean[i];
            float grad = 0.5f * kl_scale * (expf(logvar[i]) - 1.0f);
            if (noise) grad += dz * 0.5f * expf(0.5f * logvar[i]) * noise[i];
            const bool inside = raw[per + k] >= AE_LOGVAR_MIN && raw[per + k] <= AE_LOGVAR_MAX;
            d_logvar[k] = inside ? grad : 0.0f;
        }
    }
    cpu_round(g, d_moments, (size_t)batch * 2 * per);
}

static void cpu_reconstruction_sum(const ae_graph *g, double *sum, const float *rec, const float *target, size_t n,
                                   bool l2) {
    (void)g;
    double s = 0;
    for (size_t k = 0; k < n; k++) {
        const double diff = (double)rec[k] - target[k];
        s += l2 ? diff * diff : fabs(diff);
    }
    *sum = s;
}

float ae_reconstruction_gradient(float rec, float target, float scale, bool l2) {
    const float diff = rec - target;
    return l2 ? 2.0f * scale * diff : scale * (float)((diff > 0) - (diff < 0));
}

static void cpu_reconstruction_backward(const ae_graph *g, float *d_rec, const float *rec, const float *target,
                                        size_t n, bool l2, float d_loss) {
    const float scale = d_loss / (float)n;
    for (size_t k = 0; k < n; k++) d_rec[k] = ae_reconstruction_gradient(rec[k], target[k], scale, l2);
    cpu_round(g, d_rec, n);
}

const ae_backend ae_backend_cpu = {
    .conv_scratch_floats = cpu_conv_scratch_floats,
    .conv_plan = cpu_conv_plan,
    .conv_forward = cpu_conv_forward,
    .conv_backward = cpu_conv_backward,
    .groupnorm_forward = cpu_groupnorm_forward,
    .groupnorm_backward = cpu_groupnorm_backward,
    .silu_forward = cpu_silu_forward,
    .silu_backward = cpu_silu_backward,
    .silu_forward_keep_slope = cpu_silu_forward_keep_slope,
    .silu_backward_from_slope = cpu_silu_backward_from_slope,
    .add = cpu_add,
    .copy = cpu_copy,
    .upsample_forward = cpu_upsample_forward,
    .upsample_backward = cpu_upsample_backward,
    .channels_to_tokens = cpu_channels_to_tokens,
    .tokens_to_channels = cpu_tokens_to_channels,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .attention_plan = cpu_attention_plan,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .round = cpu_round,
    .posterior_forward = cpu_posterior_forward,
    .posterior_backward = cpu_posterior_backward,
    .reconstruction_sum = cpu_reconstruction_sum,
    .reconstruction_backward = cpu_reconstruction_backward,
};
