/* The samplers of sampler.h (EDM's Heun and Euler, with churn and
 * classifier-free guidance) and of consistency.h (the consistency model's
 * multistep sampler) on the GPU, over a DiT on the device (dit_cuda.h): the
 * same steps, the same padding to max_batch rows, the same noise. The noise
 * (initial, churn, the consistency steps') is drawn on the host from the CPU's
 * keyed streams (sampler_initial_noise, rng_stream_for(seed, purpose, index))
 * and uploaded, so a sample on the GPU is the CPU's sample up to the network's
 * rounding (cuBLASLt's sums, the fused LayerNorm): CPU and GPU sample the same
 * thing. Guided sampling runs the conditional and the unconditional rows as one
 * forward pass of 2 max_batch rows, as on the CPU.
 *
 * A sample depends on (seed, its index), its label and max_batch only (the
 * network always runs on max_batch rows, zero padded): not on its batch's
 * other samples nor on the number of ranks.
 *
 * The model runs in its own precision (the commands make it fp32, as the CPU
 * sampler's). Device buffers are laid out by create (one allocation), page-
 * locked host buffers for the labels and the noise; run allocates nothing.
 * Everything is queued on the model's stream; run waits for it only where the
 * host refills the noise buffer that a queued copy reads (before each churn or
 * consistency step, and at the start). CUDA builds only (LDM_HAVE_CUDA). */
#ifndef LDM_SAMPLER_CUDA_H
#define LDM_SAMPLER_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stdint.h>

#include "consistency.h"
#include "dit_cuda.h"
#include "sampler.h"

typedef struct {
    dit_cuda_model *model;
    int consistency;                          /* 1: the consistency sampler, else EDM's */
    sampler_options options;                  /* EDM's, checked, defaults filled in */
    consistency_sampler_options consistency_options;
    double sigma_data;
    int max_batch;
    int passes;                               /* 2 under EDM guidance (conditional rows, then unconditional), else 1 */
    int64_t per_sample;                       /* C * H * W */
    double *sigmas;                           /* host (steps + 1): EDM's schedule, the last 0 */
    /* device, one allocation */
    float *x, *x_next, *d;                    /* (max_batch, per_sample) */
    float *noise;                             /* (max_batch, per_sample) the noise of a step, uploaded */
    float *net_in, *net_out;                  /* (passes * max_batch, per_sample) */
    float *t, *guidance;                      /* (passes * max_batch) */
    int *y;                                   /* (passes * max_batch) */
    void *device_memory;
    /* host, page-locked */
    float *host_noise;                        /* (max_batch, per_sample) */
    int *host_y;                              /* (passes * max_batch) */
} sampler_cuda;

/* EDM's sampler: options as sampler_create takes them (fatal_input on bad
 * ones); model must hold batches of passes * max_batch. */
void sampler_cuda_create(sampler_cuda *s, dit_cuda_model *model, const sampler_options *options, double sigma_data,
                         int max_batch);
/* The consistency model's (consistency_sampler_create's options); model holds
 * batches of max_batch. */
void sampler_cuda_create_consistency(sampler_cuda *s, dit_cuda_model *model,
                                     const consistency_sampler_options *options, double sigma_data, int max_batch);
void sampler_cuda_destroy(sampler_cuda *s);

/* labels, indices (batch) host arrays as sampler_run takes them. Queues the
 * sampling on the model's stream and returns the samples (max_batch,
 * per_sample), a DEVICE buffer of s whose first batch rows are the samples in
 * the data's units once the stream has run; valid until the next run. */
const float *sampler_cuda_run(sampler_cuda *s, const int *labels, const int64_t *indices, int batch);

#endif /* LDM_HAVE_CUDA */

#endif
