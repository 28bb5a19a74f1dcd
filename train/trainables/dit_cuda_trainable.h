/* The DiT under EDM trained on the rank's GPU (train/trainables/dit_cuda_trainable.c):
 * the trainable of dit_trainable_create, kind "dit" with the same checkpoints,
 * whose network runs on the device. CUDA builds only (LDM_HAVE_CUDA). */
#ifndef LDM_DIT_CUDA_TRAINABLE_H
#define LDM_DIT_CUDA_TRAINABLE_H

#ifdef LDM_HAVE_CUDA

#include "config.h"
#include "trainable.h"

/* For batches of up to micro_batch samples, on GPU comm_local_rank() % the
 * number of devices (made current here). The caller has checked that there is
 * one (device_cuda_count() > 0). */
trainable *dit_cuda_trainable_create(const ldm_config *config, int micro_batch);

#endif /* LDM_HAVE_CUDA */

#endif
