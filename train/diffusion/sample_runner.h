/* A sampling pipeline on the CPU or on the GPU, behind one interface, owning
 * its DiT: sample_pipeline.h over a dit_model, or sample_pipeline_cuda.h over a
 * dit_cuda_model (and a device copy of the decoder). `ldm sample` and the
 * pictures of `ldm train` / `ldm distill` (dit_pictures.h) sample through it,
 * so the choice of device is one flag. The weights are written into a host
 * vector in the CPU model's layout (sample_runner_params), then
 * sample_runner_params_changed (on the GPU: uploaded).
 *
 * The DiT is fp32 on both devices (the CPU sampler's precision). On the CPU
 * this is exactly the pipeline the commands made before the GPU path existed
 * (same models, same batches: the same bytes). On the GPU the samples agree
 * with the CPU's to the network's rounding (sampler_cuda.h). The GPU path must
 * have the rank's device chosen (cuda_use_device_of_local_rank) first. */
#ifndef LDM_SAMPLE_RUNNER_H
#define LDM_SAMPLE_RUNNER_H

#include <stdint.h>

#include "autoencoder.h"
#include "consistency.h"
#include "dit.h"
#include "params.h"
#include "sampler.h"

typedef struct sample_runner sample_runner;

typedef struct {
    const dit_shape *shape;
    int on_cuda;                /* 1: the GPU (a CUDA build only: fatal_internal otherwise) */
    int max_batch;              /* samples per run */
    double sigma_data;
    const sampler_options *edm; /* EDM's sampler, or NULL with */
    const consistency_sampler_options *consistency; /* a consistency model's */
    /* The decoder of a latents model, or NULL: on the CPU it runs as it is (laid
     * out for decoding batches of max_batch); on the GPU only its shape,
     * precision and weights are read (a copy is made on the device, so a model
     * for batches of 1 will do). */
    autoencoder_model *decoder;
    const double *latent_mean, *latent_std; /* (the DiT's in_channels) with a decoder */
} sample_runner_options;

sample_runner *sample_runner_create(const sample_runner_options *options);
void sample_runner_destroy(sample_runner *r);

/* The DiT's parameter table bound to the host vector below (for loading a
 * checkpoint's tensors by name), and that vector (table.trainable_numel). */
param_table *sample_runner_table(sample_runner *r);
float *sample_runner_params(sample_runner *r);
/* After the host vector was written: the GPU takes its copy. */
void sample_runner_params_changed(sample_runner *r);

/* The pictures: C, H = W, and C * H * W. */
int sample_runner_channels(const sample_runner *r);
int sample_runner_size(const sample_runner *r);
int64_t sample_runner_per_image(const sample_runner *r);

/* sample_pipeline_run on the runner's device: labels, indices (batch); images
 * (batch, C, H, W) a host buffer in [-1, 1] pixel units (not clamped). */
void sample_runner_run(sample_runner *r, const int *labels, const int64_t *indices, int batch, float *images);

#endif
