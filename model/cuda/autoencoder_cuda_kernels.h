/* The device pieces of the GPU autoencoder (autoencoder_cuda.c) that the CUDA op
 * set does not have: the posterior (split of the moments, clamp, sample) with
 * the KL, the reconstruction loss, and their gradients, with the arithmetic of
 * autoencoder_train_forward / autoencoder_train_backward. Sums are taken in
 * double by one block in a fixed order (the same bits on every run), so they
 * agree with the CPU's double sums to double rounding. Activations and
 * gradients they make are rounded to `precision` where autoencoder.c rounds
 * them (nothing in fp32). Pointers are DEVICE pointers; work is queued on
 * `stream`. Plain C; only meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_AUTOENCODER_CUDA_KERNELS_H
#define LDM_AUTOENCODER_CUDA_KERNELS_H

#ifdef LDM_HAVE_CUDA

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

#include "gemm_cublaslt.h"
#include "precision.h"

/* moments (batch, 2 per_sample): per sample per_sample mean values, then
 * per_sample raw log-variances. mean, logvar (batch, per_sample): the mean and
 * the log-variance clamped to [AE_LOGVAR_MIN, AE_LOGVAR_MAX]; z (batch,
 * per_sample) = mean + exp(logvar / 2) noise, or mean when noise is NULL,
 * rounded to precision; *kl_sum (one device double) = sum of mean^2 +
 * exp(logvar) - 1 - logvar in double. */
void autoencoder_posterior_forward_cuda(float *mean, float *logvar, float *z, double *kl_sum, const float *moments,
                                        const float *noise, int batch, int per_sample, ldm_precision precision,
                                        ldm_stream stream);
/* d_moments (batch, 2 per_sample) = the gradient of the moments from d_z (batch,
 * per_sample), through z and kl_scale * (the KL sum above), the log-variance's
 * where the raw value lies within the clamp's bounds (inclusive) and 0 elsewhere;
 * rounded to precision. noise NULL: z was the mean. */
void autoencoder_posterior_backward_cuda(float *d_moments, const float *d_z, const float *moments, const float *mean,
                                         const float *logvar, const float *noise, float kl_scale, int batch,
                                         int per_sample, ldm_precision precision, ldm_stream stream);

/* *sum (one device double) = the sum over n values of |rec - target| (l2 0) or
 * (rec - target)^2 (l2 1), in double. */
void autoencoder_reconstruction_sum_cuda(double *sum, const float *rec, const float *target, size_t n, int l2,
                                         ldm_stream stream);
/* d_rec (n) = d_loss / n times the gradient of each term above: sign(rec -
 * target) (0 at 0) or 2 (rec - target), in float as the CPU computes it; rounded
 * to precision. */
void autoencoder_reconstruction_backward_cuda(float *d_rec, const float *rec, const float *target, size_t n, int l2,
                                              float d_loss, ldm_precision precision, ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif
