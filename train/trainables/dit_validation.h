/* The validation capability of the DiT trainables (CPU, GPU, and the
 * consistency student of distillation): it owns the pictures pipeline
 * (dit_pictures.h), laid out on rank 0 before the first step (prepare) and
 * run from the EMA weights every train.sample_every steps and at the end. It
 * needs no held-out data. */
#ifndef LDM_DIT_VALIDATION_H
#define LDM_DIT_VALIDATION_H

#include "consistency.h"
#include "dit.h"
#include "trainable.h"

/* For a DiT of the shape; consistency: NULL for EDM's sampler, else the
 * consistency model's sampler options (copied). The trainable that holds it
 * destroys it (validator->destroy). */
trainable_validator *dit_validation_create(const dit_shape *shape, double sigma_data,
                                           const consistency_sampler_options *consistency);
/* The same with the pictures sampled on the rank's GPU (on_cuda 1; the GPU
 * trainables, whose rank has its device chosen) or the CPU (0). */
trainable_validator *dit_validation_create_on(const dit_shape *shape, double sigma_data,
                                              const consistency_sampler_options *consistency, int on_cuda);

#endif
