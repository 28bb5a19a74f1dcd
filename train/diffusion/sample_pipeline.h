/* From labels to pictures: the sampler (train/diffusion/sampler.h, or a consistency
 * model's, train/diffusion/consistency.h) over a DiT and, for a
 * model trained on latents, the way back to pixels: the loader's normalisation
 * undone, z = x / sigma_data * latent_std[c] + latent_mean[c] (data/FORMAT.md),
 * then the autoencoder's decoder. Used by `ldm sample` and by the pictures
 * `ldm train` writes every train.sample_every steps.
 *
 * Like the sampler, the decoder always runs on max_batch rows (zero padded), so
 * a sample does not depend on how many others share its batch. Memory is laid
 * out at create; sample_pipeline_run allocates nothing. */
#ifndef LDM_SAMPLE_PIPELINE_H
#define LDM_SAMPLE_PIPELINE_H

#include <stdint.h>

#include "autoencoder.h"
#include "consistency.h"
#include "dit.h"
#include "sampler.h"

typedef struct {
    sampler smp;
    int consistency;            /* 1: a consistency model's multistep sampler runs instead of smp */
    consistency_sampler csmp;
    double sigma_data;
    int latent_channels;        /* the DiT's in_channels */
    int64_t per_latent;         /* the DiT's C * H * W */
    autoencoder_model *decoder; /* NULL: the model works in pixels */
    int max_batch;
    int channels, size;         /* of the pictures: C, H = W */
    int64_t per_image;          /* C * H * W */
    double *latent_mean, *latent_std; /* (latent channels) with a decoder */
    float *latents;             /* (max_batch, latent C, h, w) the decoder's input */
    float *pictures;            /* (max_batch, C, H, W) the decoder's output */
} sample_pipeline;

/* model holds batches of max_batch (2 max_batch under guidance); decoder, when
 * not NULL, batches of max_batch, with latent_channels = the DiT's in_channels
 * and latent_size = its input_size (fatal_internal otherwise: callers check and
 * name the files); latent_mean and latent_std (the DiT's in_channels) are
 * copied. */
void sample_pipeline_create(sample_pipeline *p, dit_model *model, const sampler_options *options, double sigma_data,
                            int max_batch, autoencoder_model *decoder, const double *latent_mean,
                            const double *latent_std);
/* The same for a consistency model (ldm distill's student): its multistep
 * sampler (consistency.h) instead of EDM's; model holds batches of max_batch. */
void sample_pipeline_create_consistency(sample_pipeline *p, dit_model *model,
                                        const consistency_sampler_options *options, double sigma_data, int max_batch,
                                        autoencoder_model *decoder, const double *latent_mean,
                                        const double *latent_std);
void sample_pipeline_destroy(sample_pipeline *p);

/* labels, indices (batch) as sampler_run takes them; images (batch, C, H, W) in
 * [-1, 1] pixel units (not clamped). */
void sample_pipeline_run(sample_pipeline *p, const int *labels, const int64_t *indices, int batch, float *images);

#endif
