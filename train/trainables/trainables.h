/* The trainables ldm trains, by the creator the commands call: the DiT under
 * EDM, the KL autoencoder and the consistency distillation of a DiT (each on the
 * CPU, or on the GPU where device.type says so). The training engine (train/)
 * sees them only through trainable.h; this layer sits above it. */
#ifndef LDM_TRAINABLES_H
#define LDM_TRAINABLES_H

#include "config.h"
#include "trainable.h"

/* The DiT denoiser trained with EDM (train/trainables/dit_trainable.c), for batches of up
 * to micro_batch samples. */
trainable *dit_trainable_create(const ldm_config *config, int micro_batch);
/* The KL autoencoder (train/trainables/autoencoder_trainable.c): reconstruction + beta KL,
 * validated by reconstruction PSNR and a picture of originals and reconstructions. */
trainable *autoencoder_trainable_create(const ldm_config *config, int micro_batch);
/* Consistency distillation (train/trainables/distill_trainable.c): a student DiT that
 * starts from the teacher's EMA weights, the frozen teacher, and the target
 * network (an EMA of the student); context is a distill_context. */
typedef struct {
    const char *teacher_checkpoint; /* rank 0 reads its ema.safetensors */
    const char *record_json;        /* state.json's "consistency" object */
} distill_context;
trainable *distill_trainable_create(const ldm_config *config, int micro_batch, const void *context);

#endif
