/* The pictures `ldm train` and `ldm distill` write every train.sample_every
 * steps and at the end: RUN/samples/step-N.png, sampled from the EMA weights
 * with EDM's Heun sampler (18 steps, no guidance) or, for a consistency model,
 * its multistep sampler, seed 0 (so the pictures of successive steps start
 * from the same noise and show the model's progress), 8 per class in one
 * row per class (at most 16 classes shown), or 64 for an unconditional model.
 * A model trained on latents is decoded through the autoencoder of ldm train
 * --ae, or else the one the latents file names (ldm encode records it); when
 * neither is there, a line says so once and no pictures are written.
 *
 * Rank 0 only; everything is laid out by dit_pictures_create, before training,
 * on the CPU or (dit_pictures_create_on) on the GPU, through sample_runner.h. */
#ifndef LDM_DIT_PICTURES_H
#define LDM_DIT_PICTURES_H

#include <stddef.h>
#include <stdint.h>

#include "consistency.h"
#include "dataset_file.h"
#include "dit.h"

typedef struct dit_pictures dit_pictures;

/* fatal_input when --ae (autoencoder, may be NULL) cannot be read or does not
 * fit the model's latents. consistency: NULL for EDM's sampler, else the
 * consistency model's sampler options (its seed is set to 0 here). */
dit_pictures *dit_pictures_create(const dit_shape *shape, double sigma_data, const dataset_info *data,
                                  const char *autoencoder, const consistency_sampler_options *consistency);
/* The same sampled on the rank's GPU (on_cuda 1: a CUDA build, the device
 * chosen; the trainables that train on cuda) or the CPU (on_cuda 0:
 * dit_pictures_create). */
dit_pictures *dit_pictures_create_on(const dit_shape *shape, double sigma_data, const dataset_info *data,
                                     const char *autoencoder, const consistency_sampler_options *consistency,
                                     int on_cuda);
/* Samples with the weights ema (the DiT's flat parameter vector) and writes
 * RUN/samples/step-N.png; json gets a metrics member, line a progress line. */
void dit_pictures_write(dit_pictures *p, const float *ema, int64_t step, const char *run_dir, char *json,
                        size_t json_size, char *line, size_t line_size);
void dit_pictures_destroy(dit_pictures *p);

#endif
