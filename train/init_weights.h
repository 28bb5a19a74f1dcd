/* `ldm train --init WEIGHTS.safetensors`: a new run's starting weights from a
 * file in the model's own (the public DiT's) tensor names, rather than the
 * seeded initialisation. Strict: every tensor of the model present with its
 * shape (F32, F16 or BF16), none besides; the fixed buffers (the DiT's
 * pos_embed, the 2-D sin-cos embedding, not trained) must equal the model's
 * own to within bf16 rounding, which catches weights of another grid or
 * embedding. Optimizer state and step start fresh; the EMA starts at the
 * loaded weights. model/convert_dit_checkpoint.py turns the public DiT .pt
 * files into such a file. */
#ifndef LDM_INIT_WEIGHTS_H
#define LDM_INIT_WEIGHTS_H

#include "trainable.h"

/* Rank 0: loads path into model->params (host). The fixed buffers keep the
 * model's own values. fatal_input with one line naming the file and the first
 * missing, unknown, misshapen or mismatching tensor. */
void init_weights_load(const trainable *model, const char *path);

#endif
