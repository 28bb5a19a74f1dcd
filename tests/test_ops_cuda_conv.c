/* The autoencoder's CUDA ops (model/cuda/ops_cuda_conv.h) against the CPU ops
 * (model/ops_conv.h): random inputs, the CPU op and the CUDA op (copy in, run,
 * copy out), compared, forward and backward. Outputs the GPU overwrites are
 * filled with NaN first (an element left unwritten, or a beta-0 gradient that
 * reads what was there, shows up), and so is the convolution's scratch;
 * gradients that accumulate (d_weight, d_bias, d_gamma, d_beta, and d_in with
 * beta 1) start from the same random, non-zero values on both sides.
 *
 * Shapes: channels and sizes are not multiples of 32, H != W.
 * - conv2d: 3x3 pad 1 stride 1 (batch 2, 5 -> 7, 9x11), run with the scratch it
 *   asks for (both samples in one GEMM, the weight gradient too), with one
 *   sample's and with two output rows' worth (bands, the last one short), and
 *   batch 3 with two samples' columns and output gradients (the weight gradient
 *   one GEMM per two samples, the last group short); 1x1 stride 1 (the
 *   pointwise path, with and without bias, 33 -> 40 channels, and its weight
 *   gradient by two samples when scratch is given); 3x3 stride 2 padded (0, 1, 0, 1)
 *   (diffusers' Downsample2D, 10x9 -> 5x4), whole and in one-row bands; 1x1
 *   stride 2 (input rows and columns no output reads: their d_in is 0, or beta
 *   times what was there) in bands; 3x3 with padding (1, 0, 0, 2) in bands;
 *   40 -> 36 channels. Each: forward with and without bias as the case says,
 *   backward with d_in_beta 0 and 1, every gradient alone (NULL for the others:
 *   the same bits as when all are asked for), and backward twice (same bits);
 *   the scratch conv2d_scratch_floats_cuda asks for at the SD VAE's sizes.
 * - GroupNorm: 32 groups of 64 and 128 channels, 3 groups of 12, 1 group, one
 *   channel per group; forward (out, mean, rstd), backward from the CPU's
 *   statistics with beta 0 and 1, d_gamma / d_beta alone, twice (same bits).
 * - upsampling and the transpose (both directions), and a batch of 0 for every op.
 *
 * Tolerances (a = GPU, b = CPU):
 * - convolution (GEMMs): |a - b| <= 1e-5 * S with S the same op on absolute
 *   values (|in| * |W| + |bias|, and |start| where the gradient accumulates onto
 *   it or beta = 1): the bound of a dot product's rounding error, as for the
 *   linear op in test_ops_cuda.c; exact zeros must be exact;
 * - GroupNorm: out and d_in |a - b| <= 1e-5 + 1e-5 |b| (elementwise after
 *   statistics in double; the GPU may fuse multiply-adds), mean within
 *   1e-6 + 1e-6 |b|, rstd within 1e-6 |b|, d_gamma / d_beta (double sums in
 *   another order, then rounded to float) 1e-5 + 1e-5 |b|;
 * - upsampling (forward and backward, the CPU's order of the four adds) and the
 *   transpose: bit-identical.
 * Reports itself skipped (exit 77) in a CPU build or without a GPU. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "ops_conv.h"
#include "rng.h"
#include "test_util.h"

#ifdef LDM_HAVE_CUDA
#include "cuda_test_arrays.h"
#include "ops_cuda.h"
#include "ops_cuda_conv.h"

/* "<name> <suffix>" into a static buffer, for the messages. */
static const char *label(const char *name, const char *suffix) {
    static char text[256];
    snprintf(text, sizeof text, "%s %s", name, suffix);
    return text;
}

/* ---- 2-D convolution ---- */

#define CONV_TOLERANCE 1e-5

static conv2d_dims conv_dims(int batch, int in_channels, int out_channels, int height, int width, int kernel,
                             int stride, int pad_top, int pad_bottom, int pad_left, int pad_right) {
    conv2d_dims s = {batch, in_channels, out_channels, height, width, kernel, stride,
                     pad_top, pad_bottom, pad_left, pad_right};
    return s;
}

/* How much scratch a case gives the GPU op. */
typedef enum {
    SCRATCH_ASKED,      /* conv2d_scratch_floats_cuda: the whole (small) batch in one chunk */
    SCRATCH_ONE_SAMPLE, /* one sample's columns: a GEMM per sample */
    SCRATCH_ONE_ROW,    /* one output row's columns (and a little more): bands of one row */
    SCRATCH_TWO_ROWS,   /* two rows' (and a little more): bands of two rows, the last one short */
    SCRATCH_TWO_SAMPLES_WITH_GRADIENT /* two samples' columns and output gradients: the weight gradient in one
                                         GEMM per two samples (a 1x1 convolution too), the last group short */
} scratch_size;

static size_t scratch_for(const conv2d_dims *s, scratch_size size) {
    const size_t row = (size_t)s->in_channels * s->kernel * s->kernel * conv2d_out_width(s);
    switch (size) {
    case SCRATCH_ONE_SAMPLE: return row * conv2d_out_height(s);
    case SCRATCH_ONE_ROW: return row + 5;
    case SCRATCH_TWO_ROWS: return 2 * row + 7;
    case SCRATCH_TWO_SAMPLES_WITH_GRADIENT:
        return 2 * (row * conv2d_out_height(s) + (size_t)s->out_channels * conv2d_out_height(s) * conv2d_out_width(s)) +
               64 + 5;
    default: return conv2d_scratch_floats_cuda(s);
    }
}

/* The GPU's backward into fresh device gradients (d_in NaN for beta 0, else
 * start_in), each only when its want_ flag is set; results fetched into *got_*. */
typedef struct {
    const float *start_in, *start_weight, *start_bias; /* host */
    const float *d_out, *in, *weight;                   /* device */
    float *scratch;
    size_t scratch_floats, n_in, n_weight, n_bias;
} conv_backward_inputs;

static void gpu_conv_backward(gemm_cuda_context *ctx, const conv_backward_inputs *x, const conv2d_dims *s, float beta,
                              int want_in, int want_weight, int want_bias, float **got_in, float **got_weight,
                              float **got_bias) {
    float *d_in = want_in ? (beta != 0.0f ? to_device_f(x->start_in, x->n_in) : device_nan(x->n_in)) : NULL;
    float *d_weight = want_weight ? to_device_f(x->start_weight, x->n_weight) : NULL;
    float *d_bias = want_bias ? to_device_f(x->start_bias, x->n_bias) : NULL;
    conv2d_backward_cuda(ctx, d_in, beta, d_weight, d_bias, x->d_out, x->in, x->weight, s, x->scratch,
                         x->scratch_floats, NULL);
    if (got_in) *got_in = d_in ? fetch(d_in, x->n_in) : NULL;
    if (got_weight) *got_weight = d_weight ? fetch(d_weight, x->n_weight) : NULL;
    if (got_bias) *got_bias = d_bias ? fetch(d_bias, x->n_bias) : NULL;
}

static void test_conv(gemm_cuda_context *ctx, const char *name, conv2d_dims s, int with_bias, scratch_size size) {
    const int out_h = conv2d_out_height(&s), out_w = conv2d_out_width(&s);
    const size_t n_in = (size_t)s.batch * s.in_channels * s.height * s.width;
    const size_t n_out = (size_t)s.batch * s.out_channels * out_h * out_w;
    const size_t n_weight = (size_t)s.out_channels * s.in_channels * s.kernel * s.kernel;
    const size_t n_bias = (size_t)s.out_channels;
    const size_t cpu_scratch_floats = conv2d_scratch_floats(&s, 1);
    float *cpu_scratch = host_alloc(cpu_scratch_floats * sizeof(float));

    float *in = host_normal(n_in, 1.0f), *weight = host_normal(n_weight, 0.3f);
    float *bias = with_bias ? host_normal(n_bias, 0.5f) : NULL;
    float *abs_in = host_abs(in, n_in), *abs_weight = host_abs(weight, n_weight);

    const size_t scratch_floats = scratch_for(&s, size);
    float *scratch = scratch_floats ? device_nan(scratch_floats) : NULL;
    float *dev_in = to_device_f(in, n_in), *dev_weight = to_device_f(weight, n_weight);

    /* forward */
    float *out = host_alloc(n_out * 4), *out_scale = host_alloc(n_out * 4);
    conv2d_forward(out, in, weight, bias, &s, cpu_scratch, cpu_scratch_floats);
    conv2d_forward(out_scale, abs_in, abs_weight, host_abs(bias, n_bias), &s, cpu_scratch, cpu_scratch_floats);
    float *dev_out = device_nan(n_out);
    conv2d_forward_cuda(ctx, dev_out, dev_in, dev_weight, to_device_f(bias, n_bias), &s, scratch, scratch_floats, NULL);
    expect_close_scaled(label(name, "forward"), fetch(dev_out, n_out), out, out_scale, n_out, CONV_TOLERANCE);

    /* backward: d_in with beta 0 (NaN) and 1; d_weight and d_bias accumulate onto start values */
    float *d_out = host_normal(n_out, 1.0f), *abs_d_out = host_abs(d_out, n_out);
    const conv_backward_inputs x = {host_normal(n_in, 1.0f), host_normal(n_weight, 1.0f), host_normal(n_bias, 1.0f),
                                    to_device_f(d_out, n_out), dev_in, dev_weight, scratch, scratch_floats,
                                    n_in, n_weight, n_bias};
    float *all_in = NULL, *all_weight = NULL, *all_bias = NULL; /* beta 0, every gradient asked for */
    for (int beta = 0; beta <= 1; beta++) {
        float *cpu_in = beta ? host_copy(x.start_in, n_in) : host_alloc(n_in * 4);
        float *cpu_weight = host_copy(x.start_weight, n_weight), *cpu_bias = host_copy(x.start_bias, n_bias);
        conv2d_backward(cpu_in, (float)beta, cpu_weight, cpu_bias, d_out, in, weight, &s, cpu_scratch,
                        cpu_scratch_floats);
        float *scale_in = beta ? host_abs(x.start_in, n_in) : host_alloc(n_in * 4);
        float *scale_weight = host_abs(x.start_weight, n_weight), *scale_bias = host_abs(x.start_bias, n_bias);
        conv2d_backward(scale_in, (float)beta, scale_weight, scale_bias, abs_d_out, abs_in, abs_weight, &s,
                        cpu_scratch, cpu_scratch_floats);
        float *got_in, *got_weight, *got_bias;
        gpu_conv_backward(ctx, &x, &s, (float)beta, 1, 1, 1, &got_in, &got_weight, &got_bias);
        expect_close_scaled(label(name, beta ? "backward d_in beta 1" : "backward d_in beta 0"), got_in, cpu_in,
                            scale_in, n_in, CONV_TOLERANCE);
        expect_close_scaled(label(name, "backward d_weight"), got_weight, cpu_weight, scale_weight, n_weight,
                            CONV_TOLERANCE);
        expect_close_scaled(label(name, "backward d_bias"), got_bias, cpu_bias, scale_bias, n_bias, CONV_TOLERANCE);
        if (!beta) all_in = got_in, all_weight = got_weight, all_bias = got_bias;
    }

    /* each gradient alone, the others NULL: the same bits as with all of them */
    float *only;
    gpu_conv_backward(ctx, &x, &s, 0.0f, 1, 0, 0, &only, NULL, NULL);
    expect_same_bits_f(label(name, "backward d_in alone"), only, all_in, n_in);
    gpu_conv_backward(ctx, &x, &s, 0.0f, 0, 1, 0, NULL, &only, NULL);
    expect_same_bits_f(label(name, "backward d_weight alone"), only, all_weight, n_weight);
    gpu_conv_backward(ctx, &x, &s, 0.0f, 0, 0, 1, NULL, NULL, &only);
    expect_same_bits_f(label(name, "backward d_bias alone"), only, all_bias, n_bias);

    /* determinism: the whole backward again */
    float *again_in, *again_weight, *again_bias;
    gpu_conv_backward(ctx, &x, &s, 0.0f, 1, 1, 1, &again_in, &again_weight, &again_bias);
    expect_same_bits_f(label(name, "backward twice d_in"), again_in, all_in, n_in);
    expect_same_bits_f(label(name, "backward twice d_weight"), again_weight, all_weight, n_weight);
    expect_same_bits_f(label(name, "backward twice d_bias"), again_bias, all_bias, n_bias);
    release_all();
}

/* conv2d_scratch_floats_cuda at the Stable Diffusion VAE's sizes (nothing runs):
 * two or more whole samples with their output gradients (and 64 floats to align
 * the gradients) while they fit in the 32 MiB target, else whole samples, else
 * whole output rows. */
static void test_scratch_sizes(void) {
    const size_t target = (size_t)1 << 23;
    conv2d_dims small = conv_dims(8, 512, 512, 32, 32, 3, 1, 1, 1, 1, 1); /* 4608 x 1024 columns a sample */
    CHECK(conv2d_scratch_floats_cuda(&small) == (size_t)4608 * 1024); /* two with d_out do not fit */
    small.batch = 1;
    CHECK(conv2d_scratch_floats_cuda(&small) == (size_t)4608 * 1024);
    /* 1152 x 1024 columns and 128 x 1024 of d_out a sample */
    const conv2d_dims mid = conv_dims(8, 128, 128, 32, 32, 3, 1, 1, 1, 1, 1);
    const size_t mid_sample = ((size_t)1152 + 128) * 1024;
    CHECK(conv2d_scratch_floats_cuda(&mid) == (target - 64) / mid_sample * mid_sample + 64); /* 6 samples a group */
    const conv2d_dims few = conv_dims(3, 128, 128, 32, 32, 3, 1, 1, 1, 1, 1);
    CHECK(conv2d_scratch_floats_cuda(&few) == 3 * mid_sample + 64); /* the whole batch in one group */
    const conv2d_dims large = conv_dims(8, 128, 128, 256, 256, 3, 1, 1, 1, 1, 1); /* 1152 x 256 a row */
    const size_t row = (size_t)1152 * 256, large_floats = conv2d_scratch_floats_cuda(&large);
    CHECK(large_floats % row == 0 && large_floats <= target && large_floats + row > target);
    const conv2d_dims down = conv_dims(8, 128, 128, 256, 256, 3, 2, 0, 1, 0, 1); /* 1152 x 128 a row */
    const size_t down_floats = conv2d_scratch_floats_cuda(&down);
    CHECK(down_floats % ((size_t)1152 * 128) == 0 && down_floats <= target);
    const conv2d_dims pointwise = conv_dims(8, 256, 512, 64, 64, 1, 1, 0, 0, 0, 0);
    CHECK(conv2d_scratch_floats_cuda(&pointwise) == 0);
}

static void test_convolutions(gemm_cuda_context *ctx) {
    test_scratch_sizes();
    const conv2d_dims same = conv_dims(2, 5, 7, 9, 11, 3, 1, 1, 1, 1, 1);
    test_conv(ctx, "conv 3x3 pad 1", same, 1, SCRATCH_ASKED);
    test_conv(ctx, "conv 3x3 pad 1, a sample per chunk", same, 1, SCRATCH_ONE_SAMPLE);
    test_conv(ctx, "conv 3x3 pad 1, two-row bands", same, 0, SCRATCH_TWO_ROWS);
    test_conv(ctx, "conv 3x3 pad 1, batch 3, weight gradient by two samples",
              conv_dims(3, 5, 7, 9, 11, 3, 1, 1, 1, 1, 1), 1, SCRATCH_TWO_SAMPLES_WITH_GRADIENT);
    test_conv(ctx, "conv 1x1", conv_dims(3, 6, 10, 7, 5, 1, 1, 0, 0, 0, 0), 1, SCRATCH_ASKED);
    test_conv(ctx, "conv 1x1, weight gradient by two samples", conv_dims(3, 6, 10, 7, 5, 1, 1, 0, 0, 0, 0), 1,
              SCRATCH_TWO_SAMPLES_WITH_GRADIENT);
    test_conv(ctx, "conv 1x1 33 -> 40, no bias", conv_dims(2, 33, 40, 4, 3, 1, 1, 0, 0, 0, 0), 0, SCRATCH_ASKED);
    const conv2d_dims down = conv_dims(2, 4, 6, 10, 9, 3, 2, 0, 1, 0, 1);
    test_conv(ctx, "conv 3x3 stride 2 pad (0,1,0,1)", down, 1, SCRATCH_ASKED);
    test_conv(ctx, "conv 3x3 stride 2 pad (0,1,0,1), one-row bands", down, 1, SCRATCH_ONE_ROW);
    test_conv(ctx, "conv 1x1 stride 2, one-row bands", conv_dims(2, 3, 5, 7, 6, 1, 2, 0, 0, 0, 0), 1,
              SCRATCH_ONE_ROW);
    test_conv(ctx, "conv 3x3 pad (1,0,0,2), two-row bands", conv_dims(2, 3, 4, 7, 5, 3, 1, 1, 0, 0, 2), 1,
              SCRATCH_TWO_ROWS);
    test_conv(ctx, "conv 3x3 pad 1 40 -> 36", conv_dims(1, 40, 36, 6, 5, 3, 1, 1, 1, 1, 1), 1, SCRATCH_ASKED);
}

/* ---- GroupNorm ---- */

#define GROUPNORM_EPS 1e-6f

static void test_groupnorm(int batch, int channels, int spatial, int groups) {
    char name[96];
    snprintf(name, sizeof name, "groupnorm batch %d, %d channels in %d groups, spatial %d", batch, channels, groups,
             spatial);
    const size_t n = (size_t)batch * channels * spatial, n_stats = (size_t)batch * groups;
    const size_t group_size = n / n_stats;
    float *x = host_normal(n, 2.0f);
    for (size_t i = 0; i < n; i++) x[i] += 1.0f + 0.5f * (float)(i / group_size % 7); /* a mean per group */
    float *gamma = host_normal(channels, 0.5f), *beta = host_normal(channels, 0.5f);
    for (int c = 0; c < channels; c++) gamma[c] += 1.0f;
    float *out = host_alloc(n * 4), *mean = host_alloc(n_stats * 4), *rstd = host_alloc(n_stats * 4);
    groupnorm_forward(out, mean, rstd, x, gamma, beta, batch, channels, spatial, groups, GROUPNORM_EPS);
    float *dev_x = to_device_f(x, n), *dev_gamma = to_device_f(gamma, channels);
    float *dev_beta = to_device_f(beta, channels);
    float *dev_out = device_nan(n), *dev_mean = device_nan(n_stats), *dev_rstd = device_nan(n_stats);
    groupnorm_forward_cuda(dev_out, dev_mean, dev_rstd, dev_x, dev_gamma, dev_beta, batch, channels, spatial, groups,
                           GROUPNORM_EPS, NULL);
    expect_close(label(name, "forward out"), fetch(dev_out, n), out, n, 1e-5, 1e-5);
    expect_close(label(name, "forward mean"), fetch(dev_mean, n_stats), mean, n_stats, 1e-6, 1e-6);
    expect_close(label(name, "forward rstd"), fetch(dev_rstd, n_stats), rstd, n_stats, 0.0, 1e-6);

    /* backward from the CPU's statistics, beta 0 (d_in NaN) and 1; d_gamma, d_beta accumulate */
    float *d_out = host_normal(n, 1.0f), *start_in = host_normal(n, 1.0f);
    float *start_gamma = host_normal(channels, 1.0f), *start_beta = host_normal(channels, 1.0f);
    float *dev_d_out = to_device_f(d_out, n), *cpu_mean = to_device_f(mean, n_stats);
    float *cpu_rstd = to_device_f(rstd, n_stats);
    float *first_in = NULL, *first_gamma = NULL, *first_beta = NULL;
    for (int b = 0; b <= 1; b++) {
        float *cpu_in = b ? host_copy(start_in, n) : host_alloc(n * 4);
        float *cpu_gamma = host_copy(start_gamma, channels), *cpu_beta = host_copy(start_beta, channels);
        groupnorm_backward(cpu_in, (float)b, cpu_gamma, cpu_beta, d_out, x, mean, rstd, gamma, batch, channels,
                           spatial, groups);
        float *dev_in = b ? to_device_f(start_in, n) : device_nan(n);
        float *dev_d_gamma = to_device_f(start_gamma, channels), *dev_d_beta = to_device_f(start_beta, channels);
        groupnorm_backward_cuda(dev_in, (float)b, dev_d_gamma, dev_d_beta, dev_d_out, dev_x, cpu_mean, cpu_rstd,
                                dev_gamma, batch, channels, spatial, groups, NULL);
        float *got_in = fetch(dev_in, n), *got_gamma = fetch(dev_d_gamma, channels);
        float *got_beta = fetch(dev_d_beta, channels);
        expect_close(label(name, b ? "backward d_in beta 1" : "backward d_in beta 0"), got_in, cpu_in, n, 1e-5, 1e-5);
        expect_close(label(name, "backward d_gamma"), got_gamma, cpu_gamma, channels, 1e-5, 1e-5);
        expect_close(label(name, "backward d_beta"), got_beta, cpu_beta, channels, 1e-5, 1e-5);
        if (!b) first_in = got_in, first_gamma = got_gamma, first_beta = got_beta;
    }
    /* d_gamma alone, then d_beta alone (d_in NULL): the same bits */
    float *alone = to_device_f(start_gamma, channels);
    groupnorm_backward_cuda(NULL, 0.0f, alone, NULL, dev_d_out, dev_x, cpu_mean, cpu_rstd, dev_gamma, batch, channels,
                            spatial, groups, NULL);
    expect_same_bits_f(label(name, "backward d_gamma alone"), fetch(alone, channels), first_gamma, channels);
    alone = to_device_f(start_beta, channels);
    groupnorm_backward_cuda(NULL, 0.0f, NULL, alone, dev_d_out, dev_x, cpu_mean, cpu_rstd, dev_gamma, batch, channels,
                            spatial, groups, NULL);
    expect_same_bits_f(label(name, "backward d_beta alone"), fetch(alone, channels), first_beta, channels);
    /* determinism: d_in alone, then everything again */
    float *again_in = device_nan(n);
    groupnorm_backward_cuda(again_in, 0.0f, NULL, NULL, dev_d_out, dev_x, cpu_mean, cpu_rstd, dev_gamma, batch,
                            channels, spatial, groups, NULL);
    expect_same_bits_f(label(name, "backward d_in alone"), fetch(again_in, n), first_in, n);
    float *again_gamma = to_device_f(start_gamma, channels), *again_beta = to_device_f(start_beta, channels);
    again_in = device_nan(n);
    groupnorm_backward_cuda(again_in, 0.0f, again_gamma, again_beta, dev_d_out, dev_x, cpu_mean, cpu_rstd, dev_gamma,
                            batch, channels, spatial, groups, NULL);
    expect_same_bits_f(label(name, "backward twice d_in"), fetch(again_in, n), first_in, n);
    expect_same_bits_f(label(name, "backward twice d_gamma"), fetch(again_gamma, channels), first_gamma, channels);
    expect_same_bits_f(label(name, "backward twice d_beta"), fetch(again_beta, channels), first_beta, channels);
    /* and the forward again */
    float *again_out = device_nan(n);
    groupnorm_forward_cuda(again_out, dev_mean, dev_rstd, dev_x, dev_gamma, dev_beta, batch, channels, spatial, groups,
                           GROUPNORM_EPS, NULL);
    expect_same_bits_f(label(name, "forward twice"), fetch(again_out, n), fetch(dev_out, n), n);
    release_all();
}

/* ---- upsampling and the transpose: bit-identical ---- */

static void test_upsample(int batch, int channels, int height, int width) {
    const size_t n_in = (size_t)batch * channels * height * width, n_out = 4 * n_in;
    float *in = host_normal(n_in, 1.0f), *out = host_alloc(n_out * 4);
    upsample_nearest2x_forward(out, in, batch, channels, height, width);
    float *dev_out = device_nan(n_out);
    upsample_nearest2x_forward_cuda(dev_out, to_device_f(in, n_in), batch, channels, height, width, NULL);
    expect_same_bits_f("upsample_nearest2x forward", fetch(dev_out, n_out), out, n_out);

    float *d_out = host_normal(n_out, 1.0f), *d_in = host_alloc(n_in * 4);
    upsample_nearest2x_backward(d_in, d_out, batch, channels, height, width);
    float *dev_d_in = device_nan(n_in);
    upsample_nearest2x_backward_cuda(dev_d_in, to_device_f(d_out, n_out), batch, channels, height, width, NULL);
    expect_same_bits_f("upsample_nearest2x backward", fetch(dev_d_in, n_in), d_in, n_in);
    release_all();
}

static void test_transpose(int batch, int channels, int tokens) {
    char name[96];
    snprintf(name, sizeof name, "transpose_channels_tokens batch %d, %d channels, %d tokens", batch, channels, tokens);
    const size_t n = (size_t)batch * channels * tokens;
    float *in = host_normal(n, 1.0f), *out = host_alloc(n * 4);
    transpose_channels_tokens_forward(out, in, batch, channels, tokens);
    float *dev_out = device_nan(n);
    transpose_channels_tokens_forward_cuda(dev_out, to_device_f(in, n), batch, channels, tokens, NULL);
    expect_same_bits_f(label(name, "forward"), fetch(dev_out, n), out, n);

    float *d_out = host_normal(n, 1.0f), *d_in = host_alloc(n * 4);
    transpose_channels_tokens_backward(d_in, d_out, batch, channels, tokens);
    float *dev_d_in = device_nan(n);
    transpose_channels_tokens_backward_cuda(dev_d_in, to_device_f(d_out, n), batch, channels, tokens, NULL);
    expect_same_bits_f(label(name, "backward"), fetch(dev_d_in, n), d_in, n);
    release_all();
}

/* ---- a batch of 0: nothing read, nothing written, nothing launched ---- */

static void test_empty(gemm_cuda_context *ctx) {
    const conv2d_dims s = conv_dims(0, 5, 7, 9, 11, 3, 1, 1, 1, 1, 1);
    float *start = host_normal(7, 1.0f), *dev = to_device_f(start, 7);
    conv2d_forward_cuda(ctx, NULL, NULL, NULL, NULL, &s, NULL, 0, NULL);
    conv2d_backward_cuda(ctx, NULL, 0.0f, NULL, dev, NULL, NULL, NULL, &s, NULL, 0, NULL);
    expect_same_bits_f("conv2d_backward batch 0 leaves d_bias", fetch(dev, 7), start, 7);
    groupnorm_forward_cuda(NULL, NULL, NULL, NULL, NULL, NULL, 0, 64, 16, 32, GROUPNORM_EPS, NULL);
    groupnorm_backward_cuda(NULL, 0.0f, dev, dev, NULL, NULL, NULL, NULL, NULL, 0, 7, 16, 7, NULL);
    expect_same_bits_f("groupnorm_backward batch 0 leaves d_gamma", fetch(dev, 7), start, 7);
    upsample_nearest2x_forward_cuda(NULL, NULL, 0, 3, 4, 4, NULL);
    upsample_nearest2x_backward_cuda(NULL, NULL, 0, 3, 4, 4, NULL);
    transpose_channels_tokens_forward_cuda(NULL, NULL, 0, 3, 4, NULL);
    transpose_channels_tokens_backward_cuda(NULL, NULL, 0, 3, 4, NULL);
    release_all();
}

static void run_all(void) {
    cuda_test_arrays_init("test_ops_cuda_conv", rng_stream_for(20240611, 5, 3), &test_checks, &test_failures);
    gemm_cuda_context *ctx = gemm_cuda_context_create();
    test_convolutions(ctx);
    test_groupnorm(2, 64, 30, 32);
    test_groupnorm(1, 128, 16, 32);
    test_groupnorm(3, 12, 49, 3);
    test_groupnorm(2, 5, 10, 1);
    test_groupnorm(2, 6, 9, 6);
    test_upsample(2, 3, 5, 7);
    test_transpose(2, 37, 45);
    test_transpose(3, 64, 16);
    test_empty(ctx);
    report_gemm_paths(ctx);
    gemm_cuda_context_destroy(ctx);
}
#endif

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_ops_cuda_conv");
#ifdef LDM_HAVE_CUDA
    run_all();
#endif
    return test_finish("test_ops_cuda_conv");
}
