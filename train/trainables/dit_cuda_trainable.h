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

/* The gradient slices a GPU DiT hands to the parameter store during backward
 * (gradient_handover): the trainable tensors of its table grouped by the stage
 * of dit_cuda_backward that finishes them (dit_cuda.h's gradients_ready),
 * contiguous tensors of one stage merged into one slice. Shared by the GPU
 * trainables of a DiT (the EDM one and the distilled student). */
typedef struct {
    int count;
    int *stage;             /* (count) depth: final layer, l: block l, -1: the rest */
    size_t *offset, *size;  /* (count) in floats */
} dit_gradient_slices;
void dit_gradient_slices_plan(dit_gradient_slices *slices, const param_table *table, int depth);
/* dit_cuda_backward's stage finished: its slices to handover (NULL: nothing). */
void dit_gradient_slices_hand_over(const dit_gradient_slices *slices, int stage, const gradient_handover *handover);
void dit_gradient_slices_free(dit_gradient_slices *slices);

#endif /* LDM_HAVE_CUDA */

#endif
