/* The ops of the convolutional KL autoencoder (Stable Diffusion / diffusers
 * AutoencoderKL) on the CPU, fp32, forward and backward: 2-D convolution,
 * GroupNorm with affine, nearest 2x upsampling, and the (channels, tokens)
 * transpose around the mid-block's self-attention.
 *
 * Conventions are those of ops.h: dense row-major float buffers, images NCHW;
 * backward functions ACCUMULATE (+=) into parameter gradients (d_weight, d_bias,
 * d_gamma, d_beta) and write activation gradients as d_in = d_in_beta * d_in +
 * dL/din (d_in_beta 0 overwrites, 1 adds to a gradient already there, e.g. from a
 * residual branch); where there is no d_in_beta argument d_in is overwritten.
 * A NULL gradient pointer means "not needed". Nothing here allocates: the
 * convolution takes scratch whose size conv2d_scratch_floats() gives. Every op is
 * threaded with OpenMP and its results are bit-identical whatever the number of
 * threads (work is cut into pieces whose sizes do not depend on it, and every sum
 * is taken in a fixed order). */
#ifndef LDM_OPS_CONV_H
#define LDM_OPS_CONV_H

#include <stddef.h>

/* ---- 2-D convolution, as torch.nn.Conv2d (cross-correlation), square kernel ----
 * Padding is given per side because diffusers' Downsample2D pads (0, 1, 0, 1)
 * (left 0, right 1, top 0, bottom 1) and then convolves 3x3 stride 2 unpadded:
 * there pad_top = pad_left = 0, pad_bottom = pad_right = 1. Zero padding. */
typedef struct {
    int batch;
    int in_channels, out_channels;
    int height, width; /* of the input */
    int kernel;        /* k: weight (out_channels, in_channels, k, k) */
    int stride;
    int pad_top, pad_bottom, pad_left, pad_right;
} conv2d_dims;

/* The usual symmetric case: the same padding on every side. */
conv2d_dims conv2d_shape(int batch, int in_channels, int out_channels, int height, int width,
                         int kernel, int stride, int padding);
/* Output size: (height + pad_top + pad_bottom - kernel) / stride + 1, same for width. */
int conv2d_out_height(const conv2d_dims *shape);
int conv2d_out_width(const conv2d_dims *shape);

/* Floats of scratch that conv2d_forward/backward need to run on `threads` OpenMP
 * threads (pass omp_get_max_threads() when laying out memory; one buffer sized
 * for the largest conv serves them all, forward and backward). A 1x1 convolution
 * with stride 1 and no padding needs none (0: scratch may be NULL). With less
 * scratch than asked for at call time the op runs on fewer threads, with the same
 * result; with less than one thread's share it ends the program (fatal_internal). */
size_t conv2d_scratch_floats(const conv2d_dims *shape, int threads);

/* out (batch, out_channels, Ho, Wo); in (batch, in_channels, height, width);
 * weight (out_channels, in_channels, kernel, kernel); bias (out_channels) or NULL;
 * scratch (scratch_floats), contents on entry do not matter. out must not alias in. */
void conv2d_forward(float *out, const float *in, const float *weight, const float *bias,
                    const conv2d_dims *shape, float *scratch, size_t scratch_floats);
/* d_in (batch, in_channels, height, width) = d_in_beta * d_in + dL/din;
 * d_weight (out_channels, in_channels, kernel, kernel) += dL/dweight, summed over the
 * batch in sample order; d_bias (out_channels) += sum of d_out over batch and pixels;
 * d_out (batch, out_channels, Ho, Wo); in: the forward input. Any gradient may be NULL. */
void conv2d_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                     const float *d_out, const float *in, const float *weight,
                     const conv2d_dims *shape, float *scratch, size_t scratch_floats);

/* ---- GroupNorm with affine, as torch.nn.GroupNorm(groups, channels, eps) ----
 * in, out (batch, channels, spatial) with spatial = H * W; channels % groups == 0;
 * gamma, beta (channels); mean, rstd (batch, groups) saved for backward
 * (statistics accumulated in double, variance biased as in PyTorch). */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *in,
                       const float *gamma, const float *beta,
                       int batch, int channels, int spatial, int groups, float eps);
/* d_in (batch, channels, spatial) = d_in_beta * d_in + dL/din;
 * d_gamma, d_beta (channels) += (summed over the batch in sample order). */
void groupnorm_backward(float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                        const float *d_out, const float *in, const float *mean, const float *rstd,
                        const float *gamma, int batch, int channels, int spatial, int groups);

/* ---- nearest-neighbour 2x upsampling, as F.interpolate(scale_factor=2, mode="nearest") ----
 * in (batch, channels, height, width); out (batch, channels, 2 height, 2 width),
 * out[.., y, x] = in[.., y / 2, x / 2]. */
void upsample_nearest2x_forward(float *out, const float *in, int batch, int channels, int height, int width);
/* d_in (batch, channels, height, width) overwritten: the sum of the 2x2 block of d_out. */
void upsample_nearest2x_backward(float *d_in, const float *d_out, int batch, int channels, int height, int width);

/* ---- (channels, tokens) <-> (tokens, channels), per sample ----
 * The VAE's attention reads a feature map (B, C, H*W) as tokens (B, H*W, C), the
 * layout of linear_* and attention_*, and its output goes back the other way.
 * forward: out (batch, tokens, channels) = in (batch, channels, tokens) transposed.
 * backward: d_in (batch, channels, tokens) overwritten = d_out (batch, tokens, channels)
 * transposed; this is also the forward of the reverse transpose (tokens -> channels). */
void transpose_channels_tokens_forward(float *out, const float *in, int batch, int channels, int tokens);
void transpose_channels_tokens_backward(float *d_in, const float *d_out, int batch, int channels, int tokens);

#endif
