/* The EDM training step around the network on the GPU (the twin of
 * edm_training_input and edm_training_loss in edm.h, for the GPU trainable):
 * the noise of each sample drawn on the device from the sample's own stream,
 * the preconditioned network input, and the weighted loss with its gradient.
 * Only per-sample values cross from the host (the stream states and the
 * preconditioning coefficients, which the host computes in double as edm.c
 * does), so a micro-batch uploads its samples and nothing else of its size.
 *
 * The arithmetic is edm.c's, in double: the noise is rng_normal's Box-Muller
 * on the stream's draws (splitmix64 is a counter, so draw k of a stream is
 * computable alone); the device's log and cos may differ from the host's in
 * the last bit of a double, so a noise value may differ from the CPU's by one
 * float ulp. The loss sums each sample in a fixed order (deterministic).
 * All pointers are DEVICE pointers; work is queued on `stream`. CUDA builds
 * only (LDM_HAVE_CUDA). */
#ifndef LDM_EDM_CUDA_H
#define LDM_EDM_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stdint.h>

#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One sample's preconditioning (edm_preconditioning) and loss weight
 * (edm_loss_weight) at its sigma, in double. */
typedef struct {
    double sigma, c_in, c_skip, c_out, loss_weight;
} edm_sample_coefficients;

/* noise (batch, per_sample) = normal j of each sample's stream (noise_streams
 * (batch), positioned where the noise begins: dit_batch_draw_conditions);
 * net_in (batch, per_sample) = c_in (x + sigma noise). */
void edm_training_input_cuda(float *net_in, float *noise, const float *x, const uint64_t *noise_streams,
                             const edm_sample_coefficients *coefficients, int batch, int per_sample,
                             ldm_stream stream);
/* sample_loss (batch, double) = loss_weight mean over the sample of (D - x)^2
 * with D = c_skip (x + sigma noise) + c_out F; d_F (batch, per_sample) =
 * d_loss times the gradient of the batch mean of sample_loss with respect to F. */
void edm_training_loss_cuda(double *sample_loss, float *d_F, float d_loss, const float *x, const float *noise,
                            const float *F, const edm_sample_coefficients *coefficients, int batch, int per_sample,
                            ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif
