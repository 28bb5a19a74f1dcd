/* The CUDA twin of ops_conv.h, the autoencoder's ops on the GPU: 2-D
 * convolution (im2col + cuBLASLt GEMM), GroupNorm with affine, nearest 2x
 * upsampling and the (channels, tokens) transpose; SiLU is in ops_cuda.h. Each
 * function mirrors the ops_conv.h function of the same name without the _cuda
 * suffix, with the same shapes, and follows ops_cuda.h's conventions:
 * - every tensor argument is a DEVICE pointer (dense, row-major, images NCHW);
 * - backward functions ACCUMULATE (+=) into parameter gradients (d_weight,
 *   d_bias, d_gamma, d_beta) and write activation gradients as in ops_conv.h:
 *   d_in = d_in_beta * d_in + dL/din where there is a d_in_beta (beta 0 does
 *   not read d_in, which may hold anything), overwritten where there is none;
 *   a NULL gradient pointer is skipped;
 * - reductions (GroupNorm statistics and gradients, the bias gradient, the
 *   batch sum of the weight gradient) run in a fixed order without float
 *   atomics: the same bits on every run on the same GPU;
 * - work is queued on `stream` (NULL: the default stream); nothing here waits
 *   for it or allocates: the convolution takes scratch;
 * - a batch of 0 does nothing.
 * Upsampling and the transpose are bit-identical to the CPU; the convolution
 * and GroupNorm agree with it to float rounding (tests/test_ops_cuda_conv.c).
 * Status: not yet run on a GPU; tests/test_ops_cuda_conv.c passes on the CPU
 * emulation of CUDA (tests/cuda_emulation/).
 * Errors end the program through fatal_internal (base/fatal.h). Plain C; only
 * meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_OPS_CUDA_CONV_H
#define LDM_OPS_CUDA_CONV_H

#ifdef LDM_HAVE_CUDA

#include "gemm_cublaslt.h"

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

#include "ops_conv.h"

/* ---- 2-D convolution (conv2d_dims of ops_conv.h: any kernel, stride, per-side padding) ----
 * The input is unfolded (im2col) into scratch one chunk at a time -- whole
 * samples, or bands of output rows of one sample when a sample does not fit --
 * and each chunk is one GEMM with the weight. A 1x1 convolution with stride 1
 * and no padding reads the input as its column matrix and needs no scratch. */

/* Floats of scratch this shape asks for: the columns of as many whole samples as
 * fit in a 32 MiB target (at least one output row's), or 0 for a 1x1 stride-1
 * unpadded convolution. One buffer sized for the largest convolution serves them
 * all, forward and backward. */
size_t conv2d_scratch_floats_cuda(const conv2d_dims *shape);

/* out (batch, out_channels, Ho, Wo); in (batch, in_channels, height, width);
 * weight (out_channels, in_channels, kernel, kernel); bias (out_channels) or NULL;
 * scratch (scratch_floats), contents on entry do not matter. The chunks are as
 * large as scratch_floats allows (up to the whole batch): less scratch than
 * conv2d_scratch_floats_cuda asks for makes more, smaller GEMMs, whose rounding
 * may differ; less than one output row's columns ends the program. Results are
 * the same bits for the same shape and scratch_floats. out must not alias in. */
void conv2d_forward_cuda(gemm_cuda_context *ctx, float *out, const float *in, const float *weight, const float *bias,
                         const conv2d_dims *shape, float *scratch, size_t scratch_floats, ldm_stream stream);
/* d_in (batch, in_channels, height, width) = d_in_beta * d_in + dL/din;
 * d_weight (out_channels, in_channels, kernel, kernel) += dL/dweight, summed over
 * the batch in sample order; d_bias (out_channels) += sum of d_out over batch and
 * pixels; d_out (batch, out_channels, Ho, Wo); in: the forward input. Any
 * gradient may be NULL. Scratch as in conv2d_forward_cuda. */
void conv2d_backward_cuda(gemm_cuda_context *ctx, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                          const float *d_out, const float *in, const float *weight, const conv2d_dims *shape,
                          float *scratch, size_t scratch_floats, ldm_stream stream);

/* ---- GroupNorm with affine (ops_groupnorm.c): one block per (sample, group) ----
 * in, out (batch, channels, spatial); gamma, beta (channels); mean, rstd
 * (batch, groups) saved for backward; statistics accumulated in double. */
void groupnorm_forward_cuda(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                            const float *beta, int batch, int channels, int spatial, int groups, float eps,
                            ldm_stream stream);
/* d_in (batch, channels, spatial) = d_in_beta * d_in + dL/din;
 * d_gamma, d_beta (channels) += (summed over the batch in sample order). */
void groupnorm_backward_cuda(float *d_in, float d_in_beta, float *d_gamma, float *d_beta, const float *d_out,
                             const float *in, const float *mean, const float *rstd, const float *gamma, int batch,
                             int channels, int spatial, int groups, ldm_stream stream);

/* ---- nearest 2x upsampling: in (batch, channels, height, width) -> out (.., 2 height, 2 width) ---- */
void upsample_nearest2x_forward_cuda(float *out, const float *in, int batch, int channels, int height, int width,
                                     ldm_stream stream);
/* d_in (batch, channels, height, width) overwritten: the sum of the 2x2 block of d_out. */
void upsample_nearest2x_backward_cuda(float *d_in, const float *d_out, int batch, int channels, int height,
                                      int width, ldm_stream stream);

/* ---- (channels, tokens) <-> (tokens, channels), per sample ----
 * forward: out (batch, tokens, channels) = in (batch, channels, tokens) transposed;
 * backward: d_in (batch, channels, tokens) overwritten = d_out (batch, tokens,
 * channels) transposed (also the forward of the reverse transpose). */
void transpose_channels_tokens_forward_cuda(float *out, const float *in, int batch, int channels, int tokens,
                                            ldm_stream stream);
void transpose_channels_tokens_backward_cuda(float *d_in, const float *d_out, int batch, int channels, int tokens,
                                             ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif
