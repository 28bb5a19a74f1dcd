/* sample_pipeline.h on the GPU: the sampler (sampler_cuda.h) over a DiT on the
 * device and, for a model trained on latents, the loader's normalisation undone
 * (z = x / sigma_data * latent_std[c] + latent_mean[c]) and the autoencoder's
 * decoder (autoencoder_cuda.h, laid out for decoding), all on the device; only
 * the pictures come back. Used by `ldm sample` on cuda and by the pictures of
 * `ldm train` (and, for its students, `ldm distill`) that train on cuda.
 *
 * As on the CPU the decoder always runs on max_batch rows (zero padded), so a
 * picture does not depend on its batch. The caller makes the models (the DiT
 * for batches of max_batch, 2 max_batch under guidance; the decoder for
 * max_batch) and owns them. Buffers are laid out at create; run allocates
 * nothing. CUDA builds only (LDM_HAVE_CUDA). */
#ifndef LDM_SAMPLE_PIPELINE_CUDA_H
#define LDM_SAMPLE_PIPELINE_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stdint.h>

#include "autoencoder_cuda.h"
#include "sampler_cuda.h"

typedef struct {
    sampler_cuda smp;
    autoencoder_cuda_model *decoder; /* NULL: the model works in pixels */
    int max_batch;
    int latent_channels;             /* the DiT's in_channels */
    int64_t per_latent;              /* the DiT's C * H * W */
    int channels, size;              /* of the pictures: C, H = W */
    int64_t per_image;               /* C * H * W */
    float *scale, *shift;            /* device (latent channels): latent_std / sigma_data, latent_mean (as floats) */
} sample_pipeline_cuda;

/* As sample_pipeline_create (the DiT and decoder on the device; decoder NULL
 * for a pixel model, else laid out for decoding batches of max_batch with the
 * DiT's latent shape: fatal_internal otherwise, callers check and name files). */
void sample_pipeline_cuda_create(sample_pipeline_cuda *p, dit_cuda_model *model, const sampler_options *options,
                                 double sigma_data, int max_batch, autoencoder_cuda_model *decoder,
                                 const double *latent_mean, const double *latent_std);
/* The same with a consistency model's multistep sampler. */
void sample_pipeline_cuda_create_consistency(sample_pipeline_cuda *p, dit_cuda_model *model,
                                             const consistency_sampler_options *options, double sigma_data,
                                             int max_batch, autoencoder_cuda_model *decoder,
                                             const double *latent_mean, const double *latent_std);
void sample_pipeline_cuda_destroy(sample_pipeline_cuda *p);

/* labels, indices (batch) host arrays as sampler_run takes them; images
 * (batch, C, H, W) a HOST buffer, in [-1, 1] pixel units (not clamped).
 * Returns when the images are there. */
void sample_pipeline_cuda_run(sample_pipeline_cuda *p, const int *labels, const int64_t *indices, int batch,
                              float *images);

#endif /* LDM_HAVE_CUDA */

#endif
