/* The elementwise steps of the samplers on the GPU (sampler_cuda.c): EDM's
 * preconditioned network input, the denoiser's output with classifier-free
 * guidance fused with the Euler step and Heun's correction, the consistency
 * function's output, noise added to rows, and the latents' normalisation
 * undone. Each is the arithmetic of its CPU twin (edm.c's edm_network_input
 * and edm_denoised, sampler.c's steps, consistency.c's consistency_output,
 * sample_pipeline.c's z = x scale + shift) in the same order, float operations
 * explicitly rounded (no fused multiply-add), the per-element double
 * arithmetic in double: the results are the CPU's given the same network
 * output (the double expressions may differ by the last bit of a double where
 * the GPU fuses them, which rounding to float almost always hides).
 *
 * Rows are (rows, per_sample) blocks; `used` counts the values of the first
 * batch rows (batch * per_sample). The scalar coefficients are computed on the
 * host in double (edm_preconditioning, consistency_scalings), once per step.
 * All pointers are DEVICE pointers; work is queued on `stream`. CUDA builds
 * only (LDM_HAVE_CUDA). */
#ifndef LDM_SAMPLER_CUDA_KERNELS_H
#define LDM_SAMPLER_CUDA_KERNELS_H

#ifdef LDM_HAVE_CUDA

#include <stddef.h>

#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out (n) = value. */
void sampler_fill_cuda(float *out, float value, size_t n, ldm_stream stream);

/* net_in (passes * rows, per_sample): in each of the passes blocks, row b < batch
 * is c_in x_b (in double, rounded once), the rows past batch are 0: the
 * network's padded input (x (batch, per_sample)). */
void sampler_network_input_cuda(float *net_in, const float *x, double c_in, int batch, int rows, int passes,
                                int per_sample, ldm_stream stream);

/* The denoiser of the used values: D = c_skip x_noisy + c_out F (double,
 * rounded once) from the conditional block of F (rows * per_sample values)
 * and, when guided, D = D_u + w (D_c - D_u) with D_u from the unconditional
 * block after it. Then, first (Euler's step from x at sigma):
 *     d = (x - D) inv_sigma, x_next = x + h d         (x_noisy = x)
 * or second (Heun's correction at sigma_next):
 *     x_next = x + h (0.5 d + 0.5 (x_next - D) inv_sigma)   (x_noisy = x_next). */
void sampler_edm_step_cuda(float *x_next, float *d, const float *x, const float *F, size_t block, double c_skip,
                           double c_out, int guided, float guidance, float inv_sigma, float h, int second,
                           size_t used, ldm_stream stream);

/* f = c_skip x + c_out F (double, rounded once) for the used values. */
void sampler_consistency_output_cuda(float *f, const float *x, const float *F, double c_skip, double c_out,
                                     size_t used, ldm_stream stream);

/* x (used) += noise (used): noise already scaled on the host (as the CPU adds
 * scale * rng_normal, a float product, to x). */
void sampler_add_cuda(float *x, const float *noise, size_t used, ldm_stream stream);

/* z (batch rows of channels planes of plane values) = x scale[c] + shift[c],
 * float; scale and shift (channels) device floats. */
void sampler_unnormalize_cuda(float *z, const float *x, const float *scale, const float *shift, int channels,
                              size_t plane, size_t used, ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif
