/* What an autoencoder trainable does around the network, on the host, shared by
 * the CPU trainable (autoencoder_trainable_create) and the GPU one
 * (autoencoder_cuda_trainable.c) so that both train the same thing: the
 * posterior noise of each sample drawn from its own stream keyed by (seed,
 * step, the sample's row in the data set), the loss settings, the statistics
 * (the two parts of the loss), validation on a CPU model holding the
 * trainable's params, and the trainable's members that do not depend on where
 * the network runs. Buffers are laid out at creation. */
#ifndef LDM_AUTOENCODER_TRAINABLE_H
#define LDM_AUTOENCODER_TRAINABLE_H

#include <stddef.h>
#include <stdint.h>

#include "autoencoder.h"
#include "config.h"
#include "trainable.h"

typedef struct {
    const ldm_config *config;
    autoencoder_shape shape;
    int micro_batch;
    int64_t latent_per_sample; /* L * h * w */
    float *noise;              /* (B, L, h, w) posterior noise; validation's posterior means */
    float *reconstruction;     /* (B, C, H, W) validation's output */
    /* The CPU model validation runs, whose params are the trainable's (host)
     * params, laid out for batches of micro_batch. */
    autoencoder_model *validation_model;
    void (*free_noise)(void *host);
} autoencoder_batch;

/* For micro-batches of up to micro_batch images of the config's autoencoder
 * shape; the noise buffer from alloc_noise (the GPU's page-locked memory, from
 * which its upload runs asynchronously; NULL: malloc), freed with free_noise. */
void autoencoder_batch_create(autoencoder_batch *b, const ldm_config *config, int micro_batch,
                              autoencoder_model *validation_model, void *(*alloc_noise)(size_t bytes),
                              void (*free_noise)(void *host));
void autoencoder_batch_destroy(autoencoder_batch *b);

/* With autoencoder.sample_posterior: b->noise (batch, L, h, w) drawn for the
 * samples of the step (index: their rows) and returned; else NULL (z is the mean). */
const float *autoencoder_batch_noise(autoencoder_batch *b, const int64_t *index, int batch, int64_t step);
/* autoencoder.reconstruction_loss. */
autoencoder_reconstruction_loss autoencoder_batch_loss_kind(const autoencoder_batch *b);
/* The micro-batch's loss parts added to statistics; returns the total. */
double autoencoder_batch_add_statistics(autoencoder_loss loss, double *statistics);

/* Sets the members of an autoencoder trainable that do not depend on where the
 * network runs: kind "autoencoder", shape_section, settings_keys, the expected
 * data, the statistics and their JSON. t->self must point at a struct whose
 * first member is the autoencoder_batch. */
void autoencoder_batch_describe(trainable *t);
/* The validation capability of both trainables: the reconstruction PSNR of
 * the held-out images on b's validation model, and a picture of originals
 * over reconstructions (only with held-out data). The trainable that holds it
 * destroys it. */
trainable_validator *autoencoder_validation_create(autoencoder_batch *b);

#endif
