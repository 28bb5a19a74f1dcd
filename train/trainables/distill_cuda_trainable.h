/* Consistency distillation on the rank's GPU (train/trainables/distill_cuda_trainable.c):
 * the trainable of distill_trainable_create, kind "consistency" with the same
 * checkpoints, whose teacher, target network and student run on the device.
 * CUDA builds only (LDM_HAVE_CUDA). */
#ifndef LDM_DISTILL_CUDA_TRAINABLE_H
#define LDM_DISTILL_CUDA_TRAINABLE_H

#ifdef LDM_HAVE_CUDA

#include "config.h"
#include "trainable.h"

/* For batches of up to micro_batch samples, on GPU comm_local_rank() % the
 * number of devices (made current here); context is a distill_context
 * (trainables.h), whose teacher_checkpoint may be NULL (ldm bench: the
 * teacher is then the DiT as dit_init_weights makes it). The caller has
 * checked that there is a GPU. */
trainable *distill_cuda_trainable_create(const ldm_config *config, int micro_batch, const void *context);

#endif /* LDM_HAVE_CUDA */

#endif
